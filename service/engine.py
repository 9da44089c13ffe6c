"""The engine: the scheduler between the front ends and the models.

Front ends hand it jobs that ``service.inputs`` has already checked; it routes each to its lane, runs
the model there and records model-side metrics. Two lanes, each a batcher with its own queue, workers
and limits: ``mesh`` (meshes and occupancy queries, batched across requests) and ``grasps`` (grasp
sampling, including the meshing of the sampled hands). A full grasp lane refuses grasps while meshes
keep flowing; the grasp jobs run in a worker process of their own (``service.grasp_worker``), so they
never hold the server's interpreter lock, and at a lower CPU priority, so the OS gives the cores to
meshes and live frames first. Models that are missing (``service.loading``) are reported by ``describe`` and make
their endpoints raise ``ModelUnavailableError``. Live streams (``service.streams``) mesh their frames
in the mesh lane too; the engine opens them (at most ``max_streams``) and closes them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NoReturn

import numpy as np
import torch
import trimesh

import models
from models import Grasp, HaloBase, HaloVAE
from service.batching import Batcher
from service.config import Settings
from service.errors import ModelUnavailableError, ShuttingDownError, StreamLimitError
from service.grasp_worker import GraspWorker
from service.inputs import GraspJob, HandInput, Inputs, MeshJob, OccupancyJob
from service.loading import describe_model, load_models, warm_up_grasps, warm_up_meshes
from service.metrics import Metrics
from service.streams import LiveMeshing, LiveStream

log = logging.getLogger("halo.engine")

# Which lane serves each model endpoint.
LANE_OF_ENDPOINT = {"mesh": "mesh", "occupancy": "mesh", "grasps": "grasps"}


class Engine:
    """Loaded models + execution lanes + metrics, shared by the REST and gRPC front ends."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.inputs = Inputs(settings)
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
        # With split_lone_frames, a live frame meshed alone hands half of its decoder work to this thread.
        self.split_thread = ThreadPoolExecutor(1, thread_name_prefix="halo-split") if settings.split_lone_frames else None
        self.live_meshing = LiveMeshing(self.mesh_lane, metrics, self.split_thread, self.grasp_lane)
        self.device = str(models.resolve_device(settings.device))
        self.grasp_worker: GraspWorker | None = None  # with grasp_process: where the grasp lane's jobs run
        self.base: HaloBase | None = None
        self.vae: HaloVAE | None = None
        self.unavailable: dict[str, str] = {}
        self.ready = False
        self.accepting = True
        self.streams: set[LiveStream] = set()
        self._no_streams = asyncio.Event()
        self._no_streams.set()

    async def start(self) -> None:
        """Load the models (in the compute thread), warm up, start batching; ready if the base model loaded."""
        if self.settings.torch_threads:
            # Process-wide; on a busy CPU, OpenMP threads waiting for each other cost far more than they gain.
            torch.set_num_threads(self.settings.torch_threads)
        self.mesh_lane.start()
        self.grasp_lane.start()
        loaded = await self.mesh_lane.run_blocking(load_models, self.settings, self.device, self.metrics)
        self.base, self.vae, self.unavailable = loaded.base, loaded.vae, loaded.unavailable
        if self.base is None:
            return
        if self.vae is not None and self.settings.grasp_process:
            self.grasp_worker = GraspWorker(self.settings, self.device)
        if self.settings.warmup:
            started = time.perf_counter()
            smallest = min(self.settings.resolutions)
            await self.mesh_lane.run_blocking(warm_up_meshes, self.base, smallest)
            if self.grasp_worker is not None:
                await self._warm_up_grasp_worker(self.grasp_worker, smallest)
            elif self.vae is not None:
                await self.grasp_lane.run_blocking(warm_up_grasps, self.vae, smallest)
            log.info("warm-up done", extra={"seconds": round(time.perf_counter() - started, 3)})
        self.ready = True
        self.metrics.ready.set(1)

    async def _warm_up_grasp_worker(self, worker: GraspWorker, resolution: int) -> None:
        """Start the grasp worker process and warm it up; if it cannot load its models, grasps are unavailable."""
        try:
            await self.grasp_lane.run_blocking(worker.warm_up, resolution)
        except Exception as error:
            self.unavailable["vae"] = f"grasp model not available: its worker process failed: {error}"
            log.error("grasp worker process failed", extra={"reason": str(error)})
            self.vae = None

    def describe(self) -> dict:
        """What is loaded: per model its card and device, or why it is unavailable."""
        return {
            "models": {
                role: describe_model(model, role, self.device, self.unavailable)
                for role, model in (("base", self.base), ("vae", self.vae))
            },
            "resolutions": list(self.settings.resolutions),
            "default_resolution": self.settings.default_resolution,
            "max_batch_size": self.settings.max_batch_size,
        }

    def update_gpu_memory(self) -> None:
        """Refresh the GPU memory gauges (CUDA only)."""
        if not self.device.startswith("cuda"):
            return
        self.metrics.gpu_memory.labels(self.device, "allocated").set(torch.cuda.memory_allocated(self.device))
        self.metrics.gpu_memory.labels(self.device, "reserved").set(torch.cuda.memory_reserved(self.device))

    def deadline(self, seconds: float | None = None) -> float:
        """A monotonic deadline: the caller's remaining time, capped by the request timeout."""
        budget = self.settings.request_timeout_s if seconds is None else min(seconds, self.settings.request_timeout_s)
        return time.monotonic() + budget

    def require_base(self) -> HaloBase:
        """The loaded base model; raises ModelUnavailableError with the reason if there is none."""
        if self.base is None:
            raise ModelUnavailableError(self.unavailable.get("base", "base model is still loading"))
        return self.base

    def require_vae(self) -> HaloVAE:
        """The loaded grasp model; raises ModelUnavailableError with the reason if there is none."""
        if self.vae is None:
            raise ModelUnavailableError(self.unavailable.get("vae", "vae model is still loading"))
        return self.vae

    async def mesh(self, job: MeshJob, deadline: float) -> list[trimesh.Trimesh]:
        """Checked hands -> one mesh each (keypoint frame, metres), batched with other requests."""
        base, resolution = self.require_base(), job.resolution

        def run(hands: Sequence[HandInput]) -> list[trimesh.Trimesh]:
            meshes, stats = base.mesh_with_stats(
                np.stack([h.keypoints for h in hands]),
                joint_order=[h.joint_order for h in hands],
                hand=[h.hand for h in hands],
                resolution=resolution,
            )
            self.metrics.observe_mesh_stats(stats, len(hands), resolution)
            return list(meshes)

        return await self.mesh_lane.submit(job.hands, ("mesh", resolution), run, deadline)

    async def occupancy(self, job: OccupancyJob, deadline: float) -> np.ndarray:
        """A checked hand + (N,3) points, metres, keypoint frame -> (N,) occupancy probabilities."""
        base = self.require_base()

        def run(jobs: Sequence[OccupancyJob]) -> list[np.ndarray]:
            (one,) = jobs
            hand = one.hand
            probs = base.occupancy(hand.keypoints, one.points, joint_order=hand.joint_order, hand=hand.hand)
            self.metrics.points_evaluated.inc(len(one.points))
            return [np.asarray(probs, dtype=np.float64)]

        (probs,) = await self.mesh_lane.submit([job], ("occupancy", object()), run, deadline)
        return probs

    async def grasps(self, job: GraspJob, deadline: float) -> list[Grasp]:
        """A checked object -> ``job.count`` grasps sampled together from ``job.seed`` (one queued job).

        ``physics`` adds the MuJoCo check to each grasp; ``rank="stability"`` implies it and returns the
        most stable of up to twice as many samples (within ``max_grasp_samples``).
        """
        vae = self.require_vae()
        options, limit = job.options, self.settings.max_grasp_samples

        sample = vae.sample if self.grasp_worker is None else self.grasp_worker.sample

        def run(jobs: Sequence[GraspJob]) -> list[list[Grasp]]:
            (one,) = jobs
            sampled = sample(one.obj, n=one.count, seed=one.seed, refine=options.refine, resolution=one.resolution,
                             physics=options.physics, rank=options.rank, max_candidates=limit)
            return [sampled]

        (sampled,) = await self.grasp_lane.submit([job], ("grasps", object()), run, deadline)
        self.metrics.observe_physics([grasp.metrics for grasp in sampled])
        return sampled

    async def stream_grasps(self, job: GraspJob, deadline: float) -> AsyncIterator[Grasp]:
        """Grasps one by one, each sent when ready: grasp i is a one-grasp sample with seed ``seed + i``
        (with ``rank="stability"``, the more stable of two samples)."""
        for index in range(job.count):
            single = GraspJob(job.obj, 1, job.seed + index, job.options, job.resolution)
            (grasp,) = await self.grasps(single, deadline)
            yield grasp

    @contextlib.asynccontextmanager
    async def live_stream(self, protocol: str) -> AsyncIterator[LiveStream]:
        """A live stream for one client, closed (and logged) on exit.

        Refused with ShuttingDownError, ModelUnavailableError, or StreamLimitError when ``max_streams``
        streams of both protocols together are open."""
        session = self._open_stream(protocol)
        try:
            yield session
        finally:
            self.streams.discard(session)
            self.metrics.streams_active.labels(protocol).dec()
            if not self.streams:
                self._no_streams.set()
            log.info("stream closed", extra=session.summary())

    def _open_stream(self, protocol: str) -> LiveStream:
        limit = self.settings.max_streams
        if not self.accepting:
            self._refuse_stream(protocol, "shutting_down", ShuttingDownError("server is shutting down"))
        if self.base is None:
            reason = self.unavailable.get("base", "base model is still loading")
            self._refuse_stream(protocol, "unavailable", ModelUnavailableError(reason))
        if len(self.streams) >= limit:
            error = StreamLimitError(f"streams: all {limit} live streams are open; try again later")
            self._refuse_stream(protocol, "limit", error)
        session = LiveStream(self.require_base(), self.live_meshing, self.metrics, protocol, self.deadline)
        self.streams.add(session)
        self._no_streams.clear()
        self.metrics.streams_active.labels(protocol).inc()
        return session

    def _refuse_stream(self, protocol: str, reason: str, error: Exception) -> NoReturn:
        self.metrics.streams_refused.labels(protocol, reason).inc()
        raise error

    async def close_streams(self, timeout: float) -> None:
        """Shutdown: every live stream answers the frame it is meshing and ends; wait up to ``timeout`` s for them."""
        for session in self.streams:
            session.shut_down()
        try:
            await asyncio.wait_for(self._no_streams.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("live streams still open after the grace period", extra={"streams": len(self.streams)})

    @property
    def queued(self) -> int:
        """Work items waiting in all lanes."""
        return self.mesh_lane.depth + self.grasp_lane.depth

    def check_accepting(self, endpoint: Literal["mesh", "occupancy", "grasps"]) -> None:
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
        if self.grasp_worker is not None:
            await asyncio.to_thread(self.grasp_worker.close)
        if self.split_thread is not None:
            self.split_thread.shutdown(wait=True)
