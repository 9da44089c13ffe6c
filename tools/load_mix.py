"""``halo bench serve --mix``: a mixed open-loop load against a running server.

Requests arrive at ``rate`` per second (Poisson arrivals, seeded), each picking its endpoint by the
mix's weights, whether or not earlier ones have finished; at most ``concurrency`` are in flight,
later arrivals wait in the client. A request's latency runs from its arrival, so client-side waiting
counts (no coordinated omission). Optionally, ``grasp_clients`` closed-loop clients keep grasp
requests running the whole time (reported as ``grasps-background``). Reported per endpoint: p50 /
p95 / p99, throughput and statuses.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import trimesh

from tools.client import GrpcClient, HaloError, RestClient
from tools.load import percentiles, server_rss

MIX_ENDPOINTS = ("mesh", "occupancy", "grasps")
SUCCESS = ("200", "OK")
# Points queried by the mix's occupancy requests: a small cloud around the hand (metres).
OCCUPANCY_POINTS = 64


def parse_mix(text: str) -> dict[str, float]:
    """``"mesh=0.9,grasps=0.1"`` -> endpoint weights normalised to sum 1; raises ValueError naming ``--mix``."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in MIX_ENDPOINTS:
            raise ValueError(f"--mix: unknown endpoint {name!r}; use {', '.join(MIX_ENDPOINTS)}")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if not weight >= 0:
            raise ValueError(f"--mix: {part!r} needs a non-negative weight, e.g. {name}=0.5")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("--mix: give at least one endpoint with a positive weight, e.g. mesh=0.9,grasps=0.1")
    return {name: weight / total for name, weight in weights.items() if weight > 0}


@dataclass
class EndpointStats:
    """One endpoint's outcomes in a mixed run; latencies are of successful requests only."""

    sent: int = 0
    completed: int = 0
    per_s: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0
    p99_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class MixResult:
    protocol: str
    mix: dict[str, float]
    rate_per_s: float
    concurrency: int
    duration_s: float
    resolution: int
    grasp_samples: int
    grasp_refine: bool
    grasp_clients: int
    wall_s: float = 0.0
    waited_for_a_client: int = 0  # arrivals that found all ``concurrency`` clients busy
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)
    rss_before_bytes: float | None = None
    rss_after_bytes: float | None = None


class _Recorder:
    """Thread-safe per-endpoint statuses and latencies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter[str]] = {}
        self.latencies: dict[str, list[float]] = {}

    def record(self, endpoint: str, status: str, seconds: float) -> None:
        with self.lock:
            self.statuses.setdefault(endpoint, Counter())[status] += 1
            self.latencies.setdefault(endpoint, [])
            if status in SUCCESS:
                self.latencies[endpoint].append(seconds)

    def stats(self, wall_s: float) -> dict[str, EndpointStats]:
        result = {}
        for endpoint, statuses in sorted(self.statuses.items()):
            latencies = self.latencies[endpoint]
            stats = EndpointStats(sent=sum(statuses.values()), completed=len(latencies), statuses=dict(statuses))
            stats.per_s = len(latencies) / wall_s
            if latencies:
                stats.p50_s, stats.p95_s, stats.p99_s = percentiles(latencies)
            result[endpoint] = stats
        return result


def _call_status(call: Callable[[], object]) -> str:
    """Run one client call; its outcome as a status string (HTTP code, gRPC code name or transport error)."""
    try:
        call()
    except HaloError as error:
        return str(error.status)
    except (httpx.TransportError, OSError) as error:
        return type(error).__name__
    return "OK"


class _MixLoad:
    """One mixed run's clients, requests and recorder, shared by the arrival loop and the background clients."""

    def __init__(self, keypoints: np.ndarray, obj: trimesh.Trimesh | Path, points: np.ndarray, protocol: str,
                 http_url: str, grpc_target: str, token: str | None, resolution: int, grasp_samples: int,
                 grasp_refine: bool):
        self.keypoints, self.obj, self.points = keypoints, obj, points
        self.protocol, self.http_url, self.grpc_target, self.token = protocol, http_url, grpc_target, token
        self.resolution, self.grasp_samples, self.grasp_refine = resolution, grasp_samples, grasp_refine
        self.ok = "200" if protocol == "rest" else "OK"
        self.recorder = _Recorder()
        self.local = threading.local()
        self.opened: list[RestClient | GrpcClient] = []
        self.opened_lock = threading.Lock()

    def new_client(self) -> RestClient | GrpcClient:
        if self.protocol == "rest":
            return RestClient(self.http_url, self.token)
        return GrpcClient(self.grpc_target, self.token)

    def thread_client(self) -> RestClient | GrpcClient:
        """The calling pool thread's own client (opened on first use, closed by ``close``)."""
        if not hasattr(self.local, "client"):
            self.local.client = self.new_client()
            with self.opened_lock:
                self.opened.append(self.local.client)
        return self.local.client

    def request(self, endpoint: str, own: RestClient | GrpcClient, index: int) -> Callable[[], object]:
        hand = self.keypoints[index % len(self.keypoints)]
        if endpoint == "mesh":
            return lambda: own.mesh(hand, resolution=self.resolution)
        if endpoint == "occupancy":
            return lambda: own.occupancy(hand, self.points)
        return lambda: own.grasps(self.obj, num_samples=self.grasp_samples, seed=index, refine=self.grasp_refine,
                                  resolution=self.resolution)

    def send(self, endpoint: str, own: RestClient | GrpcClient, index: int, since: float, name: str = "") -> None:
        """One request; its status and its latency from ``since`` recorded under ``name`` (default: the endpoint)."""
        status = _call_status(self.request(endpoint, own, index))
        self.recorder.record(name or endpoint, self.ok if status == "OK" else status, time.perf_counter() - since)

    def background_grasps(self, worker: int, clients: int, stop_at: float) -> None:
        """A closed-loop client sending grasp requests back to back until ``stop_at``."""
        index = worker
        with self.new_client() as own:
            while time.perf_counter() < stop_at:
                self.send("grasps", own, index, time.perf_counter(), "grasps-background")
                index += clients

    def close(self) -> None:
        for client in self.opened:
            client.close()


def _arrivals(load: _MixLoad, mix: dict[str, float], rng: np.random.Generator, rate_per_s: float, concurrency: int,
              started: float, stop_at: float) -> int:
    """Poisson arrivals until ``stop_at``, each sent by a free pool thread; -> arrivals that waited for one."""
    names, weights = list(mix), np.array([mix[name] for name in mix])
    in_flight = threading.Semaphore(concurrency)
    waited = 0

    def send_and_release(endpoint: str, index: int, arrival: float) -> None:
        try:
            load.send(endpoint, load.thread_client(), index, arrival)
        finally:
            in_flight.release()

    arrival, index = started, 0
    with ThreadPoolExecutor(concurrency, thread_name_prefix="bench") as pool:
        while True:
            arrival += rng.exponential(1.0 / rate_per_s)
            if arrival >= stop_at:
                break
            time.sleep(max(0.0, arrival - time.perf_counter()))
            if not in_flight.acquire(blocking=False):
                waited += 1
                in_flight.acquire()
            pool.submit(send_and_release, names[rng.choice(len(names), p=weights)], index, arrival)
            index += 1
    return waited


def run_mix_bench(
    keypoints: np.ndarray,
    mix: dict[str, float],
    *,
    rate_per_s: float,
    protocol: str = "rest",
    http_url: str = "http://127.0.0.1:8000",
    grpc_target: str = "127.0.0.1:50051",
    concurrency: int = 16,
    duration_s: float = 30.0,
    resolution: int = 128,
    grasp_object: trimesh.Trimesh | Path | None = None,
    grasp_samples: int = 4,
    grasp_refine: bool = True,
    grasp_clients: int = 0,
    token: str | None = None,
    seed: int = 0,
) -> MixResult:
    """Open-loop mixed load for ``duration_s`` seconds, then wait for the requests still in flight.

    ``grasp_object`` is a mesh or a mesh file (uploaded as it is over REST); default a 6 x 8 x 5 cm box.
    """
    if rate_per_s <= 0:
        raise ValueError("--rate: must be positive")
    if concurrency < 1:
        raise ValueError("--concurrency: must be at least 1")
    obj = grasp_object if grasp_object is not None else trimesh.creation.box(extents=(0.06, 0.08, 0.05))
    rng = np.random.default_rng(seed)
    points = rng.normal(scale=0.03, size=(OCCUPANCY_POINTS, 3)) + keypoints.mean(axis=(0, 1))
    load = _MixLoad(keypoints, obj, points, protocol, http_url, grpc_target, token, resolution, grasp_samples,
                    grasp_refine)
    result = MixResult(
        protocol, mix, rate_per_s, concurrency, duration_s, resolution, grasp_samples, grasp_refine, grasp_clients,
        rss_before_bytes=server_rss(http_url),
    )
    started = time.perf_counter()
    stop_at = started + duration_s
    background = [threading.Thread(target=load.background_grasps, args=(i, grasp_clients, stop_at), daemon=True)
                  for i in range(grasp_clients)]
    for thread in background:
        thread.start()
    result.waited_for_a_client = _arrivals(load, mix, rng, rate_per_s, concurrency, started, stop_at)
    for thread in background:
        thread.join()
    load.close()
    result.wall_s = time.perf_counter() - started
    result.endpoints = load.recorder.stats(result.wall_s)
    result.rss_after_bytes = server_rss(http_url)
    return result


def format_mix_result(result: MixResult) -> str:
    """Human-readable summary of a mixed run: one line per endpoint."""
    mix = ",".join(f"{name}={weight:.2f}" for name, weight in result.mix.items())
    lines = [
        f"{result.protocol} mix {mix} at {result.rate_per_s:g}/s, c={result.concurrency}, "
        f"res={result.resolution}, grasps of {result.grasp_samples} (refine={result.grasp_refine}), "
        f"{result.grasp_clients} background grasp clients, {result.duration_s:.0f}s (wall {result.wall_s:.1f}s); "
        f"{result.waited_for_a_client} arrivals waited for a free client"
    ]
    for endpoint, stats in result.endpoints.items():
        lines.append(
            f"  {endpoint}: {stats.sent} sent, {stats.completed} ok, {stats.per_s:.2f}/s, "
            f"p50 {stats.p50_s * 1000:.0f} ms, p95 {stats.p95_s * 1000:.0f} ms, p99 {stats.p99_s * 1000:.0f} ms; "
            f"statuses {stats.statuses}"
        )
    return "\n".join(lines)
