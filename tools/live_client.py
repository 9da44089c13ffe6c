"""Live streams from Python: keypoint frames in, meshes out, over the WebSocket ``/stream`` (``LiveSocket``) or
gRPC ``StreamMesh`` (``LiveCall``, from ``GrpcClient.live_stream``); both ``send`` frames and ``receive`` replies.

    with LiveSocket("http://127.0.0.1:8000") as socket:
        for reply in socket.stream_meshes(live_frames(sequence, resolution=64)):
            reply.frame_id, reply.mesh, reply.skipped_frames
"""

from __future__ import annotations

import base64
import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import grpc
import numpy as np
import orjson
import trimesh
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc
from tools.wire import Closing, HaloError, hand_json, hand_proto, live_mesh


@dataclass(frozen=True)
class LiveFrame:
    """One frame of a live stream: (21,3) keypoints in metres and how to mesh them (None: the server's default)."""

    frame_id: int
    keypoints: Any
    hand: str = "right"
    joint_order: str = "mano"
    resolution: int | None = None
    smooth: int | None = None  # Taubin iterations; None: the server's live default (10)


@dataclass
class LiveReply:
    """The server's answer to one live frame: its mesh (with vertex normals) or its error."""

    frame_id: int | None
    skipped_frames: int  # frames replaced by newer ones, never meshed, since the previous reply
    mesh: trimesh.Trimesh | None = None
    server_ms: float = 0.0  # the frame's arrival to its mesh being ready, on the server
    seeded: bool = False  # meshed around the previous frame's surface
    fallback: str = ""  # why it was meshed from scratch instead (start, jump, band_open, volume, part)
    resolution: int = 0
    error: HaloError | None = None


def live_frames(sequence: Iterable[Any], first_id: int = 0, **options: Any) -> Iterator[LiveFrame]:
    """(T,21,3) keypoints -> LiveFrames numbered from ``first_id``, each with ``options`` (hand, resolution, ...)."""
    for index, keypoints in enumerate(sequence, start=first_id):
        yield LiveFrame(index, keypoints, **options)


class LiveSocket(Closing):
    """A live stream over the WebSocket ``/stream``: ``send`` frames and ``receive`` replies (one thread each may
    do so at once), or ``stream_meshes`` for both. ``encoding="base64"`` has meshes sent as packed arrays."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        encoding: str = "base64",
        token_in_query: bool = False,
        open_timeout: float = 30.0,
    ):
        query = {"encoding": encoding} | ({"token": token} if token and token_in_query else {})
        address = url.replace("http", "ws", 1).rstrip("/") + "/stream?" + urlencode(query)
        headers = {"Authorization": f"Bearer {token}"} if token and not token_in_query else None
        self.encoding = encoding
        self._opened = contextlib.ExitStack()
        self.connection = self._opened.enter_context(connect(
            address, additional_headers=headers, max_size=None, compression=None, open_timeout=open_timeout,
            legacy=False,
        ))

    def close(self) -> None:
        self._opened.close()

    def send(self, frame: LiveFrame) -> None:
        """Send one frame (does not wait for its reply)."""
        message = {
            "frame_id": frame.frame_id,
            **hand_json(frame.keypoints, frame.joint_order, frame.hand),
            "resolution": frame.resolution,
            "smooth": frame.smooth,
        }
        self.connection.send(orjson.dumps(message).decode())

    def receive(self, timeout: float | None = None) -> LiveReply:
        """The next reply; HaloError(close code, reason) once the server closed the stream."""
        try:
            data = orjson.loads(self.connection.recv(timeout))
        except ConnectionClosed as closed:
            frame = closed.rcvd
            raise HaloError(frame.code if frame else 1006, frame.reason if frame else "connection lost") from closed
        reply = LiveReply(data["frame_id"], data["skipped_frames"])
        if "error" in data:
            reply.error = HaloError(data["error"]["status"], data["error"]["detail"])
            return reply
        arrays = {name: data[name] for name in ("vertices", "faces", "normals")}
        if self.encoding == "base64":
            types = {"vertices": "<f4", "faces": "<u4", "normals": "<f4"}
            arrays = {name: np.frombuffer(base64.b64decode(text), types[name]) for name, text in arrays.items()}
        reply.mesh = live_mesh(*(np.asarray(arrays[name]) for name in ("vertices", "faces", "normals")))
        reply.server_ms, reply.seeded, reply.fallback = data["server_ms"], data["seeded"], data["fallback"]
        reply.resolution = data["resolution"]
        return reply

    def stream_meshes(self, frames: Iterable[LiveFrame]) -> Iterator[LiveReply]:
        """Send ``frames`` as fast as they come (from a thread) and yield the replies until the one naming the last."""
        frames = list(frames)
        if not frames:
            return
        sender = threading.Thread(target=self._send_all, args=(frames,), daemon=True)
        sender.start()
        last = frames[-1].frame_id
        while True:
            reply = self.receive()
            yield reply
            if reply.frame_id == last:
                break
        sender.join()

    def _send_all(self, frames: list[LiveFrame]) -> None:
        try:
            for frame in frames:
                self.send(frame)
        except ConnectionClosed:
            pass  # the receiving side reports why


class LiveCall(Closing):
    """A live stream over gRPC (StreamMesh) with ``LiveSocket``'s interface: ``send`` frames, ``receive``
    replies (one thread each may do so at once); ``finish`` says no more frames follow, ``close`` cancels."""

    _END = object()

    def __init__(self, stub: halo_pb2_grpc.HaloServiceStub, metadata: tuple):
        self._outbox: queue.Queue = queue.Queue()
        self._call = stub.StreamMesh(iter(self._outbox.get, self._END), metadata=metadata)

    def send(self, frame: LiveFrame) -> None:
        """Send one frame (does not wait for its reply)."""
        self._outbox.put(frame_proto(frame))

    def receive(self) -> LiveReply:
        """The next reply; HaloError(code name, message) once the call ended (``OK`` after ``finish``)."""
        try:
            return reply_from_proto(next(self._call))
        except StopIteration:
            raise HaloError("OK", "the stream ended") from None
        except grpc.RpcError as error:
            raise HaloError(error.code().name, error.details() or "") from error

    def finish(self) -> None:
        """No more frames: the server answers what it has and ends the call."""
        self._outbox.put(self._END)

    def close(self) -> None:
        self.finish()
        self._call.cancel()


def frame_proto(frame: LiveFrame) -> halo_pb2.MeshFrame:
    """A live frame -> its StreamMesh request message."""
    return halo_pb2.MeshFrame(
        frame_id=frame.frame_id,
        hand=hand_proto(frame.keypoints, frame.joint_order, frame.hand),
        resolution=frame.resolution or 0,
        smooth=frame.smooth,
    )


def reply_from_proto(message: halo_pb2.MeshFrameReply) -> LiveReply:
    """A StreamMesh reply message -> LiveReply (its mesh, or its error)."""
    reply = LiveReply(message.frame_id, message.skipped_frames)
    if message.HasField("error"):
        reply.error = HaloError(message.error.code, message.error.message)
        return reply
    reply.mesh = live_mesh(*(np.frombuffer(data, dtype) for data, dtype in (
        (message.mesh.vertices, "<f4"), (message.mesh.faces, "<u4"), (message.normals, "<f4"))))
    reply.server_ms, reply.seeded, reply.fallback = message.server_ms, message.seeded, message.fallback
    reply.resolution = message.resolution
    return reply
