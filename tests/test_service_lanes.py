"""Execution lanes with a real server: grasp jobs never hold the mesh lane, each lane refuses on its own."""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import trimesh
from service_helpers import GatedVAE, hand, start_server_subprocess, wait_until

from models.grasps.api import SHIPPED_VAE
from service.codecs import mesh_to_packed
from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc

BOX = trimesh.creation.box(extents=(0.06, 0.08, 0.05))


@pytest.fixture(autouse=True)
def _needs_the_grasp_model():
    if not SHIPPED_VAE.is_file():
        pytest.skip("no shipped grasp checkpoint models/checkpoints/halo_vae.safetensors")


def post_grasps(url: str, num_samples: int = 1, seed: int = 0) -> httpx.Response:
    body = {
        "object": {"vertices": BOX.vertices.tolist(), "faces": BOX.faces.tolist()},
        "num_samples": num_samples,
        "seed": seed,
        "refine": False,
        "resolution": 64,
    }
    return httpx.post(f"{url}/grasps", json=body, timeout=300)


def post_mesh(url: str, kps: np.ndarray, resolution: int = 64) -> httpx.Response:
    return httpx.post(f"{url}/mesh", json={"keypoints": kps.tolist(), "resolution": resolution}, timeout=300)


def grpc_mesh(target: str, kps: np.ndarray) -> str:
    with grpc.insecure_channel(target) as channel:
        request = halo_pb2.GenerateMeshRequest(hands=[hand(kps)], resolution=64)
        response = halo_pb2_grpc.HaloServiceStub(channel).GenerateMesh(request, timeout=120)
    return "OK" if len(response.meshes) == 1 and response.meshes[0].faces else "empty"


def fill_grasp_lane(server, pool: ThreadPoolExecutor) -> tuple[GatedVAE, list]:
    """One grasp job computing (held by the gate) and one waiting: the lane of 1 worker + 1 slot is full."""
    gated = GatedVAE(server.engine.vae)
    server.engine.vae = gated
    running = pool.submit(post_grasps, server.http_url, 1, 0)
    assert gated.entered.wait(60)
    queued = pool.submit(post_grasps, server.http_url, 1, 1)
    wait_until(lambda: server.metric("halo_lane_queue_depth", {"lane": "grasps"}) == 1)
    return gated, [running, queued]


def test_meshes_complete_while_grasp_jobs_fill_their_lane(server_factory, hand_keypoints):
    server = server_factory(warmup=False, mesh_workers=1, grasp_workers=1, max_grasp_queue=1, grasp_process=False)
    with ThreadPoolExecutor(8) as pool:
        gated, grasps = fill_grasp_lane(server, pool)
        rest = [pool.submit(post_mesh, server.http_url, hand_keypoints[i]) for i in range(4)]
        over_grpc = [pool.submit(grpc_mesh, server.grpc_target, hand_keypoints[i]) for i in range(4, 6)]
        mesh_statuses = [f.result(120).status_code for f in rest] + [f.result(120) for f in over_grpc]
        # Every mesh was answered while the grasp lane was still full and its worker still held.
        assert not gated.gate.is_set() and not any(f.done() for f in grasps)
        assert server.metric("halo_lane_busy_workers", {"lane": "grasps"}) == 1
        assert server.metric("halo_lane_queue_depth", {"lane": "grasps"}) == 1
        gated.gate.set()
        grasp_responses = [f.result(300) for f in grasps]
    assert mesh_statuses == [200, 200, 200, 200, "OK", "OK"]
    assert [len(r.json()["grasps"]) for r in grasp_responses] == [1, 1]
    assert server.metric("halo_lane_queue_wait_seconds_count", {"lane": "mesh"}) >= 6
    assert server.metric("halo_lane_queue_wait_seconds_count", {"lane": "grasps"}) == 2
    assert server.metric("halo_lane_busy_workers", {"lane": "grasps"}) == 0


def test_a_full_grasp_lane_refuses_grasps_and_still_answers_meshes(server_factory, hand_keypoints):
    server = server_factory(warmup=False, mesh_workers=1, grasp_workers=1, max_grasp_queue=1, grasp_process=False)
    with ThreadPoolExecutor(4) as pool:
        gated, grasps = fill_grasp_lane(server, pool)
        refused = post_grasps(server.http_url)
        vertices, faces = mesh_to_packed(BOX)
        request = halo_pb2.GenerateGraspsRequest(
            object=halo_pb2.Mesh(vertices=vertices, faces=faces), num_samples=1, resolution=64
        )
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as exhausted:
            halo_pb2_grpc.HaloServiceStub(channel).GenerateGrasps(request, timeout=60)
        mesh = post_mesh(server.http_url, hand_keypoints[0])
        gated.gate.set()
        accepted = [f.result(300) for f in grasps]
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["detail"].startswith("queue full: the grasps lane")
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert mesh.status_code == 200 and len(mesh.json()["faces"]) > 0
    assert [r.status_code for r in accepted] == [200, 200]
    assert server.metric("halo_lane_rejected_total", {"lane": "grasps", "reason": "queue_full"}) == 2
    assert server.metric("halo_lane_rejected_total", {"lane": "mesh", "reason": "queue_full"}) == 0
    assert server.metric("halo_rejected_total", {"reason": "queue_full"}) == 2
    assert post_grasps(server.http_url).status_code == 200


def test_grasp_workers_run_at_a_lower_cpu_priority_than_mesh_workers(server_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice values are a Linux feature")
    server = server_factory(warmup=False, grasp_nice=5)

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mesh_nice = server.call(server.engine.mesh_lane.run_blocking(own_nice))
    grasp_nice = server.call(server.engine.grasp_lane.run_blocking(own_nice))
    assert grasp_nice == min(mesh_nice + 5, 19)
    assert mesh_nice == os.getpriority(os.PRIO_PROCESS, 0)


def test_grasp_jobs_run_in_a_worker_process_at_the_grasp_lanes_lower_priority(server_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("nice values are read the Linux way")
    server = server_factory(warmup=False, grasp_nice=5)
    worker_pid = server.call(server.engine.grasp_lane.run_blocking(server.engine.grasp_worker.pid))
    assert worker_pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, worker_pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)
    assert post_grasps(server.http_url).status_code == 200


def test_a_grasp_worker_process_that_dies_costs_one_503_and_is_restarted(server_factory):
    server = server_factory(warmup=False)
    worker_pid = server.call(server.engine.grasp_lane.run_blocking(server.engine.grasp_worker.pid))
    os.kill(worker_pid, signal.SIGKILL)
    failed = post_grasps(server.http_url)
    assert failed.status_code == 503 and "worker process stopped" in failed.json()["detail"]
    assert post_grasps(server.http_url).status_code == 200
    assert server.call(server.engine.grasp_lane.run_blocking(server.engine.grasp_worker.pid)) != worker_pid


def _scrape(url: str) -> dict[str, float]:
    """Requests received (in flight + answered, all endpoints) and grasp-lane work (computing + waiting)."""
    values = {"received": 0.0, "grasp_work": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("halo_inflight_requests ", "halo_requests_total{")):
            values["received"] += float(line.split()[1])
        elif line.startswith(('halo_lane_busy_workers{lane="grasps"}', 'halo_lane_queue_depth{lane="grasps"}')):
            values["grasp_work"] += float(line.split()[1])
    return values


def test_sigterm_drains_both_lanes(base_checkpoint, hand_keypoints):
    process, ports = start_server_subprocess(base_checkpoint, "grasp_workers=1")
    url = f"http://127.0.0.1:{ports['http']}"
    try:
        with ThreadPoolExecutor(8) as pool:
            grasps = [pool.submit(post_grasps, url, 2, seed) for seed in range(2)]
            meshes = [pool.submit(post_mesh, url, hand_keypoints[i], 128) for i in range(6)]
            wait_until(lambda: _scrape(url)["received"] == 8, timeout=120)
            at_sigterm = _scrape(url)
            process.send_signal(signal.SIGTERM)
            grasp_responses = [f.result(300) for f in grasps]
            mesh_statuses = [f.result(300).status_code for f in meshes]
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # Two grasp jobs on one grasp worker: the second one at least was still waiting or computing.
    assert at_sigterm["grasp_work"] >= 1, "the grasp lane was idle at SIGTERM: nothing was drained there"
    assert [r.status_code for r in grasp_responses] == [200, 200]
    assert [len(r.json()["grasps"]) for r in grasp_responses] == [2, 2]
    assert mesh_statuses == [200] * 6
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
