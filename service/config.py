"""The server's settings: one object, filled from ``HALO_*`` environment variables and CLI flags.

Nothing else in the server reads ``os.environ``. Every field is also a ``halo serve`` flag with the
same name in kebab case (``max_batch_size`` <-> ``--max-batch-size`` <-> ``HALO_MAX_BATCH_SIZE``);
a flag given on the command line wins over the environment (the flags are made in ``cli.serve``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.meshing import RESOLUTIONS


class Settings(BaseSettings):
    """Everything an operator can tune about ``halo serve``."""

    model_config = SettingsConfigDict(env_prefix="HALO_", extra="forbid")

    host: str = Field("0.0.0.0", description="Interface both front ends listen on.")
    http_port: int = Field(8000, ge=0, le=65535, description="REST port (0: any free port).")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    base_checkpoint: Path | None = Field(
        None,
        description="Base model: our .safetensors or the published HALO model_best.pt (default: shipped).",
    )
    vae_checkpoint: Path | None = Field(None, description="Grasp VAE checkpoint (default: shipped).")
    default_resolution: int = Field(128, description="Resolution used when a request names none.")
    max_resolution: int = Field(256, description="Largest resolution a request may ask for.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most hands meshed in one model call.")
    max_queue_delay_ms: float = Field(
        10.0, ge=0, description="How long the first hand of a batch waits for batch-mates."
    )
    max_queue_size: int = Field(
        64, ge=1, description="Hands and occupancy queries allowed to wait in the mesh lane; beyond that: 503."
    )
    # Two single-threaded workers beat one two-threaded worker on CPU: batches overlap, and no OpenMP
    # thread waits for a sibling that the OS has descheduled (10x slower on a busy 2-core machine).
    mesh_workers: int = Field(2, ge=1, le=16, description="Mesh-lane batches computed side by side (threads).")
    # Grasp jobs take seconds each: one at a time leaves the second core to the mesh lane on a 2-core
    # CPU, and on a GPU a second job would only queue for the same device.
    grasp_workers: int = Field(1, ge=1, le=16, description="Grasp jobs computed side by side (threads).")
    # A grasp job in a server thread holds the interpreter lock whenever it runs Python: beside two 8-grasp
    # requests a live frame's p99 was 1.8-2.8x its idle value, 1.5-1.9x with the jobs in a worker process.
    grasp_process: bool = Field(
        True, description="Grasp jobs run in a worker process of their own (off: in the grasp lane's threads)."
    )
    max_grasp_queue: int = Field(
        4, ge=1, description="Grasp jobs allowed to wait (a request is one; a stream queues one grasp at a time)."
    )
    grasp_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower the grasp lane's CPU priority is than the mesh lane's (Linux nice steps; 0: equal).",
    )
    torch_threads: int = Field(1, ge=0, description="PyTorch intra-op threads (0: PyTorch's default).")
    # One coarse split per decoder call instead of OpenMP threads (no thread spinning between the small
    # operations of a frame). On a quiet 2-core machine a lone stream goes from 31 to 36 frames/s at 64 and
    # from 14 to 16 at 128; turn it off where other processes keep both cores busy (no core to split onto).
    split_lone_frames: bool = Field(
        True,
        description="A live frame meshed while no other mesh-lane batch and no grasp job runs hands half of its decoder work to a helper thread.",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline for a request without its own.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(20_000_000, ge=1024, description="Largest uploaded object file.")
    max_object_faces: int = Field(200_000, ge=1, description="Most faces an object mesh may have.")
    max_points: int = Field(200_000, ge=1, description="Most query points in one occupancy request.")
    max_hands: int = Field(32, ge=1, description="Most hands in one mesh request.")
    max_grasp_samples: int = Field(64, ge=1, description="Most grasps in one grasp request.")
    max_streams: int = Field(
        8, ge=1, description="Live streams (gRPC StreamMesh and WebSocket /stream together) open at once; beyond: refused."
    )
    default_grasp_samples: int = Field(8, ge=1, description="Grasps returned when a request names none.")
    auth_token: str | None = Field(None, description="If set, both protocols require 'Bearer <token>'.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    log_level: str = Field("info", description="Python log level name.")
    warmup: bool = Field(True, description="Mesh one hand and sample two grasps at start-up before reporting ready.")
    grace_period_s: float = Field(30.0, ge=0, description="Time given to accepted requests on SIGTERM.")

    @model_validator(mode="after")
    def _check_resolutions(self) -> Settings:
        for name in ("default_resolution", "max_resolution"):
            if getattr(self, name) not in RESOLUTIONS:
                raise ValueError(f"{name}: must be one of {RESOLUTIONS}")
        if self.default_resolution > self.max_resolution:
            raise ValueError("default_resolution: larger than max_resolution")
        if self.default_grasp_samples > self.max_grasp_samples:
            raise ValueError("default_grasp_samples: larger than max_grasp_samples")
        return self

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The resolutions requests may use."""
        return tuple(r for r in RESOLUTIONS if r <= self.max_resolution)
