"""Every request input, parsed and checked once at the edge, the same way for REST and gRPC.

Front ends turn their wire format into the raw parts (keypoints, points, an object mesh, grasp
options) and hand them to ``Inputs``, which checks them against the models' rules and the server's
limits and returns a job the engine runs without checking again. Every error is an ``InputError``
(or ``PayloadTooLargeError``) whose message starts with the offending field.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import models
from models import RESOLUTIONS, grasps, skeleton
from models.smoothing import DEFAULT_SMOOTH_ITERATIONS
from service.config import Settings
from service.errors import InputError, PayloadTooLargeError

UPLOAD_FORMATS = ("obj", "ply", "stl", "glb")
RESOLUTION_HELP = f"Final MISE grid: {', '.join(map(str, RESOLUTIONS[:-1]))} or {RESOLUTIONS[-1]} (server maximum applies)."
# Ten iterations take the grid ridges off; far more starts to round the fingertips, and each costs CPU per frame.
MAX_SMOOTH_ITERATIONS = 50


class GraspOptions(BaseModel):
    """How a grasp request wants its grasps: the one declaration of these options and their defaults."""

    model_config = ConfigDict(frozen=True)

    refine: bool = True
    resolution: int | None = Field(None, description=RESOLUTION_HELP)
    physics: bool = Field(
        False,
        description="Check each grasp in MuJoCo (object under gravity along 6 directions; adds sim_displacement_cm, "
        "sim_displacement_worst_cm, sim_directions_held, sim_settle_cm, stable). Costs ~0.05-0.4 s per grasp.",
    )
    rank: grasps.RankName = Field(
        "none", description="stability: return the most stable of up to twice as many samples (implies physics)."
    )


@dataclass(frozen=True)
class HandInput:
    """One validated hand: (21,3) keypoints in metres, in ``joint_order``, of handedness ``hand``."""

    keypoints: np.ndarray
    joint_order: str
    hand: str


@dataclass(frozen=True)
class MeshJob:
    """Validated hands to mesh at an allowed ``resolution``."""

    hands: Sequence[HandInput]
    resolution: int


@dataclass(frozen=True)
class StreamFrame:
    """One validated live-stream frame: the client's id for it, the hand, and how to mesh it."""

    frame_id: int
    hand: HandInput
    resolution: int
    smooth: int  # Taubin iterations
    arrived: float = field(default_factory=time.perf_counter)  # its server latency counts from here


@dataclass(frozen=True)
class RejectedFrame:
    """A live-stream frame that failed its checks (``frame_id`` None when the message had no readable id)."""

    frame_id: int | None
    error: InputError


@dataclass(frozen=True)
class OccupancyJob:
    """A validated hand and (N,3) finite query points, metres, keypoint frame."""

    hand: HandInput
    points: np.ndarray


@dataclass(frozen=True)
class GraspJob:
    """A validated object (metres) and ``count`` grasps to sample from ``seed`` with ``options``."""

    obj: trimesh.Trimesh
    count: int
    seed: int
    options: GraspOptions
    resolution: int


def validation_message(errors: Sequence[Any]) -> str:
    """pydantic's first error -> ``field: message`` (model-level messages already start with their field)."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "header")]
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if message.split(":", 1)[0] in ("keypoints",):
        return message
    return f"{'.'.join(loc) or 'body'}: {message}"


def grasp_options(fields: dict[str, Any]) -> GraspOptions:
    """The options a request set (absent ones take their defaults) -> GraspOptions; InputError names the field."""
    try:
        return GraspOptions.model_validate(fields)
    except ValidationError as error:
        raise InputError(validation_message(error.errors())) from error


def parse_hand(keypoints: Any, joint_order: str = "mano", hand: str = "right", field: str = "") -> HandInput:
    """Raw keypoints + names -> HandInput; raises InputError naming the field (prefixed by ``field``)."""
    try:
        array = np.asarray(keypoints, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{field}keypoints: not a 21 x 3 array of numbers") from error
    if array.shape != (21, 3):
        raise InputError(f"{field}keypoints: expected 21 x 3 values, got shape {list(array.shape)}")
    try:
        order = skeleton.resolve_joint_order(joint_order)
        handedness = skeleton.resolve_hand(hand)
        models.validate_keypoints(array, joint_order=order)
    except ValueError as error:
        raise InputError(f"{field}{error}") from error
    return HandInput(array, order, handedness)


def arrays_to_mesh(vertices: np.ndarray, faces: np.ndarray, field: str = "object") -> trimesh.Trimesh:
    """(N,3) metres + (M,3) indices -> mesh, after shape, finiteness and index checks."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) < 3:
        raise InputError(f"{field}.vertices: expected at least 3 rows of [x, y, z]")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) < 1:
        raise InputError(f"{field}.faces: expected at least 1 row of [i, j, k]")
    if not np.isfinite(vertices).all():
        raise InputError(f"{field}.vertices: contains NaN or Inf")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f"{field}.faces: index out of range 0..{len(vertices) - 1}")
    return trimesh.Trimesh(vertices=vertices, faces=faces.astype(np.int64), process=False)


def packed_to_mesh(vertices: bytes, faces: bytes, field: str = "mesh") -> trimesh.Trimesh:
    """Packed float32 / uint32 little-endian bytes -> mesh, checking lengths and indices."""
    if len(vertices) % 12 or len(faces) % 12:
        raise InputError(f"{field}: vertices and faces must be whole float32 / uint32 triples")
    v = np.frombuffer(vertices, dtype="<f4").reshape(-1, 3).astype(np.float64)
    f = np.frombuffer(faces, dtype="<u4").reshape(-1, 3).astype(np.int64)
    return arrays_to_mesh(v, f, field)


def check_object_size(mesh: trimesh.Trimesh, max_faces: int, field: str = "object") -> trimesh.Trimesh:
    """Reject objects with more than ``max_faces`` faces."""
    if len(mesh.faces) > max_faces:
        raise PayloadTooLargeError(f"{field}.faces: {len(mesh.faces)} faces; the limit is {max_faces}")
    return mesh


def decode_upload(data: bytes, filename: str, max_bytes: int, max_faces: int) -> trimesh.Trimesh:
    """An uploaded .obj / .ply / .stl / .glb file -> one triangle mesh (scenes are concatenated).

    Parsed with trimesh's format readers only (never pickle), after the size checks.
    """
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if ext not in UPLOAD_FORMATS:
        raise InputError(f"file: unsupported extension {ext!r}; expected one of {list(UPLOAD_FORMATS)}")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"file: {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise InputError("file: empty upload")
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=ext, force="mesh", process=False)
    except Exception as error:  # trimesh raises many types on malformed files
        raise InputError(f"file: could not parse the {ext} file ({type(error).__name__})") from error
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError(f"file: the {ext} file holds no triangles")
    check_object_size(loaded, max_faces, field="file")
    return arrays_to_mesh(loaded.vertices, loaded.faces, field="file")


class Inputs:
    """The server's limits applied to parsed inputs: each check lives here once."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def resolution(self, requested: int | None) -> int:
        """The request's resolution (None or 0: the default), checked against the allowed set."""
        if not requested:
            return self.settings.default_resolution
        if requested not in self.settings.resolutions:
            raise InputError(f"resolution: {requested} is not one of {list(self.settings.resolutions)}")
        return requested

    def mesh(self, hands: Sequence[HandInput], resolution: int | None) -> MeshJob:
        """Parsed hands + requested resolution -> a mesh job within the limits."""
        if not 1 <= len(hands) <= self.settings.max_hands:
            raise InputError(f"hands: between 1 and {self.settings.max_hands} hands per request")
        return MeshJob(hands, self.resolution(resolution))

    def smooth(self, requested: int | None) -> int:
        """A live frame's Taubin iterations (None: the live default), checked against the limit."""
        if requested is None:
            return DEFAULT_SMOOTH_ITERATIONS
        if not 0 <= requested <= MAX_SMOOTH_ITERATIONS:
            raise InputError(f"smooth: {requested} is not between 0 and {MAX_SMOOTH_ITERATIONS} Taubin iterations")
        return requested

    def stream_frame(self, frame_id: int, hand: HandInput, resolution: int | None, smooth: int | None) -> StreamFrame:
        """A live-stream frame's parsed hand + options -> a frame within the limits (same resolutions as meshes)."""
        return StreamFrame(frame_id, hand, self.resolution(resolution), self.smooth(smooth))

    def occupancy(self, hand: HandInput, points: Any) -> OccupancyJob:
        """A parsed hand + (N,3) points, metres -> an occupancy job within the limits."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise InputError("points: expected a non-empty list of [x, y, z]")
        if len(points) > self.settings.max_points:
            raise InputError(f"points: {len(points)} points; the limit is {self.settings.max_points}")
        if not np.isfinite(points).all():
            raise InputError("points: contains NaN or Inf")
        return OccupancyJob(hand, points)

    def grasp_count(self, requested: int | None) -> int:
        """Number of grasps to sample (None or 0: the default), checked against the limit."""
        count = requested or self.settings.default_grasp_samples
        if not 1 <= count <= self.settings.max_grasp_samples:
            raise InputError(f"num_samples: must be between 1 and {self.settings.max_grasp_samples}")
        return count

    async def grasps(self, obj: trimesh.Trimesh, count: int | None, seed: int, options: GraspOptions) -> GraspJob:
        """An object mesh (metres) + grasp parameters -> a grasp job on the checked, repaired and closed object."""
        count = self.grasp_count(count)
        check_object_size(obj, self.settings.max_object_faces)
        resolution = self.resolution(options.resolution)
        try:
            # Repairing and closing a large or broken mesh takes up to a second: not on the event loop.
            obj = await asyncio.to_thread(grasps.prepare_object, obj)
            if options.physics or options.rank == "stability":
                grasps.check_physics_object(obj)
        except ValueError as error:
            raise InputError(str(error)) from error
        return GraspJob(obj, count, seed, options, resolution)
