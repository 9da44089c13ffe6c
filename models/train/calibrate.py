"""``halo train calibrate``: choose a base checkpoint's decision level on validation hands and fold it in.

A decoder trained with BCE on noisy near-surface samples is not sharp everywhere: where it is unsure,
its 0.5 level set sits on the fat side (between fingers, around fingertips). Meshing and every user
read the surface at p = 0.5, so the checkpoint is shifted instead: with the level t that maximises the
mean volumetric IoU on held-out *validation* poses (never the test poses that ``halo eval base``
reports), every part's output bias drops by logit(t). The max over parts commutes with that shift,
so p' >= 0.5 exactly where p >= t.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..api import SHIPPED_BASE, HaloBase, load_base
from ..data.asset import fetch_hand_asset
from ..data.poses import sample_poses, split_rng
from ..data.rigged_hand import RiggedHand
from ..occupancy import save_decoder
from .eval_base import IOU_POINTS, iou, iou_samples

LEVELS = np.round(np.arange(0.30, 0.851, 0.025), 3)  # candidate decision levels


def volumetric_iou_by_level(base: HaloBase, hand: RiggedHand, poses: int, seed: int) -> np.ndarray:
    """Mean volumetric IoU over ``poses`` validation poses for each of ``LEVELS`` -> (len(LEVELS),)."""
    sampled = sample_poses(hand, poses, split_rng("val", seed))
    with torch.no_grad():
        posed = sampled.apply(hand)
    faces = hand.faces.numpy()
    scores = []
    for index in range(poses):
        truth = trimesh.Trimesh(posed.vertices[index].double().numpy(), faces, process=False)
        occupancy, inside = iou_samples(base, posed.keypoints[index].double().numpy(), truth, seed=index)
        occupancy, inside = occupancy[:IOU_POINTS], inside[:IOU_POINTS]
        scores.append([iou(occupancy >= level, inside) for level in LEVELS])
    return np.mean(scores, axis=0)


def calibrate(base: HaloBase, hand: RiggedHand, poses: int = 64, seed: int = 0) -> dict:
    """Shift ``base.decoder`` in place so that 0.5 is the best validation level; -> the calibration record."""
    scores = volumetric_iou_by_level(base, hand, poses, seed)
    best = int(np.argmax(scores))
    level = float(LEVELS[best])
    offset = math.log(level / (1.0 - level))
    with torch.no_grad():
        base.decoder.output_bias -= offset
    return {
        "split": "val",
        "poses": poses,
        "seed": seed,
        "level": level,
        "logit_offset": round(offset, 6),
        "val_volumetric_iou_at_0.5": round(float(scores[list(LEVELS).index(0.5)]), 4),
        "val_volumetric_iou_at_level": round(float(scores[best]), 4),
    }


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calibrate`` under the ``train`` sub-command group; the handler is ``args.func``."""
    parser = subparsers.add_parser("calibrate", help="fold the best validation decision level into a base checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_BASE, help="our .safetensors, rewritten in place")
    parser.add_argument("--poses", type=int, default=64, help="validation poses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hand-asset", type=Path, default=None, help="rigged hand glTF (default: WebXR generic hand)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the hand asset is downloaded")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point of ``halo train calibrate``."""
    base = load_base(args.checkpoint)
    if "calibration" in base.card:
        raise SystemExit(f"checkpoint: {args.checkpoint} is already calibrated ({base.card['calibration']})")
    hand = RiggedHand.from_gltf(args.hand_asset or fetch_hand_asset(args.cache_dir))
    record = calibrate(base, hand, args.poses, args.seed)
    record["command"] = f"halo train calibrate --checkpoint CHECKPOINT --poses {args.poses} --seed {args.seed}"
    # Metrics measured before the shift no longer describe these weights: ``halo eval base`` rewrites them.
    card = {
        key: value for key, value in base.card.items() if key not in ("sha256", "path", "device", "weights", "metrics")
    }
    save_decoder(base.decoder, args.checkpoint, {**card, "calibration": record})
    print(json.dumps(record))
    return 0
