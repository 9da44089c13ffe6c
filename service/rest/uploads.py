"""Request bodies the routes read themselves: grasp parameters as JSON or a multipart object upload."""

from __future__ import annotations

import asyncio

import numpy as np
import trimesh
from fastapi import Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from service.config import Settings
from service.errors import InputError
from service.inputs import arrays_to_mesh, decode_upload, validation_message
from service.rest.schemas import GraspParams, GraspRequest, GraspUpload


def content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, settings: Settings) -> tuple[bytes, str, dict[str, str]]:
    """A multipart body -> (the ``file`` part's bytes, its filename, the other text fields)."""
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


async def decode_object(data: bytes, filename: str, settings: Settings) -> trimesh.Trimesh:
    """Parse an uploaded object file in a worker thread (large files take a while)."""
    return await asyncio.to_thread(decode_upload, data, filename, settings.max_upload_bytes, settings.max_object_faces)


async def read_grasp_upload(request: Request, settings: Settings) -> tuple[trimesh.Trimesh, GraspParams]:
    """A multipart grasp request -> (object mesh, parameters)."""
    data, filename, fields = await read_form(request, settings)
    try:
        params = GraspUpload.model_validate({"file": b"", **fields})
    except ValidationError as error:
        raise InputError(validation_message(error.errors())) from error
    return await decode_object(data, filename, settings), params


async def read_grasp_json(request: Request) -> tuple[trimesh.Trimesh, GraspParams]:
    """A JSON grasp request -> (object mesh, parameters)."""
    try:
        body = GraspRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise InputError(validation_message(error.errors())) from error
    return arrays_to_mesh(np.asarray(body.object.vertices), np.asarray(body.object.faces)), body
