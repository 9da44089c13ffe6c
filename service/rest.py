"""REST front end: FastAPI routes and pydantic schemas over the shared engine.

Routes stay thin: parse, hand to the engine, encode. Errors map to statuses in one place
(``error_status``) and every status a route can answer is listed in its OpenAPI ``responses``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException

from service.batching import DeadlineExceededError, QueueFullError
from service.codecs import (
    MEDIA_TYPES,
    InputError,
    PayloadTooLargeError,
    arrays_to_mesh,
    decode_upload,
    json_bytes,
    mesh_to_dict,
    meshes_to_file,
    negotiate_format,
    numeric_metrics,
)
from service.engine import Engine, GraspOptions, ModelUnavailableError, ShuttingDownError, parse_hand
from service.logs import request_id_var
from service.viewer import add_viewer

log = logging.getLogger("halo.rest")
T = TypeVar("T")

# ---------------------------------------------------------------- schemas

Point = Annotated[list[float], Field(min_length=3, max_length=3)]
Keypoints = Annotated[
    list[Point],
    Field(min_length=21, max_length=21, description="21 x [x, y, z] in metres, in `joint_order`."),
]
JointOrderName = Literal["mano", "mediapipe", "openpose", "biomech", "halo"]
HandName = Literal["right", "left"]
FormatName = Literal["json", "ply", "obj", "glb"]
RankName = Literal["none", "stability"]
PHYSICS_HELP = ("Check each grasp in MuJoCo (object under gravity along 6 directions; adds sim_displacement_cm, "
                "sim_displacement_worst_cm, sim_directions_held, sim_settle_cm, stable). Costs ~0.05-0.4 s per grasp.")
RANK_HELP = "stability: return the most stable of up to twice as many samples (implies physics)."


class HandIn(BaseModel):
    keypoints: Keypoints
    joint_order: JointOrderName = "mano"
    hand: HandName = "right"


class MeshRequest(BaseModel):
    """One hand (``keypoints``) or several (``hands``), meshed at ``resolution``."""

    keypoints: Keypoints | None = None
    joint_order: JointOrderName = "mano"
    hand: HandName = "right"
    hands: list[HandIn] | None = Field(None, min_length=1)
    resolution: int | None = Field(None, description="Final MISE grid: 64, 128, 256 or 512 (server maximum applies).")
    format: FormatName | None = Field(None, description="Response format; default from the Accept header, else json.")

    @model_validator(mode="after")
    def _one_form(self) -> MeshRequest:
        if (self.keypoints is None) == (self.hands is None):
            raise ValueError("keypoints: give either `keypoints` (one hand) or `hands` (several), not both")
        return self


class MeshOut(BaseModel):
    vertices: list[Point] = Field(description="N x [x, y, z], metres, keypoint frame.")
    faces: list[Annotated[list[int], Field(min_length=3, max_length=3)]] = Field(
        description="M x [i, j, k], outward winding."
    )


class MeshResponse(MeshOut):
    resolution: int


class MeshesResponse(BaseModel):
    meshes: list[MeshOut]
    resolution: int


class OccupancyRequest(HandIn):
    points: list[Point] = Field(min_length=1, description="N x [x, y, z], metres, keypoint frame.")


class OccupancyResponse(BaseModel):
    probabilities: list[float]


class ObjectIn(BaseModel):
    vertices: list[Point] = Field(min_length=3)
    faces: list[Annotated[list[int], Field(min_length=3, max_length=3)]] = Field(min_length=1)


class GraspRequest(BaseModel):
    object: ObjectIn
    num_samples: int | None = Field(None, ge=1, description="Grasps to return (server default if absent).")
    seed: int = Field(0, ge=0, lt=2**63)
    refine: bool = True
    resolution: int | None = None
    physics: bool = Field(False, description=PHYSICS_HELP)
    rank: RankName = Field("none", description=RANK_HELP)


class GraspOut(BaseModel):
    keypoints: Keypoints
    mesh: MeshOut
    metrics: dict[str, float]


class GraspsResponse(BaseModel):
    grasps: list[GraspOut]


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong; input errors start with the field name.")
    request_id: str | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "Missing or wrong bearer token.",
        413: "Body, upload or object larger than the server's limits.",
        415: "Unsupported content type.",
        422: "Invalid input; `detail` starts with the field name.",
        503: "Queue full, server stopping, or model not available (`Retry-After` if retrying helps).",
        504: "The request's deadline passed before its work started.",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}


MODEL_ERRORS = _errors(401, 413, 422, 503, 504)
MESH_CONTENT = {media: {} for fmt, media in MEDIA_TYPES.items() if fmt != "json"}

# ---------------------------------------------------------------- errors


def error_status(error: Exception) -> tuple[int, str, dict[str, str]]:
    """A refused request's exception -> (HTTP status, message, extra headers)."""
    if isinstance(error, PayloadTooLargeError):
        return 413, str(error), {}
    if isinstance(error, InputError):
        return 422, str(error), {}
    if isinstance(error, QueueFullError | ShuttingDownError):
        return 503, str(error), {"Retry-After": "1"}
    if isinstance(error, ModelUnavailableError):
        return 503, str(error), {}
    return 504, str(error), {}


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every failure uses."""
    return JSONResponse({"detail": detail, "request_id": request_id_var.get()}, status, headers=headers)


def _validation_message(errors: list[dict]) -> str:
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "header")]
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if message.split(":", 1)[0] in ("keypoints",):
        return message
    return f"{'.'.join(loc) or 'body'}: {message}"


# ---------------------------------------------------------------- dependencies

bearer = HTTPBearer(auto_error=False, description="Required only when the server runs with an auth token.")


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def check_token(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    token = request.app.state.engine.settings.auth_token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise UnauthorizedError()


class UnauthorizedError(Exception):
    """Missing or wrong bearer token."""


class ClientDisconnectedError(Exception):
    """The client closed the connection before its answer was ready."""


EngineDep = Annotated[Engine, Depends(get_engine)]


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and so its queued items) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientDisconnectedError()
    finally:
        if not task.done():
            task.cancel()


def json_bytes_response(payload: Any) -> Response:
    """A compact JSON response (routes return it directly, bypassing response-model re-validation)."""
    return Response(json_bytes(payload), media_type="application/json")


def mesh_response(engine: Engine, meshes: list, resolution: int, fmt: str, single: bool) -> Response:
    """Meshes in the negotiated format; the whole conversion is timed as the ``encode`` stage."""
    with engine.metrics.time_stage("encode"):
        if fmt != "json":
            return Response(meshes_to_file(meshes, fmt), media_type=MEDIA_TYPES[fmt])
        if single:
            return json_bytes_response({**mesh_to_dict(meshes[0]), "resolution": resolution})
        return json_bytes_response({"meshes": [mesh_to_dict(m) for m in meshes], "resolution": resolution})


def grasp_payload(grasp: Any) -> dict:
    """A sampled grasp (keypoints (21,3) m, mesh, metrics dict) as JSON-ready data."""
    return {
        "keypoints": np.ascontiguousarray(grasp.keypoints, dtype=np.float64),
        "mesh": mesh_to_dict(grasp.mesh),
        "metrics": numeric_metrics(grasp.metrics),
    }


# ---------------------------------------------------------------- app


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app serving ``engine``."""
    app = FastAPI(
        title="HALO inference server",
        version="1.0.0",
        description="Hand meshes from 21 keypoints, occupancy queries and grasps, batched on one engine.",
    )
    app.state.engine = engine
    auth = [Depends(check_token)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(list(error.errors())))

    @app.exception_handler(UnauthorizedError)
    async def _unauthorized(request: Request, error: UnauthorizedError) -> JSONResponse:
        return error_response(401, "authorization: missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def _refused(request: Request, error: Exception) -> JSONResponse:
        return error_response(*error_status(error))

    for error_type in (
        InputError,
        QueueFullError,
        ModelUnavailableError,
        DeadlineExceededError,
    ):
        app.add_exception_handler(error_type, _refused)

    @app.exception_handler(ClientDisconnectedError)
    async def _gone(request: Request, error: ClientDisconnectedError) -> Response:
        return Response(status_code=499)

    @app.post(
        "/mesh",
        dependencies=auth,
        response_model=MeshResponse | MeshesResponse,
        responses={200: {"content": MESH_CONTENT}, **MODEL_ERRORS},
        summary="Keypoints -> watertight hand mesh(es)",
    )
    async def mesh(body: MeshRequest, request: Request, engine: EngineDep) -> Response:
        fmt = negotiate_format(body.format, request.headers.get("accept"))
        if body.hands is not None:
            hands = [parse_hand(h.keypoints, h.joint_order, h.hand, f"hands[{i}].") for i, h in enumerate(body.hands)]
        else:
            hands = [parse_hand(body.keypoints, body.joint_order, body.hand)]
        resolution = engine.resolution(body.resolution)
        meshes = await until_disconnected(request, engine.mesh(hands, resolution, engine.deadline()))
        return mesh_response(engine, meshes, resolution, fmt, single=body.hands is None)

    @app.post(
        "/occupancy",
        dependencies=auth,
        response_model=OccupancyResponse,
        responses=MODEL_ERRORS,
        summary="Keypoints + points -> occupancy probabilities",
    )
    async def occupancy(body: OccupancyRequest, request: Request, engine: EngineDep) -> Response:
        hand = parse_hand(body.keypoints, body.joint_order, body.hand)
        probs = await until_disconnected(request, engine.occupancy(hand, np.asarray(body.points), engine.deadline()))
        with engine.metrics.time_stage("encode"):
            return json_bytes_response({"probabilities": probs})

    @app.post(
        "/grasps",
        dependencies=auth,
        response_model=GraspsResponse,
        responses=_errors(401, 413, 415, 422, 503, 504),
        summary="Object mesh (JSON or uploaded file) -> sampled hand grasps",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/GraspRequest"}},
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/GraspUpload"}},
                },
            }
        },
    )
    async def grasps(request: Request, engine: EngineDep) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            obj, params = await _read_upload(request, engine)
        elif content_type in ("application/json", ""):
            try:
                body = GraspRequest.model_validate_json(await request.body())
            except ValidationError as error:
                raise InputError(_validation_message(list(error.errors()))) from error
            obj = arrays_to_mesh(np.asarray(body.object.vertices), np.asarray(body.object.faces))
            params = body
        else:
            return error_response(415, f"content-type: {content_type!r}; use application/json or multipart/form-data")
        count = engine.grasp_count(params.num_samples)
        results = await until_disconnected(
            request,
            engine.grasps(obj, count, params.seed,
                          GraspOptions(params.refine, params.resolution, params.physics, params.rank), engine.deadline()),
        )
        with engine.metrics.time_stage("encode"):
            return json_bytes_response({"grasps": [grasp_payload(g) for g in results]})

    @app.post(
        "/object",
        dependencies=auth,
        response_model=MeshOut,
        responses=_errors(401, 413, 415, 422),
        summary="Object file -> the triangle mesh the grasp model reads (to check or show an upload)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/ObjectUpload"}}},
            }
        },
    )
    async def read_object(request: Request, engine: EngineDep) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            return error_response(415, f"content-type: {content_type!r}; use multipart/form-data")
        data, filename, _ = await _read_form(request, engine)
        obj = await _decode_object(data, filename, engine)
        return json_bytes_response(mesh_to_dict(obj))

    @app.get("/models", summary="Loaded models, or why each is unavailable")
    async def list_models(engine: EngineDep) -> dict:
        return engine.describe()

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        summary="Models loaded and warmed; accepting work",
        responses={503: {"model": ErrorBody, "description": "Loading or shutting down."}},
    )
    async def readyz(engine: EngineDep) -> Response:
        if engine.ready:
            return JSONResponse({"status": "ready"})
        return error_response(503, "not ready")

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics(engine: EngineDep) -> Response:
        engine.update_gpu_memory()
        body, content_type = engine.metrics.exposition()
        return Response(body, media_type=content_type)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in (("GraspRequest", GraspRequest), ("GraspUpload", GraspUpload), ("ObjectUpload", ObjectUpload)):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[name] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    add_viewer(app)
    app.add_middleware(EdgeMiddleware, engine=engine)
    return app


class GraspUpload(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary"}, description=".obj, .ply, .stl or .glb file.")
    num_samples: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    refine: bool = True
    resolution: int | None = None
    physics: bool = Field(False, description=PHYSICS_HELP)
    rank: RankName = Field("none", description=RANK_HELP)


class ObjectUpload(BaseModel):
    file: bytes = Field(json_schema_extra={"format": "binary"}, description=".obj, .ply, .stl or .glb file.")


async def _read_form(request: Request, engine: Engine) -> tuple[bytes, str, dict[str, str]]:
    """A multipart body -> (the ``file`` part's bytes, its filename, the other text fields)."""
    settings = engine.settings
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=settings.max_upload_bytes)
    except HTTPException as error:  # the multipart parser's own refusals (too many parts, malformed body)
        raise InputError(f"file: unreadable multipart body: {error.detail}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InputError("file: missing the object file part")
    data = await upload.read(settings.max_upload_bytes + 1)
    fields = {key: value for key, value in form.items() if key != "file" and isinstance(value, str)}
    return data, upload.filename or "", fields


async def _decode_object(data: bytes, filename: str, engine: Engine) -> Any:
    """Parse an uploaded object file in a worker thread (large files take a while)."""
    settings = engine.settings
    return await asyncio.to_thread(decode_upload, data, filename, settings.max_upload_bytes, settings.max_object_faces)


async def _read_upload(request: Request, engine: Engine) -> tuple[Any, GraspUpload]:
    data, filename, fields = await _read_form(request, engine)
    try:
        params = GraspUpload.model_validate({"file": b"", **fields})
    except ValidationError as error:
        raise InputError(_validation_message(list(error.errors()))) from error
    return await _decode_object(data, filename, engine), params


# ---------------------------------------------------------------- edge middleware


ROUTE_NAMES = {"/mesh": "mesh", "/occupancy": "occupancy", "/grasps": "grasps", "/object": "object", "/models": "models"}
UPLOAD_PATHS = ("/grasps", "/object")
MODEL_ENDPOINTS = ("mesh", "occupancy", "grasps")


class EdgeMiddleware:
    """Pure ASGI: request id, Server-Timing, body-size limit, request metrics and one log line per request."""

    def __init__(self, app: Any, engine: Engine):
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        endpoint = ROUTE_NAMES.get(scope["path"])
        metrics = self.engine.metrics
        started = time.perf_counter()
        status = {"code": 0}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                # Server-Timing: the time from request received to response ready (the viewer shows it).
                server_ms = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
                extra = [(b"x-request-id", request_id.encode()), (b"server-timing", server_ms)]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if endpoint is not None:
            metrics.inflight.inc()
        try:
            if endpoint in MODEL_ENDPOINTS:
                try:
                    self.engine.check_accepting(endpoint)
                except ShuttingDownError as error:
                    await error_response(*error_status(error))(scope, receive, send_with_id)
                    return
            limit = self._body_limit(scope["path"])
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await error_response(413, f"body: larger than {limit} bytes")(scope, receive, send_with_id)
                return
            body, complete = await _read_body(receive, limit)
            if not complete:
                await error_response(413, f"body: larger than {limit} bytes")(scope, receive, send_with_id)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        except asyncio.CancelledError:
            status["code"] = status["code"] or 499
            raise
        finally:
            elapsed = time.perf_counter() - started
            if endpoint is not None:
                metrics.inflight.dec()
                metrics.requests.labels(endpoint, "rest", str(status["code"] or 499)).inc()
                metrics.request_duration.labels(endpoint, "rest").observe(elapsed)
                log.info(
                    "request",
                    extra={
                        "protocol": "rest",
                        "endpoint": endpoint,
                        "status": status["code"] or 499,
                        "seconds": round(elapsed, 4),
                    },
                )
            request_id_var.reset(token)

    def _body_limit(self, path: str) -> int:
        settings = self.engine.settings
        if path in UPLOAD_PATHS:
            return max(settings.max_body_bytes, settings.max_upload_bytes + 65536)
        return settings.max_body_bytes


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """Read the request body up to ``limit`` bytes; (body, False) if it is longer."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI receive that yields the buffered body once, then passes through (disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
