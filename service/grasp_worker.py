"""Grasp jobs in a process of their own, so that they never hold the server's interpreter lock.

A grasp job is seconds of Python between its tensor operations (refinement steps, marching cubes,
metrics); run as a thread of the server, it holds the interpreter lock against live frames and meshes
whenever it runs Python, and a live frame beside two 8-grasp requests took 1.8-2.8x its idle p99. In a
process of its own (the same models, loaded once when the process starts, at the grasp lane's lower
CPU priority) it costs the stream only a share of the cores: 1.5-1.9x. The grasp lane's thread waits
for the process's answer without holding the lock.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

import models
from models import Grasp, HaloVAE
from service.config import Settings
from service.errors import ModelUnavailableError
from service.loading import warm_up_grasps

_vae: HaloVAE | None = None  # the worker process's grasp model


def _load(base_checkpoint: str | None, vae_checkpoint: str | None, device: str, torch_threads: int,
          target_nice: int | None) -> None:
    """Worker process start: lower its CPU priority to ``target_nice``, then load the base and grasp models."""
    global _vae
    lower_by = 0 if target_nice is None else target_nice - os.getpriority(os.PRIO_PROCESS, 0)
    if lower_by > 0:  # it may already have inherited some of it from the lane thread that started it
        os.nice(lower_by)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    _vae = models.load_vae(vae_checkpoint, base=models.load_base(base_checkpoint, device=device), device=device)


def _model() -> HaloVAE:
    if _vae is None:
        raise RuntimeError("grasp worker: its models were not loaded")
    return _vae


def _sample(obj: Any, options: dict[str, Any]) -> list[Grasp]:
    return _model().sample(obj, **options)


def _warm_up(resolution: int) -> None:
    warm_up_grasps(_model(), resolution)


class GraspWorker:
    """One worker process that samples grasps (``HaloVAE.sample``) for the grasp lane; restarted if it dies."""

    def __init__(self, settings: Settings, device: str) -> None:
        self._load_args = (
            None if settings.base_checkpoint is None else str(settings.base_checkpoint),
            None if settings.vae_checkpoint is None else str(settings.vae_checkpoint),
            device,
            settings.torch_threads,
            # The server's priority plus the grasp lane's steps (absolute: the process inherits the nice value
            # of whichever thread starts it).
            os.getpriority(os.PRIO_PROCESS, 0) + settings.grasp_nice if hasattr(os, "getpriority") else None,
        )
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: a forked child would inherit the server's threads and locks mid-flight.
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_load,
                                   initargs=self._load_args)

    def _run(self, function: Any, *args: Any) -> Any:
        with self._lock:
            pool = self._pool
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool as error:
            with self._lock:
                if self._pool is pool:  # the first to notice starts a fresh process for the next job
                    self._pool = self._new_pool()
            raise ModelUnavailableError("grasp model not available: its worker process stopped (restarted; "
                                        "retry the request)") from error

    def sample(self, obj: Any, **options: Any) -> list[Grasp]:
        """``HaloVAE.sample(obj, **options)`` in the worker process (blocks the calling thread, not the GIL)."""
        return self._run(_sample, obj, options)

    def pid(self) -> int:
        """The worker process's id (starting it if it is not running)."""
        return self._run(os.getpid)

    def warm_up(self, resolution: int) -> None:
        """Start the worker process, load its models and sample a warm-up grasp."""
        self._run(_warm_up, resolution)

    def close(self) -> None:
        """Stop the worker process (a job still running finishes first)."""
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)
