"""The public HALO base model: keypoints -> occupancy and watertight meshes, right or left hands."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from .allocator import keep_freed_memory
from .canonical import MODEL_SCALE, Canonical, canonicalize, transform_points, validate_keypoints
from .meshing import DEFAULT_CULL_RADIUS_M, MeshStats, extract_model_meshes, to_keypoint_frame
from .occupancy import OccupancyDecoder, load_decoder
from .skeleton import MIRROR, resolve_hand
from .smoothing import DEFAULT_SMOOTH_ITERATIONS, taubin_smooth, vertex_normals
from .streaming import StreamConfig, StreamMesher, StreamStats, select_hands, step_streams

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED_BASE = CHECKPOINT_DIR / "halo_base.safetensors"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:i`` -> torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but CUDA is not available")
    return device


def _per_hand(value: str | Sequence[str], count: int, name: str) -> list[str]:
    """One setting or one per hand -> a list of ``count`` settings."""
    if isinstance(value, str):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{name}: got {len(values)} values for {count} hands")
    return values


class HaloBase:
    """A loaded HALO base model. Keypoints are (21,3) or (B,21,3) metres in the keypoint frame."""

    def __init__(self, decoder: OccupancyDecoder, card: dict, device: torch.device) -> None:
        self.decoder = decoder
        self.card = card
        self.device = device
        self.cull_radius: float | None = DEFAULT_CULL_RADIUS_M

    def prepare(
        self, keypoints: np.ndarray | torch.Tensor, joint_order: str | Sequence[str], hand: str | Sequence[str]
    ) -> tuple[Canonical, np.ndarray]:
        """Validated (B,21,3) keypoints -> (Canonical of the right-hand versions, (B,) bool is_left)."""
        batch = len(keypoints) if np.ndim(keypoints) == 3 else 1
        hands = [resolve_hand(side) for side in _per_hand(hand, batch, "hand")]
        mano = validate_keypoints(keypoints, _per_hand(joint_order, batch, "joint_order"))
        is_left = np.array([side == "left" for side in hands])
        mano[is_left] = mano[is_left] @ MIRROR
        # Canonicalise in float64 (cheap, per hand): float32 arccos near the clip limits costs parity.
        return canonicalize(torch.from_numpy(mano).to(self.device)), is_left

    @torch.inference_mode()
    def mesh_with_stats(
        self,
        keypoints: np.ndarray | torch.Tensor,
        joint_order: str | Sequence[str] = "mano",
        hand: str | Sequence[str] = "right",
        resolution: int = 128,
        smooth: int = 0,
    ) -> tuple[list[trimesh.Trimesh], MeshStats]:
        """(B,21,3) or (21,3) keypoints, metres -> (B watertight meshes in the keypoint frame, metres; stage timings).

        ``smooth``: Taubin iterations (``smoothing.taubin_smooth``); 0 keeps the marching-cubes surface of
        the original HALO extraction (the parity mode)."""
        _check_smooth(smooth)
        stats = MeshStats()
        started = time.perf_counter()
        canonical, is_left = self.prepare(keypoints, joint_order, hand)
        stats.canonicalize_s = time.perf_counter() - started
        model_meshes = extract_model_meshes(self.decoder, canonical, resolution, self.cull_radius, stats)
        return finish_meshes(model_meshes, canonical, is_left, smooth), stats

    def mesh(
        self,
        keypoints: np.ndarray | torch.Tensor,
        joint_order: str | Sequence[str] = "mano",
        hand: str | Sequence[str] = "right",
        resolution: int = 128,
        smooth: int = 0,
    ) -> trimesh.Trimesh | list[trimesh.Trimesh]:
        """(21,3) keypoints -> one watertight mesh; (B,21,3) -> a list of B meshes (metres, keypoint frame).

        ``smooth``: Taubin iterations, 0 (the default) for the original extraction's surface."""
        meshes, _ = self.mesh_with_stats(keypoints, joint_order, hand, resolution, smooth)
        return meshes[0] if np.ndim(keypoints) == 2 else meshes

    def mesh_stream(
        self, resolution: int = 64, smooth: int = DEFAULT_SMOOTH_ITERATIONS, config: StreamConfig | None = None
    ) -> MeshStream:
        """A stream that meshes successive frames of the same hands, each seeded by the last (``models.streaming``).

        Live meshes are for viewing, so they are smoothed by default (``smooth=0`` for the original surface)."""
        _check_smooth(smooth)
        config = config or StreamConfig(resolution=resolution, cull_radius=self.cull_radius)
        return MeshStream(self, StreamMesher(self.decoder, config), smooth)

    def occupancy(
        self,
        keypoints: np.ndarray | torch.Tensor,
        points: np.ndarray | torch.Tensor,
        joint_order: str = "mano",
        hand: str = "right",
    ) -> np.ndarray:
        """(21,3) keypoints, (N,3) points (metres, keypoint frame) -> (N,) occupancy probabilities."""
        canonical, is_left = self.prepare(np.asarray(keypoints).reshape(21, 3), joint_order, hand)
        points = torch.as_tensor(np.asarray(points, dtype=np.float64).reshape(-1, 3), device=self.device)
        if is_left[0]:
            points = points @ torch.as_tensor(MIRROR, device=self.device)
        model_points = transform_points(canonical.normalization_matrix, points[None]) * MODEL_SCALE
        code = self.decoder.hand_code(canonical.part_matrices.float(), canonical.bone_lengths.float())
        return self.decoder.occupancy(model_points.float(), code)[0].cpu().numpy()


class MeshStream:
    """Meshes the frames of a tracked hand (or B hands) one after the other; see ``HaloBase.mesh_stream``.

    Each ``mesh`` call is one frame; its meshes match ``HaloBase.mesh`` of the same keypoints (same
    resolution and smoothing) while costing less, because the frame is meshed around the last one."""

    def __init__(self, base: HaloBase, mesher: StreamMesher, smooth: int) -> None:
        self.base = base
        self.mesher = mesher
        self.smooth = smooth

    @property
    def stats(self) -> StreamStats:
        """Frames meshed, hand-frames seeded by the previous frame, fallbacks to the full extraction by reason."""
        return self.mesher.stats

    def mesh_with_stats(
        self,
        keypoints: np.ndarray | torch.Tensor,
        joint_order: str | Sequence[str] = "mano",
        hand: str | Sequence[str] = "right",
        helper: Executor | None = None,
    ) -> tuple[list[trimesh.Trimesh], MeshStats]:
        """One frame: (B,21,3) or (21,3) keypoints, metres -> (B watertight meshes, keypoint frame, metres; stage timings).

        ``helper``: a thread pool that takes half of each decoder call (an otherwise idle core)."""
        (meshes,), stats = mesh_streams([StreamKeypoints(self, keypoints, joint_order, hand)], helper)
        return meshes, stats

    def mesh(
        self,
        keypoints: np.ndarray | torch.Tensor,
        joint_order: str | Sequence[str] = "mano",
        hand: str | Sequence[str] = "right",
    ) -> trimesh.Trimesh | list[trimesh.Trimesh]:
        """One frame: (21,3) keypoints -> one watertight mesh; (B,21,3) -> a list of B meshes."""
        meshes, _ = self.mesh_with_stats(keypoints, joint_order, hand)
        return meshes[0] if np.ndim(keypoints) == 2 else meshes

    def reset(self) -> None:
        """Forget the previous frame (e.g. the tracker lost the hand): the next frame is meshed from scratch."""
        self.mesher.reset()


@dataclass
class StreamKeypoints:
    """One frame of a stream: its keypoints ((21,3) or (B,21,3) metres), joint order and hand (one, or one per hand)."""

    stream: MeshStream
    keypoints: np.ndarray | torch.Tensor
    joint_order: str | Sequence[str] = "mano"
    hand: str | Sequence[str] = "right"


@torch.inference_mode()
def mesh_streams(
    frames: Sequence[StreamKeypoints], helper: Executor | None = None
) -> tuple[list[list[trimesh.Trimesh]], MeshStats]:
    """One frame of each of several streams of one base model -> (per stream its B_i meshes, stage timings of them all).

    Every stage runs once for the hands of all the frames (``streaming.step_streams``), so live streams
    meshed together share the per-call costs; each stream keeps its own seed and smoothing."""
    base = frames[0].stream.base
    if any(frame.stream.base is not base for frame in frames):
        raise ValueError("frames: streams meshed together must belong to one base model")
    stats = MeshStats()
    started = time.perf_counter()
    sizes = [len(frame.keypoints) if np.ndim(frame.keypoints) == 3 else 1 for frame in frames]
    if len(frames) == 1:
        keypoints, joint_orders, sides = frames[0].keypoints, frames[0].joint_order, frames[0].hand
    else:  # one batch of mano-order hands
        keypoints = np.concatenate([validate_keypoints(frame.keypoints, frame.joint_order) for frame in frames])
        joint_orders = "mano"
        sides = [side for frame, size in zip(frames, sizes, strict=True) for side in _per_hand(frame.hand, size, "hand")]
    canonical, is_left = base.prepare(keypoints, joint_orders, sides)
    stats.canonicalize_s = time.perf_counter() - started
    bounds = np.cumsum([0, *sizes])
    canonicals = [
        select_hands(canonical, torch.arange(int(start), int(stop), device=base.device))
        for start, stop in itertools.pairwise(bounds)
    ]
    model_meshes = step_streams([frame.stream.mesher for frame in frames], canonicals, stats, helper)
    meshes = [
        finish_meshes(stream_meshes, hands, is_left[start:stop], frame.stream.smooth)
        for frame, stream_meshes, hands, start, stop in zip(
            frames, model_meshes, canonicals, bounds[:-1], bounds[1:], strict=True
        )
    ]
    return meshes, stats


def _check_smooth(smooth: int) -> None:
    """Raise a ValueError naming ``smooth`` unless it is a whole number of iterations >= 0."""
    if isinstance(smooth, bool) or not isinstance(smooth, int | np.integer) or smooth < 0:
        raise ValueError(f"smooth: expected a whole number of Taubin iterations >= 0, got {smooth!r}")


def finish_meshes(
    model_meshes: list[tuple[np.ndarray, np.ndarray]], canonical: Canonical, is_left: np.ndarray, smooth: int
) -> list[trimesh.Trimesh]:
    """B model-frame (vertices, faces) -> B meshes in the keypoint frame (metres), mirrored back where left,
    smoothed by ``smooth`` Taubin iterations, with per-vertex normals for smooth shading."""
    meshes = []
    for (vertices, faces), normalization, left in zip(
        model_meshes, canonical.normalization_matrix, is_left, strict=True
    ):
        vertices = to_keypoint_frame(vertices, normalization)
        if left:  # mirror back; a reflection turns the faces inside out, so flip their winding
            vertices, faces = vertices @ MIRROR, faces[:, ::-1].copy()
        vertices = taubin_smooth(vertices, faces, smooth)
        normals = vertex_normals(vertices, faces)
        meshes.append(trimesh.Trimesh(vertices, faces, vertex_normals=normals, process=False))
    return meshes


def load_base(path: str | Path | None = None, device: str | torch.device = "cpu") -> HaloBase:
    """Load a base model: ``None`` -> the shipped checkpoint; also our .safetensors or the published ``model_best.pt``."""
    if path is None:
        if not SHIPPED_BASE.is_file():
            raise FileNotFoundError(
                "checkpoint: the shipped base checkpoint is not installed; pass the path of a checkpoint "
                "(ours or the published HALO model_best.pt)"
            )
        path = SHIPPED_BASE
    device = resolve_device(device)
    if device.type == "cpu":
        keep_freed_memory()
    decoder, card = load_decoder(path, device)
    card["device"] = str(device)
    return HaloBase(decoder, card, device)
