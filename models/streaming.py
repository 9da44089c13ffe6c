"""Meshing a tracked hand frame after frame, each frame seeded by the surface of the one before.

Consecutive frames of a hand tracker differ by millimetres, so the coarse-to-fine search of
``meshing.mise`` (a coarse lattice over the whole hand, then a few refinement rounds) mostly re-finds
the surface it found one frame earlier. Here frame t+1 starts from frame t's surface instead:

1. **Carry the surface along the bones.** Every vertex of frame t belongs to its nearest HALO part b;
   the part's canonical transform T_b maps the model frame onto the part's canonical frame, so
   ``x' = T_b(t+1)^-1 T_b(t) x`` is where that piece of skin sits in frame t+1 if the part moved rigidly.
2. **Evaluate a narrow band.** The fine grid cells (final resolution) around the carried vertices get
   all their corners evaluated, in one decoder call for every hand of the batch.
3. **Close the band.** The marching-cubes surface crosses a cell face exactly when the face's corners
   lie on both sides of 0.5; where such a face leads to a cell that is not yet evaluated, that cell is
   added and evaluated too, until no surface leaves the band. The band then holds every cell of each
   surface piece it touches, all corners known, so marching cubes there is the same as on a fully
   evaluated grid. Grid points outside the band are filled by ``meshing.densify`` (each takes the
   value of the previous known point along x, then y, then z); since no surface crosses between a
   band point and the unknown points next to it, the fill puts them on the right side of 0.5.
4. **Fall back to the full extraction** for a hand when its pose jumped (a normalised keypoint moved
   more than ``max_joint_motion_m``), when the band does not close within ``max_closure_rounds`` or
   reaches the crop's edge, or when the result lost a piece: the volume changed by more than
   ``max_volume_change`` or a part kept fewer than ``min_part_share`` of its vertices. A surface piece
   the band never touches (a new piece between two frames) is not found: hands do not grow pieces, and
   the full extraction drops small specks anyway.

All tensors are batched over the hands of a frame (B hands, T points of all hands, V vertices).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .canonical import MODEL_SCALE, Canonical
from .meshing import (
    BOX_SIZE,
    DEFAULT_CULL_RADIUS_M,
    MISE_LEVELS,
    THRESHOLD,
    GridCrops,
    MeshStats,
    bone_distances,
    evaluate_occupancy,
    extract_model_meshes,
    meshes_from_grids,
    part_distances,
)
from .occupancy import OccupancyDecoder

CORNERS = torch.cartesian_prod(*[torch.tensor([0, 1])] * 3)  # (8,3) corner offsets of a cell


@dataclass
class StreamConfig:
    """How a stream meshes its frames and when it falls back to the full extraction."""

    resolution: int = 64
    cull_radius: float | None = DEFAULT_CULL_RADIUS_M  # of the full extraction (``meshing.mise``)
    max_joint_motion_m: float = 0.03  # normalised keypoint motion between frames that counts as a jump
    max_closure_rounds: int = 6  # band growth rounds before the frame is meshed from scratch
    max_volume_change: float = 0.15  # relative volume change to the previous frame that counts as a lost piece
    min_part_share: float = 0.25  # a part keeping fewer of its previous frame's vertices counts as lost
    min_part_vertices: int = 16  # parts with fewer vertices than this in the previous frame are not checked


@dataclass
class StreamStats:
    """What a stream did: hand-frames seeded by the previous frame, fallbacks by reason, work done."""

    frames: int = 0
    seeded: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)  # reason -> hand-frames meshed from scratch
    points_evaluated: int = 0
    closure_rounds: list[int] = field(default_factory=list)  # evaluation rounds of each seeded frame

    def count_fallback(self, reason: str, hands: int) -> None:
        if hands:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + hands


@dataclass
class _Previous:
    """A frame's surfaces, what the next frame is seeded from."""

    part_matrices: torch.Tensor  # (B,16,4,4) model frame -> each part's canonical frame
    joints: torch.Tensor  # (B,21,3) normalised biomech keypoints, metres
    vertices: list[torch.Tensor]  # B x (V,3) model-frame vertices, float64
    parts: list[torch.Tensor]  # B x (V,) nearest part of each vertex
    volumes: np.ndarray  # (B,) model units^3
    part_counts: torch.Tensor  # (B,16) vertices per part


def _corner_points(cells: torch.Tensor) -> torch.Tensor:
    """(B,X,Y,Z) bool cells -> (B,X+1,Y+1,Z+1) bool: the grid points on their corners."""
    batch, x, y, z = cells.shape
    points = cells.new_zeros(batch, x + 1, y + 1, z + 1)
    for dx, dy, dz in CORNERS.tolist():
        points[:, dx : dx + x, dy : dy + y, dz : dz + z] |= cells
    return points


def _face_any(points: torch.Tensor, axis: int) -> torch.Tensor:
    """(B,X+1,Y+1,Z+1) bool points -> faces normal to ``axis`` (1..3): any of each face's 4 corners."""
    for other in (1, 2, 3):
        if other != axis:
            length = points.shape[other] - 1
            points = points.narrow(other, 0, length) | points.narrow(other, 1, length)
    return points


def surface_exits(values: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,X+1,Y+1,Z+1) values, known mask -> ((B,X,Y,Z) cells next to a face the surface crosses, (B,) surface on the crop's edge).

    A face whose known corners lie on both sides of 0.5 is crossed by the marching-cubes surface, so
    both cells sharing it hold surface; at the crop's outer faces the second cell is outside the crop."""
    inside, outside = known & (values >= THRESHOLD), known & (values <= THRESHOLD)
    cells = torch.zeros(values.shape[0], *(n - 1 for n in values.shape[1:]), dtype=torch.bool, device=values.device)
    on_edge = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    for axis in (1, 2, 3):
        crossed = _face_any(inside, axis) & _face_any(outside, axis)  # faces at each grid plane along axis
        length = crossed.shape[axis] - 1
        cells |= crossed.narrow(axis, 0, length) | crossed.narrow(axis, 1, length)
        on_edge |= (crossed.narrow(axis, 0, 1) | crossed.narrow(axis, length, 1)).flatten(1).any(1)
    return cells, on_edge


def carry_vertices(
    vertices: torch.Tensor, hand: torch.Tensor, part: torch.Tensor, before: torch.Tensor, after: torch.Tensor
) -> torch.Tensor:
    """(T,3) model-frame vertices of hands ``hand`` with parts ``part`` (T,), (B,16,4,4) part matrices of the two frames -> (T,3) moved."""
    motion = torch.linalg.inv(after) @ before  # (B,16,4,4): frame t model -> part frame -> frame t+1 model
    rigid = motion[hand, part]  # (T,4,4)
    return (rigid[:, :3, :3] @ vertices[:, :, None])[..., 0] + rigid[:, :3, 3]


def nearest_parts(vertices: list[torch.Tensor], joints_model: torch.Tensor) -> list[torch.Tensor]:
    """B x (V,3) model-frame vertices, (B,21,3) model-frame joints -> B x (V,) index of the nearest HALO part."""
    counts = [len(v) for v in vertices]
    padded = joints_model.new_zeros(len(vertices), max(max(counts), 1), 3)  # (B,Vmax,3)
    for index, hand_vertices in enumerate(vertices):
        padded[index, : len(hand_vertices)] = hand_vertices.to(padded.dtype)
    nearest = part_distances(bone_distances(padded, joints_model)).argmin(-1)  # (B,Vmax)
    return [nearest[index, :count] for index, count in enumerate(counts)]


class StreamMesher:
    """Meshes successive frames of the same B hands, each frame seeded by the previous one's surfaces.

    ``step(canonical)`` takes the canonical inputs of one frame (``canonicalize`` of B hands) and returns
    B model-frame meshes like ``meshing.extract_model_meshes``; a change of batch size restarts the stream."""

    def __init__(self, decoder: OccupancyDecoder, config: StreamConfig | None = None) -> None:
        self.decoder = decoder
        self.config = config or StreamConfig()
        if self.config.resolution not in MISE_LEVELS:
            raise ValueError(f"resolution: expected one of {list(MISE_LEVELS)}, got {self.config.resolution}")
        self.stats = StreamStats()
        self.previous: _Previous | None = None

    def reset(self) -> None:
        """Forget the previous frame: the next one is meshed from scratch."""
        self.previous = None

    @torch.inference_mode()
    def step(self, canonical: Canonical, stats: MeshStats | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Canonical inputs of B hands -> B (vertices (V,3) model frame, faces (F,3) outward)."""
        stats = stats if stats is not None else MeshStats()
        batch, device = len(canonical.joints), canonical.joints.device
        joints_model = canonical.joints.double() * MODEL_SCALE
        self.stats.frames += 1
        meshes: list[tuple[np.ndarray, np.ndarray] | None] = [None] * batch
        parts: list[torch.Tensor | None] = [None] * batch
        previous = self.previous
        if previous is None or len(previous.joints) != batch:
            self.stats.count_fallback("start", batch)
        else:
            motion = (canonical.joints.double() - previous.joints).norm(dim=-1).amax(-1).cpu().numpy()
            self.stats.count_fallback("jump", int((motion > self.config.max_joint_motion_m).sum()))
            seeded = np.flatnonzero(motion <= self.config.max_joint_motion_m)
            if len(seeded):
                for hand, result in zip(seeded, self._seeded(canonical, previous, seeded, stats), strict=True):
                    if result is not None:
                        meshes[hand], parts[hand] = result
        redo = [hand for hand in range(batch) if meshes[hand] is None]
        self.stats.seeded += batch - len(redo)
        if redo:
            index = torch.as_tensor(redo, device=device)
            redone = extract_model_meshes(
                self.decoder, select_hands(canonical, index), self.config.resolution, self.config.cull_radius, stats
            )
            redone_parts = nearest_parts([torch.from_numpy(v).to(device) for v, _ in redone], joints_model[index])
            for hand, mesh, mesh_parts in zip(redo, redone, redone_parts, strict=True):
                meshes[hand], parts[hand] = mesh, mesh_parts
        self.previous = _Previous(
            part_matrices=canonical.part_matrices.double(),
            joints=canonical.joints.double(),
            vertices=[torch.from_numpy(v).to(device) for v, _ in meshes],
            parts=parts,
            volumes=np.array([_volume(v, f) for v, f in meshes]),
            part_counts=torch.stack([torch.bincount(p, minlength=canonical.part_matrices.shape[1]) for p in parts]),
        )
        return meshes

    @staticmethod
    def _seed_cells(previous: _Previous, hands: np.ndarray, index: torch.Tensor, part_matrices: torch.Tensor,
                    crops: GridCrops, resolution: int) -> torch.Tensor:
        """Carry the previous surfaces of ``hands`` along the bones -> (H,X,Y,Z) bool: the cells holding a carried vertex."""
        device = part_matrices.device
        vertices = torch.cat([previous.vertices[h] for h in hands])
        sizes = torch.tensor([len(previous.vertices[h]) for h in hands], device=device)
        owner = torch.repeat_interleave(torch.arange(len(hands), device=device), sizes)
        parts = torch.cat([previous.parts[h] for h in hands])
        moved = carry_vertices(vertices, owner, parts, previous.part_matrices[index], part_matrices.double())
        grid = (moved / BOX_SIZE + 0.5) * resolution - crops.origin[owner]  # (T,3) fractional crop indices
        cell_shape = torch.tensor(crops.cells, device=device)
        seeds = torch.minimum(grid.floor().long().clamp_min(0), cell_shape - 1)  # (T,3) cell of each vertex
        cells = torch.zeros(len(hands), *crops.cells, dtype=torch.bool, device=device)
        cells[owner, seeds[:, 0], seeds[:, 1], seeds[:, 2]] = True
        return cells

    def _seeded(
        self, canonical: Canonical, previous: _Previous, hands: np.ndarray, stats: MeshStats
    ) -> list[tuple[tuple[np.ndarray, np.ndarray], torch.Tensor] | None]:
        """Hands ``hands`` (H,) of the frame -> per hand ((vertices, faces) model frame, (V,) vertex parts) from the band, None where it failed."""
        config, device = self.config, canonical.joints.device
        resolution = config.resolution
        index = torch.as_tensor(hands, device=device)
        part_matrices = canonical.part_matrices[index]
        code = self.decoder.hand_code(part_matrices.float(), canonical.bone_lengths[index].float())
        joints_model = canonical.joints[index].float() * MODEL_SCALE
        coarse, _ = MISE_LEVELS[resolution]
        margin = config.cull_radius * MODEL_SCALE if config.cull_radius is not None else BOX_SIZE
        crops = GridCrops(joints_model, resolution, resolution // coarse, margin)
        count = len(hands)
        cells = self._seed_cells(previous, hands, index, part_matrices, crops, resolution)
        # 2-3. Evaluate the band, then grow it across every face the surface leaves it by.
        shape = (count, *(n + 1 for n in crops.cells))
        values = torch.zeros(shape, device=device)
        known = torch.zeros(shape, dtype=torch.bool, device=device)
        failed = torch.zeros(count, dtype=torch.bool, device=device)
        rounds = 0
        while True:
            wanted = (_corner_points(cells) & ~known).nonzero()  # (N,4): hand, crop index
            if len(wanted):
                started = time.perf_counter()
                hand = wanted[:, 0]
                points = crops.model_points(wanted[:, 1:], hand, resolution)
                new_values, evaluated = evaluate_occupancy(self.decoder, code, joints_model, points, hand, None)
                where = tuple(wanted.T)
                values[where], known[where] = new_values, True
                stats.occupancy_s += time.perf_counter() - started
                stats.points_evaluated += evaluated
                stats.refinement_rounds.append(evaluated)
                self.stats.points_evaluated += evaluated
                rounds += 1
            exits, on_edge = surface_exits(values, known)
            failed |= on_edge
            missing = exits & ~cells
            missing[failed] = False
            if not bool(missing.any()):
                break
            if rounds >= config.max_closure_rounds:
                failed |= missing.flatten(1).any(1)
                break
            cells |= missing
        self.stats.closure_rounds.append(rounds)
        started = time.perf_counter()
        meshes = meshes_from_grids(values, known, crops.origin, resolution, stats)
        stats.marching_cubes_s += time.perf_counter() - started
        # 4. A piece lost on the way (a fingertip outside the band, say) shows as volume or vertices missing.
        mesh_parts = nearest_parts([torch.from_numpy(v).to(device) for v, _ in meshes], joints_model.double())
        results = []
        for slot, hand in enumerate(hands):
            reason = "band_open" if bool(failed[slot]) else self._lost_piece(meshes[slot], mesh_parts[slot], previous, hand)
            if reason:
                self.stats.count_fallback(reason, 1)
            results.append(None if reason else (meshes[slot], mesh_parts[slot]))
        return results

    def _lost_piece(
        self, mesh: tuple[np.ndarray, np.ndarray], parts: torch.Tensor, previous: _Previous, hand: int
    ) -> str | None:
        """Why a seeded mesh of ``hand`` lost a piece against the previous frame ('volume', 'part'), or None."""
        vertices, faces = mesh
        volume = _volume(vertices, faces)
        if len(faces) == 0 or abs(volume - previous.volumes[hand]) > self.config.max_volume_change * previous.volumes[hand]:
            return "volume"
        before = previous.part_counts[hand]
        after = torch.bincount(parts, minlength=len(before))
        checked = before >= self.config.min_part_vertices
        if bool((after[checked] < self.config.min_part_share * before[checked]).any()):
            return "part"
        return None


def _volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """(V,3), (F,3) closed outward mesh -> enclosed volume, units^3 (sum of signed tetrahedra with the origin)."""
    if len(faces) == 0:
        return 0.0
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def select_hands(canonical: Canonical, index: torch.Tensor) -> Canonical:
    """The canonical inputs of the hands ``index`` (H,)."""
    return Canonical(
        canonical.normalization_matrix[index], canonical.part_matrices[index], canonical.bone_lengths[index],
        canonical.joints[index],
    )
