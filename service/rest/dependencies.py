"""What routes are given: the engine, its input checks, the bearer-token check, disconnect-aware waiting."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.engine import Engine
from service.inputs import Inputs
from service.rest.errors import ClientDisconnectedError, UnauthorizedError

T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, description="Required only when the server runs with an auth token.")


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_inputs(request: Request) -> Inputs:
    return request.app.state.engine.inputs


def token_matches(given: str, token: str | None) -> bool:
    """True when the server needs no token or ``given`` is it (compared in constant time)."""
    return token is None or secrets.compare_digest(given.encode(), token.encode())


def check_token(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    given = credentials.credentials if credentials is not None else ""
    if not token_matches(given, request.app.state.engine.settings.auth_token):
        raise UnauthorizedError()


EngineDep = Annotated[Engine, Depends(get_engine)]
InputsDep = Annotated[Inputs, Depends(get_inputs)]


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
