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

import contextlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import trimesh

from service.codecs import mesh_to_packed
from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc
from tools.live_client import LiveCall, LiveFrame, LiveReply, LiveSocket, frame_proto, live_frames, reply_from_proto
from tools.wire import RANK_ENUM, Closing, HaloError, hand_json, hand_proto, mesh_from_json, mesh_from_proto

__all__ = ["GraspResult", "GrpcClient", "HaloError", "LiveCall", "LiveFrame", "LiveReply", "LiveSocket", "RestClient",
           "live_frames", "open_live_stream"]


@dataclass
class GraspResult:
    keypoints: np.ndarray  # (21,3) metres, MANO order, object frame
    mesh: trimesh.Trimesh
    metrics: dict[str, float]


def _per_hand(hand: str | Sequence[str], count: int) -> list[str]:
    return [hand] * count if isinstance(hand, str) else list(hand)


class RestClient(Closing):
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
        body = {**hand_json(keypoints, joint_order, hand), "resolution": resolution}
        return mesh_from_json(orjson.loads(self._post("/mesh", json=body).content))

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
            "hands": [hand_json(k, joint_order, h) for k, h in zip(keypoints, hands, strict=True)],
            "resolution": resolution,
        }
        return [mesh_from_json(m) for m in orjson.loads(self._post("/mesh", json=body).content)["meshes"]]

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
            **hand_json(keypoints, joint_order, hand),
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
            GraspResult(np.asarray(g["keypoints"]), mesh_from_json(g["mesh"]), g["metrics"])
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


class GrpcClient(Closing):
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
            hands=[hand_proto(k, joint_order, h) for k, h in zip(keypoints, hands, strict=True)],
            resolution=resolution or 0,
        )
        return [mesh_from_proto(m) for m in self._call(self.stub.GenerateMesh, request, timeout).meshes]

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
        requests = (frame_proto(frame) for frame in frames)
        try:
            for message in self.stub.StreamMesh(requests, timeout=timeout, metadata=self.metadata):
                yield reply_from_proto(message)
        except grpc.RpcError as error:
            raise HaloError(error.code().name, error.details() or "") from error

    def live_stream(self) -> LiveCall:
        """A live stream (StreamMesh) with ``send`` / ``receive`` like ``LiveSocket``."""
        return LiveCall(self.stub, self.metadata)

    def occupancy(self, keypoints: Any, points: Any, joint_order: str = "mano", hand: str = "right") -> np.ndarray:
        """(21,3) keypoints + (N,3) points, metres -> (N,) occupancy probabilities."""
        request = halo_pb2.QueryOccupancyRequest(
            hand=hand_proto(keypoints, joint_order, hand),
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
                mesh_from_proto(g.mesh),
                dict(g.metrics.values),
            )
            for g in grasps
        ]


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
