"""Meshing a tracked hand frame after frame, each frame seeded by the surface of the one before.

Consecutive frames of a hand tracker differ by millimetres, so the coarse-to-fine search of
``meshing.mise`` (a coarse lattice over the whole hand, then a few refinement rounds) mostly re-finds
the surface it found one frame earlier. Here frame t+1 starts from frame t's surface instead:

1. **Carry the surface along the bones.** Every vertex of frame t belongs to its nearest HALO part b;
   the part's canonical transform T_b maps the model frame onto the part's canonical frame, so
   ``x' = T_b(t+1)^-1 T_b(t) x`` is where that piece of skin sits in frame t+1 if the part moved rigidly.
2. **Evaluate a narrow band.** The fine grid cells (final resolution) around the carried vertices get
   all their corners evaluated, in one decoder call for every hand of the batch. Each hand works in a
   crop of the grid around its carried surface (plus ``crop_margin_cells``), so the band's bookkeeping,
   the fill and marching cubes touch a few times fewer grid points than the whole-skeleton crop.
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
``step_streams`` meshes one frame of several streams (each with its own seeds) as one batch of hands, so
live streams meshed together pay the per-call costs (decoder calls, band bookkeeping) once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
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
from .smoothing import mesh_volume

CORNERS = torch.cartesian_prod(*[torch.tensor([0, 1])] * 3)  # (8,3) corner offsets of a cell


@dataclass
class StreamConfig:
    """How a stream meshes its frames and when it falls back to the full extraction."""

    resolution: int = 64
    cull_radius: float | None = DEFAULT_CULL_RADIUS_M  # of the full extraction (``meshing.mise``)
    max_joint_motion_m: float = 0.03  # normalised keypoint motion between frames that counts as a jump
    max_closure_rounds: int = 6  # band growth rounds before the frame is meshed from scratch
    crop_margin_cells: int = 4  # grid cells around the carried surface the band may grow into
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
    last_fallbacks: list[str] = field(default_factory=list)  # per hand of the last frame: its fallback, "" if seeded

    def record(self, reasons: list[str], points: int, rounds: int | None) -> None:
        """One frame of the stream: each hand's fallback ("" if seeded), band points evaluated, closure rounds (None: no band)."""
        self.frames += 1
        self.seeded += reasons.count("")
        for reason in reasons:
            if reason:
                self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        self.points_evaluated += points
        if rounds is not None:
            self.closure_rounds.append(rounds)
        self.last_fallbacks = reasons


@dataclass
class HandSeed:
    """One hand's surface in a frame: what the hand's next frame is seeded from."""

    part_matrices: torch.Tensor  # (16,4,4) model frame -> each part's canonical frame, float64
    joints: torch.Tensor  # (21,3) normalised biomech keypoints, metres, float64
    vertices: torch.Tensor  # (V,3) model-frame vertices, float64
    parts: torch.Tensor  # (V,) nearest part of each vertex
    volume: float  # model units^3
    part_counts: torch.Tensor  # (16,) vertices per part


@dataclass
class _Band:
    """The band pass over some hands of a frame (H of them)."""

    meshes: list[tuple[np.ndarray, np.ndarray]]  # H model-frame (vertices, faces)
    open: torch.Tensor  # (H,) bool: the band did not close or reached the crop's edge
    points: torch.Tensor  # (H,) grid points evaluated per hand
    rounds: int  # decoder rounds


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
    B model-frame meshes like ``meshing.extract_model_meshes``; a change of batch size restarts the stream.
    ``step_streams`` meshes one frame of several streams in one batched pass."""

    def __init__(self, decoder: OccupancyDecoder, config: StreamConfig | None = None) -> None:
        self.decoder = decoder
        self.config = config or StreamConfig()
        if self.config.resolution not in MISE_LEVELS:
            raise ValueError(f"resolution: expected one of {list(MISE_LEVELS)}, got {self.config.resolution}")
        self.stats = StreamStats()
        self.previous: list[HandSeed] | None = None

    def reset(self) -> None:
        """Forget the previous frame: the next one is meshed from scratch."""
        self.previous = None

    def step(
        self, canonical: Canonical, stats: MeshStats | None = None, helper: Executor | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Canonical inputs of B hands -> B (vertices (V,3) model frame, faces (F,3) outward)."""
        (meshes,) = step_streams([self], [canonical], stats, helper)
        return meshes


@torch.inference_mode()
def step_streams(
    meshers: Sequence[StreamMesher],
    canonicals: Sequence[Canonical],
    stats: MeshStats | None = None,
    helper: Executor | None = None,
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """One frame of each stream (B_i hands each) -> per stream B_i model-frame (vertices (V,3), faces (F,3)).

    All hands go through each stage together (one decoder call per band round, one full extraction for
    the fallbacks), so streams meshed together pay the per-call costs once. The streams must share the
    decoder and the config. ``helper``: a thread pool that takes half of each decoder call (an idle core)."""
    first = meshers[0]
    if any(mesher.decoder is not first.decoder or mesher.config != first.config for mesher in meshers):
        raise ValueError("meshers: streams meshed together must share the decoder and the stream config")
    stats = stats if stats is not None else MeshStats()
    sizes = [len(canonical.joints) for canonical in canonicals]
    seeds: list[HandSeed | None] = []
    for mesher, size in zip(meshers, sizes, strict=True):
        restart = mesher.previous is None or len(mesher.previous) != size
        seeds += [None] * size if restart else mesher.previous
    canonical = concat_hands(canonicals)
    meshes, new_seeds, reasons, points, rounds = _mesh_frame(first.decoder, first.config, canonical, seeds, stats, helper)
    results, start = [], 0
    for mesher, size in zip(meshers, sizes, strict=True):
        hands = slice(start, start + size)
        start += size
        banded = any(reason not in ("start", "jump") for reason in reasons[hands])
        mesher.previous = new_seeds[hands]
        mesher.stats.record(reasons[hands], int(points[hands].sum()), rounds if banded else None)
        results.append(meshes[hands])
    return results


def _mesh_frame(
    decoder: OccupancyDecoder,
    config: StreamConfig,
    canonical: Canonical,
    seeds: list[HandSeed | None],
    stats: MeshStats,
    helper: Executor | None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[HandSeed], list[str], np.ndarray, int]:
    """B hands, each with its previous frame's seed or None -> (B meshes, B new seeds, B fallbacks "" if seeded, (B,) band points, rounds)."""
    batch, device = len(canonical.joints), canonical.joints.device
    joints = canonical.joints.double()
    reasons = ["start" if seed is None else "" for seed in seeds]
    points = np.zeros(batch, dtype=np.int64)
    meshes: list[tuple[np.ndarray, np.ndarray] | None] = [None] * batch
    parts: list[torch.Tensor | None] = [None] * batch
    volumes = np.zeros(batch)
    rounds = 0
    candidates = [hand for hand in range(batch) if seeds[hand] is not None]
    if candidates:
        previous_joints = torch.stack([seeds[hand].joints for hand in candidates])
        motion = (joints[candidates] - previous_joints).norm(dim=-1).amax(-1).cpu().numpy()
        for hand, moved in zip(candidates, motion, strict=True):
            if moved > config.max_joint_motion_m:
                reasons[hand] = "jump"
    banded = np.array([hand for hand in candidates if not reasons[hand]], dtype=np.int64)
    if len(banded):
        band = _band(decoder, config, canonical, [seeds[hand] for hand in banded], banded, stats, helper)
        rounds, points[banded] = band.rounds, band.points.cpu().numpy()
        band_parts = nearest_parts([torch.from_numpy(v).to(device) for v, _ in band.meshes], joints[banded] * MODEL_SCALE)
        for slot, hand in enumerate(banded):
            volume = mesh_volume(*band.meshes[slot])
            reason = "band_open" if bool(band.open[slot]) else _lost_piece(config, volume, band_parts[slot], seeds[hand])
            reasons[hand] = reason
            if not reason:
                meshes[hand], parts[hand], volumes[hand] = band.meshes[slot], band_parts[slot], volume
    redo = [hand for hand in range(batch) if reasons[hand]]
    if redo:
        index = torch.as_tensor(redo, device=device)
        redone = extract_model_meshes(decoder, select_hands(canonical, index), config.resolution, config.cull_radius, stats)
        redone_parts = nearest_parts([torch.from_numpy(v).to(device) for v, _ in redone], joints[index] * MODEL_SCALE)
        for hand, mesh, mesh_parts in zip(redo, redone, redone_parts, strict=True):
            meshes[hand], parts[hand], volumes[hand] = mesh, mesh_parts, mesh_volume(*mesh)
    part_count = canonical.part_matrices.shape[1]
    new_seeds = [
        HandSeed(
            part_matrices=canonical.part_matrices[hand].double(),
            joints=joints[hand],
            vertices=torch.from_numpy(meshes[hand][0]).to(device),
            parts=parts[hand],
            volume=float(volumes[hand]),
            part_counts=torch.bincount(parts[hand], minlength=part_count),
        )
        for hand in range(batch)
    ]
    return meshes, new_seeds, reasons, points, rounds


def _seed_cells(
    config: StreamConfig, seeds: list[HandSeed], part_matrices: torch.Tensor
) -> tuple[GridCrops, torch.Tensor]:
    """H seeds, (H,16,4,4) this frame's part matrices -> (crops around the carried surfaces, (H,X,Y,Z) bool cells holding a carried vertex)."""
    device, resolution = part_matrices.device, config.resolution
    vertices = torch.cat([seed.vertices for seed in seeds])
    sizes = torch.tensor([len(seed.vertices) for seed in seeds], device=device)
    owner = torch.repeat_interleave(torch.arange(len(seeds), device=device), sizes)
    parts = torch.cat([seed.parts for seed in seeds])
    before = torch.stack([seed.part_matrices for seed in seeds])
    moved = carry_vertices(vertices, owner, parts, before, part_matrices.double())
    grid = (moved / BOX_SIZE + 0.5) * resolution  # (T,3) fractional grid indices
    # The crop: the carried surface's box plus the room the band may grow into; reaching its edge means
    # the surface moved further than that, and the hand is meshed from scratch.
    spread = owner[:, None].expand(-1, 3)
    low = grid.new_full((len(seeds), 3), torch.inf).scatter_reduce(0, spread, grid, "amin")
    high = grid.new_full((len(seeds), 3), -torch.inf).scatter_reduce(0, spread, grid, "amax")
    margin = config.crop_margin_cells
    crops = GridCrops.around_boxes(low - margin, high + margin, resolution, 1)
    grid = grid - crops.origin[owner]  # (T,3) fractional crop indices
    cell_shape = torch.tensor(crops.cells, device=device)
    seeds_at = torch.minimum(grid.floor().long().clamp_min(0), cell_shape - 1)  # (T,3) cell of each vertex
    cells = torch.zeros(len(seeds), *crops.cells, dtype=torch.bool, device=device)
    cells[owner, seeds_at[:, 0], seeds_at[:, 1], seeds_at[:, 2]] = True
    return crops, cells


def _band(
    decoder: OccupancyDecoder,
    config: StreamConfig,
    canonical: Canonical,
    seeds: list[HandSeed],
    hands: np.ndarray,
    stats: MeshStats,
    helper: Executor | None,
) -> _Band:
    """Hands ``hands`` (H,) of the frame with their seeds -> their meshes from the band grown around the carried surfaces."""
    device, resolution = canonical.joints.device, config.resolution
    index = torch.as_tensor(hands, device=device)
    part_matrices = canonical.part_matrices[index]
    code = decoder.hand_code(part_matrices.float(), canonical.bone_lengths[index].float())
    joints_model = canonical.joints[index].float() * MODEL_SCALE
    count = len(hands)
    crops, cells = _seed_cells(config, seeds, part_matrices)
    # 2-3. Evaluate the band, then grow it across every face the surface leaves it by.
    shape = (count, *(n + 1 for n in crops.cells))
    values = torch.zeros(shape, device=device)
    known = torch.zeros(shape, dtype=torch.bool, device=device)
    failed = torch.zeros(count, dtype=torch.bool, device=device)
    points = torch.zeros(count, dtype=torch.long, device=device)
    rounds = 0
    while True:
        wanted = (_corner_points(cells) & ~known).nonzero()  # (N,4): hand, crop index
        if len(wanted):
            started = time.perf_counter()
            hand = wanted[:, 0]
            model_points = crops.model_points(wanted[:, 1:], hand, resolution)
            new_values, evaluated = evaluate_occupancy(decoder, code, joints_model, model_points, hand, None, helper)
            where = tuple(wanted.T)
            values[where], known[where] = new_values, True
            stats.occupancy_s += time.perf_counter() - started
            stats.points_evaluated += evaluated
            stats.refinement_rounds.append(evaluated)
            points += torch.bincount(hand, minlength=count)
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
    started = time.perf_counter()
    meshes = meshes_from_grids(values, known, crops.origin, resolution, stats)
    stats.marching_cubes_s += time.perf_counter() - started
    return _Band(meshes, failed, points, rounds)


def _lost_piece(config: StreamConfig, volume: float, parts: torch.Tensor, seed: HandSeed) -> str:
    """4. A piece lost against the previous frame (a fingertip outside the band, say) -> 'volume', 'part', or ""."""
    if volume == 0.0 or abs(volume - seed.volume) > config.max_volume_change * seed.volume:
        return "volume"
    before = seed.part_counts
    after = torch.bincount(parts, minlength=len(before))
    checked = before >= config.min_part_vertices
    if bool((after[checked] < config.min_part_share * before[checked]).any()):
        return "part"
    return ""


def concat_hands(canonicals: Sequence[Canonical]) -> Canonical:
    """Canonical inputs of several batches -> one Canonical of all their hands, in order."""
    if len(canonicals) == 1:
        return canonicals[0]
    return Canonical(
        torch.cat([canonical.normalization_matrix for canonical in canonicals]),
        torch.cat([canonical.part_matrices for canonical in canonicals]),
        torch.cat([canonical.bone_lengths for canonical in canonicals]),
        torch.cat([canonical.joints for canonical in canonicals]),
    )


def select_hands(canonical: Canonical, index: torch.Tensor) -> Canonical:
    """The canonical inputs of the hands ``index`` (H,)."""
    return Canonical(
        canonical.normalization_matrix[index], canonical.part_matrices[index], canonical.bone_lengths[index],
        canonical.joints[index],
    )
