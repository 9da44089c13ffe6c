"""Process wiring: one event loop running uvicorn (REST) and grpc.aio (gRPC) over one engine.

Lifecycle: bind both ports, load and warm the models (``/healthz`` answers meanwhile, ``/readyz``
says 503), report ready. On SIGTERM / SIGINT: not ready at once, refuse new work, end the live
streams (each answers the frame it is meshing, then closes: WebSocket 1001, gRPC UNAVAILABLE), let
every accepted request finish within the grace period, then return (the process exits 0).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from service.config import Settings
from service.engine import Engine
from service.grpc_server import create_grpc_server, set_serving
from service.logs import configure_logging
from service.metrics import Metrics
from service.rest import create_app

log = logging.getLogger("halo.server")

SHUTDOWN_LINGER_S = 0.5


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: HaloServer decides when to stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HaloServer:
    """Both front ends and the engine; ``start`` binds and loads, ``stop`` drains and closes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.engine = Engine(settings, self.metrics)
        self.http_port = 0
        self.grpc_port = 0
        self._uvicorn: _Uvicorn | None = None
        self._uvicorn_task: asyncio.Task | None = None
        self._grpc, self._health = create_grpc_server(self.engine)
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bind both ports and start serving, then load and warm the models and report ready."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.http_port))
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.engine),
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(self.settings.grace_period_s) or None,
            timeout_keep_alive=5,
            ws_max_size=self.settings.max_body_bytes,
            # Compressing every mesh reply would cost more CPU than the bytes it saves on a local network.
            ws_per_message_deflate=False,
        )
        self._uvicorn = _Uvicorn(config)
        self._uvicorn_task = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
        self.grpc_port = self._grpc.add_insecure_port(f"{self.settings.host}:{self.settings.grpc_port}")
        await self._grpc.start()
        await set_serving(self._health, False)
        log.info("listening", extra={"http_port": self.http_port, "grpc_port": self.grpc_port})
        await self.engine.start()
        await set_serving(self._health, self.engine.ready)
        log.info(
            "ready",
            extra={"models": {k: v["available"] for k, v in self.engine.describe()["models"].items()}},
        )

    async def stop(self) -> None:
        """Graceful stop: not ready, refuse new work, finish accepted work (grace period), close."""
        grace = self.settings.grace_period_s
        log.info("shutting down", extra={"grace_period_s": grace, "queued": self.engine.queued})
        self.engine.begin_shutdown()
        await set_serving(self._health, False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Before uvicorn's own shutdown, which would drop open WebSockets with 1012 and no reason.
        await self.engine.close_streams(grace)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        try:
            await asyncio.wait_for(self.engine.drain(), max(0.0, grace - (loop.time() - started)))
        except asyncio.TimeoutError:
            log.error("grace period over with work still queued", extra={"queued": self.engine.queued})
        # The last responses may still sit in socket buffers; closing a socket that holds unread
        # client frames resets the connection, so give clients a moment to read and hang up before
        # the gRPC server closes its transports (the engine already refuses new work).
        await asyncio.sleep(SHUTDOWN_LINGER_S)
        remaining = max(0.0, grace - (loop.time() - started))
        await self._grpc.stop(remaining)
        if self._uvicorn_task is not None:
            await self._uvicorn_task
        await self.engine.close()
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(settings: Settings) -> None:
    """Run the server until SIGTERM or SIGINT, then stop gracefully."""
    configure_logging(settings.log_format, settings.log_level)
    server = HaloServer(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    starting = asyncio.ensure_future(server.start())
    await asyncio.wait({starting, asyncio.ensure_future(stop_requested.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        starting.result()
        await stop_requested.wait()
    else:
        starting.cancel()
    await server.stop()


def run(settings: Settings) -> int:
    """Blocking entry point for ``halo serve``; returns the process exit code."""
    asyncio.run(serve(settings))
    return 0
