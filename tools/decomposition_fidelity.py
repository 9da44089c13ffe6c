"""What the fast convex pieces cost in fidelity: the physics check on the same grasps with voxel pieces vs CoACD.

``python -m tools.decomposition_fidelity [--samples 8] [--procedural 10] [--json out.json]`` draws refined
grasps (keypoints only) on every real object and on the non-convex procedural test objects among the
first ``--procedural``, and runs the physics check on each grasp twice: with the object cut into pieces
from its voxels (the default) and by CoACD (the slow path). It prints, per object set, the decomposition
seconds of each method, the stable share and mean displacement of each, and how often the two verdicts
agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import models
from models.data.objects import make_object, split_indices
from models.data.real_objects import load_real_objects
from models.grasps.collision import convex_pieces
from models.grasps.object_input import prepare_object
from models.grasps.physics import check_grasps

NON_CONVEX_KINDS = ("mug", "torus", "bottle", "compound")


def compare(vae: models.HaloVAE, objects: dict, samples: int, seed: int) -> dict:
    """Named objects -> per method: decomposition seconds, stable share, mean displacement; and agreement."""
    seconds = {"voxel": 0.0, "coacd": 0.0}
    verdicts = {"voxel": [], "coacd": []}
    displacement = {"voxel": [], "coacd": []}
    for index, obj in enumerate(objects.values()):
        prepared = prepare_object(obj)
        keypoints = vae.sample_keypoints(prepared, samples, seed + index, True)
        for method in seconds:
            started = time.perf_counter()
            convex_pieces(prepared, method)
            seconds[method] += time.perf_counter() - started
            results = check_grasps(keypoints, vae.proxy.radii.numpy(), prepared, method=method)
            verdicts[method] += [result.failure is None and result.stable for result in results]
            displacement[method] += [result.mean_cm for result in results]
    agree = np.mean(np.array(verdicts["voxel"]) == np.array(verdicts["coacd"]))
    return {
        "objects": len(objects), "grasps": len(verdicts["voxel"]), "verdict_agreement": float(agree),
        **{f"{method}_decomposition_s_per_object": seconds[method] / len(objects) for method in seconds},
        **{f"{method}_stable_share": float(np.mean(verdicts[method])) for method in verdicts},
        **{f"{method}_mean_displacement_cm": float(np.mean(displacement[method])) for method in displacement},
        **{f"{method}_median_displacement_cm": float(np.median(displacement[method])) for method in displacement},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="refined grasps per object")
    parser.add_argument("--procedural", type=int, default=20, help="procedural test objects to look through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    vae = models.load_vae(device="cpu")
    procedural = {f"{kind} {index}": obj for index in split_indices("test", args.procedural)
                  for obj, kind in [make_object(index)] if kind in NON_CONVEX_KINDS}
    result = {"real objects": compare(vae, load_real_objects(), args.samples, args.seed),
              "procedural, non-convex": compare(vae, procedural, args.samples, args.seed)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
