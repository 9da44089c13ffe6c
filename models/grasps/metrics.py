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

from ..canonical import normalization_matrix, transform_points
from ..geometry import inside_mesh
from ..skeleton import MANO_TO_BIOMECH

CONTACT_DISTANCE_M = 0.002
VOXEL_M = 0.0015
MAX_VOXELS = 150_000
DIVERSITY_CLUSTERS = 20


def surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,3) points, metres -> (N,) unsigned distance to the surface of ``mesh``, metres."""
    squared, _, _ = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, dtype=np.float64),
        np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64),
    )
    return np.sqrt(squared)


def penetration_volume(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> float:
    """Volume inside both meshes, cm3, counted on a grid of 1.5 mm (or coarser) voxels over the overlap of their boxes."""
    low = np.maximum(hand.bounds[0], obj.bounds[0])
    high = np.minimum(hand.bounds[1], obj.bounds[1])
    if np.any(high <= low):
        return 0.0
    span = high - low
    voxel = max(VOXEL_M, float(np.cbrt(np.prod(span) / MAX_VOXELS)))
    axes = [np.arange(lo + voxel / 2, hi, voxel) for lo, hi in zip(low, high, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    in_object = grid[inside_mesh(obj, grid)]
    count = int(inside_mesh(hand, in_object).sum())
    return count * voxel**3 * 1e6


def grasp_metrics(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> dict[str, float | bool]:
    """One hand mesh against one object mesh (same frame, metres) -> penetration, distance and contact."""
    vertices = np.asarray(hand.vertices)
    distance = surface_distance(obj, vertices)
    inside = inside_mesh(obj, vertices)
    depth = float(distance[inside].max()) if inside.any() else 0.0
    gap = 0.0 if inside.any() else float(distance.min())
    return {
        "penetration_volume_cm3": penetration_volume(hand, obj),
        "max_penetration_depth_mm": depth * 1e3,
        "hand_object_distance_mm": gap * 1e3,
        "contact": bool(inside.any() or gap <= CONTACT_DISTANCE_M),
    }


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
