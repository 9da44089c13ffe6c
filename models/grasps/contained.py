"""Calls into native code that may crash or hang, run in worker processes with a time limit.

MuJoCo aborts the process on some internal errors and can run for a minute on a pathological contact
set; in a server either would take every other request down with it. ``ContainedPool`` keeps a few
worker processes (fresh interpreters running ``serve_pipes``, so no torch threads or
gRPC state are forked and the caller's main script is not imported again), sends each call to one of
them over a pipe and waits at most ``time_limit_s``. A worker that dies or overruns is killed and
replaced, and that call returns a ``Failure`` naming what happened; the caller's process goes on.

The functions sent must be importable module-level functions (they are pickled by name).
"""

from __future__ import annotations

import atexit
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .parallel import available_cores, thread_map

WORKER_COMMAND = "from models.grasps.contained import serve_pipes; serve_pipes()"
START_TIMEOUT_S = 60.0  # a fresh worker imports numpy and the simulator before its first call
# Workers run below the caller's priority: their calls are batch work (a grasp's physics check), and in a
# server the threads answering live frames and meshes should not wait behind them for a core.
WORKER_NICENESS = 10


@dataclass(frozen=True)
class Failure:
    """A call that did not return: ``reason`` is "crashed", "timed out" or "error", ``detail`` says more."""

    reason: str
    detail: str


def _ready(_: None) -> bool:
    """A call that only proves the worker is up."""
    return True


def _serve(requests: Connection, replies: Connection) -> None:
    """Worker loop: receive (function, argument), send back ("ok", result) or ("error", text)."""
    while True:
        try:
            function, argument = requests.recv()
        except EOFError:
            return
        try:
            replies.send(("ok", function(argument)))
        except Exception as error:  # reported to the caller, which decides
            replies.send(("error", f"{type(error).__name__}: {error}"))


class _Worker:
    """One worker process and the parent's ends of its pipes."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen([sys.executable, "-c", WORKER_COMMAND], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
        self.requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()

    def call(self, function: Callable[[Any], Any], argument: Any, time_limit_s: float) -> tuple[bool, Any]:
        """-> (True, result) or (False, Failure); on a crash or overrun the worker is dead afterwards."""
        try:
            self.requests.send((function, argument))
            if not self.replies.poll(time_limit_s):
                self.stop()
                return False, Failure("timed out", f"no answer within {time_limit_s:g} s")
            status, value = self.replies.recv()
        except (EOFError, OSError):
            self.stop()
            return False, Failure("crashed", f"the worker process exited (code {self.process.returncode})")
        if status == "error":
            return False, Failure("error", value)
        return True, value

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Kill the process and close the pipes."""
        if self.alive:
            self.process.kill()
        self.process.wait(timeout=5)
        self.requests.close()
        self.replies.close()


class ContainedPool:
    """``map(function, items)`` on worker processes, each call limited in time; failures come back as ``Failure``."""

    def __init__(self, workers: int | None = None) -> None:
        self.size = workers or available_cores()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._started = 0
        self._lock = threading.Lock()

    def _take(self) -> _Worker:
        """An idle worker, starting one (and waiting until it is up) if fewer than ``size`` exist."""
        with self._lock:
            start = self._idle.empty() and self._started < self.size
            if start:
                self._started += 1
        if not start:
            return self._idle.get()
        worker = _Worker()
        worker.call(_ready, None, START_TIMEOUT_S)  # imports numpy and the simulator: not part of any call's limit
        return worker

    def _give_back(self, worker: _Worker) -> None:
        """Return a live worker to the pool; a dead one is replaced lazily."""
        if worker.alive:
            self._idle.put(worker)
        else:
            with self._lock:
                self._started -= 1

    def call(self, function: Callable[[Any], Any], argument: Any, time_limit_s: float) -> Any:
        """``function(argument)`` in a worker -> its result, or a ``Failure``."""
        worker = self._take()
        try:
            _, value = worker.call(function, argument, time_limit_s)
        finally:
            self._give_back(worker)
        return value

    def map(self, function: Callable[[Any], Any], items: Sequence[Any], time_limit_s: float) -> list[Any]:
        """``[function(item) for item in items]`` over the workers, in order; each entry a result or a ``Failure``."""
        return thread_map(lambda item: self.call(function, item, time_limit_s), items, self.size)

    def close(self) -> None:
        """Stop every idle worker."""
        while not self._idle.empty():
            self._idle.get().stop()
        with self._lock:
            self._started = 0


_shared: ContainedPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ContainedPool:
    """The process-wide pool (one worker per available core), created on first use and closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ContainedPool()
            atexit.register(_shared.close)
        return _shared


def serve_pipes() -> None:
    """A worker process's main: calls arrive on stdin and results leave on stdout (anything printed goes to stderr)."""
    os.nice(WORKER_NICENESS)
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    _serve(Connection(os.dup(0), writable=False), Connection(reply_fd, readable=False))
