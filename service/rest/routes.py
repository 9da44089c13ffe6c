"""The REST routes: parse, hand to the engine, encode. Every status a route can answer is in its ``responses``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.codecs import MEDIA_TYPES, grasp_payload, json_bytes, mesh_to_dict, meshes_to_file, negotiate_format
from service.engine import Engine
from service.inputs import parse_hand
from service.rest.dependencies import EngineDep, InputsDep, check_token, until_disconnected
from service.rest.errors import error_response
from service.rest.schemas import (
    ErrorBody,
    GraspsResponse,
    MeshesResponse,
    MeshOut,
    MeshRequest,
    MeshResponse,
    OccupancyRequest,
    OccupancyResponse,
    error_responses,
)
from service.rest.uploads import content_type, decode_object, read_form, read_grasp_json, read_grasp_upload

MODEL_ERRORS = error_responses(401, 413, 422, 503, 504)
MESH_CONTENT = {media: {} for fmt, media in MEDIA_TYPES.items() if fmt != "json"}


def _body(*alternatives: tuple[str, str]) -> dict:
    """An ``openapi_extra`` request body for a route that reads its body itself: (media type, component)."""
    content = {media: {"schema": {"$ref": f"#/components/schemas/{name}"}} for media, name in alternatives}
    return {"requestBody": {"required": True, "content": content}}


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


models_router = APIRouter(dependencies=[Depends(check_token)])
open_router = APIRouter()


@models_router.post(
    "/mesh",
    response_model=MeshResponse | MeshesResponse,
    responses={200: {"content": MESH_CONTENT}, **MODEL_ERRORS},
    summary="Keypoints -> watertight hand mesh(es)",
)
async def mesh(body: MeshRequest, request: Request, engine: EngineDep, inputs: InputsDep) -> Response:
    fmt = negotiate_format(body.format, request.headers.get("accept"))
    if body.hands is not None:
        hands = [parse_hand(h.keypoints, h.joint_order, h.hand, f"hands[{i}].") for i, h in enumerate(body.hands)]
    else:
        hands = [parse_hand(body.keypoints, body.joint_order, body.hand)]
    job = inputs.mesh(hands, body.resolution)
    meshes = await until_disconnected(request, engine.mesh(job, engine.deadline()))
    return mesh_response(engine, meshes, job.resolution, fmt, single=body.hands is None)


@models_router.post(
    "/occupancy",
    response_model=OccupancyResponse,
    responses=MODEL_ERRORS,
    summary="Keypoints + points -> occupancy probabilities",
)
async def occupancy(body: OccupancyRequest, request: Request, engine: EngineDep, inputs: InputsDep) -> Response:
    job = inputs.occupancy(parse_hand(body.keypoints, body.joint_order, body.hand), body.points)
    probs = await until_disconnected(request, engine.occupancy(job, engine.deadline()))
    with engine.metrics.time_stage("encode"):
        return json_bytes_response({"probabilities": probs})


@models_router.post(
    "/grasps",
    response_model=GraspsResponse,
    responses=error_responses(401, 413, 415, 422, 503, 504),
    summary="Object mesh (JSON or uploaded file) -> sampled hand grasps",
    openapi_extra=_body(("application/json", "GraspRequest"), ("multipart/form-data", "GraspUpload")),
)
async def grasps(request: Request, engine: EngineDep, inputs: InputsDep) -> Response:
    media = content_type(request)
    if media == "multipart/form-data":
        obj, params = await read_grasp_upload(request, engine.settings)
    elif media in ("application/json", ""):
        obj, params = await read_grasp_json(request)
    else:
        return error_response(415, f"content-type: {media!r}; use application/json or multipart/form-data")
    job = inputs.grasps(obj, params.num_samples, params.seed, params)
    results = await until_disconnected(request, engine.grasps(job, engine.deadline()))
    with engine.metrics.time_stage("encode"):
        return json_bytes_response({"grasps": [grasp_payload(g) for g in results]})


@models_router.post(
    "/object",
    response_model=MeshOut,
    responses=error_responses(401, 413, 415, 422),
    summary="Object file -> the triangle mesh the grasp model reads (to check or show an upload)",
    openapi_extra=_body(("multipart/form-data", "ObjectUpload")),
)
async def read_object(request: Request, engine: EngineDep) -> Response:
    media = content_type(request)
    if media != "multipart/form-data":
        return error_response(415, f"content-type: {media!r}; use multipart/form-data")
    data, filename, _ = await read_form(request, engine.settings)
    obj = await decode_object(data, filename, engine.settings)
    return json_bytes_response(mesh_to_dict(obj))


@open_router.get("/models", summary="Loaded models, or why each is unavailable")
async def list_models(engine: EngineDep) -> dict:
    return engine.describe()


@open_router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "alive"}


@open_router.get(
    "/readyz",
    summary="Models loaded and warmed; accepting work",
    responses={503: {"model": ErrorBody, "description": "Loading or shutting down."}},
)
async def readyz(engine: EngineDep) -> Response:
    if engine.ready:
        return JSONResponse({"status": "ready"})
    return error_response(503, "not ready")


@open_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(engine: EngineDep) -> Response:
    engine.update_gpu_memory()
    body, media_type = engine.metrics.exposition()
    return Response(body, media_type=media_type)
