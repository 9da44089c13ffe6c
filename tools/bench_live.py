"""``halo bench stream --protocol grpc|websocket``: live streams against a server, calibrated like ``halo bench mesh``.

For each resolution and number of concurrent streams, every stream plays the sequence there and back
(``passes`` times), each from its own starting frame. Lock-step by default: the next frame goes out when
the last reply is in, so nothing is skipped and frames/s is what the server sustains per stream. With
``fps`` the frames go out on a clock (open loop): when the server is slower, the newest frame wins and
the replies report the skipped ones. Each row reports frames/s per stream (slowest and mean) and in all,
skipped frames, the end-to-end frame latency (client: frame sent -> its reply received) p50/p95/p99 and
the server's own p50/p99, the share of frames seeded by the previous one, and ms per frame and p99 as
ratios to the calibration workload measured just before the row (``tools.bench_mesh``).
``grasp_load`` adds a pair of rows at the first resolution: one stream alone, then one stream while two
8-grasp requests run (as ``halo bench serve --grasp-clients 2 --grasp-samples 8``), and the p99 ratio.

Without a server address it starts ``halo serve`` in a child process on free ports and stops it after.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trimesh

from tools.bench_mesh import calibration_seconds
from tools.bench_stream import bench_sequence
from tools.client import HaloError, LiveCall, LiveFrame, LiveReply, LiveSocket, RestClient, open_live_stream
from tools.load import percentiles

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ("grpc", "websocket")
GRASP_SAMPLES = 8
BUSY_GRASP_LANE = re.compile(r'^halo_lane_busy_workers\{lane="grasps"\}\s+(\S+)$', re.MULTILINE)


@dataclass(frozen=True)
class LiveBench:
    """What ``halo bench stream --protocol ...`` plays against the server."""

    protocol: str = "grpc"  # grpc | websocket
    url: str | None = None  # REST base URL of a running server; None: start one
    grpc_target: str | None = None
    token: str | None = None
    sequence: str | None = None  # kps_seq.pkl or a (T,21,3) .npy (None: as ``halo bench stream``)
    checkpoint: str | None = None  # base model of the server this bench starts (None: the shipped one)
    resolutions: tuple[int, ...] = (64, 128)
    streams: tuple[int, ...] = (1, 4)
    fps: float = 0.0  # 0: lock-step, as fast as the server answers
    passes: int = 1
    smooth: int | None = None  # Taubin iterations per frame; None: the server's live default
    encoding: str = "base64"  # WebSocket meshes: base64 packed arrays or JSON arrays
    grasp_load: bool = False
    threads: int = 2  # torch threads of the calibration workload
    json_path: Path | None = None


@dataclass
class StreamRun:
    """What one client stream saw."""

    sent: int = 0
    meshed: int = 0
    skipped: int = 0
    errors: int = 0
    seeded: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # client: frame sent -> its reply received
    server_ms: list[float] = field(default_factory=list)

    def record(self, reply: LiveReply, latency_s: float) -> None:
        self.skipped += reply.skipped_frames
        if reply.error is not None:
            self.errors += 1
            return
        self.meshed += 1
        self.seeded += reply.seeded
        self.latencies_s.append(latency_s)
        self.server_ms.append(reply.server_ms)


def stream_frames(sequence: np.ndarray, passes: int, offset: int) -> np.ndarray:
    """(T,21,3) -> the sequence there and back ``passes`` times, starting at frame ``offset`` (no jump anywhere)."""
    cycle = np.concatenate([sequence, sequence[-2:0:-1]])  # ends next to where it starts
    return np.roll(cycle, -offset, axis=0)[np.arange(len(cycle) * passes) % len(cycle)]


def play_stream(live: LiveSocket | LiveCall, frames: np.ndarray, resolution: int, smooth: int | None,
                fps: float) -> StreamRun:
    """Play (T,21,3) frames through one open stream, lock-step (``fps`` 0) or on a clock -> what it saw."""
    run, sent_at = StreamRun(), {}
    make = [LiveFrame(index, keypoints, resolution=resolution, smooth=smooth) for index, keypoints in enumerate(frames)]
    started = time.perf_counter()
    if fps <= 0:
        for frame in make:
            sent = time.perf_counter()
            live.send(frame)
            run.record(live.receive(), time.perf_counter() - sent)
    else:

        def send_on_clock() -> None:
            for frame in make:
                time.sleep(max(0.0, started + frame.frame_id / fps - time.perf_counter()))
                sent_at[frame.frame_id] = time.perf_counter()
                live.send(frame)

        sender = threading.Thread(target=send_on_clock, daemon=True)
        sender.start()
        while True:
            reply = live.receive()
            run.record(reply, time.perf_counter() - sent_at[reply.frame_id])
            if reply.frame_id == len(make) - 1:
                break
        sender.join()
    run.seconds = time.perf_counter() - started
    run.sent = len(make)
    return run


def _percentiles(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """Values (times ``scale`` is milliseconds) -> their p50, p95 and p99 in ms (NaN when there are none)."""
    p50, p95, p99 = percentiles([value * scale for value in values]) if values else (float("nan"),) * 3
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99}


def summarise(runs: list[StreamRun], calibration_s: float) -> dict:
    """The runs of one row's concurrent streams -> frames/s, skips, latency percentiles and calibrated ratios."""
    rates = [run.meshed / run.seconds for run in runs]
    latency = _percentiles([s for run in runs for s in run.latencies_s], 1000.0)
    server = _percentiles([ms for run in runs for ms in run.server_ms])
    meshed = sum(run.meshed for run in runs)
    ms_per_frame = statistics.mean(1000 * run.seconds / max(run.meshed, 1) for run in runs)
    return {
        "frames_sent": sum(run.sent for run in runs),
        "frames_meshed": meshed,
        "frames_per_s_min": min(rates),
        "frames_per_s_mean": statistics.mean(rates),
        "frames_per_s_total": meshed / max(run.seconds for run in runs),
        "skipped": sum(run.skipped for run in runs),
        "errors": sum(run.errors for run in runs),
        **latency,
        "server_p50_ms": server["p50_ms"],
        "server_p99_ms": server["p99_ms"],
        "seeded_share": sum(run.seeded for run in runs) / max(meshed, 1),
        "ms_per_frame": ms_per_frame,
        "calibration_s": calibration_s,
        "ms_per_frame_ratio": ms_per_frame / 1000 / calibration_s,
        "p99_ratio": latency["p99_ms"] / 1000 / calibration_s,
    }


def _format(row: dict) -> str:
    return (
        f"{row['protocol']:9s} res {row['resolution']:3d} x{row['streams']} {row['load']:>6s}: "
        f"{row['frames_per_s_min']:5.1f} frames/s per stream (mean {row['frames_per_s_mean']:.1f}, all "
        f"{row['frames_per_s_total']:.1f}), skipped {row['skipped']}, errors {row['errors']}, latency p50 "
        f"{row['p50_ms']:.1f} p95 {row['p95_ms']:.1f} p99 {row['p99_ms']:.1f} ms (server p50 {row['server_p50_ms']:.1f} "
        f"p99 {row['server_p99_ms']:.1f}), seeded {100 * row['seeded_share']:.0f}%, ratios {row['ms_per_frame_ratio']:.4f} "
        f"/ p99 {row['p99_ratio']:.4f} (calibration {row['calibration_s']:.3f} s)"
    )


class Target:
    """Where the bench's streams go: opens one live stream per call over the chosen protocol."""

    def __init__(self, bench: LiveBench, url: str, grpc_target: str):
        self.bench, self.url, self.grpc_target = bench, url, grpc_target

    def open(self) -> contextlib.AbstractContextManager[LiveSocket | LiveCall]:
        bench = self.bench
        return open_live_stream(bench.protocol, self.url, self.grpc_target, bench.token, bench.encoding)

    def row(self, sequence: np.ndarray, resolution: int, streams: int, load: str = "idle") -> dict:
        """``streams`` concurrent streams at ``resolution`` -> one row, calibrated just before."""
        bench = self.bench
        calibration = min(calibration_seconds(threads=bench.threads) for _ in range(2))
        runs: list[StreamRun | None] = [None] * streams
        failures: list[BaseException] = []

        def play(index: int) -> None:
            frames = stream_frames(sequence, bench.passes, index * len(sequence) // streams)
            try:
                with self.open() as live:
                    runs[index] = play_stream(live, frames, resolution, bench.smooth, bench.fps)
            except (HaloError, OSError) as error:
                failures.append(error)

        threads = [threading.Thread(target=play, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        row = {"protocol": bench.protocol, "resolution": resolution, "streams": streams, "load": load,
               "fps_target": bench.fps or "lock-step", **summarise(runs, calibration)}
        print(_format(row), flush=True)
        return row


def _grasp_lane_busy(url: str) -> bool:
    match = BUSY_GRASP_LANE.search(httpx.get(f"{url}/metrics", timeout=10).text)
    return bool(match) and float(match.group(1)) >= 1


def _grasp_client(url: str, token: str | None, stop: Any, done: Any) -> None:
    """One grasp client's process: 8-grasp requests back to back until ``stop`` is set, counted in ``done``."""
    box = trimesh.creation.box(extents=(0.06, 0.08, 0.05))
    with RestClient(url, token) as client:
        while not stop.is_set():
            with contextlib.suppress(HaloError, httpx.HTTPError):
                client.grasps(box, num_samples=GRASP_SAMPLES)
                with done.get_lock():
                    done.value += 1


def with_grasp_load(url: str, token: str | None, measure: Callable[[], dict]) -> tuple[dict, int]:
    """Run ``measure()`` while two clients keep an 8-grasp request each in the server -> (its row, grasp requests done).

    The grasp clients are processes of their own: decoding their responses in this process would hold the
    interpreter lock against the stream being measured, and count the client's delay as the server's."""
    context = multiprocessing.get_context("spawn")
    stop, done = context.Event(), context.Value("i", 0)
    clients = [context.Process(target=_grasp_client, args=(url, token, stop, done), daemon=True) for _ in range(2)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 120
    while not _grasp_lane_busy(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        return measure(), done.value
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=120)


@contextlib.contextmanager
def local_server(checkpoint: str | None, resolutions: tuple[int, ...]) -> Iterator[tuple[str, str]]:
    """``halo serve`` in a child process on free ports, allowing ``resolutions`` -> (REST URL, gRPC target) once
    ready; stopped on exit."""
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
               "--log-format", "json", "--default-resolution", str(min(resolutions)),
               "--max-resolution", str(max(resolutions)), "--grace-period-s", "5"]
    if checkpoint:
        command += ["--base-checkpoint", checkpoint]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        ports = {}
        for line in process.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                raise RuntimeError(f"the server did not start: {line.strip()}") from None
            if record["message"] == "listening":
                ports = {"http": record["http_port"], "grpc": record["grpc_port"]}
            if record["message"] == "ready":
                break
        if not ports:
            raise RuntimeError("the server stopped before it was ready")
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
        yield f"http://127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_live_benchmark(bench: LiveBench) -> int:
    frames, source = bench_sequence(bench.sequence)
    server = contextlib.nullcontext((bench.url, bench.grpc_target))
    if bench.url is None:
        server = local_server(bench.checkpoint, bench.resolutions)
    with server as (url, grpc_target):
        url, grpc_target = url or "http://127.0.0.1:8000", grpc_target or "127.0.0.1:50051"
        with RestClient(url, bench.token) as client:
            card = client.models()["models"]["base"].get("card", {})
        print(f"server {url} / {grpc_target}: model {card.get('name')} ({str(card.get('sha256'))[:12]}), "
              f"sequence {source} ({len(frames)} frames, there and back x{bench.passes}), protocol {bench.protocol}"
              f"{' (' + bench.encoding + ')' if bench.protocol == 'websocket' else ''}, "
              f"{'lock-step' if bench.fps <= 0 else f'{bench.fps:g} frames/s sent'}, smooth "
              f"{'server default' if bench.smooth is None else bench.smooth}", flush=True)
        target = Target(bench, url, grpc_target)
        rows = [target.row(frames, resolution, streams) for resolution in bench.resolutions for streams in bench.streams]
        result: dict = {"sequence": source, "rows": rows}
        if bench.grasp_load:
            resolution = bench.resolutions[0]
            idle = target.row(frames, resolution, 1)
            loaded, grasps_done = with_grasp_load(url, bench.token,
                                                  lambda: target.row(frames, resolution, 1, "grasps"))
            ratio = loaded["p99_ms"] / idle["p99_ms"]
            result["grasp_load"] = {"resolution": resolution, "idle": idle, "loaded": loaded,
                                    "p99_loaded_to_idle": ratio, "grasp_requests_done": grasps_done}
            print(f"p99 beside two {GRASP_SAMPLES}-grasp requests: {loaded['p99_ms']:.1f} ms vs {idle['p99_ms']:.1f} "
                  f"ms idle ({ratio:.2f}x; {grasps_done} grasp requests finished meanwhile)", flush=True)
    if bench.json_path:
        bench.json_path.write_text(json.dumps(result, indent=2))
    return 0
