"""Grasp quality metrics: penetration volume and depth, contact, and diversity (k-means entropy).

Inside / outside of an object is the generalised winding number >= 0.5 (libigl), so open or
self-overlapping object meshes (e.g. a mug made of a body and a handle) are handled too; where every
body of the object is closed, the parity of each body's surface crossings gives the same answer,
cheaper (``geometry.inside_solid``). Hand meshes are closed, so they are always asked by parity
(``geometry.inside_closed_mesh``).
Units in the returned dicts are in the key names (cm3, mm, cm).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import trimesh
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

from ..canonical import normalization_matrix, transform_points
from ..geometry import inside_closed_mesh, inside_solid, signed_distance, surface_distance
from ..skeleton import MANO_TO_BIOMECH
from .parallel import available_cores, thread_map

CONTACT_DISTANCE_M = 0.002
VOXEL_M = 0.0015
MAX_VOXELS = 150_000
COARSE_CELL = 4  # voxels per side of the cells that penetration_volume screens first
VERTEX_CELL_M = 0.012  # side of the cubes of hand vertices that vertex_extremes screens first
VERTEX_REACH_M = VERTEX_CELL_M * np.sqrt(3) / 2  # from a cube's centre to its corners
DIVERSITY_CLUSTERS = 20

Measured = TypeVar("Measured")


def split_rows(values: np.ndarray, pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Cut one array computed on the concatenation of ``pieces`` back into per-piece arrays."""
    return np.split(values, np.cumsum([len(piece) for piece in pieces])[:-1])


def _voxel_grid(hand: trimesh.Trimesh, obj: trimesh.Trimesh, voxel_m: float = VOXEL_M,
                max_voxels: float = MAX_VOXELS) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Voxel grid over the overlap of the boxes -> (low corner, voxel size, voxels per axis), None if disjoint.

    Voxels of ``voxel_m``, coarser where the overlap would need more than ``max_voxels`` of them."""
    low = np.maximum(hand.bounds[0], obj.bounds[0])
    high = np.minimum(hand.bounds[1], obj.bounds[1])
    if np.any(high <= low):
        return None
    voxel = max(voxel_m, float(np.cbrt(np.prod(high - low) / max_voxels)))
    counts = np.array([len(np.arange(lo + voxel / 2, hi, voxel)) for lo, hi in zip(low, high, strict=True)])
    return low, voxel, counts


@dataclass
class _Cells:
    """One hand's voxel grid grouped into cells of COARSE_CELL^3 voxels (the last ones may be cut by the grid)."""

    low: np.ndarray  # (3,) grid corner, metres
    voxel: float  # voxel side, metres
    counts: np.ndarray  # (3,) voxels per axis
    index: np.ndarray  # (K,3) cell indices
    centre: np.ndarray  # (K,3) cell centres, metres

    @property
    def reach(self) -> float:
        """Distance from a cell's centre to its farthest corner, metres."""
        return self.voxel * COARSE_CELL * np.sqrt(3) / 2

    def voxels(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(k,) cell rows -> (k,c,3) voxel centres of those cells (metres) and a (k,c) mask of those in the grid."""
        offsets = np.stack(np.meshgrid(*[np.arange(COARSE_CELL)] * 3, indexing="ij"), -1).reshape(-1, 3)
        index = self.index[cells][:, None] * COARSE_CELL + offsets  # (k,c,3)
        return self.low + (index + 0.5) * self.voxel, (index < self.counts).all(-1)


def _cells(hand: trimesh.Trimesh, obj: trimesh.Trimesh, voxel_m: float, max_voxels: float) -> _Cells | None:
    """The cells of the voxel grid over the overlap of the hand's and the object's boxes, None if they do not overlap."""
    grid = _voxel_grid(hand, obj, voxel_m, max_voxels)
    if grid is None:
        return None
    low, voxel, counts = grid
    index = np.stack(np.meshgrid(*[np.arange(-(-count // COARSE_CELL)) for count in counts], indexing="ij"), -1)
    index = index.reshape(-1, 3)
    return _Cells(low, voxel, counts, index, low + (index + 0.5) * voxel * COARSE_CELL)


def penetration_volumes(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh, voxel_m: float = VOXEL_M,
                        max_voxels: float = MAX_VOXELS) -> list[float]:
    """Volume inside both meshes per hand, cm3, counted on a grid of ``voxel_m`` voxels (1.5 mm; coarser
    where the overlap of the hand's and the object's boxes would need more than ``max_voxels``).

    Exact for that grid, but fast: the voxels are grouped into cells of COARSE_CELL^3 voxels and each
    mesh is asked about a cell's centre first. Signed distances are 1-Lipschitz, so a cell whose centre
    is farther than the cell's half-diagonal from a mesh's surface lies wholly on the centre's side of
    it, and only the cells that a surface may cross have their voxels tested one by one. Distance to
    the hand is judged from its vertices (a surface point is within the longest edge of a vertex). The
    object is asked about every hand's points in one call; each hand by crossing parity, once.
    """
    if not hands:
        return []
    grids = [_cells(hand, obj, voxel_m, max_voxels) for hand in hands]
    centres = [grid.centre if grid is not None else np.zeros((0, 3)) for grid in grids]
    object_distance = split_rows(signed_distance(obj, np.concatenate(centres), on_grid=True), centres)
    in_hand, deep_in_object = [], []
    for hand, grid, distance in zip(hands, grids, object_distance, strict=True):
        near = np.flatnonzero(distance <= (grid.reach if grid is not None else 0.0))
        if grid is None or len(near) == 0:
            in_hand.append(np.zeros((0, 3)))
            deep_in_object.append(np.zeros(0, dtype=bool))
            continue
        crossed = cKDTree(np.asarray(hand.vertices)).query(grid.centre[near])[0] <= grid.reach + _longest_edge(hand)
        voxels, valid = grid.voxels(near)  # (k,c,3), (k,c)
        # One call per hand: the voxels of the cells its surface may cross, the centres of the others.
        fine = valid & crossed[:, None]
        answers = inside_closed_mesh(hand, np.concatenate([voxels[fine], grid.centre[near[~crossed]]]))
        inside = np.zeros(valid.shape, dtype=bool)
        inside[~crossed] = answers[int(fine.sum()):, None]
        inside[fine] = answers[: int(fine.sum())]
        inside &= valid
        in_hand.append(voxels[inside])
        deep = np.broadcast_to((distance[near] < -grid.reach)[:, None], valid.shape)
        deep_in_object.append(deep[inside])
    # The object decides the voxels inside a hand, except in cells wholly inside it.
    ask = [points[~deep] for points, deep in zip(in_hand, deep_in_object, strict=True)]
    answers = split_rows(inside_solid(obj, np.concatenate(ask)), ask)
    return [0.0 if grid is None else (int(deep.sum()) + int(answer.sum())) * grid.voxel ** 3 * 1e6
            for grid, deep, answer in zip(grids, deep_in_object, answers, strict=True)]


def penetration_volume(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> float:
    """Volume inside both meshes, cm3 (see ``penetration_volumes``)."""
    return penetration_volumes([hand], obj)[0]


def _unique_cells(points: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) points, cube side (metres) -> (K,3) integer indices of the occupied cubes, (N,) cube of each point."""
    index = np.floor(points / side).astype(np.int64)
    low = index.min(0)
    shape = index.max(0) - low + 1
    keys, cube = np.unique(np.ravel_multi_index((index - low).T, shape), return_inverse=True)
    return np.stack(np.unravel_index(keys, shape), -1) + low, cube.ravel()


def _longest_edge(mesh: trimesh.Trimesh) -> float:
    """Longest edge of a triangle mesh, metres."""
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    return float(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).max())


def _vertex_lower_bounds(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh) -> list[np.ndarray]:
    """Hand meshes, object mesh (metres) -> per hand (V,) lower bound of each vertex's signed distance to the
    object's surface (negative inside), metres.

    Vertices are grouped into cubes of VERTEX_CELL_M and the object is asked about each cube's centre only:
    a signed distance is 1-Lipschitz, so no vertex of a cube is nearer than its centre's distance minus
    the cube's half-diagonal (``VERTEX_REACH_M``), and none farther than that plus it."""
    cells = [_unique_cells(np.asarray(hand.vertices), VERTEX_CELL_M) for hand in hands]
    centres = [(index + 0.5) * VERTEX_CELL_M for index, _ in cells]
    centre_distance = split_rows(signed_distance(obj, np.concatenate(centres), on_grid=True), centres)
    return [distance[vertex_cell] - VERTEX_REACH_M for (_, vertex_cell), distance in zip(cells, centre_distance, strict=True)]


def near_vertices(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh, within_m: float,
                  lower_bounds: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hand meshes, object mesh (metres), distance -> per hand (K,) indices of its vertices and (K,) their
    signed distances to the object's surface (negative inside), metres: every vertex within ``within_m`` of
    the surface or inside, and some farther ones (those whose ``_vertex_lower_bounds`` is within it)."""
    if not hands:
        return []
    lower_bounds = _vertex_lower_bounds(hands, obj) if lower_bounds is None else lower_bounds
    chosen = [np.flatnonzero(lower <= within_m) for lower in lower_bounds]
    asked = [np.asarray(hand.vertices)[index] for hand, index in zip(hands, chosen, strict=True)]
    return list(zip(chosen, split_rows(signed_distance(obj, np.concatenate(asked)), asked), strict=True))


def vertex_extremes(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh) -> list[tuple[float, float]]:
    """Hand meshes, object mesh (metres) -> per hand (deepest vertex inside the object, 0 if none; nearest
    vertex's distance to the object surface, 0 if a vertex is inside), metres.

    Exact, without asking the object about every vertex (``near_vertices``): first the vertices that may lie
    inside, then, only for hands with none inside, the outside ones whose lower bound could beat the nearest
    vertex found so far.
    """
    if not hands:
        return []
    lower_bounds = _vertex_lower_bounds(hands, obj)
    signed = [values for _, values in near_vertices(hands, obj, 0.0, lower_bounds)]
    second = []
    for hand, lower, values in zip(hands, lower_bounds, signed, strict=True):
        if (values < 0).any():
            second.append(np.zeros((0, 3)))
            continue
        bound = values.min() if len(values) else (lower + 2 * VERTEX_REACH_M).min()
        second.append(np.asarray(hand.vertices)[(lower > 0) & (lower < bound)])
    unsigned = split_rows(surface_distance(obj, np.concatenate(second)), second)
    extremes = []
    for values, more in zip(signed, unsigned, strict=True):
        if (values < 0).any():
            extremes.append((float(-values.min()), 0.0))
        else:
            extremes.append((0.0, float(np.concatenate([values, more]).min())))
    return extremes


def grasp_metrics_many(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh,
                       workers: int | None = None) -> list[dict[str, float | bool]]:
    """Hand meshes against one object mesh (same frame, metres) -> per hand: penetration, distance and contact,
    on worker threads (``per_hand_threads``)."""
    return per_hand_threads(_grasp_metrics_serial, hands, obj, workers)


def per_hand_threads(function: Callable[[list[trimesh.Trimesh], trimesh.Trimesh], list[Measured]],
                     hands: list[trimesh.Trimesh], obj: trimesh.Trimesh, workers: int | None = None) -> list[Measured]:
    """``function(hands, obj)``, one value per hand, with the hands split into one group per worker thread
    (default: one per available core): the geometry queries release the GIL, so two cores take about a fifth
    off the time."""
    if not hands:
        return []
    count = min(workers or available_cores(), len(hands))
    groups = np.array_split(np.arange(len(hands)), count)
    measured = thread_map(lambda group: function([hands[i] for i in group], obj), groups, count)
    return [value for group in measured for value in group]


def _grasp_metrics_serial(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh) -> list[dict[str, float | bool]]:
    """Hand meshes against one object mesh -> per hand metrics, in this thread."""
    return [metrics_of(volume, depth, gap)
            for (depth, gap), volume in zip(vertex_extremes(hands, obj), penetration_volumes(hands, obj), strict=True)]


def metrics_of(volume_cm3: float, depth_m: float, gap_m: float) -> dict[str, float | bool]:
    """A hand's penetration volume (cm3), deepest vertex and nearest vertex (``vertex_extremes``, metres) -> its
    metrics dict."""
    return {
        "penetration_volume_cm3": volume_cm3,
        "max_penetration_depth_mm": depth_m * 1e3,
        "hand_object_distance_mm": gap_m * 1e3,
        "contact": bool(depth_m > 0 or gap_m <= CONTACT_DISTANCE_M),
    }


def grasp_metrics(hand: trimesh.Trimesh, obj: trimesh.Trimesh) -> dict[str, float | bool]:
    """One hand mesh against one object mesh (same frame, metres) -> penetration, distance and contact."""
    return grasp_metrics_many([hand], obj)[0]


def summarize(metrics: list[dict[str, float | bool]]) -> dict[str, float]:
    """Per-grasp metric dicts -> contact ratio and mean penetration volume / depth."""
    return {
        "grasps": len(metrics),
        "contact_ratio": float(np.mean([m["contact"] for m in metrics])),
        "mean_penetration_volume_cm3": float(np.mean([m["penetration_volume_cm3"] for m in metrics])),
        "max_penetration_volume_cm3": float(np.max([m["penetration_volume_cm3"] for m in metrics])),
        "mean_max_penetration_depth_mm": float(np.mean([m["max_penetration_depth_mm"] for m in metrics])),
    }


def canonical_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """(S,21,3) mano keypoints, metres -> (S,21,3) in each hand's own frame (wrist at 0, palm-aligned)."""
    joints = torch.as_tensor(keypoints, dtype=torch.float64)
    matrix = normalization_matrix(joints[:, MANO_TO_BIOMECH])
    return transform_points(matrix, joints).numpy()


def keypoint_clusters(keypoints: np.ndarray, clusters: int = DIVERSITY_CLUSTERS,
                      seed: int = 0) -> tuple[np.ndarray, float]:
    """(S,21,3) keypoints, metres -> (S,21,3) offset of each from its k-means code (63-d features, cm) and the
    entropy of the cluster histogram (nats)."""
    features = (keypoints.reshape(len(keypoints), -1) * 100).astype(np.float64)
    clusters = min(clusters, len(features))
    with warnings.catch_warnings():  # repeated samples leave some clusters empty: that is the point
        warnings.simplefilter("ignore")
        centroids, labels = kmeans2(features, clusters, minit="++", seed=seed)
    counts = np.bincount(labels, minlength=clusters)
    probabilities = counts[counts > 0] / len(labels)
    offsets = (features - centroids[labels]).reshape(len(features), -1, 3)
    return offsets, float(-(probabilities * np.log(probabilities)).sum())


def cluster_diversity(keypoints: np.ndarray, clusters: int = DIVERSITY_CLUSTERS, seed: int = 0) -> dict[str, float]:
    """(S,21,3) keypoints, metres -> k-means entropy (nats) and mean cluster size (cm, per-joint distance to the centroid)."""
    offsets, entropy = keypoint_clusters(keypoints, clusters, seed)
    return {
        "cluster_entropy": entropy,
        "mean_cluster_size_cm": float(np.linalg.norm(offsets, axis=-1).mean()),
    }


def mean_pairwise_distance(keypoints: np.ndarray) -> float:
    """(S,21,3) keypoints, metres -> mean over sample pairs of the mean per-joint distance, cm."""
    if len(keypoints) < 2:
        return 0.0
    flat = torch.as_tensor(keypoints, dtype=torch.float64)
    per_joint = torch.linalg.norm(flat[:, None] - flat[None], dim=-1).mean(-1)
    pairs = torch.triu_indices(len(flat), len(flat), offset=1)
    return float(per_joint[pairs[0], pairs[1]].mean() * 100)
