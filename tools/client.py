"""Small Python clients for the server, one per protocol, returning trimesh meshes and numpy arrays.

    with RestClient("http://127.0.0.1:8000") as client:
        mesh = client.mesh(keypoints)                       # (21,3) metres -> trimesh.Trimesh
    with GrpcClient("127.0.0.1:50051") as client:
        meshes = client.meshes([kps_a, kps_b], resolution=64)
        for reply in client.stream_meshes(live_frames(sequence, resolution=64)):   # a live stream
            reply.frame_id, reply.mesh, reply.skipped_frames
    with LiveSocket("http://127.0.0.1:8000") as socket:      # the same over the WebSocket /stream
        for reply in socket.stream_meshes(live_frames(sequence)): ...

All raise ``HaloError`` (with the HTTP status, gRPC code or WebSocket close code and the server's
message) on failure; a live frame the server rejected comes back as a reply whose ``error`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import io
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import httpx
import numpy as np
import orjson
import trimesh
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.codecs import mesh_to_packed
from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc

JOINT_ORDER_ENUM = {
    "mano": halo_pb2.JOINT_ORDER_MANO,
    "mediapipe": halo_pb2.JOINT_ORDER_MANO,
    "openpose": halo_pb2.JOINT_ORDER_MANO,
    "biomech": halo_pb2.JOINT_ORDER_BIOMECH,
    "halo": halo_pb2.JOINT_ORDER_HALO,
}
HANDEDNESS_ENUM = {"right": halo_pb2.HANDEDNESS_RIGHT, "left": halo_pb2.HANDEDNESS_LEFT}
RANK_ENUM = {"none": halo_pb2.GRASP_RANK_NONE, "stability": halo_pb2.GRASP_RANK_STABILITY}


class HaloError(Exception):
    """The server refused or failed a call."""

    def __init__(self, status: int | str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class GraspResult:
    keypoints: np.ndarray  # (21,3) metres, MANO order, object frame
    mesh: trimesh.Trimesh
    metrics: dict[str, float]


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


def _live_mesh(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(vertices.reshape(-1, 3).astype(np.float64), faces.reshape(-1, 3).astype(np.int64),
                           vertex_normals=normals.reshape(-1, 3).astype(np.float64), process=False)


def _per_hand(hand: str | Sequence[str], count: int) -> list[str]:
    return [hand] * count if isinstance(hand, str) else list(hand)


def _hand_json(keypoints: Any, joint_order: str, hand: str) -> dict:
    return {
        "keypoints": np.asarray(keypoints, dtype=np.float64).tolist(),
        "joint_order": joint_order,
        "hand": hand,
    }


def _mesh_from_json(data: dict) -> trimesh.Trimesh:
    return trimesh.Trimesh(
        np.asarray(data["vertices"], dtype=np.float64),
        np.asarray(data["faces"], dtype=np.int64),
        process=False,
    )


class _Closing:
    """Context-manager support for the clients: ``with Client(...) as client`` closes the connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class RestClient(_Closing):
    """Client for the REST front end (JSON in and out)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 300.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.token = token
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.post(path, **kwargs)
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise HaloError(response.status_code, str(detail))
        return response

    def mesh(
        self, keypoints: Any, joint_order: str = "mano", hand: str = "right", resolution: int | None = None
    ) -> trimesh.Trimesh:
        """(21,3) keypoints, metres -> the hand mesh (keypoint frame, metres)."""
        body = {**_hand_json(keypoints, joint_order, hand), "resolution": resolution}
        return _mesh_from_json(orjson.loads(self._post("/mesh", json=body).content))

    def meshes(
        self,
        keypoints: Sequence[Any],
        joint_order: str = "mano",
        hand: str | Sequence[str] = "right",
        resolution: int | None = None,
    ) -> list[trimesh.Trimesh]:
        """(B,21,3) keypoints -> B meshes in one request (``hand`` may be one name per hand)."""
        hands = _per_hand(hand, len(keypoints))
        body = {
            "hands": [_hand_json(k, joint_order, h) for k, h in zip(keypoints, hands, strict=True)],
            "resolution": resolution,
        }
        return [_mesh_from_json(m) for m in orjson.loads(self._post("/mesh", json=body).content)["meshes"]]

    def mesh_file(self, keypoints: Any, fmt: str = "ply", resolution: int | None = None, **hand: str) -> bytes:
        """The mesh as a PLY / OBJ / GLB file's bytes."""
        body = {
            "keypoints": np.asarray(keypoints, dtype=np.float64).tolist(),
            "resolution": resolution,
            "format": fmt,
            **hand,
        }
        return self._post("/mesh", json=body).content

    def occupancy(self, keypoints: Any, points: Any, joint_order: str = "mano", hand: str = "right") -> np.ndarray:
        """(21,3) keypoints + (N,3) points, metres -> (N,) occupancy probabilities."""
        body = {
            **_hand_json(keypoints, joint_order, hand),
            "points": np.asarray(points, dtype=np.float64).tolist(),
        }
        return np.asarray(orjson.loads(self._post("/occupancy", json=body).content)["probabilities"])

    def grasps(
        self,
        obj: trimesh.Trimesh | str | Path,
        num_samples: int | None = None,
        seed: int = 0,
        refine: bool = True,
        resolution: int | None = None,
        physics: bool = False,
        rank: str = "none",
    ) -> list[GraspResult]:
        """Object mesh (or a mesh file to upload) -> sampled grasps (hand meshes at ``resolution``).

        ``physics`` adds the server's physics check to the metrics; ``rank="stability"`` returns the most
        stable samples first.
        """
        params = {"seed": seed, "refine": refine, "physics": physics, "rank": rank}
        if num_samples is not None:
            params["num_samples"] = num_samples
        if resolution is not None:
            params["resolution"] = resolution
        if isinstance(obj, str | Path):
            path = Path(obj)
            form = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in params.items()}
            response = self._post("/grasps", data=form, files={"file": (path.name, path.read_bytes())})
        else:
            body = {
                "object": {
                    "vertices": np.asarray(obj.vertices).tolist(),
                    "faces": np.asarray(obj.faces).tolist(),
                },
                **params,
            }
            response = self._post("/grasps", json=body)
        return [
            GraspResult(np.asarray(g["keypoints"]), _mesh_from_json(g["mesh"]), g["metrics"])
            for g in orjson.loads(response.content)["grasps"]
        ]

    def live_stream(self, encoding: str = "base64") -> LiveSocket:
        """A live stream over this server's WebSocket ``/stream`` (with this client's token)."""
        return LiveSocket(str(self.http.base_url), self.token, encoding)

    def models(self) -> dict:
        """What the server has loaded."""
        return self.http.get("/models").json()

    def ready(self) -> bool:
        """True when the server reports ready."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class LiveSocket(_Closing):
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
            **_hand_json(frame.keypoints, frame.joint_order, frame.hand),
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
        reply.mesh = _live_mesh(*(np.asarray(arrays[name]) for name in ("vertices", "faces", "normals")))
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


def _mesh_from_proto(mesh: halo_pb2.Mesh) -> trimesh.Trimesh:
    vertices = np.frombuffer(mesh.vertices, dtype="<f4").reshape(-1, 3).astype(np.float64)
    faces = np.frombuffer(mesh.faces, dtype="<u4").reshape(-1, 3).astype(np.int64)
    return trimesh.Trimesh(vertices, faces, process=False)


class LiveCall(_Closing):
    """A live stream over gRPC (StreamMesh) with ``LiveSocket``'s interface: ``send`` frames, ``receive``
    replies (one thread each may do so at once); ``finish`` says no more frames follow, ``close`` cancels."""

    _END = object()

    def __init__(self, stub: halo_pb2_grpc.HaloServiceStub, metadata: tuple):
        self._outbox: queue.Queue = queue.Queue()
        self._call = stub.StreamMesh(iter(self._outbox.get, self._END), metadata=metadata)

    def send(self, frame: LiveFrame) -> None:
        """Send one frame (does not wait for its reply)."""
        self._outbox.put(_frame_proto(frame))

    def receive(self) -> LiveReply:
        """The next reply; HaloError(code name, message) once the call ended (``OK`` after ``finish``)."""
        try:
            return _reply_from_proto(next(self._call))
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


@contextlib.contextmanager
def open_live_stream(
    protocol: str,
    url: str = "http://127.0.0.1:8000",
    grpc_target: str = "127.0.0.1:50051",
    token: str | None = None,
    encoding: str = "base64",
) -> Iterator[LiveSocket | LiveCall]:
    """A live stream over ``protocol`` (``grpc``: StreamMesh at ``grpc_target``; ``websocket``: ``/stream`` at
    ``url``), closed on exit; both have ``send(frame)`` and ``receive()``."""
    if protocol == "websocket":
        with LiveSocket(url, token, encoding) as live:
            yield live
    else:
        with GrpcClient(grpc_target, token) as client, client.live_stream() as live:
            yield live


def _frame_proto(frame: LiveFrame) -> halo_pb2.MeshFrame:
    return halo_pb2.MeshFrame(
        frame_id=frame.frame_id,
        hand=_hand_proto(frame.keypoints, frame.joint_order, frame.hand),
        resolution=frame.resolution or 0,
        smooth=frame.smooth,
    )


def _reply_from_proto(message: halo_pb2.MeshFrameReply) -> LiveReply:
    reply = LiveReply(message.frame_id, message.skipped_frames)
    if message.HasField("error"):
        reply.error = HaloError(message.error.code, message.error.message)
        return reply
    reply.mesh = _live_mesh(*(np.frombuffer(data, dtype) for data, dtype in (
        (message.mesh.vertices, "<f4"), (message.mesh.faces, "<u4"), (message.normals, "<f4"))))
    reply.server_ms, reply.seeded, reply.fallback = message.server_ms, message.seeded, message.fallback
    reply.resolution = message.resolution
    return reply


def _hand_proto(keypoints: Any, joint_order: str, hand: str) -> halo_pb2.Hand:
    return halo_pb2.Hand(
        keypoints=np.asarray(keypoints, dtype=np.float32).ravel().tolist(),
        joint_order=JOINT_ORDER_ENUM[joint_order],
        handedness=HANDEDNESS_ENUM[hand],
    )


class GrpcClient(_Closing):
    """Client for ``halo.v1.HaloService`` (meshes arrive as packed float32, so vertices are float32-exact)."""

    def __init__(self, target: str = "127.0.0.1:50051", token: str | None = None, timeout: float | None = 300.0):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
        self.stub = halo_pb2_grpc.HaloServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            raise HaloError(error.code().name, error.details() or "") from error

    def meshes(
        self,
        keypoints: Sequence[Any],
        joint_order: str = "mano",
        hand: str | Sequence[str] = "right",
        resolution: int | None = None,
        timeout: float | None = None,
    ) -> list[trimesh.Trimesh]:
        """(B,21,3) keypoints -> B meshes in one call."""
        hands = _per_hand(hand, len(keypoints))
        request = halo_pb2.GenerateMeshRequest(
            hands=[_hand_proto(k, joint_order, h) for k, h in zip(keypoints, hands, strict=True)],
            resolution=resolution or 0,
        )
        return [_mesh_from_proto(m) for m in self._call(self.stub.GenerateMesh, request, timeout).meshes]

    def mesh(
        self,
        keypoints: Any,
        joint_order: str = "mano",
        hand: str = "right",
        resolution: int | None = None,
        timeout: float | None = None,
    ) -> trimesh.Trimesh:
        """(21,3) keypoints, metres -> the hand mesh."""
        return self.meshes([keypoints], joint_order, hand, resolution, timeout)[0]

    def stream_meshes(self, frames: Iterable[LiveFrame], timeout: float | None = None) -> Iterator[LiveReply]:
        """A live stream (StreamMesh): ``frames`` are sent as the iterable yields them (it may wait, e.g. for
        replies); yields one reply per meshed or rejected frame until the server has answered the last."""
        requests = (_frame_proto(frame) for frame in frames)
        try:
            for message in self.stub.StreamMesh(requests, timeout=timeout, metadata=self.metadata):
                yield _reply_from_proto(message)
        except grpc.RpcError as error:
            raise HaloError(error.code().name, error.details() or "") from error

    def live_stream(self) -> LiveCall:
        """A live stream (StreamMesh) with ``send`` / ``receive`` like ``LiveSocket``."""
        return LiveCall(self.stub, self.metadata)

    def occupancy(self, keypoints: Any, points: Any, joint_order: str = "mano", hand: str = "right") -> np.ndarray:
        """(21,3) keypoints + (N,3) points, metres -> (N,) occupancy probabilities."""
        request = halo_pb2.QueryOccupancyRequest(
            hand=_hand_proto(keypoints, joint_order, hand),
            points=np.asarray(points, dtype=np.float32).ravel().tolist(),
        )
        return np.asarray(self._call(self.stub.QueryOccupancy, request).probabilities, dtype=np.float64)

    def grasps(
        self,
        obj: trimesh.Trimesh | str | Path,
        num_samples: int = 0,
        seed: int = 0,
        refine: bool = True,
        stream: bool = False,
        resolution: int | None = None,
        physics: bool = False,
        rank: str = "none",
    ) -> list[GraspResult]:
        """Object mesh (or mesh file, read locally) -> sampled grasps; ``stream`` uses StreamGrasps.

        ``physics`` and ``rank`` ("none", "stability") as in ``RestClient.grasps``.
        """
        mesh = (
            trimesh.load(io.BytesIO(Path(obj).read_bytes()), file_type=Path(obj).suffix[1:], force="mesh")
            if isinstance(obj, str | Path)
            else obj
        )
        vertices, faces = mesh_to_packed(mesh)
        request = halo_pb2.GenerateGraspsRequest(
            object=halo_pb2.Mesh(vertices=vertices, faces=faces),
            num_samples=num_samples,
            seed=seed,
            refine=refine,
            resolution=resolution or 0,
            physics=physics,
            rank=RANK_ENUM[rank],
        )
        try:
            if stream:
                grasps = list(self.stub.StreamGrasps(request, timeout=self.timeout, metadata=self.metadata))
            else:
                grasps = self.stub.GenerateGrasps(request, timeout=self.timeout, metadata=self.metadata).grasps
        except grpc.RpcError as error:
            raise HaloError(error.code().name, error.details() or "") from error
        return [
            GraspResult(
                np.asarray(g.keypoints, dtype=np.float64).reshape(21, 3),
                _mesh_from_proto(g.mesh),
                dict(g.metrics.values),
            )
            for g in grasps
        ]
