"""Command-line entries for grasps (``halo grasps``, ``halo eval vae``; ``halo train vae`` is in train.vae).

They only register argparse sub-commands and call the library; the ``halo`` program wires them in.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trimesh

if TYPE_CHECKING:
    from .api import HaloVAE

OBJECT_FORMATS = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")
PREVIEW_OBJECTS, PREVIEW_GRASPS = 3, 4  # halo eval vae --preview: test objects, refined grasps each


def _load_models(args: argparse.Namespace):
    from ..api import load_base
    from .api import load_vae

    base = load_base(args.base_checkpoint, device=args.device)
    return load_vae(args.checkpoint, base=base, device=args.device)


def read_object(path: Path) -> trimesh.Trimesh:
    """An object mesh file (.obj/.ply/.stl/.glb/...) -> one triangle mesh (scenes are merged)."""
    from .object_input import ObjectError

    if path.suffix.lower() not in OBJECT_FORMATS:
        raise ObjectError(f"object: unknown mesh format {path.suffix!r}; use one of {', '.join(OBJECT_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"object: no such file {path}")
    return trimesh.load(str(path), force="mesh", process=False)


def read_keypoints(path: Path) -> np.ndarray:
    """(T,21,3) right-hand mano keypoints from .npy, .json or .pkl (a pickle is code: trusted files only)."""
    import pickle

    if path.suffix == ".pkl":
        with path.open("rb") as handle:
            array = np.asarray(pickle.load(handle), dtype=np.float64)
    elif path.suffix == ".json":
        array = np.asarray(json.loads(path.read_text()), dtype=np.float64)
    else:
        array = np.load(path).astype(np.float64)
    if array.ndim != 3 or array.shape[1:] != (21, 3):
        raise ValueError(f"real-keypoints: expected (T,21,3) keypoints, got shape {list(array.shape)}")
    return array


def run_grasps(args: argparse.Namespace) -> int:
    """``halo grasps OBJECT -n 10 -o out/``: hand meshes grasp_XX.ply and grasps.json (keypoints, metrics)."""
    obj = read_object(Path(args.object))
    vae = _load_models(args)
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


def run_eval(args: argparse.Namespace) -> int:
    """``halo eval vae``: metrics table on test objects (refined, raw, synthesis data)."""
    from ..data.objects import split_indices
    from ..train.vae import load_grasp_data
    from ..weights import card_path, update_card
    from .api import SHIPPED_VAE
    from .evaluate import evaluate_vae, format_table
    from .hand_object import RefineConfig

    vae = _load_models(args)
    data_keypoints: dict[int, np.ndarray] = {}
    indices = split_indices("test", args.objects)
    if args.data:
        test = load_grasp_data(Path(args.data)).subset("test")
        indices = [int(i) for i in test.object_index[: args.objects]]
        for row, index in enumerate(test.object_index):
            data_keypoints[int(index)] = test.keypoints[test.owner == row].numpy()
    if args.protocol == "field":
        return _report_field(args, vae, indices, data_keypoints)
    real = read_keypoints(Path(args.real_keypoints)) if args.real_keypoints else None
    result = evaluate_vae(vae, indices, args.samples, args.resolution, data_keypoints, args.seed, real, args.physics)
    result["vae"] = {"name": vae.card.get("name"), "sha256": vae.card.get("sha256")}
    result["base"] = {"name": vae.base.card.get("name"), "sha256": vae.base.card.get("sha256")}
    result["object_indices"] = indices
    result["refinement"] = asdict(RefineConfig())
    result["eval_command"] = (f"halo eval vae{' --data DATA' if args.data else ''} --objects {args.objects}"
                              f" --samples {args.samples} --resolution {args.resolution} --seed {args.seed}"
                              f"{' --real-keypoints KEYPOINTS' if args.real_keypoints else ''}"
                              f"{'' if args.physics else ' --no-physics'}")
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.write_card:
        checkpoint = args.checkpoint or SHIPPED_VAE
        field = json.loads(card_path(checkpoint).read_text()).get("evaluation", {}).get("field_protocol")
        update_card(checkpoint, evaluation={**result, **({"field_protocol": field} if field else {})})
    if args.preview:
        write_preview(vae, indices[:PREVIEW_OBJECTS], args.preview, args.resolution, args.seed)
    return 0


def _report_field(args: argparse.Namespace, vae: HaloVAE, indices: list[int],
                  data_keypoints: dict[int, np.ndarray]) -> int:
    """``halo eval vae --protocol field``: the field's table, stored under ``evaluation.field_protocol`` in the card."""
    from ..weights import card_path, update_card
    from .api import SHIPPED_VAE
    from .evaluate import evaluate_vae_field, format_field_table

    result = evaluate_vae_field(vae, indices, args.samples, args.resolution, data_keypoints, args.seed, args.raw)
    result["vae"] = {"name": vae.card.get("name"), "sha256": vae.card.get("sha256")}
    result["object_indices"] = indices
    result["eval_command"] = (f"halo eval vae --protocol field{' --data DATA' if args.data else ''} --objects "
                              f"{args.objects} --samples {args.samples} --resolution {args.resolution} --seed {args.seed}"
                              f"{'' if args.raw else ' --no-raw'}")
    print(format_field_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.write_card:
        checkpoint = args.checkpoint or SHIPPED_VAE
        evaluation = json.loads(card_path(checkpoint).read_text()).get("evaluation", {})
        update_card(checkpoint, evaluation={**evaluation, "field_protocol": result})
    return 0


def write_preview(vae: HaloVAE, object_indices: list[int], path: str, resolution: int, seed: int) -> None:
    """PNG of ``PREVIEW_GRASPS`` refined grasps on each of the given test objects."""
    from ..data.objects import make_object
    from .preview import render_grasps

    rows = []
    for index in object_indices:
        obj, kind = make_object(index)
        grasps = vae.sample(obj, n=PREVIEW_GRASPS, seed=seed, refine=True, resolution=resolution)
        rows.append((f"test object {index} ({kind})", obj, [grasp.mesh for grasp in grasps]))
    render_grasps(rows, path, columns=PREVIEW_GRASPS)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="VAE .safetensors (default: the shipped one)")
    parser.add_argument("--base-checkpoint", default=None, help="base model (default: the shipped one)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--resolution", type=int, default=128, choices=(64, 128, 256, 512))
    parser.add_argument("--seed", type=int, default=0)


def add_grasps_command(commands: argparse._SubParsersAction) -> None:
    """Register ``grasps`` on the ``halo`` sub-command parser."""
    parser = commands.add_parser("grasps", help="object mesh -> sampled hand grasps (meshes + metrics JSON)")
    parser.add_argument("object", help="object mesh in metres: .obj, .ply, .stl or .glb")
    parser.add_argument("-n", type=int, default=10, help="number of grasps (1-64)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--format", default="ply", choices=("ply", "obj", "glb", "stl"))
    parser.add_argument("--no-refine", action="store_true", help="skip the occupancy-based refinement")
    parser.add_argument("--physics", action="store_true",
                        help="check each grasp in MuJoCo (object under gravity along 6 directions; adds sim_* and stable)")
    parser.add_argument("--rank", default="none", choices=("none", "stability"),
                        help="stability: return the most stable of twice as many samples (implies --physics)")
    _model_arguments(parser)
    parser.set_defaults(func=run_grasps)


def add_eval_vae_command(eval_commands: argparse._SubParsersAction) -> None:
    """Register ``vae`` on the ``halo eval`` sub-command parser."""
    parser = eval_commands.add_parser("vae", help="grasp metrics on held-out test objects, with baselines")
    parser.add_argument("--data", default=None, help="grasp data folder (adds the synthesis-data baseline)")
    parser.add_argument("--protocol", default="default", choices=("default", "field"),
                        help="field: GraspTTA / HALO / GrabNet metrics (simulation displacement, 1 mm penetration, "
                        "HALO's diversity), stored under evaluation.field_protocol")
    parser.add_argument("--objects", type=int, default=10, help="number of test objects")
    parser.add_argument("--samples", type=int, default=20, help="grasps per object")
    parser.add_argument("--real-keypoints", default=None,
                        help="(T,21,3) real right-hand keypoints (.npy/.json/.pkl): a plausibility sanity row")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--write-card", action="store_true", help="store the results in the VAE's model card")
    parser.add_argument("--raw", action=argparse.BooleanOptionalAction, default=True,
                        help="--protocol field: also score the raw (unrefined) samples")
    parser.add_argument("--physics", action=argparse.BooleanOptionalAction, default=True,
                        help="MuJoCo physics check of every grasp: stable share, displacement, a ranked row")
    parser.add_argument("--preview", default=None, help=f"also render {PREVIEW_GRASPS} grasps on each of the first "
                        f"{PREVIEW_OBJECTS} test objects to this PNG")
    _model_arguments(parser)
    parser.set_defaults(func=run_eval)
