"""Small mesh measurements shared by the grasp model, its metrics, data synthesis, evaluation and tests:
inside / outside, surface and signed distances, Chamfer distance."""

from __future__ import annotations

import igl
import numpy as np
import trimesh
from scipy.spatial import cKDTree


def inside_mesh(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points (mesh frame) -> (N,) bool: generalised winding number >= 0.5, robust to small defects."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    winding = igl.fast_winding_number(
        np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        np.ascontiguousarray(mesh.faces, dtype=np.int64),
        np.ascontiguousarray(points, dtype=np.float64),
    )
    return winding >= 0.5


def signed_volume(mesh: trimesh.Trimesh) -> float:
    """Volume enclosed by a closed mesh, m3 if metres: negative when it faces inwards (no warning for flat ones)."""
    corners = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    return float(np.einsum("fi,fi->f", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6)


def closed_bodies(mesh: trimesh.Trimesh) -> list[trimesh.Trimesh] | None:
    """The mesh's connected bodies if each is closed, consistently wound and faces outwards, else None."""
    bodies = mesh.split(only_watertight=False, repair=False)
    if all(body.is_watertight and body.is_winding_consistent and signed_volume(body) > 0 for body in bodies):
        return list(bodies)
    return None


def inside_solid(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points (mesh frame) -> (N,) bool, the same answer as ``inside_mesh``, cheaper for closed bodies.

    When every body of the mesh is closed and faces outwards (a mug's body and handle, even where they
    overlap), the winding number is 1 inside any body and 0 outside all, so the crossing parity of
    each body answers it: 3-7x faster on the voxel grids of the grasp metrics. Anything else (open or
    inside-out pieces) gets the winding number itself.
    """
    bodies = closed_bodies(mesh) if len(points) else None
    if bodies is None:
        return inside_mesh(mesh, points)
    inside = np.zeros(len(points), dtype=bool)
    for body in bodies:
        inside |= inside_closed_mesh(body, points)
    return inside


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """(N,3), (M,3) point sets -> symmetric Chamfer distance (mean of both nearest-neighbour means), same units."""
    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def _xy_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(...,2), (...,2) -> (...,) z component of the cross product."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _column_crossings(mesh: trimesh.Trimesh, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C,2) xy positions -> (column, height) of every crossing of the vertical line there with a face.

    A line through an edge or a vertex crosses exactly one of the faces that share it: edge functions
    are computed from each edge's lower-numbered vertex (so the two faces of an edge get exactly
    opposite values) and ties go by the rasteriser's top-left rule.
    """
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    a, b, c = (vertices[faces[:, corner], :2] for corner in range(3))
    low, high = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    twice_area = _xy_cross(b - a, c - a)
    # Faces parallel to the lines and faces beside every column are never crossed.
    useful = (twice_area != 0) & (high >= columns.min(0)).all(1) & (low <= columns.max(0)).all(1)
    faces, twice_area, low, high = faces[useful], twice_area[useful], low[useful], high[useful]
    if len(faces) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    # Pair faces with the columns in the square bins their boxes touch (bins of about one face's size).
    side = max(float(np.median(high - low)), 1e-12)
    origin = low.min(0)
    bins = np.floor((high.max(0) - origin) / side).astype(np.int64) + 1
    column_bin = np.floor((columns - origin) / side).astype(np.int64)
    column_key = np.where(((column_bin >= 0) & (column_bin < bins)).all(1), column_bin[:, 0] * bins[1] + column_bin[:, 1], -1)
    order = np.argsort(column_key, kind="stable")
    sorted_keys = column_key[order]
    first_bin = np.floor((low - origin) / side).astype(np.int64)
    spans = np.floor((high - origin) / side).astype(np.int64) - first_bin + 1  # (F,2)
    per_face = spans[:, 0] * spans[:, 1]
    face = np.repeat(np.arange(len(faces)), per_face)
    rank = np.arange(len(face)) - np.repeat(np.cumsum(per_face) - per_face, per_face)
    face_key = (first_bin[face, 0] + rank // spans[face, 1]) * bins[1] + first_bin[face, 1] + rank % spans[face, 1]
    start = np.searchsorted(sorted_keys, face_key)
    count = np.searchsorted(sorted_keys, face_key, side="right") - start
    pair_face = np.repeat(face, count)
    pair_column = order[np.repeat(start, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)]
    # Edge functions: positive inside the face, one per edge, the edge opposite each corner.
    first, second = faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]
    forward = first < second
    edge_origin = vertices[np.where(forward, first, second), :2]  # (F,3,2)
    sign = np.where(forward, 1.0, -1.0) * np.sign(twice_area)[:, None]
    run = sign[..., None] * (vertices[np.where(forward, second, first), :2] - edge_origin)  # anticlockwise
    top_left = (run[..., 1] < 0) | ((run[..., 1] == 0) & (run[..., 0] < 0))  # (F,3)
    weights = _xy_cross(run[pair_face], columns[pair_column][:, None] - edge_origin[pair_face])  # (P,3)
    weights = np.where(weights == 0, np.where(top_left[pair_face], 0.0, -1.0), weights)
    crossed = (weights >= 0).all(1)
    pair_face, pair_column, weights = pair_face[crossed], pair_column[crossed], weights[crossed]
    # Barycentric weights (times twice the area) give the height of the crossing.
    height = (weights * vertices[faces[pair_face], 2]).sum(1) / np.abs(twice_area[pair_face])
    return pair_column, height


def inside_closed_mesh(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points -> (N,) bool inside a closed mesh, by the parity of its surface crossings above each point.

    Needs no per-mesh precomputation (unlike the winding number), and points that share a vertical
    line (voxel centres) share the work, so it is the cheaper test for a few thousand grid points of
    each of many meshes. Where a line crosses the surface an odd number of times the mesh is not
    closed there, and the winding number answers instead.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    # Complex numbers sort by x, then y: a fast unique over the points' (x, y).
    keys, point_column = np.unique(points[:, 0] + 1j * points[:, 1], return_inverse=True)
    columns = np.column_stack([keys.real, keys.imag])
    column, height = _column_crossings(mesh, columns)
    if (np.bincount(column, minlength=len(columns)) % 2).any():
        return inside_mesh(mesh, points)
    order = np.argsort(column, kind="stable")
    column, height = column[order], height[order]
    start = np.searchsorted(column, np.arange(len(columns)))
    count = np.searchsorted(column, np.arange(len(columns)), side="right") - start
    # Each point against every crossing on its line: a few each.
    per_point = count[point_column]
    owner = np.repeat(np.arange(len(points)), per_point)
    crossing = np.repeat(start[point_column], per_point) + np.arange(per_point.sum()) - np.repeat(
        np.cumsum(per_point) - per_point, per_point)
    above = np.bincount(owner, weights=height[crossing] > points[owner, 2], minlength=len(points))
    return (above.astype(np.int64) % 2).astype(bool)


def closest_points(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points, metres -> (N,3) nearest point of the surface of ``mesh`` to each, metres."""
    _, _, nearest = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, dtype=np.float64),
        np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64),
    )
    return nearest


def surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points, metres -> (N,) unsigned distance to the surface of ``mesh``, metres."""
    return np.linalg.norm(closest_points(mesh, points) - np.asarray(points, dtype=np.float64), axis=1)


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray, on_grid: bool = False) -> np.ndarray:
    """(N,3) points, metres -> (N,) distance to the surface of ``mesh``, negative inside (winding number).

    ``on_grid``: the points share vertical lines (a grid's), so the inside test goes by crossing parity
    (``inside_solid``); scattered points (a mesh's vertices) are cheaper by the winding number itself."""
    inside = inside_solid(mesh, points) if on_grid else inside_mesh(mesh, points)
    return np.where(inside, -1.0, 1.0) * surface_distance(mesh, points)
