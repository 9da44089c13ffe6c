"""Refused requests -> HTTP statuses and the one JSON error body, in one place."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from service.errors import (
    DeadlineExceededError,
    InputError,
    ModelUnavailableError,
    PayloadTooLargeError,
    QueueFullError,
    ShuttingDownError,
)
from service.inputs import validation_message
from service.logs import request_id_var


class UnauthorizedError(Exception):
    """Missing or wrong bearer token."""


class ClientDisconnectedError(Exception):
    """The client closed the connection before its answer was ready."""


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


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(422, validation_message(list(error.errors())))


async def _unauthorized(request: Request, error: UnauthorizedError) -> JSONResponse:
    return error_response(401, "authorization: missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


async def _refused(request: Request, error: Exception) -> JSONResponse:
    return error_response(*error_status(error))


async def _gone(request: Request, error: ClientDisconnectedError) -> Response:
    return Response(status_code=499)


def add_error_handlers(app: FastAPI) -> None:
    """Map every refusal the routes can raise to its status and error body."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(UnauthorizedError, _unauthorized)
    for error_type in (InputError, QueueFullError, ModelUnavailableError, DeadlineExceededError):
        app.add_exception_handler(error_type, _refused)
    app.add_exception_handler(ClientDisconnectedError, _gone)
