"""``halo bench grasps``: seconds per grasp request (sampling, refinement, meshes, metrics), calibrated.

Each timed request is ``vae.sample(object, n, refine=True)`` with meshes at ``resolution`` and the
metrics, on a held-out test object; it is preceded by the team's calibration workload (see
``bench_mesh``) and reported as ``ratio = request seconds / calibration seconds``. The median over the
objects is the figure the grasp-latency goal is stated in.

With ``--physics`` each request also runs the MuJoCo check (``models.grasps.physics``): the object's
convex decomposition is timed on its own first (once per object, then cached) and the check's seconds
per grasp are reported with their ratio to the calibration workload (``physics_ratio``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import models
from models.data.objects import make_object, split_indices
from models.grasps.collision import convex_pieces
from service.bench_mesh import calibration_seconds


def run_grasp_benchmark(args: argparse.Namespace) -> int:
    """Time ``args.objects`` grasp requests on test objects; print one line each and the median ratio."""
    torch.set_num_threads(args.threads)
    base = models.load_base(args.base_checkpoint, device="cpu")
    vae = models.load_vae(args.checkpoint, base=base, device="cpu")
    objects = [make_object(index) for index in split_indices("test", args.objects)]
    vae.sample(objects[0][0], n=2, seed=0, resolution=args.resolution)  # warm-up: steady-state latency is measured
    print(f"vae {vae.card.get('sha256', '')[:12]}, base {base.card.get('sha256', '')[:12]}, n={args.samples}, "
          f"resolution {args.resolution}, torch threads {args.threads}, physics {'on' if args.physics else 'off'}")
    rows = []
    for obj, kind in objects:
        calibration = min(calibration_seconds(threads=args.threads) for _ in range(2))
        physics = {}
        if args.physics:
            started = time.perf_counter()
            convex_pieces(obj)
            physics["decompose_s"] = time.perf_counter() - started
        started = time.perf_counter()
        grasps = vae.sample(obj, n=args.samples, seed=args.seed, refine=True, resolution=args.resolution,
                            physics=args.physics)
        seconds = time.perf_counter() - started
        stages = grasps[0].metrics["batch_timing"]
        if args.physics:
            physics["physics_per_grasp_s"] = stages["physics_s"] / args.samples
            physics["physics_ratio"] = physics["physics_per_grasp_s"] / calibration
        row = {"object": kind, "seconds": seconds, "calibration_s": calibration, "ratio": seconds / calibration,
               **{name: round(value, 4) for name, value in stages.items()}, **physics}
        rows.append(row)
        checked = (f"; physics {physics['physics_per_grasp_s']:.3f} s per grasp, ratio {physics['physics_ratio']:.3f},"
                   f" decomposition {physics['decompose_s']:.2f} s once" if args.physics else "")
        print(f"{kind:10s} {seconds:6.2f} s  ratio {row['ratio']:.3f}  (sampling + refinement {stages['sample_s']:.2f} s, "
              f"meshes {stages['mesh_s']:.2f} s, metrics {stages['metrics_s']:.2f} s{checked}; "
              f"calibration {calibration:.3f} s)", flush=True)
    median = statistics.median(row["ratio"] for row in rows)
    goal = "" if args.physics else " (goal <= 1.0, aim 0.25)"  # the latency goal is stated without physics
    print(f"median ratio {median:.3f} over {len(rows)} objects{goal}")
    summary = {"samples": args.samples, "resolution": args.resolution, "median_ratio": median, "rows": rows}
    if args.physics:
        summary["median_physics_per_grasp_s"] = statistics.median(row["physics_per_grasp_s"] for row in rows)
        summary["median_physics_ratio"] = statistics.median(row["physics_ratio"] for row in rows)
        print(f"physics check: median {summary['median_physics_per_grasp_s']:.3f} s per grasp, "
              f"ratio {summary['median_physics_ratio']:.3f} of the calibration workload")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def add_bench_grasps_command(bench_commands: argparse._SubParsersAction) -> None:
    """Register ``grasps`` on the ``halo bench`` sub-command parser."""
    parser = bench_commands.add_parser("grasps", help="seconds per grasp request, calibrated against a fixed workload")
    parser.add_argument("--checkpoint", default=None, help="VAE (default: the shipped one)")
    parser.add_argument("--base-checkpoint", default=None, help="base model (default: the shipped one)")
    parser.add_argument("--objects", type=int, default=5, help="held-out test objects, one request each")
    parser.add_argument("--samples", type=int, default=8, help="grasps per request")
    parser.add_argument("--resolution", type=int, default=128, choices=(64, 128, 256, 512))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the requests and the calibration")
    parser.add_argument("--physics", action="store_true", help="also run and time the MuJoCo physics check")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.set_defaults(func=run_grasp_benchmark)
