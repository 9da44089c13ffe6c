"""The engine: owns the loaded models and the execution lanes; the async API both front ends call.

Front ends parse their wire format into numpy arrays and call ``mesh``, ``occupancy`` or
``grasps``; the engine validates every input before it is queued (so a bad hand never reaches a
batch), routes the work to its lane and records model-side metrics. Two lanes, each a batcher with
its own queue, workers and limits: ``mesh`` (meshes and occupancy queries, batched across requests)
and ``grasps`` (grasp sampling, including the meshing of the sampled hands). A full grasp lane
refuses grasps while meshes keep flowing, and on CPU the grasp threads run at a lower priority so
the OS gives the cores to meshes first. Models that are missing are reported by ``describe`` and
make their endpoints raise ``ModelUnavailableError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

import models
from models import grasps, skeleton
from service.batching import Batcher
from service.codecs import InputError, check_object_size
from service.config import Settings
from service.metrics import Metrics

log = logging.getLogger("halo.engine")

# The hand meshed once at start-up so the first request does not pay for lazy initialisation.
SAMPLE_KEYPOINTS = Path(models.__file__).resolve().parent / "assets" / "sample_keypoints.json"


# Which lane serves each model endpoint.
LANE_OF_ENDPOINT = {"mesh": "mesh", "occupancy": "mesh", "grasps": "grasps"}


class ModelUnavailableError(Exception):
    """The model an endpoint needs is not loaded; the message says why."""


class ShuttingDownError(Exception):
    """The server is stopping and takes no new work."""


@dataclass(frozen=True)
class HandInput:
    """One validated hand: (21,3) keypoints in metres, in ``joint_order``, of handedness ``hand``."""

    keypoints: np.ndarray
    joint_order: str
    hand: str


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


@dataclass(frozen=True)
class GraspOptions:
    """How a grasp request wants its grasps (the same on REST and gRPC)."""

    refine: bool = True
    resolution: int | None = None  # None: the server's default
    physics: bool = False
    rank: str | None = None  # None / "none": sampling order; "stability": most stable first


class Engine:
    """Loaded models + execution lanes + metrics, shared by the REST and gRPC front ends."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.mesh_lane = Batcher(
            metrics,
            lane="mesh",
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_queue_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            workers=settings.mesh_workers,
        )
        # Each grasp job is its own batch (its key is unique), so no batching delay applies.
        self.grasp_lane = Batcher(
            metrics,
            lane="grasps",
            max_batch_size=1,
            max_delay_s=0.0,
            max_queue_size=settings.max_grasp_queue,
            workers=settings.grasp_workers,
            nice=settings.grasp_nice,
        )
        self.device = str(models.resolve_device(settings.device))
        self.base: Any = None
        self.vae: Any = None
        self.unavailable: dict[str, str] = {}
        self.ready = False
        self.accepting = True

    async def start(self) -> None:
        """Load the models (in the compute thread), warm up, start batching; ready if the base model loaded."""
        if self.settings.torch_threads:
            # Process-wide; on a busy CPU, OpenMP threads waiting for each other cost far more than they gain.
            torch.set_num_threads(self.settings.torch_threads)
        self.mesh_lane.start()
        self.grasp_lane.start()
        await self.mesh_lane.run_blocking(self._load_models)
        if self.base is None:
            return
        if self.settings.warmup:
            started = time.perf_counter()
            await self.mesh_lane.run_blocking(self._warm_up)
            if self.vae is not None:
                # The first grasp request would otherwise pay about a second of one-time set-up.
                await self.grasp_lane.run_blocking(self._warm_up_grasps)
            log.info("warm-up done", extra={"seconds": round(time.perf_counter() - started, 3)})
        self.ready = True
        self.metrics.ready.set(1)

    def _load_models(self) -> None:
        try:
            self.base = models.load_base(self.settings.base_checkpoint, device=self.device)
        except Exception as error:
            self.unavailable["base"] = f"base model not available: {error}"
            log.error("base model not loaded", extra={"reason": str(error)})
        else:
            self._record_model("base", self.base)
        if self.base is None:
            self.unavailable["vae"] = "grasp model not available: it needs the base model"
            return
        try:
            self.vae = grasps.load_vae(self.settings.vae_checkpoint, base=self.base, device=self.device)
        except Exception as error:
            self.unavailable["vae"] = f"grasp model not available: {error}"
            log.warning("grasp model not loaded", extra={"reason": str(error)})
        else:
            self._record_model("vae", self.vae)

    def _record_model(self, role: str, model: Any) -> None:
        card = getattr(model, "card", {}) or {}
        labels = (role, str(card.get("name", role)), str(card.get("sha256", "")), self.device)
        self.metrics.model_info.labels(*labels).set(1)
        # Not "name": that is a LogRecord attribute, and logging refuses to overwrite it.
        log.info("model loaded", extra={"model": role, "checkpoint": card.get("name"), "device": self.device})

    def _warm_up(self) -> None:
        sample = json.loads(SAMPLE_KEYPOINTS.read_text())
        kps = np.asarray(sample["keypoints"], dtype=np.float64)[None]
        resolution = min(self.settings.resolutions)
        self.base.mesh_with_stats(kps, joint_order=sample["joint_order"], hand=sample["hand"], resolution=resolution)

    def _warm_up_grasps(self) -> None:
        cube = trimesh.creation.box(extents=(0.06, 0.06, 0.06))
        # With the physics check: its worker processes start now, not on the first request.
        self.vae.sample(cube, n=2, seed=0, refine=True, resolution=min(self.settings.resolutions), physics=True)

    def describe(self) -> dict:
        """What is loaded: per model its card and device, or why it is unavailable."""
        described = {}
        for role, model in (("base", self.base), ("vae", self.vae)):
            if model is not None:
                card = dict(getattr(model, "card", {}) or {})
                described[role] = {"available": True, "device": self.device, "card": card}
            else:
                described[role] = {"available": False, "reason": self.unavailable.get(role, "loading")}
        return {
            "models": described,
            "resolutions": list(self.settings.resolutions),
            "default_resolution": self.settings.default_resolution,
            "max_batch_size": self.settings.max_batch_size,
        }

    def update_gpu_memory(self) -> None:
        """Refresh the GPU memory gauges (CUDA only)."""
        if not self.device.startswith("cuda"):
            return
        import torch

        self.metrics.gpu_memory.labels(self.device, "allocated").set(torch.cuda.memory_allocated(self.device))
        self.metrics.gpu_memory.labels(self.device, "reserved").set(torch.cuda.memory_reserved(self.device))

    def deadline(self, seconds: float | None = None) -> float:
        """A monotonic deadline: the caller's remaining time, capped by the request timeout."""
        budget = self.settings.request_timeout_s if seconds is None else min(seconds, self.settings.request_timeout_s)
        return time.monotonic() + budget

    def resolution(self, requested: int | None) -> int:
        """The request's resolution (None or 0: the default), checked against the allowed set."""
        if not requested:
            return self.settings.default_resolution
        if requested not in self.settings.resolutions:
            raise InputError(f"resolution: {requested} is not one of {list(self.settings.resolutions)}")
        return requested

    def require(self, role: str) -> Any:
        """The loaded ``base`` or ``vae`` model; raises if stopping or the model is unavailable."""
        model = self.base if role == "base" else self.vae
        if model is None:
            raise ModelUnavailableError(self.unavailable.get(role, f"{role} model is still loading"))
        return model

    async def mesh(self, hands: Sequence[HandInput], resolution: int | None, deadline: float) -> list[trimesh.Trimesh]:
        """Validated hands -> one mesh each (keypoint frame, metres), batched with other requests."""
        self.require("base")
        resolution = self.resolution(resolution)
        if not 1 <= len(hands) <= self.settings.max_hands:
            raise InputError(f"hands: between 1 and {self.settings.max_hands} hands per request")
        return await self.mesh_lane.submit(hands, ("mesh", resolution), self._mesh_batch_fn(resolution), deadline)

    def _mesh_batch_fn(self, resolution: int):
        def run(hands: Sequence[HandInput]) -> list[trimesh.Trimesh]:
            kps = np.stack([h.keypoints for h in hands])
            meshes, stats = self.base.mesh_with_stats(
                kps,
                joint_order=[h.joint_order for h in hands],
                hand=[h.hand for h in hands],
                resolution=resolution,
            )
            self._record_stats(stats, len(hands), resolution)
            return list(meshes)

        return run

    def _record_stats(self, stats: Any, batch_size: int, resolution: int) -> None:
        self.metrics.batch_size.observe(batch_size)
        self.metrics.stage_duration.labels("canonicalize").observe(stats.canonicalize_s)
        self.metrics.stage_duration.labels("occupancy").observe(stats.occupancy_s)
        self.metrics.stage_duration.labels("marching_cubes").observe(stats.marching_cubes_s)
        self.metrics.points_evaluated.inc(stats.points_evaluated)
        self.metrics.meshes.labels(str(resolution)).inc(batch_size)

    async def occupancy(self, hand: HandInput, points: np.ndarray, deadline: float) -> np.ndarray:
        """Hand + (N,3) points, metres, keypoint frame -> (N,) occupancy probabilities."""
        self.require("base")
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise InputError("points: expected a non-empty list of [x, y, z]")
        if len(points) > self.settings.max_points:
            raise InputError(f"points: {len(points)} points; the limit is {self.settings.max_points}")
        if not np.isfinite(points).all():
            raise InputError("points: contains NaN or Inf")

        def run(jobs: Sequence[tuple[HandInput, np.ndarray]]) -> list[np.ndarray]:
            ((job_hand, job_points),) = jobs
            probs = self.base.occupancy(
                job_hand.keypoints, job_points, joint_order=job_hand.joint_order, hand=job_hand.hand
            )
            self.metrics.points_evaluated.inc(len(job_points))
            return [np.asarray(probs, dtype=np.float64)]

        (probs,) = await self.mesh_lane.submit([(hand, points)], ("occupancy", object()), run, deadline)
        return probs

    def grasp_count(self, requested: int | None) -> int:
        """Number of grasps to sample (None or 0: the default), checked against the limit."""
        count = requested or self.settings.default_grasp_samples
        if not 1 <= count <= self.settings.max_grasp_samples:
            raise InputError(f"num_samples: must be between 1 and {self.settings.max_grasp_samples}")
        return count

    async def grasps(self, obj: trimesh.Trimesh, count: int, seed: int, options: GraspOptions,
                     deadline: float) -> list[Any]:
        """Object mesh (metres) -> ``count`` grasps sampled together with ``seed`` (one queued job).

        ``options.physics`` adds the MuJoCo check to each grasp; ``options.rank="stability"`` implies it and
        returns the most stable of up to twice as many samples (within ``max_grasp_samples``).
        """
        check_object_size(obj, self.settings.max_object_faces)
        resolution = self.resolution(options.resolution)
        try:
            # Repairing and closing a large or broken mesh takes up to a second: not on the event loop.
            obj = await asyncio.to_thread(grasps.prepare_object, obj)
            if options.physics or options.rank == "stability":
                grasps.check_physics_object(obj)
        except ValueError as error:
            raise InputError(str(error)) from error
        vae = self.require("vae")
        limit = self.settings.max_grasp_samples

        def run(jobs: Sequence[tuple[int, int]]) -> list[list[Any]]:
            ((n, job_seed),) = jobs
            sampled = vae.sample(obj, n=n, seed=job_seed, refine=options.refine, resolution=resolution,
                                 physics=options.physics, rank=options.rank, max_candidates=limit)
            return [sampled]

        (sampled,) = await self.grasp_lane.submit([(count, seed)], ("grasps", object()), run, deadline)
        self.metrics.observe_physics([grasp.metrics for grasp in sampled])
        return sampled

    async def stream_grasps(self, obj: trimesh.Trimesh, count: int, seed: int, options: GraspOptions,
                            deadline: float) -> AsyncIterator[Any]:
        """Grasps one by one, each sent when ready: grasp i is a one-grasp sample with seed ``seed + i``
        (with ``rank="stability"``, the more stable of two samples)."""
        for index in range(count):
            (grasp,) = await self.grasps(obj, 1, seed + index, options, deadline)
            yield grasp

    @property
    def queued(self) -> int:
        """Work items waiting in all lanes."""
        return self.mesh_lane.depth + self.grasp_lane.depth

    def check_accepting(self, endpoint: str) -> None:
        """Front ends call this as a request arrives: once shutdown began, new requests are refused."""
        if not self.accepting:
            self.metrics.reject(LANE_OF_ENDPOINT[endpoint], "shutting_down")
            raise ShuttingDownError("server is shutting down")

    def begin_shutdown(self) -> None:
        """Stop being ready and stop taking new requests; requests already received still finish."""
        self.ready = False
        self.accepting = False
        self.metrics.ready.set(0)

    async def drain(self) -> None:
        """Wait for every accepted item of both lanes to finish."""
        await asyncio.gather(self.mesh_lane.drain(), self.grasp_lane.drain())

    async def close(self) -> None:
        """Release both lanes and their compute threads."""
        await self.mesh_lane.close()
        await self.grasp_lane.close()
