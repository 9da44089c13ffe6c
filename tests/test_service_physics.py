"""Physics-checked grasps on both protocols: the fields, stability ranking, streaming and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.grasps.api import SHIPPED_VAE
from tools.client import GrpcClient, RestClient

PHYSICS_FIELDS = {"sim_displacement_cm", "sim_displacement_worst_cm", "sim_directions_held", "sim_settle_cm", "stable"}


@pytest.fixture(scope="module")
def grasp_server(base_checkpoint):
    if not SHIPPED_VAE.is_file():
        pytest.skip("no shipped grasp checkpoint models/checkpoints/halo_vae.safetensors yet")
    from conftest import start_server

    server = start_server(base_checkpoint=base_checkpoint, warmup=False, max_grasp_samples=6, default_grasp_samples=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def box() -> trimesh.Trimesh:
    """A box whose coordinates are float32 values, so gRPC (float32 on the wire) and REST send the same object."""
    box = trimesh.creation.box(extents=(0.06, 0.08, 0.05))
    return trimesh.Trimesh(box.vertices.astype(np.float32).astype(np.float64), box.faces, process=False)


def _key(grasp) -> tuple[float, float]:
    return grasp.metrics["sim_displacement_worst_cm"], grasp.metrics["sim_displacement_cm"]


def test_rest_physics_adds_the_fields_and_counts_the_grasps(grasp_server, box):
    before = sum(grasp_server.metric("halo_physics_grasps_total", {"stable": s}) for s in ("true", "false"))
    with RestClient(grasp_server.http_url) as client:
        plain = client.grasps(box, num_samples=1, seed=1, refine=False)
        checked = client.grasps(box, num_samples=2, seed=1, refine=False, physics=True)
    assert not PHYSICS_FIELDS & set(plain[0].metrics)
    for grasp in checked:
        assert set(grasp.metrics) >= PHYSICS_FIELDS
        assert grasp.metrics["stable"] in (0.0, 1.0)
        assert grasp.metrics["sim_displacement_worst_cm"] >= grasp.metrics["sim_displacement_cm"] >= 0
        assert grasp.metrics["stable"] == float(grasp.metrics["sim_directions_held"] == 6
                                                and grasp.metrics["sim_settle_cm"] < 2.0)
    after = sum(grasp_server.metric("halo_physics_grasps_total", {"stable": s}) for s in ("true", "false"))
    assert after - before == 2
    assert grasp_server.metric("halo_physics_displacement_cm_count") >= 2


def test_rest_rank_stability_returns_the_most_stable_first(grasp_server, box):
    with RestClient(grasp_server.http_url) as client:
        ranked = client.grasps(box, num_samples=3, seed=4, refine=False, rank="stability")
        drawn = client.grasps(box, num_samples=6, seed=4, refine=False, physics=True)  # the server's limit: 6
    # The same samples are drawn both times; a repeated simulation may differ by float noise (well under 1e-3 cm).
    drawn_keypoints = np.stack([g.keypoints for g in drawn])
    drawn_worst = np.array([g.metrics["sim_displacement_worst_cm"] for g in drawn])
    for grasp in ranked:
        gaps = np.abs(drawn_keypoints - grasp.keypoints).max(axis=(1, 2))
        assert gaps.min() < 1e-4  # one of the drawn samples
        assert (drawn_worst[np.argmin(gaps)]
                <= np.sort(drawn_worst)[2] + 1e-3)  # among the three most stable
    assert [_key(g) for g in ranked] == sorted(_key(g) for g in ranked)


def test_rest_refuses_an_unknown_rank_and_a_flat_object_naming_the_field(grasp_server, box):
    flat = {"vertices": [[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0.1, 0.1, 0]], "faces": [[0, 1, 2], [1, 3, 2]]}
    with RestClient(grasp_server.http_url) as client:
        response = client.http.post("/grasps", json={"object": {"vertices": box.vertices.tolist(),
                                                                 "faces": box.faces.tolist()}, "rank": "best"})
        assert response.status_code == 422
        assert response.json()["detail"].startswith("rank")
        response = client.http.post("/grasps", json={"object": flat, "physics": True})
        assert response.status_code == 422
        assert response.json()["detail"].startswith("object: ")


def test_grpc_physics_and_rank_on_generate_and_stream(grasp_server, box):
    with RestClient(grasp_server.http_url) as client:
        over_rest = client.grasps(box, num_samples=2, seed=7, refine=False, rank="stability")
    with GrpcClient(grasp_server.grpc_target) as client:
        over_grpc = client.grasps(box, num_samples=2, seed=7, refine=False, rank="stability")
        streamed = client.grasps(box, num_samples=2, seed=7, refine=False, physics=True, stream=True)
        singles = [client.grasps(box, num_samples=1, seed=7 + i, refine=False, physics=True)[0] for i in range(2)]
    assert [_key(g) for g in over_grpc] == [_key(g) for g in over_rest]
    for grasp, single in zip(streamed, singles, strict=True):
        assert set(grasp.metrics) >= PHYSICS_FIELDS
        assert _key(grasp) == _key(single)
