"""Live streams: one session per client stream, each frame meshed seeded by the stream's previous frame.

A front end (gRPC ``StreamMesh``, WebSocket ``/stream``) reads messages, turns each into a checked
``StreamFrame`` (or a ``RejectedFrame`` naming the bad field) and hands them to its ``LiveStream``
together with a function that sends one ``FrameReply``. The session runs two tasks:

- the reader takes frames as they arrive. A rejected frame is answered at once with its error and the
  stream goes on. A good frame goes to the one pending slot: while a frame is being meshed, a newer
  frame replaces the pending one, which counts as skipped and is reported in the next reply (the
  newest frame wins; nothing queues up behind a slow mesh, whatever the client's frame rate).
- the writer meshes the pending frame in the engine's mesh lane (a worker thread, never the event loop)
  and sends its reply. A frame never waits for batch-mates, but frames of other streams (same
  resolution) queued while the workers were busy are meshed with it in one pass (``LiveMeshing``);
  with ``split_lone_frames``, a frame meshed while no other mesh-lane batch and no grasp job runs
  splits its decoder work with a helper thread (the second core is idle then).

Each session owns a ``MeshStream`` (``HaloBase.mesh_stream``), so a frame is seeded by the same
stream's last meshed frame; a frame with another resolution or hand than the last starts a fresh
``MeshStream`` (meshed from scratch). The session ends when the client has sent its last frame and
every frame is answered (``done``), at once when the client goes away (``gone``; a frame being meshed
is dropped), or on server shutdown after the frame being meshed is answered (``shutdown``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import trimesh

from models import HaloBase
from models.api import MeshStream, StreamKeypoints, mesh_streams
from service.batching import Batcher
from service.errors import DeadlineExceededError, QueueFullError
from service.inputs import RejectedFrame, StreamFrame
from service.metrics import Metrics

StreamEnd = Literal["done", "gone", "shutdown"]


class ClientGoneError(Exception):
    """The client closed its end of the stream (raised by a front end's reader or sender)."""


@dataclass(frozen=True)
class FrameReply:
    """The answer to one frame: its mesh (keypoint frame, metres, with vertex normals) or its error.

    ``skipped_frames``: frames replaced by newer ones since the previous reply. ``fallback``: why the
    frame was meshed from scratch (start, jump, band_open, volume, part), empty when it was seeded."""

    frame_id: int | None
    skipped_frames: int
    server_s: float = 0.0
    mesh: trimesh.Trimesh | None = None
    resolution: int = 0
    fallback: str = ""
    error: Exception | None = None

    @property
    def seeded(self) -> bool:
        return self.mesh is not None and not self.fallback


Send = Callable[[FrameReply], Awaitable[None]]
Incoming = AsyncIterator[StreamFrame | RejectedFrame]


@dataclass(frozen=True)
class _LiveFrame:
    """A frame in the mesh lane, with the mesh stream that seeds it."""

    stream: MeshStream
    frame: StreamFrame


class LiveMeshing:
    """The mesh lane's batch function for live frames (one engine-wide instance, so frames of different
    streams batch together): the frames of a batch, one per stream, all of one resolution, meshed in one pass."""

    def __init__(self, lane: Batcher, metrics: Metrics, helper: Executor | None, grasp_lane: Batcher) -> None:
        self.lane = lane
        self.grasp_lane = grasp_lane
        self.metrics = metrics
        self.helper = helper  # takes half of each decoder call while no other batch of either lane runs

    def __call__(self, frames: Sequence[_LiveFrame]) -> list[tuple[trimesh.Trimesh, str]]:
        """Frames of several streams -> per frame (its mesh, why it was meshed from scratch or "")."""
        # A grasp job or another mesh batch already holds the other core: the split's two halves of this
        # frame would only wait for each other.
        helper = self.helper if self.lane.computing <= 1 and self.grasp_lane.computing == 0 else None
        hands = [
            StreamKeypoints(live.stream, live.frame.hand.keypoints, live.frame.hand.joint_order, live.frame.hand.hand)
            for live in frames
        ]
        meshes, stats = mesh_streams(hands, helper)
        self.metrics.observe_mesh_stats(stats, len(frames), frames[0].frame.resolution)
        return [(mesh, f.stream.stats.last_fallbacks[0]) for (mesh,), f in zip(meshes, frames, strict=True)]


class LiveStream:
    """One client's live stream: newest-frame-wins meshing of its frames, each seeded by its last one."""

    def __init__(
        self, base: HaloBase, meshing: LiveMeshing, metrics: Metrics, protocol: str, deadline: Callable[[], float]
    ):
        self.base = base
        self.meshing = meshing
        self.metrics = metrics
        self.protocol = protocol
        self.deadline = deadline
        self.counts: Counter[str] = Counter()  # frames by outcome, for the stream's log line
        self.ended: StreamEnd | None = None
        self.opened = time.perf_counter()
        self._mesh_stream: MeshStream | None = None
        self._seed_key: tuple[int, str] | None = None  # (resolution, hand) the mesh stream's seed belongs to
        self._pending: StreamFrame | None = None
        self._skipped = 0
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._input_done = False
        self._shutting_down = False
        self._failure: Exception | None = None  # what broke the reader, raised by ``serve``

    def shut_down(self) -> None:
        """The server is stopping: answer the frame being meshed, drop the pending one, end."""
        self._shutting_down = True
        self._wake.set()

    async def serve(self, frames: Incoming, send: Send) -> StreamEnd:
        """Read ``frames`` and ``send`` a reply to each meshed or rejected one until the stream ends; -> how it ended."""
        writer = asyncio.create_task(self._write(send))
        reader = asyncio.create_task(self._read(frames, send, writer))
        try:
            await asyncio.wait({writer})
        except asyncio.CancelledError:  # the front end's call was cancelled: the client went away
            self.ended = "gone"
            raise
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        if self._failure is not None:
            raise self._failure
        if writer.cancelled() or isinstance(writer.exception(), ClientGoneError):
            self.ended = "gone"
        else:
            self.ended = writer.result()
        return self.ended

    async def _read(self, frames: Incoming, send: Send, writer: asyncio.Task) -> None:
        try:
            async for frame in frames:
                self._count("received")
                if isinstance(frame, RejectedFrame):
                    self._count("rejected")
                    await self._send(send, FrameReply(frame.frame_id, self._take_skipped(), error=frame.error))
                else:
                    self._offer(frame)
        except ClientGoneError:
            writer.cancel()
            return
        except Exception as error:  # the front end failed to read: end the stream with its error
            self._failure = error
            writer.cancel()
            return
        self._input_done = True
        self._wake.set()

    def _offer(self, frame: StreamFrame) -> None:
        if self._pending is not None:
            self._skipped += 1
            self._count("skipped")
        self._pending = frame
        self._wake.set()

    def _take_skipped(self) -> int:
        skipped, self._skipped = self._skipped, 0
        return skipped

    async def _next_frame(self) -> StreamFrame | None:
        """The pending frame once there is one; None when the stream is to end."""
        while True:
            if self._shutting_down:
                return None
            if self._pending is not None:
                frame, self._pending = self._pending, None
                return frame
            if self._input_done:
                return None
            self._wake.clear()
            await self._wake.wait()

    async def _write(self, send: Send) -> StreamEnd:
        while (frame := await self._next_frame()) is not None:
            await self._send(send, await self._mesh(frame))
        return "shutdown" if self._shutting_down else "done"

    async def _send(self, send: Send, reply: FrameReply) -> None:
        async with self._send_lock:  # replies of the reader (errors) and the writer (meshes) go out one at a time
            await send(reply)

    def _stream_for(self, frame: StreamFrame) -> MeshStream:
        """The mesh stream for the frame's resolution and hand (a new one when either changed) at its smoothing."""
        key = (frame.resolution, frame.hand.hand)
        if self._mesh_stream is None or key != self._seed_key:
            self._mesh_stream = self.base.mesh_stream(resolution=frame.resolution, smooth=frame.smooth)
            self._seed_key = key
        self._mesh_stream.smooth = frame.smooth  # applied after extraction: the seed does not depend on it
        return self._mesh_stream

    async def _mesh(self, frame: StreamFrame) -> FrameReply:
        """Mesh one frame in the mesh lane -> its reply (an error reply if the lane refused it)."""
        live = _LiveFrame(self._stream_for(frame), frame)
        try:
            ((mesh, fallback),) = await self.meshing.lane.submit(
                [live], ("stream", frame.resolution), self.meshing, self.deadline(), eager=True
            )
        except (QueueFullError, DeadlineExceededError) as error:
            self._count("rejected")
            return FrameReply(frame.frame_id, self._take_skipped(), error=error)
        latency = time.perf_counter() - frame.arrived
        self._count("meshed")
        self.metrics.stream_frame_latency.labels(self.protocol).observe(latency)
        self.metrics.stream_extractions.labels(fallback or "seeded").inc()
        return FrameReply(frame.frame_id, self._take_skipped(), latency, mesh, frame.resolution, fallback)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metrics.stream_frames.labels(self.protocol, outcome).inc()

    def summary(self) -> dict:
        """What the stream's log line says: protocol, how it ended, its frames by outcome, how long it was open."""
        return {
            "protocol": self.protocol,
            "ended": self.ended or "error",
            "frames": dict(self.counts),
            "seconds": round(time.perf_counter() - self.opened, 3),
        }
