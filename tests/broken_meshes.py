"""Broken object meshes of the kinds people export by accident (not a test module): each is (vertices, faces),
metres, and every one must get either grasps or a 4xx naming the object, never a 5xx."""

from __future__ import annotations

import numpy as np
import trimesh

from models.data.objects import open_scan


def _box(extents=(0.05, 0.07, 0.14)) -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box(extents=extents)
    return np.asarray(box.vertices, dtype=np.float64), np.asarray(box.faces, dtype=np.int64)


def _loose(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,3,3) corners -> a soup: every triangle with its own three vertices."""
    return triangles.reshape(-1, 3), np.arange(3 * len(triangles)).reshape(-1, 3)


def _sphere_soup(count: int, radius: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` small loose triangles on a sphere, randomly wound (a point-cloud export)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, 3))
    centres = radius * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    size = radius * 3.0 / np.sqrt(count)
    corners = centres[:, None] + rng.normal(scale=size, size=(count, 3, 3))
    return _loose(corners)


def degenerate_box() -> tuple[np.ndarray, np.ndarray]:
    """A box whose second half of faces uses a duplicate copy of the vertices, plus zero-area faces (a repeated
    vertex, three collinear points, one point three times)."""
    vertices, faces = _box()
    count = len(vertices)
    faces = np.concatenate([faces[:6], faces[6:] + count])
    vertices = np.concatenate([vertices, vertices, (vertices[0] + vertices[1])[None] / 2])
    extra = np.array([[0, 0, 1], [0, 1, 2 * count], [2, 2, 2]])
    return vertices, np.concatenate([faces, extra])


def zero_area_only() -> tuple[np.ndarray, np.ndarray]:
    """Every face has zero area: vertices on one line."""
    vertices = np.linspace([0.0, 0.0, 0.0], [0.1, 0.05, 0.0], 12)
    return vertices, np.array([[i, i + 1, i + 2] for i in range(10)])


def flat_pieces_on_a_box() -> tuple[np.ndarray, np.ndarray]:
    """A box with zero-volume pieces stuck on: a double-sided quad and a lone triangle."""
    vertices, faces = _box()
    quad = np.array([[0.0, 0.0, 0.07], [0.04, 0.0, 0.07], [0.04, 0.04, 0.07], [0.0, 0.04, 0.07]])
    lone = np.array([[0.03, -0.04, 0.0], [0.06, -0.04, 0.0], [0.03, -0.04, 0.03]])
    base = len(vertices)
    pieces = np.array([[0, 1, 2], [0, 2, 3], [0, 2, 1], [0, 3, 2], [4, 5, 6]]) + base
    return np.concatenate([vertices, quad, lone]), np.concatenate([faces, pieces])


def inside_out_box() -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = _box()
    return vertices, faces[:, ::-1].copy()


def open_box() -> tuple[np.ndarray, np.ndarray]:
    """A box with its top missing (two faces)."""
    vertices, faces = _box()
    top = np.flatnonzero(vertices[faces][:, :, 2].min(axis=1) > 0)
    return vertices, np.delete(faces, top, axis=0)


def duplicated_faces() -> tuple[np.ndarray, np.ndarray]:
    """Every face twice, once the other way round."""
    vertices, faces = _box()
    return vertices, np.concatenate([faces, faces[:, ::-1]])


def non_manifold_fins() -> tuple[np.ndarray, np.ndarray]:
    """A box with three extra triangles sharing one of its edges (fins)."""
    vertices, faces = _box()
    edge = faces[0, :2]
    tips = vertices[edge].mean(axis=0) + np.array([[0.03, 0.0, 0.0], [0.0, 0.03, 0.0], [-0.02, -0.02, 0.02]])
    base = len(vertices)
    fins = np.array([[edge[0], edge[1], base + i] for i in range(3)])
    return np.concatenate([vertices, tips]), np.concatenate([faces, fins])


def slivers() -> tuple[np.ndarray, np.ndarray]:
    """A tube made of needle-thin triangles (aspect ratio about 10,000)."""
    angles = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    ring = np.column_stack([0.03 * np.cos(angles), 0.03 * np.sin(angles), np.zeros_like(angles)])
    vertices = np.concatenate([ring, ring + np.array([0.0, 0.0, 0.1])])
    i = np.arange(2000)
    j = (i + 1) % 2000
    faces = np.concatenate([np.column_stack([i, j, i + 2000]), np.column_stack([j, j + 2000, i + 2000])])
    return vertices, faces


def soup_1k() -> tuple[np.ndarray, np.ndarray]:
    return _sphere_soup(1000, 0.04, seed=1)


def soup_100k() -> tuple[np.ndarray, np.ndarray]:
    return _sphere_soup(100_000, 0.04, seed=2)


def scan_200k() -> tuple[np.ndarray, np.ndarray]:
    """A noisy, open scan of a ball with 200,000 faces (the documented limit): a cap cut away, small holes."""
    scan = open_scan(200_000)
    return np.asarray(scan.vertices), np.asarray(scan.faces)


CASES = {
    "degenerate box": degenerate_box,
    "zero-area faces only": zero_area_only,
    "flat pieces on a box": flat_pieces_on_a_box,
    "inside-out box": inside_out_box,
    "open box": open_box,
    "duplicated faces": duplicated_faces,
    "non-manifold fins": non_manifold_fins,
    "needle-thin slivers": slivers,
    "1,000 loose triangles": soup_1k,
    "100,000 loose triangles": soup_100k,
    "200,000-face open scan": scan_200k,
}
LARGE = {"100,000 loose triangles", "200,000-face open scan"}  # too big for a JSON body: sent as files or over gRPC
