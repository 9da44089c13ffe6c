"""The HALO inference server: REST and gRPC front ends over one batched engine."""
