"""Grasp metrics on shapes with known answers, and object validation."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.geometry import closed_bodies, inside_closed_mesh, inside_mesh, inside_solid, signed_distance
from models.grasps.metrics import (
    _voxel_grid,
    cluster_diversity,
    grasp_metrics,
    grasp_metrics_many,
    mean_pairwise_distance,
    near_vertices,
    penetration_volume,
    penetration_volumes,
    summarize,
    vertex_extremes,
)
from models.grasps.object_input import (
    SHELL_DEPTH_M,
    ObjectError,
    bps_basis,
    object_points,
    shell_samples,
    validate_object,
)
from models.grasps.parallel import available_cores, thread_map


def box(size_cm: float, centre_cm: tuple[float, float, float], subdivisions: int = 3) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=[size_cm / 100] * 3)
    for _ in range(subdivisions):
        mesh = mesh.subdivide()
    mesh.apply_translation(np.array(centre_cm) / 100)
    return mesh


def test_overlapping_boxes_have_the_known_penetration() -> None:
    hand = box(4, (0, 0, 0))  # spans x -2..2 cm
    obj = box(8, (5, 0, 0))  # spans x 1..9 cm: overlap 1 x 4 x 4 cm
    assert penetration_volume(hand, obj) == pytest.approx(16.0, rel=0.1)
    metrics = grasp_metrics(hand, obj)
    assert metrics["max_penetration_depth_mm"] == pytest.approx(10.0, abs=0.5)
    assert metrics["contact"] is True


def test_contact_threshold_is_two_millimetres() -> None:
    obj = box(4, (0, 0, 0))
    near = grasp_metrics(box(2, (3.1, 0, 0)), obj)  # 1 mm gap
    far = grasp_metrics(box(2, (3.5, 0, 0)), obj)  # 5 mm gap
    assert near["contact"] and near["penetration_volume_cm3"] == 0.0
    assert near["hand_object_distance_mm"] == pytest.approx(1.0, abs=0.05)
    assert not far["contact"] and far["hand_object_distance_mm"] == pytest.approx(5.0, abs=0.05)
    summary = summarize([near, far])
    assert summary["contact_ratio"] == 0.5 and summary["grasps"] == 2


def test_parity_inside_test_agrees_with_the_winding_number() -> None:
    """Closed meshes: the same answers on a voxel lattice whose vertical lines pass exactly through the
    box's edges and corners (each must count one crossing) and at random points; an open mesh falls
    back to the winding number."""
    rng = np.random.default_rng(0)
    cube = box(4, (0, 0, 0), subdivisions=1)  # corners and edge midpoints at multiples of 1 cm
    lattice = np.stack(np.meshgrid(*[np.linspace(-0.03, 0.03, 13)] * 3, indexing="ij"), -1).reshape(-1, 3)
    lattice[:, 2] += 1e-4  # off the top and bottom faces
    lattice = lattice[~np.isclose(np.abs(lattice[:, :2]), 0.02).any(1)]  # not on the cube's sides
    ring = trimesh.creation.annulus(0.02, 0.035, 0.05)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.03)
    for mesh in (cube, ring, sphere):
        points = np.concatenate([lattice, rng.uniform(-0.04, 0.04, size=(2000, 3))])
        inside = inside_closed_mesh(mesh, points)
        np.testing.assert_array_equal(inside, inside_mesh(mesh, points))
        assert 0 < inside.sum() < len(points)
    open_box = box(4, (0, 0, 0), subdivisions=0)
    open_box.faces = open_box.faces[:-2]
    np.testing.assert_array_equal(inside_closed_mesh(open_box, lattice), inside_mesh(open_box, lattice))


def test_inside_solid_agrees_with_the_winding_number_on_overlapping_and_open_objects() -> None:
    """Two overlapping closed boxes (a mug's body and handle): parity per body, the same answers as the
    winding number, also where they overlap; an open or inside-out mesh is answered by the winding number."""
    rng = np.random.default_rng(1)
    body, handle = box(4, (0, 0, 0), subdivisions=1), box(2, (2, 0, 0), subdivisions=1)
    mug = trimesh.util.concatenate([body, handle])
    points = rng.uniform(-0.04, 0.04, size=(5000, 3))
    assert closed_bodies(mug) is not None and len(closed_bodies(mug)) == 2
    inside = inside_solid(mug, points)
    np.testing.assert_array_equal(inside, inside_mesh(mug, points))
    overlap = (np.abs(points - [0.02, 0.0, 0.0]) < 0.01).all(1) & (np.abs(points) < 0.02).all(1)
    assert overlap.any() and inside[overlap].all()  # inside both bodies: parity per body, not of their sum
    open_box = box(4, (0, 0, 0), subdivisions=0)
    open_box.faces = open_box.faces[:-2]
    inverted = box(4, (0, 0, 0), subdivisions=1)
    inverted.faces = inverted.faces[:, ::-1]
    for mesh in (open_box, inverted):
        assert closed_bodies(mesh) is None
        np.testing.assert_array_equal(inside_solid(mesh, points), inside_mesh(mesh, points))


def brute_force_metrics(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> tuple[float, float, float]:
    """Penetration volume (every voxel asked), deepest vertex and nearest vertex (every vertex asked)."""
    grid = _voxel_grid(hand, obj)
    volume = 0.0
    if grid is not None:
        low, voxel, counts = grid
        index = np.stack(np.meshgrid(*[np.arange(n) for n in counts], indexing="ij"), -1).reshape(-1, 3)
        voxels = low + (index + 0.5) * voxel
        volume = int((inside_mesh(hand, voxels) & inside_mesh(obj, voxels)).sum()) * voxel**3 * 1e6
    distance = signed_distance(obj, np.asarray(hand.vertices))
    depth = float(-distance.min()) if (distance < 0).any() else 0.0
    gap = 0.0 if (distance < 0).any() else float(distance.min())
    return volume, depth, gap


def test_screened_metrics_equal_asking_every_voxel_and_vertex() -> None:
    """The cell screening of penetration_volumes and vertex_extremes changes no value: a round "hand"
    (in the hollow, deep in the wall, touching, above the rim, far away) against a mug-like object."""
    obj = trimesh.util.concatenate([trimesh.creation.annulus(0.03, 0.04, 0.08), box(6, (0, 0, -5))])
    hands = []
    for centre in ((0.0, 0.0, 0.0), (0.045, 0.0, 0.0), (0.062, 0.0, 0.01), (0.0, 0.0, 0.063), (0.2, 0.0, 0.0)):
        hand = trimesh.creation.icosphere(subdivisions=3, radius=0.022)
        hand.apply_translation(centre)
        hands.append(hand)
    screened = np.column_stack([penetration_volumes(hands, obj), vertex_extremes(hands, obj)])
    expected = np.array([brute_force_metrics(hand, obj) for hand in hands])
    np.testing.assert_allclose(screened, expected, rtol=0, atol=1e-12)
    assert expected[1, 0] > 5.0 and expected[1, 1] > 0.004 and expected[4, 2] > 0.1  # the cases differ
    # Split over threads, in order: the same per-hand metrics as in one thread.
    assert grasp_metrics_many(hands, obj, workers=3) == grasp_metrics_many(hands, obj, workers=1)
    # near_vertices keeps every vertex within the distance, with its exact signed distance.
    for hand, (index, signed) in zip(hands, near_vertices(hands, obj, 0.005), strict=True):
        exact = signed_distance(obj, np.asarray(hand.vertices))
        assert set(np.flatnonzero(exact <= 0.005)) <= set(index)
        np.testing.assert_allclose(signed, exact[index], rtol=0, atol=1e-12)
    assert penetration_volumes([], obj) == vertex_extremes([], obj) == near_vertices([], obj, 0.005) == []
    assert grasp_metrics_many([], obj) == []


def test_diversity_counts_clusters_and_distances() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 21, 3)) * 0.1
    samples = np.repeat(centres, 5, axis=0) + rng.normal(size=(100, 21, 3)) * 1e-4
    diverse = cluster_diversity(samples)
    assert diverse["cluster_entropy"] == pytest.approx(np.log(20), abs=0.05)
    assert diverse["mean_cluster_size_cm"] < 0.05
    lopsided = cluster_diversity(np.concatenate([samples[:5].repeat(19, axis=0), samples[5:10]]))
    assert lopsided["cluster_entropy"] < diverse["cluster_entropy"]
    pair = np.zeros((2, 21, 3))
    pair[1, :, 0] = 0.01
    assert mean_pairwise_distance(pair) == pytest.approx(1.0)


def test_object_validation_names_the_field_and_the_units() -> None:
    with pytest.raises(ObjectError, match=r"^object: .*empty"):
        validate_object(trimesh.Trimesh())
    with pytest.raises(ObjectError, match=r"^object: .*centimetres"):
        validate_object(box(800, (0, 0, 0), subdivisions=0))
    bad = box(5, (0, 0, 0), subdivisions=0)
    bad.vertices[0, 0] = np.nan
    with pytest.raises(ObjectError, match=r"^object: .*NaN"):
        validate_object(bad)
    with pytest.raises(ObjectError, match=r"^object: expected a triangle mesh"):
        validate_object("mug.obj")
    assert issubclass(ObjectError, ValueError)
    open_box = box(5, (1, 0, 0), subdivisions=0)
    open_box.faces = open_box.faces[:-2]  # not watertight: still accepted
    assert len(validate_object(open_box).faces) == 10


def test_object_points_are_centred_and_inside() -> None:
    obj = box(6, (10, 0, 0))
    basis = bps_basis(64, 0.15)
    points = object_points(obj, basis, seed=0)
    np.testing.assert_allclose(points.centre, [0.1, 0, 0], atol=1e-9)
    assert np.abs(points.interior).max() <= 0.03 + 1e-9
    np.testing.assert_allclose(np.abs(points.surface).max(axis=1), 0.03, atol=1e-6)
    # BPS: distance of each basis point to the surface of a 6 cm cube at the origin.
    outside = np.clip(np.abs(basis) - 0.03, 0, None)
    far = np.linalg.norm(outside, axis=1) > 0
    np.testing.assert_allclose(points.bps[far], np.linalg.norm(outside, axis=1)[far], atol=1e-6)


def test_shell_points_lie_under_the_surface_at_their_depth() -> None:
    """Shell samples are inside, at most SHELL_DEPTH_M deep (mostly shallow) and carry their true depth."""
    points, depth = shell_samples(box(6, (0, 0, 0)), 300, np.random.default_rng(0))
    assert points.shape == (300, 3) and depth.shape == (300,)
    assert np.abs(points).max() < 0.03
    np.testing.assert_allclose(depth, 0.03 - np.abs(points).max(axis=1), atol=1e-6)
    assert depth.max() <= SHELL_DEPTH_M + 1e-6 and np.median(depth) < SHELL_DEPTH_M / 2


def test_shell_of_an_object_without_inside_is_its_surface() -> None:
    square = trimesh.Trimesh(vertices=[[0, 0, 0], [0.05, 0, 0], [0.05, 0.05, 0], [0, 0.05, 0]], faces=[[0, 1, 2], [0, 2, 3]])
    points, depth = shell_samples(square, 50, np.random.default_rng(0))
    assert np.abs(points[:, 2]).max() < 1e-12 and (depth == 0).all()


def test_available_cores_follow_a_container_cpu_quota(tmp_path) -> None:
    """The thread fan-out of metrics and physics uses no more threads than a cgroup CPU limit allows."""
    cpu_max = tmp_path / "cpu.max"
    unlimited = available_cores(tmp_path / "missing")
    assert unlimited >= 1
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == unlimited
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two threads can use them
    assert available_cores(cpu_max) == min(unlimited, 2)
    cpu_max.write_text("50000 100000\n")
    assert available_cores(cpu_max) == 1
    assert thread_map(lambda x: x * x, [3, 1, 2], workers=2) == [9, 1, 4]
