"""Stream benchmark: one live stream of a keypoint sequence at 64 and 128, calibrated like ``halo bench mesh``.

Usage: halo bench stream [--sequence kps_seq.pkl|frames.npy] [--resolutions 64,128] [--smooth 0]
Defaults: HALO's tracked demo sequence beside the repository if present (else the project's synthetic one),
and the published checkpoint there if present (the model the original's timings were measured on).
The same streams through a server (``--protocol grpc|websocket``): ``tools.bench_live``.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import models
from models.grasps.model import load_vae_weights
from models.stream_bench import load_sequence, stream_benchmark, synthetic_sequence
from tools.bench_mesh import REFERENCE, calibration_seconds

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StreamBench:
    """What ``halo bench stream`` times: one live stream of a keypoint sequence per resolution."""

    sequence: str | None = None  # kps_seq.pkl or a (T,21,3) .npy, metres, mano order (None: the defaults above)
    checkpoint: str | None = None
    resolutions: tuple[int, ...] = (64, 128)
    smooth: int = 0  # Taubin iterations on every frame (0 = parity surface)
    repeats: int = 1
    threads: int = 2  # torch threads for the stream and the calibration
    split: bool = False  # a helper thread takes half of each decoder call, as for a server's lone live frame
    json_path: Path | None = None


def bench_sequence(path: str | None) -> tuple[np.ndarray, str]:
    """-> ((T,21,3) mano keypoints, metres; its name): the file at ``path``, else HALO's tracked demo sequence
    beside the repository if present, else the project's synthetic open-fist-open sequence."""
    sequence = path or (REFERENCE / "kps_seq.pkl" if (REFERENCE / "kps_seq.pkl").is_file() else None)
    if sequence is not None:
        return load_sequence(sequence), Path(sequence).name
    vae, _ = load_vae_weights(REPO / "models" / "checkpoints" / "halo_vae.safetensors")
    return synthetic_sequence(vae.skeleton), "synthetic open-fist-open"


def run_stream_benchmark(bench: StreamBench) -> int:
    torch.set_num_threads(bench.threads)
    checkpoint = bench.checkpoint
    if checkpoint is None and (REFERENCE / "model_best.pt").is_file():
        checkpoint = str(REFERENCE / "model_best.pt")
    base = models.load_base(checkpoint)
    frames, source = bench_sequence(bench.sequence)
    print(f"model {base.card['name']} ({base.card['sha256'][:12]}), sequence {source} ({len(frames)} frames), "
          f"torch threads {bench.threads}{' + a helper thread' if bench.split else ''}, smooth {bench.smooth}")
    with contextlib.ExitStack() as stack:
        helper = stack.enter_context(ThreadPoolExecutor(1)) if bench.split else None
        rows = stream_benchmark(
            base, frames, lambda: calibration_seconds(threads=bench.threads), list(bench.resolutions), bench.smooth,
            bench.repeats, helper=helper,
        )
    if bench.json_path:
        bench.json_path.write_text(json.dumps({"sequence": source, "rows": rows}, indent=2))
    return 0
