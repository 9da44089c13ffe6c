"""Coarse-to-fine iso-surface extraction (MISE) batched across hands, then marching cubes.

This reproduces the published extractor (``halo_reference/README.md``, "Mesh extraction") on dense
arrays instead of an octree: a leaf voxel is split when the known grid points on its closed cube hold
values on both sides of 0.5, which for every level is a max-pool of the "known and inside" and
"known and outside" point masks. Each refinement round evaluates the new points of all hands in one
decoder call. Two exact shortcuts keep it fast:

* every hand works in a crop of the grid around its skeleton, aligned to the coarse lattice, and
* grid points further than ``cull_radius`` from every bone are not evaluated: the hand's surface
  cannot be there, so they are outside (value 0), like the far corners of the box in the original.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mcubes
import numpy as np
import torch
import torch.nn.functional as F

from .canonical import MODEL_SCALE, Canonical, transform_points
from .occupancy import HandCode, OccupancyDecoder
from .skeleton import BIOMECH_PARENTS

BOX_SIZE = 1.1  # side of the extraction cube in model units (1 + padding 0.1), centred at the wrist
THRESHOLD = 0.5
# Final grid resolution -> (coarse resolution, refinement levels).
MISE_LEVELS = {64: (32, 1), 128: (32, 2), 256: (32, 3), 512: (64, 3)}
RESOLUTIONS = tuple(MISE_LEVELS)
DEFAULT_CULL_RADIUS_M = 0.06  # no HALO surface lies further than this from the skeleton's bones
MAX_CROP_POINTS = 40_000_000  # grid points held at once; larger batches are meshed in groups


@dataclass
class MeshStats:
    """Wall time per stage and work done for one batch of hands."""

    canonicalize_s: float = 0.0
    occupancy_s: float = 0.0
    marching_cubes_s: float = 0.0
    points_evaluated: int = 0
    refinement_rounds: list[int] = field(default_factory=list)  # points evaluated per round

    def add(self, other: MeshStats) -> None:
        self.canonicalize_s += other.canonicalize_s
        self.occupancy_s += other.occupancy_s
        self.marching_cubes_s += other.marching_cubes_s
        self.points_evaluated += other.points_evaluated
        self.refinement_rounds += other.refinement_rounds


def grid_to_model(index: torch.Tensor, resolution: int) -> torch.Tensor:
    """(...,3) grid indices (0..R, may be fractional) -> (...,3) model-frame coordinates."""
    return BOX_SIZE * (index / resolution - 0.5)


def skeleton_distance(points: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """(B,N,3) points, (B,21,3) biomech joints (same frame) -> (B,N) distance to the nearest of the 20 bones."""
    parents = torch.as_tensor(BIOMECH_PARENTS[1:], device=joints.device)
    start, end = joints[:, parents], joints[:, 1:]  # (B,20,3)
    direction = end - start
    along = ((points[:, :, None] - start[:, None]) * direction[:, None]).sum(-1)
    along = (along / (direction * direction).sum(-1).clamp_min(1e-12)[:, None]).clamp(0.0, 1.0)
    nearest = start[:, None] + along[..., None] * direction[:, None]
    return (points[:, :, None] - nearest).norm(dim=-1).amin(-1)


def _forward_fill(values: torch.Tensor, known: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,X,Y,Z) values and known mask -> the same with unknown entries copied from the previous known one along dim."""
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    positions = torch.arange(values.shape[dim], device=values.device).view(shape).expand_as(values)
    source = torch.where(known, positions, -1).cummax(dim).values
    return values.gather(dim, source.clamp_min(0)), source >= 0


class _Crops:
    """Per-hand crops of the (R+1)^3 grid, all of one shape, aligned to the coarse lattice."""

    def __init__(self, joints_model: torch.Tensor, resolution: int, coarse_step: int, margin: float) -> None:
        cell = BOX_SIZE / resolution
        low = (joints_model.amin(1) - margin) / BOX_SIZE + 0.5  # (B,3) in box fractions
        high = (joints_model.amax(1) + margin) / BOX_SIZE + 0.5
        low = (low * resolution / coarse_step).floor().clamp(0, resolution // coarse_step) * coarse_step
        high = (high * resolution / coarse_step).ceil().clamp(0, resolution // coarse_step) * coarse_step
        self.size = int((high - low).amax().item())  # fine cells per side, a multiple of coarse_step
        self.size = max(self.size, coarse_step)
        self.origin = (low.clamp(max=resolution - self.size)).long()  # (B,3) grid index of the crop's corner
        self.cell = cell

    def model_points(self, index: torch.Tensor, hand: torch.Tensor, resolution: int) -> torch.Tensor:
        """(T,3) crop indices, (T,) hand index -> (T,3) model-frame coordinates."""
        return grid_to_model((index + self.origin[hand]).to(torch.float32), resolution)


def _evaluate(
    decoder: OccupancyDecoder,
    code: HandCode,
    joints_model: torch.Tensor,
    points: torch.Tensor,
    hand: torch.Tensor,
    cull_radius: float | None,
) -> tuple[torch.Tensor, int]:
    """(T,3) model-frame points of hands ``hand`` (T,) -> ((T,) occupancy, points evaluated); culled points get 0."""
    batch = code.bias.shape[0]
    counts = torch.bincount(hand, minlength=batch)
    slot = torch.arange(len(hand), device=hand.device) - (counts.cumsum(0) - counts)[hand]
    padded = points.new_zeros(batch, int(counts.max().item()), 3)
    padded[hand, slot] = points
    values = torch.zeros(batch, padded.shape[1], device=points.device)
    if cull_radius is not None:
        near = skeleton_distance(padded, joints_model) <= cull_radius * MODEL_SCALE
        near &= torch.arange(padded.shape[1], device=points.device)[None] < counts[:, None]
        keep = near.sum(1)
        order = torch.argsort((~near).to(torch.int8), dim=1, stable=True)  # near points first, per hand
        compact = padded.gather(1, order[..., None].expand(-1, -1, 3))[:, : int(keep.max().item())]
        probabilities = decoder.occupancy(compact, code)
        valid = torch.arange(compact.shape[1], device=points.device)[None] < keep[:, None]
        values.scatter_(1, order[:, : compact.shape[1]], torch.where(valid, probabilities, 0.0))
        evaluated = int(keep.sum().item())
    else:
        values = decoder.occupancy(padded, code)
        evaluated = len(hand)
    return values[hand, slot], evaluated


def _split_points(split: torch.Tensor, spacing: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B,n,n,n) voxels to split, half their side in fine cells, fine grid shape -> (B,X+1,Y+1,Z+1) their 27 lattice points."""
    cells = split.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    corners = F.max_pool3d(F.pad(cells[:, None].float(), (1, 1, 1, 1, 1, 1)), 2, stride=1)[:, 0] > 0
    mask = torch.zeros(shape, dtype=torch.bool, device=split.device)
    mask[:, ::spacing, ::spacing, ::spacing] = corners
    return mask


def mise(
    decoder: OccupancyDecoder,
    code: HandCode,
    joints_model: torch.Tensor,
    resolution: int,
    cull_radius: float | None,
    stats: MeshStats,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HandCode for B hands, (B,21,3) biomech joints in the model frame -> ((B,S+1,S+1,S+1) densified occupancy crops, (B,3) crop origins)."""
    coarse, depth = MISE_LEVELS[resolution]
    step = resolution // coarse  # fine cells per coarse voxel
    margin = BOX_SIZE / coarse + (cull_radius * MODEL_SCALE if cull_radius is not None else BOX_SIZE)
    crops = _Crops(joints_model, resolution, step, margin)
    batch, size, device = joints_model.shape[0], crops.size, joints_model.device
    shape = (batch, size + 1, size + 1, size + 1)
    values = torch.zeros(shape, device=device)
    known = torch.zeros(shape, dtype=torch.bool, device=device)
    requested = torch.zeros(shape, dtype=torch.bool, device=device)
    requested[:, ::step, ::step, ::step] = True
    split = [
        torch.zeros(batch, *(3 * (size // (step >> level),)), dtype=torch.bool, device=device) for level in range(depth)
    ]
    while True:
        new = requested & ~known
        index = new.nonzero()
        if len(index) == 0:
            break
        hand = index[:, 0]
        started = time.perf_counter()
        points = crops.model_points(index[:, 1:], hand, resolution)
        values[new], evaluated = _evaluate(decoder, code, joints_model, points, hand, cull_radius)
        stats.occupancy_s += time.perf_counter() - started
        stats.points_evaluated += evaluated
        stats.refinement_rounds.append(evaluated)
        known |= new
        requested = _refine(values, known, split, step)
    return densify(values, known), crops.origin


def _refine(values: torch.Tensor, known: torch.Tensor, split: list[torch.Tensor], step: int) -> torch.Tensor:
    """Split every leaf voxel whose closed cube holds known values on both sides of 0.5; -> mask of the points it needs."""
    inside = (known & (values >= THRESHOLD)).float()[:, None]
    outside = (known & (values <= THRESHOLD)).float()[:, None]
    requested = torch.zeros_like(known)
    depth = len(split)
    # Closed-cube "any" per voxel, finest splittable level first, then 2x2x2 unions for coarser levels.
    inside = F.max_pool3d(inside, 3, stride=2)
    outside = F.max_pool3d(outside, 3, stride=2)
    for level in reversed(range(depth)):
        if level < depth - 1:
            inside, outside = F.max_pool3d(inside, 2), F.max_pool3d(outside, 2)
        if level == 0:
            leaf = ~split[0]
        else:
            parent = split[level - 1]
            leaf = parent.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3) & ~split[level]
        new_split = leaf & (inside[:, 0] > 0) & (outside[:, 0] > 0)
        if new_split.any():
            split[level] |= new_split
            requested |= _split_points(new_split, (step >> level) // 2, tuple(known.shape))
    return requested


def densify(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(B,X,Y,Z) values and known mask -> (B,X,Y,Z) with unknown entries copied from the previous known along x, then y, then z."""
    for dim in (1, 2, 3):
        values, known = _forward_fill(values, known, dim)
    return values


def marching_cubes(grid: np.ndarray, origin: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(X,Y,Z) occupancy crop, (3,) its grid origin -> (V,3) model-frame vertices (float64), (F,3) outward faces."""
    padded = np.pad(grid.astype(np.float64), 1, constant_values=-1e6)
    vertices, faces = mcubes.marching_cubes(padded, THRESHOLD)
    vertices = grid_to_model(torch.from_numpy(vertices - 1.0 + origin), resolution).numpy()
    return vertices, faces.astype(np.int64)


def extract_meshes(
    decoder: OccupancyDecoder,
    canonical: Canonical,
    resolution: int = 128,
    cull_radius: float | None = DEFAULT_CULL_RADIUS_M,
    stats: MeshStats | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Canonical inputs of B hands -> B (vertices (V,3) metres in the keypoint frame, faces (F,3) outward)."""
    if resolution not in MISE_LEVELS:
        raise ValueError(f"resolution: expected one of {list(RESOLUTIONS)}, got {resolution}")
    stats = stats if stats is not None else MeshStats()
    code = decoder.hand_code(canonical.part_matrices.float(), canonical.bone_lengths.float())
    joints_model = canonical.joints.float() * MODEL_SCALE
    # Bound memory: a 512 crop holds ~3e7 grid points per hand.
    group = max(1, MAX_CROP_POINTS // (int(0.8 * resolution) + 1) ** 3)
    meshes = []
    for first in range(0, len(joints_model), group):
        part = slice(first, first + group)
        grids, origins = mise(
            decoder, HandCode(code.weight[part], code.bias[part]), joints_model[part], resolution, cull_radius, stats
        )
        started = time.perf_counter()
        grids, origins = grids.cpu().numpy(), origins.cpu().numpy()
        for grid, origin, normalization in zip(grids, origins, canonical.normalization_matrix[part], strict=True):
            vertices, faces = marching_cubes(grid, origin, resolution)
            inverse = torch.linalg.inv(normalization.double().cpu())
            points = torch.from_numpy(vertices)[None] / MODEL_SCALE
            meshes.append((transform_points(inverse[None], points)[0].numpy(), faces))
        stats.marching_cubes_s += time.perf_counter() - started
    return meshes
