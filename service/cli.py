"""The ``halo`` command: mesh, occupancy, convert-checkpoint, bench, serve, train, eval, grasps."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from service.codecs import read_array

MESH_FORMATS = (".ply", ".obj", ".glb", ".stl", ".off")


def _mesh(args: argparse.Namespace) -> int:
    import models
    from models.smoothing import DEFAULT_SMOOTH_ITERATIONS

    output = Path(args.output)
    if output.suffix not in MESH_FORMATS:
        raise ValueError(f"--output: unknown mesh format {output.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    keypoints = read_array(Path(args.keypoints), "keypoints")
    base = models.load_base(args.checkpoint, device=args.device)
    meshes = base.mesh(
        keypoints, joint_order=args.joint_order, hand=args.hand, resolution=args.resolution,
        smooth=DEFAULT_SMOOTH_ITERATIONS if args.smooth is None else args.smooth,
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


def _occupancy(args: argparse.Namespace) -> int:
    import models

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


def _convert(args: argparse.Namespace) -> int:
    from models.occupancy import load_decoder, save_decoder

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


def _bench_mesh(args: argparse.Namespace) -> int:
    from service.bench_mesh import run_mesh_benchmark

    return run_mesh_benchmark(args)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keypoints", required=True, help="(21,3) or (B,21,3) keypoints, metres: .json or .npy")
    parser.add_argument(
        "--checkpoint", default=None, help="base checkpoint (.safetensors or the published HALO model_best.pt)"
    )
    parser.add_argument("--joint-order", default="mano", help="mano (= mediapipe, openpose), biomech or halo")
    parser.add_argument("--hand", default="right", choices=("right", "left"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halo", description="HALO hand meshes from keypoints, and grasps.")
    commands = parser.add_subparsers(dest="command", required=True)

    mesh = commands.add_parser("mesh", help="keypoints -> watertight hand mesh file(s)")
    _model_arguments(mesh)
    mesh.add_argument("--resolution", type=int, default=128, choices=(64, 128, 256, 512))
    mesh.add_argument("-o", "--output", required=True, help="hand.ply / .obj / .glb (B hands: hand_000.ply, ...)")
    mesh.add_argument(
        "--smooth", type=int, default=None,
        help="Taubin smoothing iterations, volume kept (default 10); 0 = the original HALO surface (parity mode)",
    )
    mesh.set_defaults(func=_mesh)

    occupancy = commands.add_parser("occupancy", help="keypoints + query points -> occupancy probabilities")
    _model_arguments(occupancy)
    occupancy.add_argument("--points", required=True, help="(N,3) points, metres, keypoint frame: .json or .npy")
    occupancy.add_argument("-o", "--output", help=".npy or .json (default: JSON on stdout)")
    occupancy.set_defaults(func=_occupancy)

    convert = commands.add_parser("convert-checkpoint", help="published HALO model_best.pt -> our safetensors + card")
    convert.add_argument("source", help="the published model_best.pt")
    convert.add_argument("-o", "--output", required=True, help="target .safetensors (the card is written beside it)")
    convert.set_defaults(func=_convert)

    bench = commands.add_parser("bench", help="benchmarks (speed, not tests)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    bench_mesh = bench_commands.add_parser("mesh", help="milliseconds per mesh, calibrated against a fixed workload")
    bench_mesh.add_argument("--checkpoint", default=None)
    bench_mesh.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    bench_mesh.add_argument("--keypoints", default=None, help="default: the reference keypoints, else the sample hand")
    bench_mesh.add_argument("--resolutions", default="128,512")
    bench_mesh.add_argument("--batches", default="1,8,32")
    bench_mesh.add_argument("--repeats", type=int, default=5)
    bench_mesh.add_argument(
        "--threads", type=int, default=2, help="torch threads for both the meshes and the calibration workload"
    )
    bench_mesh.add_argument("--json", help="also write the results to this JSON file")
    bench_mesh.set_defaults(func=_bench_mesh)
    from service.bench_grasps import add_bench_grasps_command

    add_bench_grasps_command(bench_commands)

    from models.grasps.commands import add_eval_vae_command, add_grasps_command
    from models.train import base as train_base
    from models.train import calibrate as train_calibrate
    from models.train import eval_base
    from models.train import vae as train_vae

    train = commands.add_parser("train", help="train models on synthetic data")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    train_base.add_parser(train_commands)
    train_calibrate.add_parser(train_commands)
    evaluate = commands.add_parser("eval", help="evaluate checkpoints")
    eval_commands = evaluate.add_subparsers(dest="eval_command", required=True)
    eval_base.add_parser(eval_commands)
    train_vae.add_parser(train_commands)
    add_eval_vae_command(eval_commands)
    add_grasps_command(commands)

    from service.commands import add_bench_serve_command, add_serve_commands

    add_serve_commands(commands)
    add_bench_serve_command(bench_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"halo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
