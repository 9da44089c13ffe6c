"""``halo bench serve``: closed-loop load against a running server (the mixed open loop is ``load_mix``).

N client threads send one-hand mesh requests back to back (cycling through the given keypoints) for
T seconds over REST or gRPC. Reported: meshes per second, latency p50 / p95 / p99, outcomes by status,
and the server's resident memory before and after (from its ``/metrics``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

from tools.client import GrpcClient, HaloError, RestClient

RSS_LINE = re.compile(r"^process_resident_memory_bytes\s+(\S+)$", re.MULTILINE)


@dataclass
class BenchResult:
    protocol: str
    concurrency: int
    duration_s: float
    resolution: int
    completed: int = 0
    meshes_per_s: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0
    p99_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    rss_before_bytes: float | None = None
    rss_after_bytes: float | None = None


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    """Latencies, seconds -> their p50, p95 and p99."""
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def server_rss(http_url: str) -> float | None:
    """The server's resident memory in bytes, from its Prometheus endpoint (None if unreachable)."""
    try:
        text = httpx.get(f"{http_url.rstrip('/')}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    match = RSS_LINE.search(text)
    return float(match.group(1)) if match else None


def run_bench(
    keypoints: np.ndarray,
    *,
    protocol: str = "rest",
    http_url: str = "http://127.0.0.1:8000",
    grpc_target: str = "127.0.0.1:50051",
    concurrency: int = 16,
    duration_s: float = 30.0,
    resolution: int = 128,
    token: str | None = None,
) -> BenchResult:
    """Drive the server with ``concurrency`` client threads for ``duration_s`` seconds."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s
    result = BenchResult(protocol, concurrency, duration_s, resolution, rss_before_bytes=server_rss(http_url))

    def client_loop(worker: int) -> None:
        client = RestClient(http_url, token) if protocol == "rest" else GrpcClient(grpc_target, token)
        index = worker
        with client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    client.mesh(keypoints[index % len(keypoints)], resolution=resolution)
                    status = "200" if protocol == "rest" else "OK"
                except HaloError as error:
                    status = str(error.status)
                except (httpx.TransportError, OSError) as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    statuses[status] += 1
                    if status in ("200", "OK"):
                        latencies.append(elapsed)
                index += concurrency

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    result.rss_after_bytes = server_rss(http_url)
    result.statuses = dict(statuses)
    result.completed = len(latencies)
    result.meshes_per_s = len(latencies) / wall
    if latencies:
        result.p50_s, result.p95_s, result.p99_s = percentiles(latencies)
    return result


def format_result(result: BenchResult) -> str:
    """Human-readable summary of one run."""
    mib = [None if v is None else v / 2**20 for v in (result.rss_before_bytes, result.rss_after_bytes)]
    rss = " -> ".join("?" if v is None else f"{v:.0f} MiB" for v in mib)
    return (
        f"{result.protocol} c={result.concurrency} res={result.resolution} {result.duration_s:.0f}s: "
        f"{result.completed} meshes, {result.meshes_per_s:.2f} meshes/s, "
        f"p50 {result.p50_s * 1000:.0f} ms, p95 {result.p95_s * 1000:.0f} ms, "
        f"p99 {result.p99_s * 1000:.0f} ms; "
        f"statuses {result.statuses}; server RSS {rss}"
    )


def result_json(result: Any) -> str:
    """A result dataclass (closed-loop or mixed) as one JSON line."""
    return json.dumps(asdict(result))
