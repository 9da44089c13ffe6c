"""Volume-preserving smoothing of extracted hand meshes, and per-vertex normals for smooth shading.

Marching cubes leaves ridges one grid cell apart on gently curved skin. Taubin's lambda|mu smoothing
(1995) removes them without the shrinkage of plain Laplacian smoothing: each iteration takes a step
``lambda`` towards the mean of each vertex's neighbours, then a step ``mu`` < -lambda away from it, a
low-pass filter on the surface. What little volume it still loses is given back by one uniform offset
along the vertex normals (``volume change / area``), so the hand keeps its size and its contact with
objects. The neighbour mean is one sparse (V,V) matrix product per step.

Shapes: V vertices, F faces; coordinates in any unit (metres in the API).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

TAUBIN_LAMBDA = 0.5
TAUBIN_MU = -0.53  # pass-band frequency 1/lambda + 1/mu = 0.11: only the grid ripple is damped
DEFAULT_SMOOTH_ITERATIONS = 10  # chosen from before/after renders at resolutions 64 and 128


def neighbour_mean_matrix(faces: np.ndarray, count: int) -> sparse.csr_matrix:
    """(F,3) faces, V -> (V,V) sparse matrix whose product with (V,3) positions gives each vertex's neighbour mean."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    rows, cols = np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])
    mean = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(count, count))  # duplicates summed
    degree = np.diff(mean.indptr)  # distinct neighbours per vertex (each edge is counted by both of its faces)
    mean.data = np.repeat(1.0 / np.maximum(degree, 1), degree)  # row-normalised in place, no second matrix
    return mean


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,3), (F,3) outward faces -> (V,3) unit normals, the area-weighted mean of the adjacent faces' normals."""
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    face_normals = np.cross(b - a, c - a)  # length = twice the area: area weighting for free
    corners = faces.ravel()
    normals = np.stack(
        [np.bincount(corners, np.repeat(face_normals[:, axis], 3), minlength=len(vertices)) for axis in range(3)], axis=1
    )
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """(V,3), (F,3) closed outward mesh -> enclosed volume (units^3), the sum of signed tetrahedra with the origin."""
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def mesh_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    """(V,3), (F,3) -> total surface area (units^2)."""
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def taubin_smooth(
    vertices: np.ndarray,
    faces: np.ndarray,
    iterations: int = DEFAULT_SMOOTH_ITERATIONS,
    lam: float = TAUBIN_LAMBDA,
    mu: float = TAUBIN_MU,
    keep_volume: bool = True,
) -> np.ndarray:
    """(V,3), (F,3) closed mesh -> (V,3) smoothed vertices (same faces); volume restored by a normal offset if ``keep_volume``."""
    if iterations <= 0 or len(faces) == 0:
        return vertices
    mean = neighbour_mean_matrix(faces, len(vertices))
    smoothed = np.array(vertices, dtype=np.float64)
    for _ in range(iterations):
        smoothed += lam * (mean @ smoothed - smoothed)
        smoothed += mu * (mean @ smoothed - smoothed)
    if keep_volume:
        lost = mesh_volume(vertices, faces) - mesh_volume(smoothed, faces)
        smoothed += (lost / mesh_area(smoothed, faces)) * vertex_normals(smoothed, faces)
    return smoothed
