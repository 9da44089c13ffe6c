"""``halo bench mesh``: milliseconds per mesh, reported as a ratio to a fixed CPU workload.

Absolute times drift across these shared machines, so every timed batch is preceded by the team's
calibration workload (200 fp32 (65536x64)@(64x64) matmuls + relu on 2 threads) and the result is
``ratio = seconds per mesh / calibration seconds``. The original HALO implementation's ratio at
resolution 128 is 0.595, so a speed-up over it is 0.595 / ratio.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import models
from models.assets import sample_hand

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "halo_reference"
ORIGINAL_RATIO_128 = 0.595  # ../shared/bench/README.md
ORIGINAL_SECONDS_512 = 21.1  # ../shared/halo_reference/timing.json, 64/3 (calibration 1.08 s in that run)
ORIGINAL_CALIBRATION_S = 1.08


@dataclass(frozen=True)
class MeshBench:
    """What ``halo bench mesh`` times: resolutions x batch sizes, ``repeats`` times each."""

    keypoints: np.ndarray | None = None  # (K,21,3) hands; None: the reference frames if present, else the sample hand
    keypoints_source: str = ""
    checkpoint: str | None = None
    device: str = "cpu"
    resolutions: tuple[int, ...] = (128, 512)
    batches: tuple[int, ...] = (1, 8, 32)
    repeats: int = 5
    threads: int = 2
    json_path: Path | None = None


def calibration_seconds(iterations: int = 200, threads: int = 2) -> float:
    """Seconds for the fixed workload of the team's calib.py (2 torch threads unless told otherwise)."""
    torch.set_num_threads(threads)
    a, w = torch.randn(65536, 64), torch.randn(64, 64)
    for _ in range(3):
        (a @ w).relu_()
    start = time.perf_counter()
    for _ in range(iterations):
        (a @ w).relu_()
    return time.perf_counter() - start


def _keypoints(bench: MeshBench) -> tuple[np.ndarray, str]:
    """-> ((K,21,3) keypoints, where they came from): the given ones, else the reference frames 0..140 if present."""
    if bench.keypoints is not None:
        return bench.keypoints.reshape(-1, 21, 3), bench.keypoints_source
    reference = REFERENCE / "reference.npz"
    if reference.is_file():
        frames = np.load(reference)["keypoints_mano_m"][:15]
        return frames.astype(np.float64), "halo_reference frames 0..140"
    sample = sample_hand()["keypoints"]
    return np.asarray(sample, dtype=np.float64)[None], "sample hand"


def run_mesh_benchmark(bench: MeshBench) -> int:
    torch.set_num_threads(bench.threads)
    checkpoint = bench.checkpoint
    if checkpoint is None and (REFERENCE / "model_best.pt").is_file():
        checkpoint = str(REFERENCE / "model_best.pt")  # the model the original's timings were measured on
    base = models.load_base(checkpoint, device=bench.device)
    keypoints, source = _keypoints(bench)
    print(f"model {base.card['name']} ({base.card['sha256'][:12]}) on {base.device}, keypoints: {source}, "
          f"torch threads {bench.threads}")
    base.mesh(keypoints[0], resolution=64)  # warm-up
    results = []
    for resolution in bench.resolutions:
        for batch in bench.batches:
            ratios, per_mesh, calibrations, points = [], [], [], []
            for repeat in range(bench.repeats):
                hands = keypoints[(np.arange(batch) + repeat * batch) % len(keypoints)]
                calibration = min(calibration_seconds(threads=bench.threads) for _ in range(2))
                started = time.perf_counter()
                _, stats = base.mesh_with_stats(hands, resolution=resolution)
                seconds = (time.perf_counter() - started) / batch
                ratios.append(seconds / calibration)
                per_mesh.append(seconds)
                calibrations.append(calibration)
                points.append(stats.points_evaluated / batch)
            row = {
                "resolution": resolution,
                "batch": batch,
                "ms_per_mesh": 1000 * statistics.median(per_mesh),
                "calibration_s": statistics.median(calibrations),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "points_per_mesh": statistics.median(points),
                "meshes_per_s": 1 / statistics.median(per_mesh),
            }
            if resolution == 128:
                row["speedup_vs_original"] = ORIGINAL_RATIO_128 / row["ratio"]
            if resolution == 512:
                row["speedup_vs_original"] = (ORIGINAL_SECONDS_512 / ORIGINAL_CALIBRATION_S) / row["ratio"]
            results.append(row)
            speedup = f", {row['speedup_vs_original']:.1f}x the original" if "speedup_vs_original" in row else ""
            print(
                f"res {resolution:4d} batch {batch:3d}: {row['ms_per_mesh']:8.1f} ms/mesh, "
                f"{row['meshes_per_s']:6.2f} meshes/s, ratio {row['ratio']:.4f} (min {row['ratio_min']:.4f}) "
                f"(calibration {row['calibration_s']:.3f} s), {row['points_per_mesh']:.0f} points/mesh{speedup}",
                flush=True,
            )
    if bench.json_path:
        bench.json_path.write_text(
            json.dumps(
                {"model": base.card["name"], "device": str(base.device), "keypoints": source, "rows": results},
                indent=2,
            )
        )
    return 0
