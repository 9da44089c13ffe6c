"""Grasp quality metrics: penetration volume and depth, contact, and diversity (k-means entropy).

Inside / outside of a mesh is the generalised winding number >= 0.5 (libigl), so open or
self-overlapping object meshes (e.g. a mug made of a body and a handle) are handled too.
Units in the returned dicts are in the key names (cm3, mm, cm).
"""

from __future__ import annotations

import warnings

import igl
import numpy as np
import torch
import trimesh
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

from ..canonical import normalization_matrix, transform_points
from ..geometry import inside_mesh
from ..skeleton import MANO_TO_BIOMECH

CONTACT_DISTANCE_M = 0.002
VOXEL_M = 0.0015
MAX_VOXELS = 150_000
COARSE_CELL = 4  # voxels per side of the cells that penetration_volume screens first
DIVERSITY_CLUSTERS = 20


def surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points, metres -> (N,) unsigned distance to the surface of ``mesh``, metres."""
    squared, _, _ = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, dtype=np.float64),
        np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64),
    )
    return np.sqrt(squared)


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points, metres -> (N,) distance to the surface of ``mesh``, negative inside (winding number)."""
    return np.where(inside_mesh(mesh, points), -1.0, 1.0) * surface_distance(mesh, points)


def _split(values: np.ndarray, pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Cut one array computed on the concatenation of ``pieces`` back into per-piece arrays."""
    return np.split(values, np.cumsum([len(piece) for piece in pieces])[:-1])


def _voxel_grid(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Voxel grid over the overlap of the boxes -> (low corner, voxel size, voxels per axis), None if disjoint."""
    low = np.maximum(hand.bounds[0], obj.bounds[0])
    high = np.minimum(hand.bounds[1], obj.bounds[1])
    if np.any(high <= low):
        return None
    voxel = max(VOXEL_M, float(np.cbrt(np.prod(high - low) / MAX_VOXELS)))
    counts = np.array([len(np.arange(lo + voxel / 2, hi, voxel)) for lo, hi in zip(low, high, strict=True)])
    return low, voxel, counts


def penetration_volumes(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh) -> list[float]:
    """Volume inside both meshes per hand, cm3, counted on a grid of 1.5 mm (or coarser) voxels over the
    overlap of the hand's and the object's boxes.

    Exact for that grid, but fast: the voxels are grouped into cells of COARSE_CELL^3 voxels, and only
    cells whose centre is within the cell's half-diagonal of the inside of both meshes have their voxels
    tested (signed distances are 1-Lipschitz, so no cell holding a voxel inside both is skipped). Near
    the hand is judged from its vertices (a surface point is within the longest edge of a vertex). The
    object is asked about every hand's points in one call, and about fine voxels only once they are
    inside a hand.
    """
    grids = [_voxel_grid(hand, obj) for hand in hands]
    cells, centres, reaches = [], [], []
    for grid in grids:
        if grid is None:
            cells.append(np.zeros((0, 3), dtype=int))
            centres.append(np.zeros((0, 3)))
            reaches.append(0.0)
            continue
        low, voxel, counts = grid
        axes = [np.arange(-(-count // COARSE_CELL)) for count in counts]
        cells.append(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))
        centres.append(low + (cells[-1] + 0.5) * voxel * COARSE_CELL)
        reaches.append(voxel * COARSE_CELL * np.sqrt(3) / 2)
    near_object = _split(signed_distance(obj, np.concatenate(centres)), centres)
    offsets = np.stack(np.meshgrid(*[np.arange(COARSE_CELL)] * 3, indexing="ij"), -1).reshape(-1, 3)
    voxels = []
    for hand, grid, cell, centre, reach, object_distance in zip(hands, grids, cells, centres, reaches, near_object,
                                                                strict=True):
        near = object_distance <= reach
        if grid is None or not near.any():
            voxels.append(np.zeros((0, 3)))
            continue
        edges = np.asarray(hand.edges_unique_length).max()
        vertex_distance = cKDTree(np.asarray(hand.vertices)).query(centre[near])[0]
        near[near] = (vertex_distance <= reach + edges) | inside_mesh(hand, centre[near])
        low, voxel, counts = grid
        index = (cell[near][:, None] * COARSE_CELL + offsets[None]).reshape(-1, 3)
        voxels.append(low + voxel / 2 + index[(index < counts).all(axis=1)] * voxel)
    # Each hand first (a few thousand voxels each), then the object once for all voxels inside a hand.
    in_hand = [points[inside_mesh(hand, points)] for hand, points in zip(hands, voxels, strict=True)]
    in_both = _split(inside_mesh(obj, np.concatenate(in_hand)), in_hand)
    return [0.0 if grid is None else int(both.sum()) * grid[1] ** 3 * 1e6 for grid, both in zip(grids, in_both, strict=True)]


def penetration_volume(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> float:
    """Volume inside both meshes, cm3 (see ``penetration_volumes``)."""
    return penetration_volumes([hand], obj)[0]


def grasp_metrics_many(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh) -> list[dict[str, float | bool]]:
    """Hand meshes against one object mesh (same frame, metres) -> per hand: penetration, distance and contact."""
    vertices = [np.asarray(hand.vertices) for hand in hands]
    signed = _split(signed_distance(obj, np.concatenate(vertices)), vertices)
    metrics = []
    for distance, volume in zip(signed, penetration_volumes(hands, obj), strict=True):
        inside = distance < 0
        depth = float(-distance[inside].min()) if inside.any() else 0.0
        gap = 0.0 if inside.any() else float(distance.min())
        metrics.append({
            "penetration_volume_cm3": volume,
            "max_penetration_depth_mm": depth * 1e3,
            "hand_object_distance_mm": gap * 1e3,
            "contact": bool(inside.any() or gap <= CONTACT_DISTANCE_M),
        })
    return metrics


def grasp_metrics(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> dict[str, float | bool]:
    """One hand mesh against one object mesh (same frame, metres) -> penetration, distance and contact."""
    return grasp_metrics_many([hand], obj)[0]


def summarize(metrics: list[dict[str, float | bool]]) -> dict[str, float]:
    """Per-grasp metric dicts -> contact ratio and mean penetration volume / depth."""
    return {
        "grasps": len(metrics),
        "contact_ratio": float(np.mean([m["contact"] for m in metrics])),
        "mean_penetration_volume_cm3": float(np.mean([m["penetration_volume_cm3"] for m in metrics])),
        "mean_max_penetration_depth_mm": float(np.mean([m["max_penetration_depth_mm"] for m in metrics])),
    }


def canonical_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """(S,21,3) mano keypoints, metres -> (S,21,3) in each hand's own frame (wrist at 0, palm-aligned)."""
    joints = torch.as_tensor(keypoints, dtype=torch.float64)
    matrix = normalization_matrix(joints[:, MANO_TO_BIOMECH])
    return transform_points(matrix, joints).numpy()


def cluster_diversity(keypoints: np.ndarray, clusters: int = DIVERSITY_CLUSTERS, seed: int = 0) -> dict[str, float]:
    """(S,21,3) keypoints, metres -> k-means entropy (nats) and mean cluster size (cm, per-joint distance to the centroid)."""
    features = (keypoints.reshape(len(keypoints), -1) * 100).astype(np.float64)
    clusters = min(clusters, len(features))
    with warnings.catch_warnings():  # repeated samples leave some clusters empty: that is the point
        warnings.simplefilter("ignore")
        centroids, labels = kmeans2(features, clusters, minit="++", seed=seed)
    counts = np.bincount(labels, minlength=clusters)
    probabilities = counts[counts > 0] / len(labels)
    offsets = (features - centroids[labels]).reshape(len(features), -1, 3)
    spread = np.linalg.norm(offsets, axis=-1).mean(axis=1)
    return {
        "cluster_entropy": float(-(probabilities * np.log(probabilities)).sum()),
        "mean_cluster_size_cm": float(spread.mean()),
    }


def mean_pairwise_distance(keypoints: np.ndarray) -> float:
    """(S,21,3) keypoints, metres -> mean over sample pairs of the mean per-joint distance, cm."""
    if len(keypoints) < 2:
        return 0.0
    flat = torch.as_tensor(keypoints, dtype=torch.float64)
    per_joint = torch.linalg.norm(flat[:, None] - flat[None], dim=-1).mean(-1)
    pairs = torch.triu_indices(len(flat), len(flat), offset=1)
    return float(per_joint[pairs[0], pairs[1]].mean() * 100)
