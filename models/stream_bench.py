"""Live-hand sequences and the stream benchmark: frames/s and frame latency of ``HaloBase.mesh_stream``.

``stream_benchmark`` plays a keypoint sequence through one stream per resolution, as fast as it meshes,
and reports absolute figures and ratios to a calibration workload measured in the same run (the
caller passes it, e.g. ``tools.bench_mesh.calibration_seconds``), like ``halo bench mesh``. The same
frames meshed from scratch one by one give the speed-up of streaming.

``synthetic_sequence`` is the project's own tracked-looking sequence: a hand closing into a fist and
opening again while it turns, by forward kinematics of the pose space (``models.hand_pose``).
"""

from __future__ import annotations

import math
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import torch

from .api import HaloBase
from .hand_pose import DOF_NAMES, HandSkeleton, axis_angle_to_matrix, clip_angles, neutral_angles

# A loose fist: every finger curled, the thumb folded across.
FIST = {"thumb_cmc_flexion": 45.0, "thumb_cmc_abduction": 30.0, "thumb_cmc_rotation": 40.0,
        "thumb_mcp_flexion": 40.0, "thumb_ip_flexion": 45.0, "palm_arch": 10.0}
FIST |= {f"{finger}_{joint}": angle for finger in ("index", "middle", "ring", "pinky")
         for joint, angle in (("mcp_flexion", 80.0), ("pip_flexion", 95.0), ("dip_flexion", 50.0))}


def synthetic_sequence(skeleton: HandSkeleton, frames: int = 60, turn_degrees: float = 40.0) -> np.ndarray:
    """Rest skeleton -> (frames,21,3) mano keypoints, metres: open -> fist -> open while the hand turns and drifts."""
    phase = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    closing = (0.5 - 0.5 * torch.cos(2 * math.pi * phase))[:, None]  # 0 -> 1 -> 0
    open_hand = neutral_angles(1).double() * 0.3
    fist = torch.tensor([[FIST.get(name, 0.0) for name in DOF_NAMES]], dtype=torch.float64)
    angles = clip_angles(open_hand + closing * (fist - open_hand))
    turn = math.radians(turn_degrees) * torch.sin(math.pi * phase)
    rotation = axis_angle_to_matrix(torch.stack([0.3 * turn, turn, 0.1 * turn], dim=-1))
    translation = torch.stack([0.05 * phase, 0.02 * torch.sin(2 * math.pi * phase), torch.full_like(phase, 0.4)], dim=-1)
    return skeleton.keypoints(angles, rotation, translation).numpy()


def load_sequence(path: str | Path) -> np.ndarray:
    """A keypoint sequence file (.npy, or a pickled list of (21,3) arrays as the HALO demo's kps_seq.pkl) -> (T,21,3)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float64).reshape(-1, 21, 3)
    with path.open("rb") as handle:  # trusted, local research data only: pickle can run code
        return np.stack([np.asarray(frame, dtype=np.float64) for frame in pickle.load(handle)]).reshape(-1, 21, 3)


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """Frame latencies, seconds -> p50 / p90 / p99 / max in milliseconds."""
    values = np.asarray(seconds) * 1000
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 90, 99)} | {"max_ms": float(values.max())}


def stream_benchmark(
    base: HaloBase,
    frames: np.ndarray,
    calibration: Callable[[], float],
    resolutions: Sequence[int] = (64, 128),
    smooth: int = 0,
    repeats: int = 1,
    log: Callable[[str], None] = print,
    helper: Executor | None = None,
) -> list[dict]:
    """(T,21,3) keypoint frames -> one row per resolution: streamed and scratch ms/frame, frames/s, latency
    percentiles, fallbacks, and each as a ratio to ``calibration()`` seconds (median over ``repeats``).

    ``helper``: a thread pool that takes half of each of the stream's decoder calls (as for a server's lone live frame)."""
    rows = []
    base.mesh(frames[0], resolution=64)  # warm-up
    for resolution in resolutions:
        streamed, scratch, calibrations, fallbacks = [], [], [], {}
        for _ in range(repeats):
            calibrations.append(min(calibration() for _ in range(2)))
            stream = base.mesh_stream(resolution=resolution, smooth=smooth)
            for keypoints in frames:
                started = time.perf_counter()
                stream.mesh_with_stats(keypoints, helper=helper)
                streamed.append(time.perf_counter() - started)
            for reason, count in stream.stats.fallbacks.items():
                fallbacks[reason] = fallbacks.get(reason, 0) + count
            for keypoints in frames[:: max(1, len(frames) // 30)]:  # scratch cost on a spread of frames
                started = time.perf_counter()
                base.mesh(keypoints, resolution=resolution, smooth=smooth)
                scratch.append(time.perf_counter() - started)
        calibration_s = statistics.median(calibrations)
        latency = _percentiles(streamed)
        row = {
            "resolution": resolution,
            "frames": len(frames) * repeats,
            "smooth": smooth,
            "stream_ms_per_frame": 1000 * statistics.mean(streamed),
            "stream_frames_per_s": 1 / statistics.mean(streamed),
            **latency,
            "scratch_ms_per_frame": 1000 * statistics.mean(scratch),
            "speedup_vs_scratch": statistics.mean(scratch) / statistics.mean(streamed),
            "fallbacks": fallbacks,
            "calibration_s": calibration_s,
            "stream_ratio": statistics.mean(streamed) / calibration_s,
            "scratch_ratio": statistics.mean(scratch) / calibration_s,
            "p99_ratio": latency["p99_ms"] / 1000 / calibration_s,
        }
        rows.append(row)
        log(
            f"res {resolution:4d}: stream {row['stream_ms_per_frame']:6.1f} ms/frame ({row['stream_frames_per_s']:5.1f} "
            f"frames/s, p50 {latency['p50_ms']:.1f} p99 {latency['p99_ms']:.1f} ms), scratch "
            f"{row['scratch_ms_per_frame']:6.1f} ms ({row['speedup_vs_scratch']:.2f}x), ratio {row['stream_ratio']:.4f} "
            f"vs scratch {row['scratch_ratio']:.4f} (calibration {calibration_s:.3f} s), fallbacks {fallbacks}"
        )
    return rows
