"""Object preparation (models/grasps/object_repair.py), convex pieces (collision.py) and contained calls
(contained.py): broken meshes become closed solids of the same shape, native failures stay in their worker."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import trimesh
from broken_meshes import degenerate_box, duplicated_faces, inside_out_box, open_box, scan_200k, zero_area_only

from models.data.real_objects import load_real_object
from models.grasps import collision, object_repair
from models.grasps.contained import ContainedPool, Failure
from models.grasps.object_input import ObjectError, prepare_object

BOX_VOLUME = 0.05 * 0.07 * 0.14


def _prepared(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    return prepare_object(trimesh.Trimesh(vertices, faces, process=False))


@pytest.mark.parametrize(("case", "path"), [(duplicated_faces, "repaired"), (inside_out_box, "as sent"),
                                            (open_box, "holes closed")])
def test_repairs_keep_the_shape_and_close_the_surface(case, path) -> None:
    mesh = _prepared(*case())
    assert mesh.metadata["preparation"].path == path
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(BOX_VOLUME, rel=1e-6)  # outward-facing: positive, and the same box


def test_duplicate_vertices_and_zero_area_faces_are_merged_and_dropped() -> None:
    vertices, faces = degenerate_box()
    mesh = _prepared(vertices, faces)
    preparation = mesh.metadata["preparation"]
    assert preparation.path == "repaired"
    assert preparation.merged_vertices >= 4 and preparation.dropped_faces == 3
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(BOX_VOLUME, rel=1e-6)


def test_a_soup_of_randomly_wound_triangles_becomes_a_solid_of_its_volume() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.04)
    corners = np.asarray(sphere.vertices)[np.asarray(sphere.faces)]
    flip = np.random.default_rng(0).random(len(corners)) < 0.5
    corners[flip] = corners[flip][:, ::-1]
    mesh = _prepared(corners.reshape(-1, 3), np.arange(3 * len(corners)).reshape(-1, 3))
    assert mesh.metadata["preparation"].path == "voxel proxy"
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.volume == pytest.approx(sphere.volume, rel=0.1)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.04).max() < 0.002  # within about a voxel


def test_a_large_open_scan_becomes_a_bounded_closed_proxy() -> None:
    vertices, faces = scan_200k()
    mesh = _prepared(vertices, faces)
    assert mesh.metadata["preparation"].faces_sent == 200_000
    assert mesh.is_watertight and len(mesh.faces) <= object_repair.PROXY_FACES
    # Its surface is the scan's: every proxy vertex lies within two voxels of the ball's radius or inside it.
    assert np.linalg.norm(mesh.vertices, axis=1).max() < 0.04 + 2 * 0.08 / object_repair.PROXY_GRID


def test_a_large_closed_mesh_is_simplified_keeping_its_shape() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=6, radius=0.05)  # 81,920 faces
    mesh = _prepared(np.asarray(sphere.vertices), np.asarray(sphere.faces))
    preparation = mesh.metadata["preparation"]
    assert preparation.path == "as sent" and preparation.faces_used == len(mesh.faces) <= object_repair.PROXY_FACES
    assert mesh.is_watertight and mesh.volume == pytest.approx(sphere.volume, rel=0.01)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.05).max() < 0.001


def test_real_open_meshes_are_closed_and_cached() -> None:
    for name in ("bottle", "can", "coffee_mug"):
        sent = load_real_object(name)
        mesh = prepare_object(sent)
        assert mesh.is_watertight and mesh.volume > 0, name
        assert prepare_object(sent.copy()) is mesh  # same content: the cached preparation


def test_a_mesh_with_no_area_is_refused_naming_the_object() -> None:
    with pytest.raises(ObjectError, match=r"^object: every face has zero area"):
        _prepared(*zero_area_only())


def test_a_torus_is_cut_into_convex_pieces_that_leave_its_hole_empty() -> None:
    torus = trimesh.creation.torus(major_radius=0.04, minor_radius=0.012)
    pieces = collision.convex_pieces(torus)
    assert 4 <= len(pieces) <= collision.MAX_PIECES
    hulls = [trimesh.convex.convex_hull(piece) for piece in pieces]
    assert not any(hull.contains([[0.0, 0.0, 0.0]])[0] for hull in hulls)
    assert sum(hull.volume for hull in hulls) == pytest.approx(torus.volume, rel=0.3)


def test_contained_calls_survive_a_crash_a_hang_and_an_exception() -> None:
    pool = ContainedPool(workers=1)
    try:
        assert pool.call(abs, -3, time_limit_s=30) == 3
        crashed = pool.call(os._exit, 7, time_limit_s=30)
        assert isinstance(crashed, Failure) and crashed.reason == "crashed"
        hung = pool.call(time.sleep, 30, time_limit_s=0.5)
        assert isinstance(hung, Failure) and hung.reason == "timed out"
        raised = pool.call(int, "x", time_limit_s=30)
        assert isinstance(raised, Failure) and raised.reason == "error" and "ValueError" in raised.detail
        assert pool.map(abs, [-1, -2], time_limit_s=30) == [1, 2]  # replaced workers answer again
    finally:
        pool.close()
