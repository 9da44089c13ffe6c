"""gRPC front end: the ``halo.v1.HaloService`` servicer, plus grpc.health.v1 and server reflection.

Handlers translate protobuf messages to engine calls and engine exceptions to status codes; the
engine, batcher and metrics are the same objects the REST front end uses. ``StreamMesh`` (a live hand)
reads its frames with ``context.read`` and writes each reply as soon as ``service.streams`` has it.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import trimesh
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from models import Grasp
from service.codecs import mesh_to_packed, normals_to_packed, numeric_metrics
from service.engine import Engine
from service.errors import DeadlineExceededError, InputError, ModelUnavailableError, QueueFullError, ShuttingDownError
from service.inputs import (
    GraspJob,
    GraspOptions,
    HandInput,
    Inputs,
    RejectedFrame,
    StreamFrame,
    grasp_options,
    packed_to_mesh,
    parse_hand,
)
from service.logs import request_id_var
from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc
from service.streams import FrameReply

log = logging.getLogger("halo.grpc")

SERVICE_NAME = halo_pb2.DESCRIPTOR.services_by_name["HaloService"].full_name
JOINT_ORDERS = {
    halo_pb2.JOINT_ORDER_UNSPECIFIED: "mano",
    halo_pb2.JOINT_ORDER_MANO: "mano",
    halo_pb2.JOINT_ORDER_BIOMECH: "biomech",
    halo_pb2.JOINT_ORDER_HALO: "halo",
}
HANDEDNESS = {
    halo_pb2.HANDEDNESS_UNSPECIFIED: "right",
    halo_pb2.HANDEDNESS_RIGHT: "right",
    halo_pb2.HANDEDNESS_LEFT: "left",
}

RANKS = {
    halo_pb2.GRASP_RANK_UNSPECIFIED: "none",
    halo_pb2.GRASP_RANK_NONE: "none",
    halo_pb2.GRASP_RANK_STABILITY: "stability",
}


class UnauthenticatedError(Exception):
    """Missing or wrong bearer token."""


def status_for(error: Exception) -> grpc.StatusCode:
    """Engine / input exception -> gRPC status code."""
    if isinstance(error, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, ShuttingDownError | ModelUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED
    return grpc.StatusCode.INTERNAL


def hand_from_proto(hand: halo_pb2.Hand, field: str = "") -> HandInput:
    """Hand message -> validated engine HandInput (enum values checked, keypoints validated)."""
    if hand.joint_order not in JOINT_ORDERS:
        raise InputError(f"{field}joint_order: unknown value {hand.joint_order}")
    if hand.handedness not in HANDEDNESS:
        raise InputError(f"{field}handedness: unknown value {hand.handedness}")
    keypoints = np.asarray(hand.keypoints, dtype=np.float64)
    if keypoints.size != 63:
        raise InputError(f"{field}keypoints: expected 63 values (21 x 3), got {keypoints.size}")
    return parse_hand(keypoints.reshape(21, 3), JOINT_ORDERS[hand.joint_order], HANDEDNESS[hand.handedness], field)


def mesh_to_proto(mesh: trimesh.Trimesh) -> halo_pb2.Mesh:
    vertices, faces = mesh_to_packed(mesh)
    return halo_pb2.Mesh(vertices=vertices, faces=faces)


def grasp_to_proto(grasp: Grasp) -> halo_pb2.Grasp:
    return halo_pb2.Grasp(
        keypoints=np.asarray(grasp.keypoints, dtype=np.float32).ravel().tolist(),
        mesh=mesh_to_proto(grasp.mesh),
        metrics=halo_pb2.GraspMetrics(values=numeric_metrics(grasp.metrics)),
    )


def frame_from_proto(message: halo_pb2.MeshFrame, inputs: Inputs) -> StreamFrame | RejectedFrame:
    """A live-stream frame -> a checked frame, or the frame's rejection naming the field (``hand.keypoints``, ...)."""
    try:
        hand = hand_from_proto(message.hand, "hand.")
        smooth = message.smooth if message.HasField("smooth") else None
        return inputs.stream_frame(message.frame_id, hand, message.resolution, smooth)
    except InputError as error:
        return RejectedFrame(message.frame_id, error)


def frame_reply_to_proto(reply: FrameReply) -> halo_pb2.MeshFrameReply:
    """A live-stream reply: the mesh with its normals and how it was made, or the frame's error."""
    message = halo_pb2.MeshFrameReply(frame_id=reply.frame_id or 0, skipped_frames=reply.skipped_frames)
    if reply.error is not None:
        message.error.CopyFrom(halo_pb2.FrameError(code=status_for(reply.error).name, message=str(reply.error)))
        return message
    message.mesh.CopyFrom(mesh_to_proto(reply.mesh))
    message.normals = normals_to_packed(reply.mesh)
    message.server_ms = reply.server_s * 1000
    message.seeded = reply.seeded
    message.fallback = reply.fallback
    message.resolution = reply.resolution
    return message


class HaloServicer(halo_pb2_grpc.HaloServiceServicer):
    """``halo.v1.HaloService`` over the shared engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.inputs = engine.inputs

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        return self.engine.deadline(context.time_remaining())

    async def _grasp_job(self, request: halo_pb2.GenerateGraspsRequest) -> GraspJob:
        obj = packed_to_mesh(request.object.vertices, request.object.faces, field="object")
        return await self.inputs.grasps(obj, request.num_samples, request.seed, _options(request))

    async def GenerateMesh(self, request, context):  # noqa: N802 (gRPC method names)
        hands = [hand_from_proto(h, f"hands[{i}].") for i, h in enumerate(request.hands)]
        meshes = await self.engine.mesh(self.inputs.mesh(hands, request.resolution), self._deadline(context))
        with self.engine.metrics.time_stage("encode"):
            return halo_pb2.GenerateMeshResponse(meshes=[mesh_to_proto(m) for m in meshes])

    async def QueryOccupancy(self, request, context):  # noqa: N802 (gRPC method names)
        hand = hand_from_proto(request.hand, "hand.")
        points = np.asarray(request.points, dtype=np.float64)
        if points.size == 0 or points.size % 3:
            raise InputError("points: expected a non-empty multiple of 3 values")
        job = self.inputs.occupancy(hand, points.reshape(-1, 3))
        probs = await self.engine.occupancy(job, self._deadline(context))
        return halo_pb2.QueryOccupancyResponse(probabilities=probs.astype(np.float32).tolist())

    async def GenerateGrasps(self, request, context):  # noqa: N802 (gRPC method names)
        grasps = await self.engine.grasps(await self._grasp_job(request), self._deadline(context))
        return halo_pb2.GenerateGraspsResponse(grasps=[grasp_to_proto(g) for g in grasps])

    async def StreamGrasps(self, request, context):  # noqa: N802 (gRPC method names)
        job = await self._grasp_job(request)
        async for grasp in self.engine.stream_grasps(job, self._deadline(context)):
            yield grasp_to_proto(grasp)

    async def StreamMesh(self, request_iterator, context):  # noqa: N802 (gRPC method names)
        async with self.engine.live_stream("grpc") as session:

            async def frames() -> AsyncIterator[StreamFrame | RejectedFrame]:
                while (message := await context.read()) is not grpc.aio.EOF:
                    yield frame_from_proto(message, self.inputs)

            async def send(reply: FrameReply) -> None:
                await context.write(frame_reply_to_proto(reply))

            if await session.serve(frames(), send) == "shutdown":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")


def _options(request: halo_pb2.GenerateGraspsRequest) -> GraspOptions:
    """The request's grasp options; fields left unset take the options' defaults (the same as REST's)."""
    if request.rank not in RANKS:
        raise InputError(f"rank: unknown value {request.rank}")
    fields = {"resolution": request.resolution or None, "physics": request.physics, "rank": RANKS[request.rank]}
    if request.HasField("refine"):
        fields["refine"] = request.refine
    return grasp_options(fields)


def check_bearer(metadata: dict, token: str | None) -> None:
    """Raise UnauthenticatedError unless the call's metadata carries ``authorization: Bearer <token>`` (when one is set)."""
    if token is not None:
        given = str(metadata.get("authorization", ""))
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise UnauthenticatedError("authorization: missing or wrong bearer token")


async def abort_with(context: grpc.aio.ServicerContext, error: Exception) -> None:
    """End the call with the error's status code and message (raises AbortError); internal errors are logged."""
    code = status_for(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("call failed", exc_info=error)
    await context.abort(code, str(error) if code != grpc.StatusCode.INTERNAL else "internal error")


def _request_id(metadata: dict) -> str:
    return str(metadata.get("x-request-id", ""))[:64] or uuid.uuid4().hex


class _Call:
    """Per-call bookkeeping as an async context: request id, metrics, one log line, errors -> status codes."""

    def __init__(self, engine: Engine, endpoint: str, context: grpc.aio.ServicerContext):
        self.engine, self.endpoint, self.context = engine, endpoint, context
        self.metadata = dict(context.invocation_metadata() or ())
        self.status = "OK"

    async def __aenter__(self) -> _Call:
        self.token = request_id_var.set(_request_id(self.metadata))
        self.started = time.perf_counter()
        self.engine.metrics.inflight.inc()
        return self

    def admit(self) -> None:
        """Refuse the call if the token is wrong or the server is stopping."""
        check_bearer(self.metadata, self.engine.settings.auth_token)
        self.engine.check_accepting(self.endpoint)

    async def __aexit__(self, exc_type: type | None, error: BaseException | None, tb: object) -> None:
        try:
            if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
                self.status = status_for(error).name
                await abort_with(self.context, error)
            elif error is not None and not isinstance(error, Exception):
                self.status = "CANCELLED"
        finally:
            self._record()

    def _record(self) -> None:
        elapsed = time.perf_counter() - self.started
        metrics = self.engine.metrics
        metrics.inflight.dec()
        metrics.requests.labels(self.endpoint, "grpc", self.status).inc()
        metrics.request_duration.labels(self.endpoint, "grpc").observe(elapsed)
        log.info(
            "request",
            extra={"protocol": "grpc", "endpoint": self.endpoint, "status": self.status, "seconds": round(elapsed, 4)},
        )
        request_id_var.reset(self.token)


_GRPC_ENDPOINTS = {
    "GenerateMesh": "mesh",
    "QueryOccupancy": "occupancy",
    "GenerateGrasps": "grasps",
    "StreamGrasps": "grasps",
}


def _guard_unary(engine: Engine, endpoint: str, handler: Callable) -> Callable:
    @functools.wraps(handler)
    async def guarded(request, context):
        async with _Call(engine, endpoint, context) as call:
            call.admit()
            return await handler(request, context)

    return guarded


def _guard_stream(engine: Engine, endpoint: str, handler: Callable) -> Callable:
    @functools.wraps(handler)
    async def guarded(request, context) -> AsyncIterator:
        async with _Call(engine, endpoint, context) as call:
            call.admit()
            async for item in handler(request, context):
                yield item

    return guarded


def _guard_live_stream(engine: Engine, handler: Callable) -> Callable:
    """Auth and errors -> status codes for StreamMesh; a live stream has its own metrics and log line
    (``halo_stream*``, "stream closed"), not a request's."""

    @functools.wraps(handler)
    async def guarded(request_iterator, context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        token = request_id_var.set(_request_id(metadata))
        try:
            try:
                check_bearer(metadata, engine.settings.auth_token)
            except UnauthenticatedError:
                engine.metrics.streams_refused.labels("grpc", "unauthenticated").inc()
                raise
            await handler(request_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)
        finally:
            request_id_var.reset(token)

    return guarded


def guarded_servicer(engine: Engine) -> HaloServicer:
    """A servicer whose methods check auth, map errors to status codes and record metrics."""
    servicer = HaloServicer(engine)
    for method, endpoint in _GRPC_ENDPOINTS.items():
        handler = getattr(servicer, method)
        guard = _guard_stream if method == "StreamGrasps" else _guard_unary
        setattr(servicer, method, guard(engine, endpoint, handler))
    servicer.StreamMesh = _guard_live_stream(engine, servicer.StreamMesh)
    return servicer


def create_grpc_server(engine: Engine) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """An aio server with HaloService, health and reflection registered (ports not yet bound)."""
    limit = max(engine.settings.max_body_bytes, engine.settings.max_upload_bytes)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ]
    )
    halo_pb2_grpc.add_HaloServiceServicer_to_server(guarded_servicer(engine), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Report SERVING / NOT_SERVING for the whole server and for HaloService."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
