"""``halo train calibrate``: choose a base checkpoint's decision level on validation hands and fold it in.

A decoder trained with BCE on noisy near-surface samples is not sharp everywhere: where it is unsure,
its 0.5 level set sits on the fat side (between fingers, around fingertips). Meshing and every user
read the surface at p = 0.5, so the checkpoint is shifted instead: with the level t that maximises the
mean volumetric IoU on held-out *validation* poses (never the test poses that ``halo eval base``
reports), every part's output bias drops by logit(t). The max over parts commutes with that shift,
so p' >= 0.5 exactly where p >= t.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..api import HaloBase, load_base
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


def calibrate_checkpoint(checkpoint: Path, poses: int = 64, seed: int = 0, hand_asset: Path | None = None,
                         cache_dir: Path | None = None) -> dict:
    """Calibrate the base checkpoint at ``checkpoint`` in place on ``poses`` validation hands; -> the record."""
    base = load_base(checkpoint)
    if "calibration" in base.card:
        raise SystemExit(f"checkpoint: {checkpoint} is already calibrated ({base.card['calibration']})")
    hand = RiggedHand.from_gltf(hand_asset or fetch_hand_asset(cache_dir))
    record = calibrate(base, hand, poses, seed)
    record["command"] = f"halo train calibrate --checkpoint CHECKPOINT --poses {poses} --seed {seed}"
    # Metrics measured before the shift no longer describe these weights: ``halo eval base`` rewrites them.
    card = {
        key: value for key, value in base.card.items() if key not in ("sha256", "path", "device", "weights", "metrics")
    }
    save_decoder(base.decoder, checkpoint, {**card, "calibration": record})
    return record
