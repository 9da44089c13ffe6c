"""Small mesh measurements shared by tests, evaluation and grasp metrics."""

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


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """(N,3), (M,3) point sets -> symmetric Chamfer distance (mean of both nearest-neighbour means), same units."""
    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())
