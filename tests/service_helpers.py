"""Helpers shared by the server tests (not a test module)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from service.proto_gen.halo.v1 import halo_pb2


def hand(kps: np.ndarray, **fields) -> halo_pb2.Hand:
    """(21,3) keypoints -> a Hand message (float32 on the wire)."""
    return halo_pb2.Hand(keypoints=np.asarray(kps, dtype=np.float32).ravel().tolist(), **fields)


class GatedBase:
    """The real base model, but each batched mesh call waits for ``gate`` (to hold work in the queue)."""

    def __init__(self, base):
        self._base = base
        self.gate = threading.Event()
        self.entered = threading.Event()

    def mesh_with_stats(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(60)
        return self._base.mesh_with_stats(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._base, name)


class GatedStreams:
    """The server's live-frame meshing, but every batch of live frames waits for ``gate`` (to hold a frame in meshing)."""

    def __init__(self, meshing):
        self._meshing = meshing
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []  # frames per batch

    def __call__(self, frames):
        self.batches.append(len(frames))
        self.entered.set()
        self.gate.wait(60)
        return self._meshing(frames)

    def __getattr__(self, name):
        return getattr(self._meshing, name)


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class GatedVAE:
    """The real grasp model, but each sampling call waits for ``gate`` (to hold the grasp lane busy)."""

    def __init__(self, vae):
        self._vae = vae
        self.gate = threading.Event()
        self.entered = threading.Event()

    def sample(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(60)
        return self._vae.sample(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._vae, name)


def start_server_subprocess(base_checkpoint: Path, settings: str) -> tuple[subprocess.Popen, dict]:
    """`halo serve` in a child process (ports chosen by the OS, JSON logs), with extra ``Settings`` keyword
    arguments given as Python source -> (process, {"http": port, "grpc": port}) once it reports ready."""
    code = (
        "import sys; from service.config import Settings; from service.server import run; "
        "sys.exit(run(Settings(host='127.0.0.1', http_port=0, grpc_port=0, device='cpu', "
        f"base_checkpoint={str(base_checkpoint)!r}, default_resolution=64, {settings}, "
        "log_format='json', grace_period_s=120)))"
    )
    repo_root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen([sys.executable, "-c", code], cwd=repo_root, stderr=subprocess.PIPE, text=True)
    ports: dict = {}
    for line in process.stderr:
        record = json.loads(line)
        if record["message"] == "listening":
            ports = {"http": record["http_port"], "grpc": record["grpc_port"]}
        if record["message"] == "ready":
            break
    assert ports, "the server never reported its ports"
    threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
    return process, ports
