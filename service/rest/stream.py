"""The WebSocket live stream ``/stream``: JSON keypoint frames in, JSON meshes out; ``service.streams`` does the work.

Each text message is one frame (``StreamFrameIn``); each reply names its frame. ``?encoding=base64``
sends vertices, faces and normals as base64 strings of the packed little-endian arrays gRPC carries
(float32, uint32, float32) instead of JSON arrays. Auth: the bearer token in the ``Authorization``
header or, for browsers (which cannot set headers on a WebSocket), in ``?token=``. Refusals and ends
are close codes with a reason: 1008 wrong token, 1013 all ``max_streams`` open or no model (try again
later), 1001 server shutting down, 1011 internal error. A bad frame gets an error reply naming the
field and the stream goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from service.codecs import LIVE_ENCODINGS, json_bytes, live_mesh_payload
from service.engine import Engine
from service.errors import InputError, ModelUnavailableError, ShuttingDownError, StreamLimitError
from service.inputs import Inputs, RejectedFrame, StreamFrame, parse_hand, validation_message
from service.rest.dependencies import token_matches
from service.rest.errors import error_status
from service.rest.schemas import StreamFrameIn
from service.streams import ClientGoneError, FrameReply

log = logging.getLogger("halo.rest")

GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1001, 1008, 1011, 1013
MAX_REASON_BYTES = 123  # what a close frame can carry

stream_router = APIRouter()


def parse_frame(text: str, inputs: Inputs) -> StreamFrame | RejectedFrame:
    """One text message -> a checked frame, or its rejection naming the field (with its id when readable)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return RejectedFrame(None, InputError("frame: not valid JSON"))
    frame_id = data.get("frame_id") if isinstance(data, dict) else None
    if not (type(frame_id) is int and 0 <= frame_id < 2**64):
        frame_id = None
    try:
        body = StreamFrameIn.model_validate(data)
    except ValidationError as error:
        return RejectedFrame(frame_id, InputError(validation_message(error.errors())))
    try:
        return inputs.stream_frame(body.frame_id, parse_hand(body.keypoints, body.joint_order, body.hand),
                                   body.resolution, body.smooth)
    except InputError as error:
        return RejectedFrame(body.frame_id, error)


def reply_payload(reply: FrameReply, encoding: str) -> dict:
    """A reply as JSON-ready data: the mesh with its normals and how it was made, or the frame's error."""
    payload = {"frame_id": reply.frame_id, "skipped_frames": reply.skipped_frames}
    if reply.error is not None:
        status, detail, _ = error_status(reply.error)
        return payload | {"error": {"status": status, "detail": detail}}
    return payload | {
        "server_ms": round(reply.server_s * 1000, 3),
        "seeded": reply.seeded,
        "fallback": reply.fallback,
        "resolution": reply.resolution,
        **live_mesh_payload(reply.mesh, encoding),
    }


async def _frames(websocket: WebSocket, inputs: Inputs) -> AsyncIterator[StreamFrame | RejectedFrame]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise ClientGoneError()
        text = message.get("text")
        if text is None:
            yield RejectedFrame(None, InputError("frame: expected a JSON text message, got binary"))
        else:
            yield parse_frame(text, inputs)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client may have gone meanwhile
        await websocket.close(code, reason)


def _close_code(error: Exception) -> int:
    return GOING_AWAY if isinstance(error, ShuttingDownError) else TRY_AGAIN_LATER


@stream_router.websocket("/stream")
async def stream(
    websocket: WebSocket,
    token: str = Query("", description="The bearer token, for clients that cannot set the Authorization header."),
    encoding: str = Query("json", description="json: arrays; base64: packed little-endian arrays as base64."),
) -> None:
    engine: Engine = websocket.app.state.engine
    # Accept first: a refusal before the handshake is a bare HTTP 403, whose reason a browser never sees.
    await websocket.accept()
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if not token_matches(credentials if scheme.lower() == "bearer" else token, engine.settings.auth_token):
        engine.metrics.streams_refused.labels("websocket", "unauthenticated").inc()
        await _close(websocket, POLICY_VIOLATION, "authorization: missing or wrong bearer token")
        return
    if encoding not in LIVE_ENCODINGS:
        await _close(websocket, POLICY_VIOLATION, f"encoding: expected one of {list(LIVE_ENCODINGS)}")
        return

    async def send(reply: FrameReply) -> None:
        try:
            await websocket.send_text(json_bytes(reply_payload(reply, encoding)).decode())
        except WebSocketDisconnect as error:
            raise ClientGoneError() from error

    try:
        async with engine.live_stream("websocket") as session:
            if await session.serve(_frames(websocket, engine.inputs), send) == "shutdown":
                await _close(websocket, GOING_AWAY, "server shutting down")
    except (StreamLimitError, ShuttingDownError, ModelUnavailableError) as error:
        await _close(websocket, _close_code(error), str(error))
    except Exception:
        log.exception("stream failed")
        await _close(websocket, INTERNAL_ERROR, "internal error")
