"""CUDA readiness: the models and the server on a GPU give what they give on the CPU.

Marked `gpu` and skipped without a CUDA device (every CI run here); scripts/gpu_check.sh runs them,
plus `halo bench mesh --device cuda`, on a GPU machine.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
import trimesh

import models
from models import skeleton
from models.geometry import chamfer_distance
from tests.conftest import REPO_ROOT, start_server

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

DEVICE = "cuda"
SAMPLE = json.loads((REPO_ROOT / "models" / "assets" / "sample_keypoints.json").read_text())
HAND = np.asarray(SAMPLE["keypoints"], dtype=np.float64)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return torch.linalg.matrix_exp(torch.as_tensor(skew * angle)).numpy()


def _hands(count: int) -> np.ndarray:
    """(count,21,3): the sample hand, rigidly turned and moved a different way each time."""
    rng = np.random.default_rng(0)
    hands = []
    for _ in range(count):
        axis = rng.normal(size=3)
        rotation = _rotation(axis / np.linalg.norm(axis), rng.uniform(0, np.pi))
        hands.append(HAND @ rotation.T + rng.uniform(-0.2, 0.2, size=3))
    return np.stack(hands)


@pytest.fixture(scope="module")
def bases(base_checkpoint) -> tuple[models.HaloBase, models.HaloBase]:
    return models.load_base(base_checkpoint, device="cpu"), models.load_base(base_checkpoint, device=DEVICE)


def test_occupancy_on_cuda_matches_cpu(bases) -> None:
    cpu, gpu = bases
    points = HAND.mean(0) + np.random.default_rng(1).uniform(-0.12, 0.12, size=(20000, 3))
    on_cpu, on_gpu = cpu.occupancy(HAND, points), gpu.occupancy(HAND, points)
    assert np.abs(on_cpu - on_gpu).max() <= 1e-4
    assert np.mean((on_cpu > 0.5) == (on_gpu > 0.5)) >= 0.9995


@pytest.mark.parametrize("hand", ["right", "left"])
def test_meshes_on_cuda_match_cpu(bases, hand: str) -> None:
    cpu, gpu = bases
    keypoints = HAND @ skeleton.MIRROR if hand == "left" else HAND
    on_cpu = cpu.mesh(keypoints, hand=hand, resolution=128)
    on_gpu = gpu.mesh(keypoints, hand=hand, resolution=128)
    assert on_gpu.is_watertight and on_gpu.volume > 0
    assert abs(len(on_gpu.vertices) - len(on_cpu.vertices)) <= 0.01 * len(on_cpu.vertices)
    assert chamfer_distance(on_gpu.vertices, on_cpu.vertices) <= 1e-4  # 0.1 mm


def test_batched_meshing_on_cuda_equals_single_calls(bases) -> None:
    _, gpu = bases
    hands = _hands(8)
    together, stats = gpu.mesh_with_stats(hands, resolution=128)
    assert len(together) == 8 and stats.points_evaluated > 0
    for batched, keypoints in zip(together, hands, strict=True):
        alone = gpu.mesh(keypoints, resolution=128)
        assert batched.is_watertight
        assert chamfer_distance(batched.vertices, alone.vertices) <= 1e-5


def test_grasps_on_cuda(bases) -> None:
    cpu, gpu = bases
    mug = trimesh.creation.cylinder(radius=0.035, height=0.08, sections=48)
    raw_cpu = models.load_vae(base=cpu, device="cpu").sample_keypoints(mug, n=4, seed=0, refine_steps=False)
    vae = models.load_vae(base=gpu, device=DEVICE)
    raw_gpu = vae.sample_keypoints(mug, n=4, seed=0, refine_steps=False)
    np.testing.assert_allclose(raw_gpu, raw_cpu, atol=1e-4)  # same latents, same decoder: same hands
    grasps = vae.sample(mug, n=4, seed=0, refine=True, resolution=128)
    assert len(grasps) == 4
    for grasp in grasps:
        assert grasp.keypoints.shape == (21, 3) and np.isfinite(grasp.keypoints).all()
        assert grasp.mesh.is_watertight
        assert all(np.isfinite(value) for value in grasp.metrics.values() if isinstance(value, float))


def test_server_on_cuda_serves_cpu_equal_meshes_and_reports_gpu_memory(bases, base_checkpoint) -> None:
    cpu, _ = bases
    server = start_server(base_checkpoint=base_checkpoint, device=DEVICE)
    try:
        described = httpx.get(f"{server.http_url}/models", timeout=30).json()["models"]
        assert described["base"]["device"].startswith("cuda") and described["vae"]["available"]
        response = httpx.post(f"{server.http_url}/mesh", json={"keypoints": HAND.tolist(), "resolution": 128},
                              timeout=120)
        assert response.status_code == 200, response.text
        served = trimesh.Trimesh(response.json()["vertices"], response.json()["faces"], process=False)
        assert chamfer_distance(served.vertices, cpu.mesh(HAND, resolution=128).vertices) <= 1e-4
        metrics = httpx.get(f"{server.http_url}/metrics", timeout=30).text
        allocated = [line for line in metrics.splitlines()
                     if line.startswith("halo_gpu_memory_bytes{") and 'kind="allocated"' in line]
        assert allocated and float(allocated[0].split()[-1]) > 0
    finally:
        server.stop()
