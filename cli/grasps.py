"""``halo grasps OBJECT -n 10 -o out/``: sampled hand grasps of an object file, as meshes and a JSON summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import models
from cli.files import read_object
from cli.options import add_grasp_model


def run_grasps(args: argparse.Namespace) -> int:
    """Hand meshes grasp_XX.<format> and grasps.json (keypoints, metrics) in the output folder."""
    obj = read_object(Path(args.object))
    base = models.load_base(args.base_checkpoint, device=args.device)
    vae = models.load_vae(args.checkpoint, base=base, device=args.device)
    grasps = vae.sample(obj, n=args.n, seed=args.seed, refine=not args.no_refine, resolution=args.resolution,
                        physics=args.physics, rank=args.rank)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index, grasp in enumerate(grasps):
        name = f"grasp_{index:02d}.{args.format}"
        grasp.mesh.export(out / name)
        records.append({"mesh": name, "keypoints": np.round(grasp.keypoints, 6).tolist(), "metrics": grasp.metrics})
    summary = {"object": Path(args.object).name, "n": len(grasps), "seed": args.seed,
               "refined": not args.no_refine, "physics": args.physics or args.rank == "stability", "rank": args.rank,
               "units": "metres, object frame, mano joint order",
               "vae": vae.card.get("name"), "base": vae.base.card.get("name"), "grasps": records}
    (out / "grasps.json").write_text(json.dumps(summary, indent=2) + "\n")
    touching = sum(g.metrics["contact"] for g in grasps)
    stable = f", {sum(g.metrics['stable'] for g in grasps)} stable" if "stable" in grasps[0].metrics else ""
    print(f"{out}: {len(grasps)} grasps, {touching} in contact{stable}, "
          f"mean penetration {np.mean([g.metrics['penetration_volume_cm3'] for g in grasps]):.2f} cm3")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``grasps``."""
    parser = commands.add_parser("grasps", help="object mesh -> sampled hand grasps (meshes + metrics JSON)")
    parser.add_argument("object", help="object mesh in metres: .obj, .ply, .stl or .glb")
    parser.add_argument("-n", type=int, default=10, help="number of grasps (1-64)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--format", default="ply", choices=("ply", "obj", "glb", "stl"))
    parser.add_argument("--no-refine", action="store_true", help="skip the occupancy-based refinement")
    parser.add_argument("--physics", action="store_true",
                        help="check each grasp in MuJoCo (object under gravity along 6 directions; adds sim_* and stable)")
    parser.add_argument("--rank", default="none", choices=models.grasps.RANK_NAMES,
                        help="stability: return the most stable of twice as many samples (implies --physics)")
    add_grasp_model(parser)
    parser.set_defaults(func=run_grasps)
