"""``halo train calibrate``: the chosen validation level is folded into the output biases exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli.main import main
from models.api import SHIPPED_BASE, load_base
from models.train import calibrate
from models.weights import card_path


def test_calibration_moves_the_surface_to_the_best_validation_level(rigged_hand, monkeypatch):
    if not SHIPPED_BASE.is_file():
        pytest.skip("the shipped base checkpoint is not present")
    base = load_base()
    keypoints = np.asarray(
        json.loads((SHIPPED_BASE.parent.parent / "assets" / "sample_keypoints.json").read_text())["keypoints"]
    )
    points = np.random.default_rng(0).uniform(-0.12, 0.12, (20_000, 3)) + keypoints.mean(0)
    before = base.occupancy(keypoints, points)
    monkeypatch.setattr(calibrate, "LEVELS", np.array([0.4, 0.5, 0.6, 0.7]))
    record = calibrate.calibrate(base, rigged_hand, poses=2, seed=0)
    after = base.occupancy(keypoints, points)
    assert record["level"] in (0.4, 0.5, 0.6, 0.7) and record["split"] == "val"
    assert record["val_volumetric_iou_at_level"] >= record["val_volumetric_iou_at_0.5"]
    assert record["logit_offset"] == pytest.approx(np.log(record["level"] / (1 - record["level"])), abs=1e-6)
    # The max over parts commutes with the shift: the new 0.5 surface is the old surface at the chosen level.
    decided = np.abs(before - record["level"]) > 1e-4
    assert np.array_equal((after >= 0.5)[decided], (before >= record["level"])[decided])


def test_calibrate_command_rewrites_a_copy_and_refuses_to_shift_twice(rigged_hand, tmp_path, monkeypatch):
    if not SHIPPED_BASE.is_file():
        pytest.skip("the shipped base checkpoint is not present")
    copy = tmp_path / "base.safetensors"
    copy.write_bytes(SHIPPED_BASE.read_bytes())
    card = json.loads(card_path(SHIPPED_BASE).read_text())
    card.pop("calibration", None)
    card_path(copy).write_text(json.dumps(card))
    monkeypatch.setattr(calibrate, "LEVELS", np.array([0.45, 0.5, 0.55]))
    monkeypatch.setattr(calibrate.RiggedHand, "from_gltf", lambda path: rigged_hand)
    command = ["train", "calibrate", "--checkpoint", str(copy), "--poses", "2", "--seed", "0", "--hand-asset", str(copy)]
    assert main(command) == 0
    written = json.loads(card_path(copy).read_text())
    assert written["calibration"]["poses"] == 2 and "metrics" not in written
    shifted = load_base(copy).decoder.output_bias
    original = load_base(SHIPPED_BASE).decoder.output_bias
    assert torch.allclose(
        original - shifted, torch.full_like(shifted, written["calibration"]["logit_offset"]), atol=1e-5
    )
    with pytest.raises(SystemExit, match="already calibrated"):
        main(command)
