"""Shared fixtures. Server fixtures run the real server (both front ends, one engine) on 127.0.0.1
ephemeral ports in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# The published HALO reference arrays (third-party, never committed): only the parity tests need them.
REFERENCE_DIR = Path(os.environ.get("HALO_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "halo_reference"))
SHIPPED_BASE = REPO_ROOT / "models" / "checkpoints" / "halo_base.safetensors"
PUBLISHED_BASE = REFERENCE_DIR / "model_best.pt"


@pytest.fixture(scope="session")
def base_checkpoint() -> Path:
    """The shipped base checkpoint, else the published HALO one beside the repo (skip if neither)."""
    for path in (SHIPPED_BASE, PUBLISHED_BASE):
        if path.is_file():
            return path
    pytest.skip("no base checkpoint: neither models/checkpoints/halo_base.safetensors nor ../shared/halo_reference")


@pytest.fixture(scope="session")
def hand_keypoints() -> np.ndarray:
    """(17,21,3) right hands in metres, mano order, made by the project itself: the sample hand, then 16 poses
    of the shipped grasp model's hand skeleton (curls from nearly open to a loose fist), each turned and moved."""
    from scipy.spatial.transform import Rotation

    from models import validate_keypoints
    from models.assets import sample_hand
    from models.grasps.api import SHIPPED_VAE
    from models.grasps.model import load_vae_weights
    from models.hand_pose import clip_angles, neutral_angles

    skeleton = load_vae_weights(SHIPPED_VAE)[0].skeleton
    count = 16
    angles = clip_angles(neutral_angles(count) * torch.linspace(0.2, 2.0, count)[:, None])
    rotations = torch.as_tensor(Rotation.random(count, random_state=0).as_matrix(), dtype=torch.float32)
    translations = torch.as_tensor(np.random.default_rng(0).uniform(-0.05, 0.05, (count, 3)), dtype=torch.float32)
    with torch.no_grad():
        posed = skeleton.keypoints(angles, rotations, translations).double().numpy()
    hands = np.concatenate([np.asarray(sample_hand()["keypoints"], dtype=np.float64)[None], posed])
    return validate_keypoints(hands)


@dataclass
class RunningServer:
    """A HaloServer running in a background thread; ``engine`` and ``metrics`` are the live objects."""

    server: object
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    torch_threads: int  # the process's PyTorch thread count before the server set its own

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def engine(self):
        return self.server.engine

    def metric(self, name: str, labels: dict | None = None) -> float:
        """Current value of one sample in the server's registry (0 when never set)."""
        return self.server.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def call(self, coroutine) -> object:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(120)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        torch.set_num_threads(self.torch_threads)  # the server's setting is process-wide: give it back


def start_server(**overrides) -> RunningServer:
    """Start a server with test-sized settings (resolution 64, small queue) plus ``overrides``."""
    from service.config import Settings
    from service.server import HaloServer

    settings = Settings(
        **{
            "host": "127.0.0.1",
            "http_port": 0,
            "grpc_port": 0,
            "device": "cpu",
            "default_resolution": 64,
            "max_resolution": 128,
            "max_queue_delay_ms": 20,
            "grace_period_s": 30,
            "log_level": "warning",
        }
        | overrides
    )
    torch_threads = torch.get_num_threads()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            holder["server"] = HaloServer(settings)
            await holder["server"].start()

        try:
            loop.run_until_complete(boot())
        except BaseException as error:  # reported to the test thread below
            holder["error"] = error
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="halo-test-server", daemon=True)
    thread.start()
    started.wait(300)
    if "error" in holder:
        raise holder["error"]
    return RunningServer(holder["server"], loop, thread, torch_threads)


@pytest.fixture
def server_factory(base_checkpoint: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers on the test's base checkpoint; every one is stopped at teardown."""
    running: list[RunningServer] = []

    def factory(**overrides) -> RunningServer:
        server = start_server(base_checkpoint=base_checkpoint, **overrides)
        running.append(server)
        return server

    yield factory
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def live_server(base_checkpoint: Path) -> Iterator[RunningServer]:
    """One shared server per test module, on the real base model."""
    server = start_server(base_checkpoint=base_checkpoint)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    """All arrays of the original implementation's reference.npz (skip if absent)."""
    path = REFERENCE_DIR / "reference.npz"
    if not path.is_file():
        pytest.skip("../shared/halo_reference/reference.npz is absent (third-party reference data, not committed)")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def published_base():
    """The published HALO checkpoint loaded through our converter (skip if absent)."""
    import models

    if not PUBLISHED_BASE.is_file():
        pytest.skip("../shared/halo_reference/model_best.pt is absent (third-party checkpoint, not committed)")
    return models.load_base(PUBLISHED_BASE, device="cpu")


@pytest.fixture(scope="session")
def rigged_hand():
    """The default rigged hand: WebXR generic hand, fetched with ``npm pack`` on first use (skip without npm)."""
    from models.data.asset import fetch_hand_asset
    from models.data.rigged_hand import RiggedHand

    try:
        path = fetch_hand_asset()
    except FileNotFoundError as error:
        pytest.skip(f"rigged hand asset unavailable: {error}")
    return RiggedHand.from_gltf(path)
