"""The field's grasp protocol (models/grasps/field_protocol.py): simulation, 1 mm penetration, HALO's diversity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh
from test_grasps_physics import FIST, SQUEEZE_M, inscribed_ball, posed

import models
from cli.main import main
from models.geometry import signed_distance
from models.grasps import field_protocol
from models.grasps.api import SHIPPED_VAE
from models.grasps.metrics import canonical_keypoints, penetration_volumes, surface_distance


@pytest.fixture(scope="module")
def vae():
    if not SHIPPED_VAE.is_file():
        pytest.skip("the shipped VAE checkpoint models/checkpoints/halo_vae.safetensors is absent")
    return models.load_vae(base=models.load_base())


@pytest.fixture(scope="module")
def fist_and_ball(vae):
    """(21,3) fist keypoints, its hand mesh, and a ball at the centre of the fist's cavity that the mesh
    squeezes by ``SQUEEZE_M``."""
    fist = posed(vae, FIST)
    centre, _ = inscribed_ball(vae.proxy.radii.double().numpy(), fist)
    hand = vae.base.mesh(fist[None], resolution=128)[0]
    ball = trimesh.creation.icosphere(subdivisions=3, radius=surface_distance(hand, centre[None])[0] + SQUEEZE_M)
    ball.apply_translation(centre)
    return fist, hand, ball


def test_a_ball_in_a_closed_fist_is_held_back_and_one_beside_it_falls(fist_and_ball) -> None:
    _, hand, ball = fist_and_ball
    directions = np.concatenate([np.eye(3), -np.eye(3)])
    held = np.concatenate([field_protocol.simulation_displacements([hand], ball, gravity=gravity)
                           for gravity in directions])
    # The pyramidal cone lets the 1 kg ball creep (PyBullet holds it: the module docstring), but the fist
    # holds it back in every direction and most in the best ones.
    assert held.max() < 0.8 * field_protocol.free_fall_cm() and held.mean() < 0.5 * field_protocol.free_fall_cm()
    assert np.sort(held)[:2].max() < 0.25 * field_protocol.free_fall_cm()


def test_a_ball_far_from_the_hand_falls_the_free_fall_distance_of_35_steps(fist_and_ball) -> None:
    _, hand, ball = fist_and_ball
    offset = np.array([0.0, 0.0, 0.2])
    far = hand.copy()
    far.apply_translation(offset)
    (moved,) = field_protocol.simulation_displacements([far], ball)
    fall_cm = field_protocol.GRAVITY_M_S2 * (35 / 240) ** 2 / 2 * 100  # continuous time: 10.4 cm
    assert moved == pytest.approx(field_protocol.free_fall_cm(), rel=0.01)
    assert moved == pytest.approx(fall_cm, rel=0.05)  # Euler steps fall n(n+1)/n^2 of it


def test_the_hand_is_a_skin_of_prisms_on_its_simplified_surface(fist_and_ball) -> None:
    _, hand, _ = fist_and_ball
    prisms = field_protocol.hand_prisms(hand)
    assert prisms.shape[1:] == (6, 3) and 0.9 * field_protocol.HAND_FACES <= len(prisms) <= field_protocol.HAND_FACES
    outer, inner = prisms[:, :3], prisms[:, 3:]
    # The outer triangles lie on the hand's surface (the simplification keeps it within millimetres)...
    distance = np.abs(signed_distance(hand, outer.reshape(-1, 3)))
    assert np.median(distance) < 0.001 and distance.max() < 0.006
    # ... and the inner ones the skin's thickness inward, inside the hand.
    thickness = np.linalg.norm(outer - inner, axis=-1)
    np.testing.assert_allclose(thickness, field_protocol.SKIN_THICKNESS_M, rtol=1e-6)
    assert (signed_distance(hand, inner.reshape(-1, 3)) < 0).mean() > 0.9
    volume = sum(trimesh.convex.convex_hull(prism).volume for prism in prisms)
    assert volume < 0.5 * hand.volume  # a skin, not a filled body


def test_penetration_of_a_known_overlap_on_1_mm_voxels_is_near_the_analytic_volume() -> None:
    radius = 0.02
    ball = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    block = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    block.apply_translation((0.05, 0.0, 0.0))  # the ball's centre on the block's face: half the ball inside
    (volume,) = penetration_volumes([ball], block, field_protocol.PENETRATION_VOXEL_M, math.inf)
    assert volume == pytest.approx(2 / 3 * math.pi * radius ** 3 * 1e6, rel=0.03)
    cube = trimesh.creation.box(extents=(0.03, 0.03, 0.03))
    shifted = cube.copy()
    shifted.apply_translation((0.015, 0.0, 0.0))
    (volume,) = penetration_volumes([cube], shifted, field_protocol.PENETRATION_VOXEL_M, math.inf)
    assert volume == pytest.approx(1.5 * 3 * 3, rel=0.03)


def test_diversity_of_identical_grasps_is_one_cluster_of_size_zero(fist_and_ball) -> None:
    fist, _, _ = fist_and_ball
    same = field_protocol.field_diversity(np.repeat(fist[None], 30, axis=0))
    assert same["entropy"] == 0.0 and same["cluster_size_cm"] == pytest.approx(0.0, abs=1e-9)
    # Moved and turned copies are the same grasp in the wrist frame.
    turn = trimesh.transformations.rotation_matrix(0.7, (1, 2, 3))[:3, :3]
    moved = np.stack([fist @ turn.T + shift for shift in np.linspace(0, 0.1, 30)[:, None] * np.ones(3)])
    canonical = canonical_keypoints(moved)
    np.testing.assert_allclose(canonical, np.repeat(canonical[:1], len(moved), axis=0), atol=1e-9)
    larger = fist[0] + (fist - fist[0]) * 1.3  # the same pose, 30 % larger: another cluster
    two = field_protocol.field_diversity(np.concatenate([np.repeat(fist[None], 10, 0), np.repeat(larger[None], 10, 0)]))
    assert two["entropy"] == pytest.approx(math.log(2))
    assert two["cluster_size_cm"] == pytest.approx(0.0, abs=1e-6)


def test_restitution_maps_to_the_damping_ratio_of_a_spring_that_bounces_back_as_much() -> None:
    assert field_protocol.restitution_damping_ratio(0.0) == 1.0  # the field's hand-object contact: 0.5 x 0
    assert field_protocol.combined_restitution() == 0.0 and field_protocol.combined_friction() == 9.0
    for restitution in (0.1, 0.5, 0.9):
        zeta = field_protocol.restitution_damping_ratio(restitution)
        assert math.exp(-zeta * math.pi / math.sqrt(1 - zeta ** 2)) == pytest.approx(restitution)
    with pytest.raises(ValueError, match=r"^restitution"):
        field_protocol.restitution_damping_ratio(1.0)


def test_eval_protocol_field_writes_its_table_into_the_card_beside_the_other_results(vae, tmp_path: Path) -> None:
    report, checkpoint = tmp_path / "field.json", tmp_path / "vae.safetensors"
    checkpoint.write_bytes(SHIPPED_VAE.read_bytes())
    card = json.loads(SHIPPED_VAE.with_suffix(".json").read_text())
    checkpoint.with_suffix(".json").write_text(json.dumps({**card, "evaluation": {"rows": ["kept"]}}))
    assert main(["eval", "vae", "--protocol", "field", "--objects", "1", "--samples", "3", "--resolution", "64",
                 "--checkpoint", str(checkpoint), "--json", str(report), "--write-card"]) == 0
    result = json.loads(report.read_text())
    assert result["protocol"] == "field" and [row["method"] for row in result["rows"]] == [
        "vae + refinement, served", "vae + refinement", "vae, raw samples"]
    for row in result["rows"]:
        assert row["grasps"] == 3 and 0 <= row["contact_ratio"] <= 1 and 0 <= row["stable_share"] <= 1
        assert 0 <= row["simulation_displacement_mean_cm"] <= field_protocol.free_fall_cm() + 1
        assert row["max_penetration_depth_cm"] >= 0 and row["penetration_volume_cm3"] >= 0
        assert 0 <= row["entropy"] <= math.log(3) + 1e-9
    evaluation = json.loads(checkpoint.with_suffix(".json").read_text())["evaluation"]
    assert evaluation == {"rows": ["kept"], "field_protocol": result}
