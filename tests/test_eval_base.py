"""``halo eval base``: metric helpers, a short synthetic evaluation, and the shipped card's figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from models.api import SHIPPED_BASE, load_base
from models.train.eval_base import evaluate_real, evaluate_synthetic, mesh_checks, surface_chamfer_mm
from models.weights import card_path, file_sha256


@pytest.fixture(scope="module")
def shipped_base():
    if not SHIPPED_BASE.is_file():
        pytest.skip("the shipped base checkpoint models/checkpoints/halo_base.safetensors is not present")
    return load_base()


def test_mesh_checks_on_a_box():
    box = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    keypoints = np.zeros((21, 3))
    keypoints[[4, 8, 12, 16, 20]] = 1.0  # tips are not counted
    keypoints[3] = 0.2  # one non-tip joint outside
    checks = mesh_checks(box, keypoints)
    assert checks["watertight_single"] == 1.0
    assert checks["non_tip_inside"] == pytest.approx(15 / 16)
    assert checks["volume_cm3"] == pytest.approx(1000.0)
    two_boxes = trimesh.util.concatenate([box, box.copy().apply_translation((1.0, 0, 0))])
    assert mesh_checks(two_boxes, keypoints)["watertight_single"] == 0.0
    assert mesh_checks(box, keypoints, specks=1)["watertight_single_before_specks"] == 0.0


def test_surface_chamfer_of_a_shifted_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.05)
    assert surface_chamfer_mm(sphere, sphere.copy(), seed=0) < 0.8  # sampling noise only
    shifted = sphere.copy().apply_translation((0.004, 0.0, 0.0))
    assert 1.0 < surface_chamfer_mm(sphere, shifted, seed=0) < 4.0


def test_real_evaluation_is_skipped_without_the_reference_folder(shipped_base, tmp_path):
    assert evaluate_real(shipped_base, tmp_path, resolution=64) is None


def test_shipped_model_meshes_held_out_synthetic_hands(shipped_base, rigged_hand):
    metrics = evaluate_synthetic(shipped_base, rigged_hand, count=2, seed=0, resolution=64)
    assert metrics["non_tip_inside_fraction"] == 1.0
    assert metrics["iou_volumetric_mean"] > 0.8
    assert 0.6 < metrics["iou_near_surface_mean"] < metrics["iou_volumetric_mean"]
    assert metrics["chamfer_mm_mean"] < 3.5


def test_shipped_card_matches_the_weights_and_records_the_run():
    if not SHIPPED_BASE.is_file():
        pytest.skip("the shipped base checkpoint is not present")
    card = json.loads(card_path(SHIPPED_BASE).read_text())
    assert card["sha256"] == file_sha256(SHIPPED_BASE)
    assert card["asset"]["license"] == "MIT" and card["training"]["steps"] > 0
    assert card["training"]["command"].startswith("halo train base")
    synthetic = card["metrics"]["synthetic"]
    assert synthetic["poses"] >= 200 and 0.0 < synthetic["iou_volumetric_mean"] <= 1.0
