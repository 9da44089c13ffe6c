"""Every Prometheus metric the server exports, in one place.

Dashboards and alert rules are built on these exact names: rename one only together with them.
Each server owns its own registry (so tests can run several servers in one process); the process
collector adds the standard ``process_resident_memory_bytes`` and friends to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from models import MeshStats

# The *_created series double the exposition size and no dashboard uses them.
disable_created_metrics()

# Mesh latencies run from ~50 ms (resolution 64, GPU) to tens of seconds (resolution 512, CPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Physics check: held objects move well under 2 cm (the stability threshold), dropped ones ~120 cm.
# Live-stream frames: a tracker sends every 11-33 ms; a frame is late past a few of those.
FRAME_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
DISPLACEMENT_BUCKETS_CM = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 150.0)

STAGES = ("canonicalize", "occupancy", "marching_cubes", "encode")
DROP_REASONS = ("cancelled", "deadline")
REJECT_REASONS = ("queue_full", "shutting_down")
PHYSICS_FAILURES = ("crashed", "timed_out", "error")
# Live streams (service/streams.py): the two front ends, what becomes of a frame, why a stream is refused.
STREAM_PROTOCOLS = ("grpc", "websocket")
FRAME_OUTCOMES = ("received", "meshed", "skipped", "rejected")
STREAM_REFUSALS = ("limit", "shutting_down", "unavailable", "unauthenticated")
# Execution lanes (service/batching.py): meshes and occupancy queries share one, grasp sampling has its own.
LANES = ("mesh", "grasps")


class Metrics:
    """The server's metric objects, registered in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        reg = self.registry
        self.requests = Counter(
            "halo_requests",
            "Requests answered, by endpoint, protocol and status code.",
            ["endpoint", "protocol", "status"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "halo_request_duration_seconds",
            "Time from request received to response ready.",
            ["endpoint", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.inflight = Gauge(
            "halo_inflight_requests",
            "Requests being handled right now.",
            registry=reg,
        )
        self.queue_depth = Gauge(
            "halo_queue_depth",
            "Work items (hands, grasp jobs) waiting in all lanes' queues.",
            registry=reg,
        )
        self.queue_wait = Histogram(
            "halo_queue_wait_seconds",
            "Time a work item waits in its lane's queue before its batch starts (all lanes).",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.lane_queue_depth = Gauge(
            "halo_lane_queue_depth",
            "Work items waiting in one lane's queue (mesh: hands and occupancy queries; grasps: grasp jobs).",
            ["lane"],
            registry=reg,
        )
        self.lane_queue_wait = Histogram(
            "halo_lane_queue_wait_seconds",
            "Time a work item waits in its lane's queue before its batch starts.",
            ["lane"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.lane_busy_workers = Gauge(
            "halo_lane_busy_workers",
            "A lane's workers computing a batch right now.",
            ["lane"],
            registry=reg,
        )
        self.lane_workers = Gauge(
            "halo_lane_workers",
            "A lane's worker count (its most batches computed side by side).",
            ["lane"],
            registry=reg,
        )
        self.lane_rejected = Counter(
            "halo_lane_rejected",
            "Requests a lane refused because its queue was full or the server was stopping.",
            ["lane", "reason"],
            registry=reg,
        )
        self.batch_size = Histogram(
            "halo_batch_size",
            "Hands meshed together in one batched model call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self.stage_duration = Histogram(
            "halo_stage_duration_seconds",
            "Time per pipeline stage of one batch (encode: per response).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.points_evaluated = Counter(
            "halo_points_evaluated",
            "Occupancy points evaluated by the decoder.",
            registry=reg,
        )
        self.meshes = Counter(
            "halo_meshes",
            "Hand meshes produced.",
            ["resolution"],
            registry=reg,
        )
        self.dropped = Counter(
            "halo_dropped",
            "Queued hands dropped before compute (client gone or deadline passed).",
            ["reason"],
            registry=reg,
        )
        self.rejected = Counter(
            "halo_rejected",
            "Requests refused because the queue was full or the server was stopping.",
            ["reason"],
            registry=reg,
        )
        self.model_info = Gauge(
            "halo_model_info",
            "Loaded models (value 1), with name, sha256 and device.",
            ["model", "name", "sha256", "device"],
            registry=reg,
        )
        self.ready = Gauge(
            "halo_ready",
            "1 when the models are loaded and warmed and the server accepts work.",
            registry=reg,
        )
        self.gpu_memory = Gauge(
            "halo_gpu_memory_bytes",
            "CUDA memory held by the server (kind: allocated / reserved).",
            ["device", "kind"],
            registry=reg,
        )
        self.physics_grasps = Counter(
            "halo_physics_grasps",
            "Served grasps that went through the physics check, by whether they were stable (held in every direction).",
            ["stable"],
            registry=reg,
        )
        self.physics_displacement = Histogram(
            "halo_physics_displacement_cm",
            "Mean displacement of the object under gravity (over the directions) per physics-checked grasp, cm.",
            buckets=DISPLACEMENT_BUCKETS_CM,
            registry=reg,
        )
        self.physics_failures = Counter(
            "halo_physics_failures",
            "Grasps whose physics check could not run, by reason (the simulator crashed, timed out or raised).",
            ["reason"],
            registry=reg,
        )
        self.grasp_redraws = Counter(
            "halo_grasp_redraws",
            "Fresh samples drawn to replace refined grasps that missed the object or penetrated it too deeply.",
            registry=reg,
        )
        self.streams_active = Gauge(
            "halo_streams_active",
            "Live streams open right now, by protocol (grpc: StreamMesh, websocket: /stream).",
            ["protocol"],
            registry=reg,
        )
        self.streams_refused = Counter(
            "halo_streams_refused",
            "Live streams refused at opening, by protocol and reason (limit: max_streams reached).",
            ["protocol", "reason"],
            registry=reg,
        )
        self.stream_frames = Counter(
            "halo_stream_frames",
            "Live-stream frames by protocol and outcome: received, meshed, skipped (replaced by a newer frame "
            "while waiting), rejected (invalid input or no room in the mesh lane).",
            ["protocol", "outcome"],
            registry=reg,
        )
        self.stream_frame_latency = Histogram(
            "halo_stream_frame_latency_seconds",
            "Server time of a meshed live-stream frame, from its arrival to its reply being ready.",
            ["protocol"],
            buckets=FRAME_LATENCY_BUCKETS,
            registry=reg,
        )
        self.stream_extractions = Counter(
            "halo_stream_extractions",
            "Meshed live-stream frames by extraction: seeded by the stream's previous frame, or meshed from "
            "scratch for the named reason (start, jump, band_open, volume, part; see models/streaming.py).",
            ["extraction"],
            registry=reg,
        )
        for protocol in STREAM_PROTOCOLS:
            self.streams_active.labels(protocol)
            self.stream_frame_latency.labels(protocol)
            for outcome in FRAME_OUTCOMES:
                self.stream_frames.labels(protocol, outcome)
            for reason in STREAM_REFUSALS:
                self.streams_refused.labels(protocol, reason)
        for extraction in ("seeded", "start"):
            self.stream_extractions.labels(extraction)
        for stage in STAGES:
            self.stage_duration.labels(stage)
        for reason in PHYSICS_FAILURES:
            self.physics_failures.labels(reason)
        for stable in ("true", "false"):
            self.physics_grasps.labels(stable)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self._lane_depths = dict.fromkeys(LANES, 0)
        for lane in LANES:
            self.lane_queue_depth.labels(lane)
            self.lane_queue_wait.labels(lane)
            self.lane_busy_workers.labels(lane)
            self.lane_workers.labels(lane)
            for reason in REJECT_REASONS:
                self.lane_rejected.labels(lane, reason)

    def observe_mesh_stats(self, stats: MeshStats, batch_size: int, resolution: int) -> None:
        """One meshing call of ``batch_size`` hands: its stage times, decoder points and meshes."""
        self.batch_size.observe(batch_size)
        self.stage_duration.labels("canonicalize").observe(stats.canonicalize_s)
        self.stage_duration.labels("occupancy").observe(stats.occupancy_s)
        self.stage_duration.labels("marching_cubes").observe(stats.marching_cubes_s)
        self.points_evaluated.inc(stats.points_evaluated)
        self.meshes.labels(str(resolution)).inc(batch_size)

    def set_lane_depth(self, lane: str, depth: int) -> None:
        """Record one lane's queue depth; ``halo_queue_depth`` (the autoscaling signal) stays the total."""
        self._lane_depths[lane] = depth
        self.lane_queue_depth.labels(lane).set(depth)
        self.queue_depth.set(sum(self._lane_depths.values()))

    def observe_queue_wait(self, lane: str, seconds: float) -> None:
        """One item's queue wait, in its lane's histogram and in the all-lanes one."""
        self.queue_wait.observe(seconds)
        self.lane_queue_wait.labels(lane).observe(seconds)

    def reject(self, lane: str, reason: str) -> None:
        """Count one refused request, per lane and in the all-lanes counter."""
        self.rejected.labels(reason).inc()
        self.lane_rejected.labels(lane, reason).inc()

    def observe_physics(self, grasp_metrics: list[dict]) -> None:
        """Count the served grasps that carry physics-check results (``stable``, ``sim_displacement_cm``), the
        checks that failed (``sim_failure``: "reason: detail") and the fresh samples drawn (``redraws``)."""
        self.grasp_redraws.inc(sum(int(metrics.get("redraws", 0)) for metrics in grasp_metrics))
        for metrics in grasp_metrics:
            if "sim_failure" in metrics:
                self.physics_failures.labels(str(metrics["sim_failure"]).split(":")[0].replace(" ", "_")).inc()
            if "stable" in metrics:
                self.physics_grasps.labels(str(bool(metrics["stable"])).lower()).inc()
                self.physics_displacement.observe(metrics["sim_displacement_cm"])

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        """Observe the wall time of the enclosed block as one ``stage`` sample."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_duration.labels(stage).observe(time.perf_counter() - start)

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
