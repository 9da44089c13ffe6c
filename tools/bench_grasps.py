"""``halo bench grasps``: seconds per grasp request (sampling, refinement, meshes, metrics), calibrated.

Each timed request is ``vae.sample(object, n, refine=True)`` with meshes at ``resolution`` and the
metrics, on a held-out test object; it is preceded by the team's calibration workload (see
``tools.bench_mesh``) and reported as ``ratio = request seconds / calibration seconds``. The median over the
objects is the figure the grasp-latency goal is stated in.

With ``--physics`` each request also runs the MuJoCo check (``models.grasps.physics``): the object's
convex decomposition is timed on its own first (once per object, then cached) and the check's seconds
per grasp are reported with their ratio to the calibration workload (``physics_ratio``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import models
from models.data.objects import make_object, split_indices
from models.grasps.collision import convex_pieces
from tools.bench_mesh import calibration_seconds


@dataclass(frozen=True)
class GraspBench:
    """What ``halo bench grasps`` times: one request of ``samples`` grasps on each of ``objects`` test objects."""

    checkpoint: str | None = None
    base_checkpoint: str | None = None
    objects: int = 5
    samples: int = 8
    resolution: int = 128
    seed: int = 0
    threads: int = 2
    physics: bool = False
    json_path: Path | None = None


def run_grasp_benchmark(bench: GraspBench) -> int:
    """Time ``bench.objects`` grasp requests on test objects; print one line each and the median ratio."""
    torch.set_num_threads(bench.threads)
    base = models.load_base(bench.base_checkpoint, device="cpu")
    vae = models.load_vae(bench.checkpoint, base=base, device="cpu")
    objects = [make_object(index) for index in split_indices("test", bench.objects)]
    vae.sample(objects[0][0], n=2, seed=0, resolution=bench.resolution)  # warm-up: steady-state latency is measured
    print(f"vae {vae.card.get('sha256', '')[:12]}, base {base.card.get('sha256', '')[:12]}, n={bench.samples}, "
          f"resolution {bench.resolution}, torch threads {bench.threads}, physics {'on' if bench.physics else 'off'}")
    rows = []
    for obj, kind in objects:
        calibration = min(calibration_seconds(threads=bench.threads) for _ in range(2))
        physics = {}
        if bench.physics:
            started = time.perf_counter()
            convex_pieces(obj)
            physics["decompose_s"] = time.perf_counter() - started
        started = time.perf_counter()
        grasps = vae.sample(obj, n=bench.samples, seed=bench.seed, refine=True, resolution=bench.resolution,
                            physics=bench.physics)
        seconds = time.perf_counter() - started
        stages = grasps[0].metrics["batch_timing"]
        if bench.physics:
            physics["physics_per_grasp_s"] = stages["physics_s"] / bench.samples
            physics["physics_ratio"] = physics["physics_per_grasp_s"] / calibration
        row = {"object": kind, "seconds": seconds, "calibration_s": calibration, "ratio": seconds / calibration,
               **{name: round(value, 4) for name, value in stages.items()}, **physics}
        rows.append(row)
        checked = (f"; physics {physics['physics_per_grasp_s']:.3f} s per grasp, ratio {physics['physics_ratio']:.3f},"
                   f" decomposition {physics['decompose_s']:.2f} s once" if bench.physics else "")
        print(f"{kind:10s} {seconds:6.2f} s  ratio {row['ratio']:.3f}  (sampling + refinement {stages['sample_s']:.2f} s, "
              f"meshes {stages['mesh_s']:.2f} s, metrics {stages['metrics_s']:.2f} s{checked}; "
              f"calibration {calibration:.3f} s)", flush=True)
    median = statistics.median(row["ratio"] for row in rows)
    goal = "" if bench.physics else " (goal <= 1.0, aim 0.25)"  # the latency goal is stated without physics
    print(f"median ratio {median:.3f} over {len(rows)} objects{goal}")
    summary = {"samples": bench.samples, "resolution": bench.resolution, "median_ratio": median, "rows": rows}
    if bench.physics:
        summary["median_physics_per_grasp_s"] = statistics.median(row["physics_per_grasp_s"] for row in rows)
        summary["median_physics_ratio"] = statistics.median(row["physics_ratio"] for row in rows)
        print(f"physics check: median {summary['median_physics_per_grasp_s']:.3f} s per grasp, "
              f"ratio {summary['median_physics_ratio']:.3f} of the calibration workload")
    if bench.json_path:
        bench.json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return 0
