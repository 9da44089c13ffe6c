"""``halo mesh``, ``halo occupancy`` and ``halo convert-checkpoint``: the base model on files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import models
from cli.files import read_array
from cli.options import add_hand_model, add_resolution
from models.occupancy import load_decoder, save_decoder
from models.smoothing import DEFAULT_SMOOTH_ITERATIONS

MESH_FORMATS = (".ply", ".obj", ".glb", ".stl", ".off")


def run_mesh(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix not in MESH_FORMATS:
        raise ValueError(f"--output: unknown mesh format {output.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    keypoints = read_array(Path(args.keypoints), "keypoints")
    base = models.load_base(args.checkpoint, device=args.device)
    meshes = base.mesh(
        keypoints, joint_order=args.joint_order, hand=args.hand, resolution=args.resolution, smooth=args.smooth
    )
    meshes = meshes if isinstance(meshes, list) else [meshes]
    output.parent.mkdir(parents=True, exist_ok=True)
    for index, mesh in enumerate(meshes):
        target = output if len(meshes) == 1 else output.with_stem(f"{output.stem}_{index:03d}")
        mesh.export(target)
        print(
            f"{target}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
            f"watertight={mesh.is_watertight}, volume={mesh.volume * 1e6:.1f} cm3"
        )
    return 0


def run_occupancy(args: argparse.Namespace) -> int:
    keypoints = read_array(Path(args.keypoints), "keypoints")
    points = read_array(Path(args.points), "points")
    base = models.load_base(args.checkpoint, device=args.device)
    values = base.occupancy(keypoints, points, joint_order=args.joint_order, hand=args.hand)
    if args.output:
        output = Path(args.output)
        if output.suffix == ".npy":
            np.save(output, values)
        else:
            output.write_text(json.dumps({"occupancy": values.tolist()}))
        print(f"{output}: {len(values)} values, {int((values > 0.5).sum())} inside")
    else:
        json.dump({"occupancy": values.tolist()}, sys.stdout)
        print()
    return 0


def run_convert(args: argparse.Namespace) -> int:
    decoder, card = load_decoder(args.source)
    card = save_decoder(
        decoder,
        args.output,
        {
            "name": Path(args.output).stem,
            "source": card["source"],
            "source_sha256": card["sha256"],
            "licence": "that of the source checkpoint (the published HALO weights are for non-commercial research)",
        },
    )
    print(f"{args.output}: sha256 {card['sha256']}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``mesh``, ``occupancy`` and ``convert-checkpoint``."""
    mesh = commands.add_parser("mesh", help="keypoints -> watertight hand mesh file(s)")
    add_hand_model(mesh)
    add_resolution(mesh)
    mesh.add_argument("-o", "--output", required=True, help="hand.ply / .obj / .glb (B hands: hand_000.ply, ...)")
    mesh.add_argument(
        "--smooth", type=int, default=DEFAULT_SMOOTH_ITERATIONS,
        help=f"Taubin smoothing iterations, volume kept (default {DEFAULT_SMOOTH_ITERATIONS}); 0 = the original "
        "HALO surface (parity mode)",
    )
    mesh.set_defaults(func=run_mesh)

    occupancy = commands.add_parser("occupancy", help="keypoints + query points -> occupancy probabilities")
    add_hand_model(occupancy)
    occupancy.add_argument("--points", required=True, help="(N,3) points, metres, keypoint frame: .json or .npy")
    occupancy.add_argument("-o", "--output", help=".npy or .json (default: JSON on stdout)")
    occupancy.set_defaults(func=run_occupancy)

    convert = commands.add_parser("convert-checkpoint", help="published HALO model_best.pt -> our safetensors + card")
    convert.add_argument("source", help="the published model_best.pt")
    convert.add_argument("-o", "--output", required=True, help="target .safetensors (the card is written beside it)")
    convert.set_defaults(func=run_convert)
