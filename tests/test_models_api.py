"""Public API behaviour: input validation, left hands, batching, joint orders, checkpoints, CLI."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

import models
from models import skeleton
from models.geometry import chamfer_distance, inside_mesh
from models.occupancy import load_decoder, save_decoder
from tests.conftest import PUBLISHED_BASE

SAMPLE = json.loads((models.api.CHECKPOINT_DIR.parent / "assets" / "sample_keypoints.json").read_text())
HAND = np.asarray(SAMPLE["keypoints"])


@pytest.fixture(scope="module")
def checkpoint():
    """The published HALO model (known quality) when present, else the shipped checkpoint."""
    return PUBLISHED_BASE if PUBLISHED_BASE.is_file() else models.api.SHIPPED_BASE


@pytest.fixture(scope="module")
def base(checkpoint):
    return models.load_base(checkpoint)


def with_joint(hand: np.ndarray, joint: int, value) -> np.ndarray:
    changed = hand.copy()
    changed[joint] = value
    return changed


BAD_INPUTS = {
    "wrong shape": (HAND[:20], "shape"),
    "flat list": (HAND.reshape(-1), "shape"),
    "NaN": (with_joint(HAND, 7, np.nan), "NaN"),
    "Inf": (with_joint(HAND, 3, np.inf), "infinite"),
    "coincident joints": (with_joint(HAND, 6, HAND[5]), "coincide"),
    "zero-length bone": (with_joint(HAND, 20, HAND[19]), "degenerate"),
    "millimetres": (HAND * 1000, "millimetres"),
    "centimetres": (HAND * 100, "centimetres"),
    "tiny": (HAND * 1e-3, "metres"),
    "not numbers": ([["a"] * 3] * 21, "numbers"),
    "empty batch": (np.zeros((0, 21, 3)), "shape"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_keypoints_give_specific_errors(case):
    keypoints, message = BAD_INPUTS[case]
    with pytest.raises(models.KeypointError, match=message) as error:
        models.validate_keypoints(keypoints)
    assert str(error.value).startswith("keypoints")


def test_collinear_palm_is_rejected():
    hand = HAND.copy()
    hand[5] = hand[9] * 0.9  # index MCP on the wrist -> middle MCP line
    hand[6:9] = hand[5] + (HAND[6:9] - HAND[5])
    with pytest.raises(models.KeypointError, match="collinear"):
        models.validate_keypoints(hand)


def test_error_names_the_hand_in_a_batch():
    batch = np.stack([HAND, HAND * 100])
    with pytest.raises(models.KeypointError, match=r"hand 1"):
        models.validate_keypoints(batch)


def test_unknown_joint_order_hand_and_resolution(base):
    with pytest.raises(ValueError, match="joint_order"):
        base.mesh(HAND, joint_order="smplx")
    with pytest.raises(ValueError, match="hand"):
        base.mesh(HAND, hand="middle")
    with pytest.raises(ValueError, match="resolution"):
        base.mesh(HAND, resolution=100)


def test_mesh_is_watertight_single_piece_and_holds_the_skeleton(base):
    mesh = base.mesh(HAND, resolution=128)
    assert isinstance(mesh, trimesh.Trimesh)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1
    inside = inside_mesh(mesh, HAND[skeleton.MANO_NON_TIPS])
    assert inside.mean() >= 0.9
    extent = np.ptp(mesh.vertices, axis=0).max()
    assert 0.12 < extent < 0.3  # metres: the mesh is in the keypoint frame and units


def test_left_hand_is_the_mirrored_right_hand(base):
    right = base.mesh(HAND)
    left = base.mesh(HAND @ skeleton.MIRROR, hand="left")
    assert left.is_watertight and left.volume > 0
    assert abs(left.volume - right.volume) < 1e-9
    assert chamfer_distance(left.vertices, right.vertices @ skeleton.MIRROR) <= 1e-4


def test_batch_with_mixed_hands_and_orders_equals_single_calls(base):
    second = HAND @ torch.linalg.matrix_exp(torch.tensor([[0, -0.3, 0], [0.3, 0, 0.1], [0, -0.1, 0]])).numpy().T
    batch = np.stack([HAND, skeleton.from_mano(second @ skeleton.MIRROR, "biomech")])
    meshes = base.mesh(batch, joint_order=["mano", "biomech"], hand=["right", "left"], resolution=64)
    assert isinstance(meshes, list) and len(meshes) == 2
    single = [base.mesh(HAND, resolution=64), base.mesh(second @ skeleton.MIRROR, hand="left", resolution=64)]
    for together, alone in zip(meshes, single, strict=True):
        np.testing.assert_allclose(np.sort(together.vertices, 0), np.sort(alone.vertices, 0), atol=1e-6)


def test_rigid_motion_moves_the_mesh_with_the_hand(base):
    rotation = torch.linalg.matrix_exp(torch.tensor([[0, -1.0, 0.4], [1.0, 0, -0.2], [-0.4, 0.2, 0]])).numpy()
    shift = np.array([0.3, -0.1, 0.5])
    moved = base.mesh(HAND @ rotation.T + shift, resolution=64)
    original = base.mesh(HAND, resolution=64)
    assert chamfer_distance(moved.vertices, original.vertices @ rotation.T + shift) <= 1e-4


def test_occupancy_is_high_inside_and_low_far_away(base):
    far = HAND.mean(0) + np.array([[0.3, 0, 0], [0, -0.3, 0], [0, 0, 0.25]])
    values = base.occupancy(HAND, np.concatenate([HAND[[0, 9, 10]] * 0.98 + HAND[9] * 0.02, far]))
    assert values.shape == (6,)
    assert (values[:3] > 0.5).all() and (values[3:] < 0.01).all()


def test_culling_does_not_change_the_mesh(base):
    culled = base.mesh(HAND, resolution=64)
    base.cull_radius = None
    try:
        full = base.mesh(HAND, resolution=64)
    finally:
        base.cull_radius = models.meshing.DEFAULT_CULL_RADIUS_M
    np.testing.assert_allclose(np.sort(culled.vertices, 0), np.sort(full.vertices, 0), atol=1e-9)


def test_safetensors_round_trip_gives_identical_outputs(base, tmp_path):
    card = save_decoder(base.decoder, tmp_path / "copy.safetensors", {"name": "copy"})
    decoder, loaded_card = load_decoder(tmp_path / "copy.safetensors")
    assert loaded_card["sha256"] == card["sha256"]
    copy = models.HaloBase(decoder, loaded_card, torch.device("cpu"))
    points = HAND + np.random.default_rng(0).normal(0, 0.01, HAND.shape)
    np.testing.assert_array_equal(copy.occupancy(HAND, points), base.occupancy(HAND, points))


class _Exploit:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickle_checkpoints_cannot_run_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_decoder(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        models.load_base(tmp_path / "nope.safetensors")


def test_cli_mesh_and_occupancy(checkpoint, tmp_path):
    keypoints = tmp_path / "hand.npy"
    np.save(keypoints, HAND @ skeleton.MIRROR)
    output = tmp_path / "hand.obj"
    command = [sys.executable, "-m", "cli", "mesh", "--keypoints", str(keypoints), "--hand", "left"]
    run = subprocess.run(
        [*command, "--checkpoint", str(checkpoint), "--resolution", "64", "-o", str(output)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "watertight=True" in run.stdout
    assert trimesh.load(output).is_watertight
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": (HAND @ skeleton.MIRROR)[:3].tolist()}))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "occupancy",
            "--keypoints",
            str(keypoints),
            "--hand",
            "left",
            "--points",
            str(points),
            "--checkpoint",
            str(checkpoint),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(json.loads(run.stdout)["occupancy"]) == 3


def test_cli_reports_bad_input_without_a_traceback(checkpoint, tmp_path):
    keypoints = tmp_path / "hand.json"
    keypoints.write_text(json.dumps((HAND * 1000).tolist()))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "mesh",
            "--keypoints",
            str(keypoints),
            "--checkpoint",
            str(checkpoint),
            "-o",
            str(tmp_path / "x.ply"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "millimetres" in run.stderr and "Traceback" not in run.stderr


def test_allocator_tuning_applies_on_glibc_and_yields_to_the_users_settings(monkeypatch):
    import platform

    from models.allocator import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only")
    assert keep_freed_memory() is True


def test_drop_specks_removes_tiny_closed_pieces_and_keeps_real_ones():
    from models.meshing import drop_specks

    hand = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    speck = trimesh.creation.icosphere(subdivisions=1, radius=0.002)  # 0.03 cm3 vs 524 cm3
    finger = trimesh.creation.icosphere(subdivisions=2, radius=0.012)  # 1.3 % of the big piece: a real piece
    speck.apply_translation([0.08, 0, 0])
    finger.apply_translation([0, 0.1, 0])
    joined = trimesh.util.concatenate([hand, speck, finger])
    vertices, faces, dropped = drop_specks(joined.vertices, joined.faces)
    cleaned = trimesh.Trimesh(vertices, faces, process=False)
    assert dropped == 1
    assert cleaned.body_count == 2 and cleaned.is_watertight
    assert len(faces) == len(hand.faces) + len(finger.faces)
    assert cleaned.volume == pytest.approx(hand.volume + finger.volume)
    one_piece = drop_specks(hand.vertices, hand.faces)
    assert one_piece[2] == 0 and np.array_equal(one_piece[1], hand.faces)
