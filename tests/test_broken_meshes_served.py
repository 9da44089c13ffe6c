"""Broken object meshes over REST and gRPC (tests/broken_meshes.py): every case gets grasps or a 4xx / INVALID_ARGUMENT
naming the object, never a 5xx, and the server is ready after each."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import trimesh
from broken_meshes import CASES, LARGE

from models.grasps.api import SHIPPED_VAE
from tools.client import GrpcClient, HaloError, RestClient


@pytest.fixture(scope="module")
def fuzz_server(base_checkpoint):
    if not SHIPPED_VAE.is_file():
        pytest.skip("no shipped grasp checkpoint models/checkpoints/halo_vae.safetensors yet")
    from conftest import start_server

    server = start_server(base_checkpoint=base_checkpoint, warmup=False, max_grasp_samples=4, default_grasp_samples=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def meshes() -> dict[str, trimesh.Trimesh]:
    return {name: trimesh.Trimesh(*make(), process=False) for name, make in CASES.items()}


def _check_grasps(grasps) -> None:
    assert len(grasps) == 2
    for grasp in grasps:
        assert np.isfinite(grasp.keypoints).all() and len(grasp.mesh.faces) > 0
        assert grasp.metrics.get("sim_failed") == 1 or grasp.metrics["stable"] in (0.0, 1.0)


@pytest.mark.parametrize("name", list(CASES))
def test_rest_answers_every_broken_mesh_and_stays_ready(fuzz_server, meshes, name, tmp_path):
    mesh = meshes[name]
    with RestClient(fuzz_server.http_url) as client:
        if name in LARGE:  # over the JSON body limit: uploaded as a file, as users do
            path = tmp_path / "object.ply"
            path.write_bytes(mesh.export(file_type="ply"))
            sent = lambda: client.grasps(path, num_samples=2, physics=True)  # noqa: E731
        else:
            sent = lambda: client.grasps(mesh, num_samples=2, physics=True)  # noqa: E731
        try:
            _check_grasps(sent())
        except HaloError as error:
            assert error.status == 422, f"{name}: {error}"
            assert error.detail.startswith(("object", "file")), f"{name}: {error}"
        assert client.http.get("/readyz").status_code == 200


@pytest.mark.parametrize("name", list(CASES))
def test_grpc_answers_every_broken_mesh_and_stays_ready(fuzz_server, meshes, name):
    with GrpcClient(fuzz_server.grpc_target) as client:
        try:
            _check_grasps(client.grasps(meshes[name], num_samples=2, physics=True))
        except HaloError as error:
            assert error.status == grpc.StatusCode.INVALID_ARGUMENT.name, f"{name}: {error}"
            assert error.detail.startswith("object"), f"{name}: {error}"
    with RestClient(fuzz_server.http_url) as client:
        assert client.http.get("/readyz").status_code == 200
