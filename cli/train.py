"""``halo train base | calibrate | vae | grasp-data`` and ``halo eval base | vae``: flags -> the training modules'
configs."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import replace
from pathlib import Path

import torch

from cli.files import read_keypoint_sequence
from cli.options import add_grasp_model
from models.api import SHIPPED_BASE
from models.data import grasp_synthesis
from models.data.asset import default_cache_dir
from models.data.objects import SPLITS
from models.train import base, calibrate, eval_base, eval_vae, vae
from models.train.eval_vae import format_field_table, format_table


def run_train_base(args: argparse.Namespace) -> int:
    defaults = base.TrainConfig()
    uniform = max(1, args.points_per_hand // 6)
    config = replace(
        defaults,
        hands_per_step=args.hands_per_step,
        labels=replace(defaults.labels, uniform_points=uniform, surface_points=args.points_per_hand - uniform),
        learning_rate=args.lr,
        time_budget_s=args.time_budget * 60,
        max_steps=args.max_steps,
        seed=args.seed,
        checkpoint_every_s=args.checkpoint_every * 60,
    )
    # The options that change the trained weights, recorded in the model card.
    options = [f"--time-budget={args.time_budget:g}", f"--max-steps={args.max_steps}",
               f"--hands-per-step={args.hands_per_step}", f"--points-per-hand={args.points_per_hand}",
               f"--lr={args.lr:g}", f"--seed={args.seed}", *(["--init=INIT"] if args.init else [])]
    summary = base.run(base.BaseRun(
        config=config, run_dir=args.run_dir, out=args.out, hand_asset=args.hand_asset, cache_dir=args.cache_dir,
        init=args.init, threads=args.threads, progress=not args.no_progress,
        command=shlex.join(["halo", "train", "base", *options]),
    ))
    print(json.dumps(summary))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    print(json.dumps(calibrate.calibrate_checkpoint(args.checkpoint, args.poses, args.seed, args.hand_asset,
                                                    args.cache_dir)))
    return 0


def run_train_vae(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = vae.TrainConfig(steps=args.steps, batch=args.batch, learning_rate=args.learning_rate,
                             time_budget_min=args.time_budget, rotations=args.rotations)
    command = (f"halo train vae --data DATA --steps {args.steps} --batch {args.batch} --rotations {args.rotations}"
               f" --learning-rate {args.learning_rate} --time-budget {args.time_budget}"
               + (" --base-checkpoint BASE" if args.base_checkpoint else "") + (" --init VAE" if args.init else ""))
    card = vae.train_vae(args.data, args.run_dir, args.out, config, args.base_checkpoint,
                         checkpoint_every=args.checkpoint_every, command=command, init=args.init)
    print(json.dumps(card, indent=2))
    return 0


def run_grasp_data(args: argparse.Namespace) -> int:
    grasp_synthesis.synthesise_dataset(args.out, args.objects, args.per_object, args.batch_objects,
                                       grasp_synthesis.SynthesisConfig(steps=args.steps), args.hand_asset, args.seed,
                                       args.start, args.split)
    return 0


def run_eval_base(args: argparse.Namespace) -> int:
    fields = ("checkpoint", "poses", "seed", "resolution", "reference_dir", "hand_asset", "cache_dir", "write_card",
              "preview", "threads", "workers")
    metrics = eval_base.run(eval_base.EvalBaseConfig(**{name: getattr(args, name) for name in fields}))
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


def run_eval_vae(args: argparse.Namespace) -> int:
    real = read_keypoint_sequence(Path(args.real_keypoints)) if args.real_keypoints else None
    fields = ("checkpoint", "base_checkpoint", "device", "resolution", "seed", "objects", "samples", "physics",
              "write_card", "object_set", "protocol", "raw")
    result = eval_vae.run(eval_vae.EvalVAEConfig(
        **{name: getattr(args, name) for name in fields}, data=args.data and Path(args.data), real_keypoints=real,
        preview=args.preview and Path(args.preview),
    ))
    print(format_field_table(result) if args.protocol == "field" else format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _hand_asset_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hand-asset", type=Path, default=None, help="rigged hand glTF (default: fetch WebXR generic hand)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the hand asset is downloaded")


def _add_train_base(train: argparse._SubParsersAction) -> None:
    parser = train.add_parser("base", help="train the base occupancy model on synthetic hands")
    defaults = base.TrainConfig()
    parser.add_argument("--time-budget", type=float, default=defaults.time_budget_s / 60, help="minutes of training")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time budget only)")
    parser.add_argument("--hands-per-step", type=int, default=defaults.hands_per_step)
    parser.add_argument(
        "--points-per-hand",
        type=int,
        default=defaults.labels.uniform_points + defaults.labels.surface_points,
        help="query points per hand; 1/6 uniform in the box, the rest near the surface",
    )
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=float, default=defaults.checkpoint_every_s / 60, help="minutes")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/base"), help="resumable state, curve.png")
    parser.add_argument("--out", type=Path, default=base.DEFAULT_OUTPUT, help="exported .safetensors (+ .json card)")
    _hand_asset_flags(parser)
    parser.add_argument(
        "--init", type=Path, default=None, help="start from these base weights (fine-tuning) instead of random ones"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.set_defaults(func=run_train_base)


def _add_calibrate(train: argparse._SubParsersAction) -> None:
    parser = train.add_parser("calibrate", help="fold the best validation decision level into a base checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_BASE, help="our .safetensors, rewritten in place")
    parser.add_argument("--poses", type=int, default=64, help="validation poses")
    parser.add_argument("--seed", type=int, default=0)
    _hand_asset_flags(parser)
    parser.set_defaults(func=run_calibrate)


def _add_train_vae(train: argparse._SubParsersAction) -> None:
    parser = train.add_parser("vae", help="train the HALO-VAE on synthesised grasps")
    defaults = vae.TrainConfig()
    parser.add_argument("--data", type=Path, required=True, help="folder of shard_*.npz from grasp synthesis")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/vae"))
    parser.add_argument("--out", type=Path, default=Path("models/checkpoints/halo_vae.safetensors"))
    parser.add_argument("--base-checkpoint", type=Path, default=None,
                        help="frozen base model for the HALO loss terms (omit to train without them)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these VAE weights (fine-tuning) instead of a random initialisation")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--time-budget", type=float, default=0.0, help="minutes")
    parser.add_argument("--rotations", type=int, default=defaults.rotations,
                        help="rotated copies of each training object (augmentation)")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.set_defaults(func=run_train_vae)


def _add_grasp_data(train: argparse._SubParsersAction) -> None:
    parser = train.add_parser("grasp-data", help="synthesise the grasp data set that train vae reads (resumable)")
    parser.add_argument("--out", type=Path, default=default_cache_dir() / "grasps")
    parser.add_argument("--objects", type=int, default=1250)
    parser.add_argument("--per-object", type=int, default=32)
    parser.add_argument("--batch-objects", type=int, default=8)
    parser.add_argument("--steps", type=int, default=grasp_synthesis.SynthesisConfig.steps)
    parser.add_argument("--hand-asset", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first object (for a second worker)")
    parser.add_argument("--split", default="all", choices=("all", *SPLITS),
                        help="only this split's objects (test: the synthesis-data baseline of halo eval vae)")
    parser.set_defaults(func=run_grasp_data)


def _add_eval_base(evaluate: argparse._SubParsersAction) -> None:
    parser = evaluate.add_parser("base", help="evaluate a base checkpoint (synthetic held-out + real keypoints)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="base checkpoint (default: the shipped one)")
    parser.add_argument("--poses", type=int, default=200, help="held-out synthetic poses")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out (test split) poses")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--reference-dir", type=Path, default=eval_base.DEFAULT_REFERENCE_DIR,
                        help="HALO reference folder")
    _hand_asset_flags(parser)
    parser.add_argument("--write-card", action="store_true", help="store the metrics in the checkpoint's model card")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this file")
    parser.add_argument("--preview", type=Path, default=None, help="also render a PNG of a few meshes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: default)")
    parser.add_argument("--workers", type=int, default=2, help="processes (one thread each) for the synthetic poses")
    parser.set_defaults(func=run_eval_base)


def _add_eval_vae(evaluate: argparse._SubParsersAction) -> None:
    parser = evaluate.add_parser("vae", help="grasp metrics on held-out test objects, with baselines")
    parser.add_argument("--data", default=None, help="grasp data folder (adds the synthesis-data baseline)")
    parser.add_argument("--protocol", default="default", choices=("default", "field"),
                        help="field: GraspTTA / HALO / GrabNet metrics (simulation displacement, 1 mm penetration, "
                        "HALO's diversity), stored under field_protocol in the card's evaluation")
    parser.add_argument("--objects", type=int, default=10, help="number of test objects")
    parser.add_argument("--object-set", choices=("procedural", "real"), default="procedural",
                        help="procedural test objects, or every mesh of the real-object set (models/assets/objects)")
    parser.add_argument("--samples", type=int, default=20, help="grasps per object")
    parser.add_argument("--real-keypoints", default=None,
                        help="(T,21,3) real right-hand keypoints (.npy/.json/.pkl): a plausibility sanity row")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--write-card", action="store_true", help="store the results in the VAE's model card")
    parser.add_argument("--physics", action=argparse.BooleanOptionalAction, default=True,
                        help="MuJoCo physics check of every grasp: stable share, displacement, a ranked row")
    parser.add_argument("--raw", action=argparse.BooleanOptionalAction, default=True,
                        help="--protocol field: also score the raw (unrefined) samples")
    parser.add_argument("--preview", default=None, help=f"also render {eval_vae.PREVIEW_GRASPS} grasps on each of the "
                        f"first {eval_vae.PREVIEW_OBJECTS} test objects to this PNG")
    add_grasp_model(parser)
    parser.set_defaults(func=run_eval_vae)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``train`` (base, calibrate, vae, grasp-data) and ``eval`` (base, vae)."""
    train = commands.add_parser("train", help="train models on synthetic data").add_subparsers(
        dest="train_command", required=True)
    _add_train_base(train)
    _add_calibrate(train)
    evaluate = commands.add_parser("eval", help="evaluate checkpoints").add_subparsers(
        dest="eval_command", required=True)
    _add_eval_base(evaluate)
    _add_train_vae(train)
    _add_eval_vae(evaluate)
    _add_grasp_data(train)
