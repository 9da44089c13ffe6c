"""Smooth surfaces: Taubin smoothing keeps the volume and removes the grid ridges; normals reach PLY and GLB."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import models
from models.canonical import canonicalize
from models.meshing import extract_meshes
from models.smoothing import mesh_volume, taubin_smooth, vertex_normals
from service.codecs import meshes_to_file

SAMPLE = Path(__file__).resolve().parent.parent / "models" / "assets" / "sample_keypoints.json"


@pytest.fixture(scope="module")
def base(base_checkpoint):
    return models.load_base(base_checkpoint)


@pytest.fixture(scope="module")
def hand() -> np.ndarray:
    return np.asarray(json.loads(SAMPLE.read_text())["keypoints"], dtype=np.float64)


def test_taubin_removes_noise_from_a_sphere_and_keeps_its_volume():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    noisy = sphere.vertices * (1 + 0.02 * np.random.default_rng(0).standard_normal(len(sphere.vertices)))[:, None]
    smoothed = taubin_smooth(noisy, sphere.faces, iterations=10)
    assert np.linalg.norm(smoothed, axis=1).std() < 0.5 * np.linalg.norm(noisy, axis=1).std()
    assert mesh_volume(smoothed, sphere.faces) == pytest.approx(mesh_volume(noisy, sphere.faces), rel=1e-3)
    assert taubin_smooth(noisy, sphere.faces, iterations=0) is noisy


def test_normals_are_unit_and_point_outwards():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    normals = vertex_normals(sphere.vertices, sphere.faces)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    assert (np.einsum("ij,ij->i", normals, sphere.vertices / 2.0) > 0.99).all()


@pytest.mark.parametrize("resolution", [64, 128])
def test_smoothed_hand_keeps_volume_and_loses_its_ridges(base, hand, resolution):
    raw = base.mesh(hand, resolution=resolution, smooth=0)
    smooth = base.mesh(hand, resolution=resolution, smooth=10)
    assert smooth.is_watertight and np.array_equal(smooth.faces, raw.faces)
    assert smooth.volume == pytest.approx(raw.volume, rel=1e-3)
    # Ridges one cell apart show as bends between neighbouring faces; the real creases (between fingers,
    # at the knuckles) stay, so the mean angle drops by a fifth to a quarter (0.82x at 64, 0.73x at 128).
    assert smooth.face_adjacency_angles.mean() < 0.9 * raw.face_adjacency_angles.mean()
    step = 1.1 / resolution * 0.4  # grid step, metres
    assert np.linalg.norm(smooth.vertices - raw.vertices, axis=1).max() < step


def test_parity_mode_is_the_unsmoothed_extraction(base, hand):
    mesh = base.mesh(hand, resolution=64, smooth=0)
    ((vertices, faces),) = extract_meshes(base.decoder, canonicalize(torch.from_numpy(hand[None])), 64)
    assert np.array_equal(mesh.vertices, vertices) and np.array_equal(mesh.faces, faces)


def test_smooth_must_be_a_whole_number_of_iterations(base, hand):
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="smooth"):
            base.mesh(hand, resolution=64, smooth=bad)


@pytest.mark.parametrize("fmt", ["ply", "glb"])
def test_exported_files_carry_the_vertex_normals(base, hand, fmt):
    mesh = base.mesh(hand, resolution=64, smooth=10)
    loaded = trimesh.load(io.BytesIO(meshes_to_file([mesh], fmt)), file_type=fmt, process=False)
    if isinstance(loaded, trimesh.Scene):  # a GLB holds a scene with one hand
        (loaded,) = loaded.geometry.values()
    assert len(loaded.vertices) == len(mesh.vertices)
    expected = vertex_normals(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    np.testing.assert_allclose(loaded.vertex_normals, expected, atol=1e-5)
    # The exporters write what the mesh holds, not normals trimesh would recompute.
    assert "vertex_normals" in mesh._cache


def test_cli_mesh_smooths_by_default_and_keeps_parity_on_request(base_checkpoint, hand, tmp_path):
    keypoints = tmp_path / "hand.npy"
    np.save(keypoints, hand)
    outputs = {}
    for name, extra in (("default", []), ("parity", ["--smooth", "0"])):
        outputs[name] = tmp_path / f"{name}.ply"
        subprocess.run(
            [sys.executable, "-m", "cli", "mesh", "--keypoints", str(keypoints), "--checkpoint",
             str(base_checkpoint), "--resolution", "64", "-o", str(outputs[name]), *extra],
            capture_output=True, text=True, check=True,
        )
    default, parity = (trimesh.load(outputs[name], process=False) for name in ("default", "parity"))
    assert b"nx" in outputs["default"].read_bytes()[:400]
    assert default.volume == pytest.approx(parity.volume, rel=1e-3)
    assert default.face_adjacency_angles.mean() < 0.9 * parity.face_adjacency_angles.mean()
