"""Training-data synthesis: a rigged hand, pose sampling and occupancy labels."""
