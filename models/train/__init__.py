"""Training loops: the base occupancy model (``base``) and the grasp VAE."""
