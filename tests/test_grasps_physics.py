"""The physics check (models/grasps/physics.py): held, dropped and caught objects on the real hand proxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import models
from models.data.objects import make_object, split_indices
from models.grasps import collision, hand_object, physics
from models.grasps.api import SHIPPED_VAE
from models.grasps.contained import ContainedPool
from models.grasps.hand_proxy import HandProxy
from models.grasps.object_input import object_grids
from models.hand_pose import DOF_NAMES, neutral_angles

FIST = {"mcp_flexion": 40.0, "pip_flexion": 70.0, "dip_flexion": 40.0, "thumb_cmc_flexion": 50.0,
        "thumb_cmc_rotation": 40.0, "thumb_mcp_flexion": 40.0, "thumb_ip_flexion": 40.0}
SQUEEZE_M = 0.0015  # the ball is this much larger than the fist's inscribed ball


@pytest.fixture(scope="module")
def vae():
    if not SHIPPED_VAE.is_file():
        pytest.skip("the shipped VAE checkpoint models/checkpoints/halo_vae.safetensors is absent")
    return models.load_vae(base=models.load_base())


def posed(vae, flexion: dict[str, float]) -> np.ndarray:
    """Angles by name suffix (degrees; others neutral) -> (21,3) mano keypoints of the VAE's skeleton, metres."""
    angles = neutral_angles(1)
    for column, name in enumerate(DOF_NAMES):
        for suffix, value in flexion.items():
            if name.endswith(suffix):
                angles[0, column] = value
    with torch.no_grad():
        keypoints = vae.skeleton.to("cpu").keypoints(angles, torch.eye(3)[None], torch.zeros(1, 3))
    return keypoints[0].double().numpy()


def inscribed_ball(radii: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, float]:
    """(C,) radii, (21,3) keypoints -> centre (3,) and radius of the largest ball in the fist's cavity (gradient ascent)."""
    proxy = HandProxy(torch.as_tensor(radii))
    hand = torch.as_tensor(keypoints)[None]
    palm = keypoints[[0, 5, 9, 13, 17]].mean(0)
    centre = torch.tensor(palm + 0.03 * physics.palm_normal(keypoints), requires_grad=True)
    optimiser = torch.optim.SGD([centre], lr=1e-3)
    for _ in range(300):
        distance = proxy.signed_distance(hand, centre[None, None])[0, 0]
        optimiser.zero_grad()
        (-distance).backward()
        optimiser.step()
    return centre.detach().numpy(), float(distance.detach())


@pytest.fixture(scope="module")
def fist_and_ball(vae):
    radii = vae.proxy.radii.double().numpy()
    fist = posed(vae, FIST)
    centre, radius = inscribed_ball(radii, fist)
    assert 0.008 < radius < 0.03, "the fist holds a ball of a few centimetres"
    ball = trimesh.creation.icosphere(subdivisions=3, radius=radius + SQUEEZE_M)
    ball.apply_translation(centre)
    return radii, fist, ball


def test_a_ball_inside_a_closed_fist_does_not_fall(fist_and_ball) -> None:
    radii, fist, ball = fist_and_ball
    (result,) = physics.check_grasps(fist[None], radii, ball)
    assert result.stable and result.held == 6
    assert result.worst_cm < 0.5
    assert result.metrics()["stable"] is True


def test_the_same_ball_with_the_hand_moved_away_falls_like_a_free_body(fist_and_ball) -> None:
    radii, fist, ball = fist_and_ball
    offset = np.array([0.15, 0.0, 0.0])
    (result,) = physics.check_grasps((fist + offset)[None], radii, ball)
    assert not result.stable and result.held == 0
    away = physics.AXIS_DIRECTIONS @ offset <= 0  # gravity along +x pulls the ball into the hand
    np.testing.assert_allclose(result.displacement_cm[away], physics.free_fall_cm(), rtol=0.02)
    assert result.settle_cm == 0.0


def test_a_palm_facing_up_catches_an_object_dropped_onto_it(vae) -> None:
    radii = vae.proxy.radii.double().numpy()
    hand = posed(vae, {})
    normal = physics.palm_normal(hand)
    palm = hand[[0, 5, 9, 13, 17]].mean(0)
    drop_m, side_m = 0.02, 0.03
    cube = trimesh.creation.box(extents=(side_m,) * 3)
    cube.apply_translation(palm + normal * (float(radii.max()) + side_m / 2 + drop_m))
    (caught,) = physics.check_grasps(hand[None], radii, cube, directions=-normal[None])
    (dropped,) = physics.check_grasps(hand[None], radii, cube, directions=normal[None])
    # It fell onto the palm and stayed on the hand (without a contact margin it slides about 3 cm over the
    # rounded capsules before it rests), far from the free fall of the other side.
    assert drop_m * 100 * 0.5 < caught.worst_cm < drop_m * 100 + side_m * 100
    assert dropped.worst_cm == pytest.approx(physics.free_fall_cm(), rel=0.02)  # the back of the hand holds nothing


def test_grasps_of_the_model_are_deterministic_for_a_fixed_seed(vae) -> None:
    obj, _ = make_object(split_indices("test", 1)[0])
    first = vae.sample(obj, n=2, seed=5, refine=False, resolution=64, physics=True)
    again = vae.sample(obj, n=2, seed=5, refine=False, resolution=64, physics=True)
    for one, two in zip(first, again, strict=True):
        assert {"sim_displacement_cm", "sim_displacement_worst_cm", "sim_directions_held", "stable"} <= set(one.metrics)
        assert one.metrics["sim_displacement_cm"] == two.metrics["sim_displacement_cm"]
        assert one.metrics["sim_displacement_worst_cm"] == two.metrics["sim_displacement_worst_cm"]
    # One worker process for all grasps or one per core: the same simulation.
    keypoints = np.stack([grasp.keypoints for grasp in first])
    radii = vae.proxy.radii.numpy()
    single = ContainedPool(workers=1)
    try:
        serial = physics.check_grasps(keypoints, radii, obj, pool=single)
    finally:
        single.close()
    shared = physics.check_grasps(keypoints, radii, obj)
    for one, two in zip(serial, shared, strict=True):
        assert one.failure is None
        np.testing.assert_array_equal(one.displacement_cm, two.displacement_cm)


def test_a_mug_is_made_of_convex_pieces_and_a_box_is_its_hull() -> None:
    mug = next(make_object(index)[0] for index in split_indices("test", 20) if make_object(index)[1] == "mug")
    pieces = collision.convex_pieces(mug)
    assert 3 <= len(pieces) <= collision.MAX_PIECES + 1
    volume = sum(trimesh.convex.convex_hull(piece).volume for piece in pieces)
    # The pieces cover the mug and little more: at most 16 voxel groups over-cover a handle by about 15 %.
    assert volume == pytest.approx(abs(mug.volume), rel=0.2)
    assert collision.convex_pieces(mug) is pieces  # cached
    box = trimesh.creation.box(extents=(0.05, 0.04, 0.03))
    (hull,) = collision.convex_pieces(box)
    assert len(hull) == 8


def test_bad_inputs_are_refused_naming_the_field(fist_and_ball) -> None:
    radii, fist, ball = fist_and_ball
    with pytest.raises(physics.PhysicsError, match=r"^keypoints"):
        physics.check_grasps(fist[:20][None], radii, ball)
    with pytest.raises(physics.PhysicsError, match=r"^radii"):
        physics.check_grasps(fist[None], -radii, ball)
    with pytest.raises(physics.PhysicsError, match=r"^directions"):
        physics.check_grasps(fist[None], radii, ball, directions=np.zeros((1, 3)))
    with pytest.raises(physics.PhysicsError, match=r"^density"):
        physics.check_grasps(fist[None], radii, ball, density=0.0)
    flat = trimesh.Trimesh([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0.1, 0.1, 0]], [[0, 1, 2], [1, 3, 2]])
    with pytest.raises(physics.PhysicsError, match=r"^object: .*flat"):
        physics.check_grasps(fist[None], radii, flat)


def test_rank_stability_returns_the_most_stable_of_twice_as_many_samples(vae) -> None:
    obj, _ = make_object(split_indices("test", 2)[1])
    everything = vae.sample(obj, n=4, seed=2, refine=False, resolution=64, physics=True)
    ranked = vae.sample(obj, n=2, seed=2, refine=False, resolution=64, rank="stability")
    key = lambda grasp: (grasp.metrics["sim_displacement_worst_cm"], grasp.metrics["sim_displacement_cm"])  # noqa: E731
    assert [key(grasp) for grasp in ranked] == sorted(key(grasp) for grasp in everything)[:2]
    plain = vae.sample(obj, n=1, seed=2, refine=False, resolution=64)
    assert "stable" not in plain[0].metrics  # off by default
    with pytest.raises(ValueError, match=r"^rank"):
        vae.sample(obj, n=1, rank="best")


def test_opposition_is_zero_for_contacts_on_opposite_sides_and_one_for_one_side() -> None:
    sides = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0]], [[0, 0, 1.0], [0, 0, 1.0]]])
    weights = torch.ones(2, 2)
    torch.testing.assert_close(hand_object.opposition(sides, weights), torch.tensor([0.0, 1.0]))
    # Nothing touching is as bad as touching from one side.
    assert float(hand_object.opposition(sides, torch.zeros(2, 2))[0]) == 1.0


def test_the_hold_score_prefers_a_fist_around_a_ball_to_a_palm_under_a_cube(fist_and_ball, vae) -> None:
    radii, fist, ball = fist_and_ball
    hand = posed(vae, {})
    palm = hand[[0, 5, 9, 13, 17]].mean(0)
    cube = trimesh.creation.box(extents=(0.03,) * 3)
    cube.apply_translation(palm + physics.palm_normal(hand) * (float(radii.max()) + 0.015))  # resting on the palm
    scores = [float(hand_object.hold_score(torch.as_tensor(keypoints, dtype=torch.float32)[None], vae.proxy,
                                           object_grids([mesh], 40, 0.03)))
              for keypoints, mesh in ((fist, ball), (hand, cube))]
    assert scores[0] < 0.2 < 0.4 < scores[1], scores


def test_the_hold_score_charges_the_deepest_capsule_only_when_it_is_inside(fist_and_ball, vae) -> None:
    _, fist, ball = fist_and_ball
    grids = object_grids([ball], 40, 0.03)
    keypoints = torch.as_tensor(fist, dtype=torch.float32)[None]
    pushed_in = keypoints + torch.as_tensor(ball.centroid - fist.mean(0), dtype=torch.float32) * 0.3
    lifted = keypoints + torch.tensor([0.0, 0.0, 0.3])  # 30 cm away: nothing touches, nothing is inside
    charge = lambda hands: (hand_object.hold_score(hands, vae.proxy, grids, depth_weight_per_mm=0.1)  # noqa: E731
                            - hand_object.hold_score(hands, vae.proxy, grids))
    deepest_mm = lambda hands: float(-hand_object.proxy_gaps(hands, vae.proxy, grids).min()) * 1e3  # noqa: E731
    assert float(charge(lifted)) == 0.0
    assert deepest_mm(pushed_in) > deepest_mm(keypoints)
    assert float(charge(pushed_in)) == pytest.approx(0.1 * deepest_mm(pushed_in), rel=1e-4)
    assert float(charge(pushed_in)) > float(charge(keypoints)) >= 0.0
