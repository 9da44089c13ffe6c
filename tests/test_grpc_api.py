"""gRPC front end against a real server on 127.0.0.1 with the real base model."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import trimesh
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_helpers import GatedBase, hand, wait_until

import models
from service.codecs import mesh_to_packed
from service.proto_gen.halo.v1 import halo_pb2, halo_pb2_grpc
from tools.client import GrpcClient


@pytest.fixture(scope="module")
def direct_base(base_checkpoint):
    return models.load_base(base_checkpoint, device="cpu")


def call_mesh(server, request: halo_pb2.GenerateMeshRequest, **kwargs):
    with grpc.insecure_channel(server.grpc_target) as channel:
        return halo_pb2_grpc.HaloServiceStub(channel).GenerateMesh(request, timeout=60, **kwargs)


def test_mesh_round_trip_matches_the_model_called_directly(live_server, direct_base, hand_keypoints):
    kps = hand_keypoints[[0, 5]]
    # gRPC carries float32 keypoints: compare with the model fed the same float32 values.
    expected = direct_base.mesh(kps.astype(np.float32).astype(np.float64), hand=["right", "left"], resolution=64)
    with GrpcClient(live_server.grpc_target) as client:
        got = client.meshes(kps, hand=["right", "left"], resolution=64)
    for mesh, reference in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mesh.faces, reference.faces)
        np.testing.assert_allclose(mesh.vertices, reference.vertices, atol=1e-6)  # float32 on the wire
        assert mesh.is_watertight


def test_occupancy_matches_the_model(live_server, direct_base, hand_keypoints):
    kps = hand_keypoints[2].astype(np.float32).astype(np.float64)
    points = np.random.default_rng(1).uniform(-0.1, 0.1, (100, 3)).astype(np.float32).astype(np.float64)
    with GrpcClient(live_server.grpc_target) as client:
        got = client.occupancy(kps, points)
    np.testing.assert_allclose(got, direct_base.occupancy(kps, points), atol=1e-6)


def test_health_and_reflection(live_server):
    with grpc.insecure_channel(live_server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "halo.v1.HaloService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert {"halo.v1.HaloService", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="halo.v1.HaloService")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        assert answer.file_descriptor_response.file_descriptor_proto


def _bad_requests(kps: np.ndarray) -> dict:
    nan, inf, degenerate = kps.copy(), kps.copy(), kps.copy()
    nan[3, 0], inf[8, 1], degenerate[10] = np.nan, np.inf, degenerate[9]
    return {
        "wrong shape": (halo_pb2.GenerateMeshRequest(hands=[hand(kps[:20])]), "hands[0].keypoints"),
        "no hands": (halo_pb2.GenerateMeshRequest(), "hands"),
        "NaN": (halo_pb2.GenerateMeshRequest(hands=[hand(nan)]), "hands[0].keypoints"),
        "Inf": (halo_pb2.GenerateMeshRequest(hands=[hand(inf)]), "hands[0].keypoints"),
        "degenerate": (halo_pb2.GenerateMeshRequest(hands=[hand(degenerate)]), "hands[0].keypoints"),
        "millimetres": (halo_pb2.GenerateMeshRequest(hands=[hand(kps * 1000)]), "hands[0].keypoints"),
        "unknown joint order": (halo_pb2.GenerateMeshRequest(hands=[hand(kps, joint_order=9)]),
                                "hands[0].joint_order"),
        "unknown handedness": (halo_pb2.GenerateMeshRequest(hands=[hand(kps, handedness=5)]),
                               "hands[0].handedness"),
        "bad resolution": (halo_pb2.GenerateMeshRequest(hands=[hand(kps)], resolution=100), "resolution"),
    }


def test_bad_mesh_input_answers_invalid_argument_naming_the_field(live_server, hand_keypoints):
    for case, (request, field) in _bad_requests(hand_keypoints[0]).items():
        with pytest.raises(grpc.RpcError) as refused:
            call_mesh(live_server, request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert refused.value.details().startswith(field), (case, refused.value.details())


def test_bad_objects_answer_invalid_argument(live_server):
    box = trimesh.creation.box(extents=(0.05, 0.05, 0.05))
    vertices, faces = mesh_to_packed(box)
    cases = {
        "ragged vertices": halo_pb2.Mesh(vertices=vertices[:-2], faces=faces),
        "index out of range": halo_pb2.Mesh(vertices=vertices, faces=np.full(3, 99, "<u4").tobytes()),
        "empty": halo_pb2.Mesh(),
    }
    with grpc.insecure_channel(live_server.grpc_target) as channel:
        stub = halo_pb2_grpc.HaloServiceStub(channel)
        for case, mesh in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                stub.GenerateGrasps(halo_pb2.GenerateGraspsRequest(object=mesh), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert refused.value.details().startswith("object"), case


def test_bearer_token_is_required_when_configured(server_factory, hand_keypoints):
    server = server_factory(auth_token="s3cret", warmup=False)
    request = halo_pb2.GenerateMeshRequest(hands=[hand(hand_keypoints[0])], resolution=64)
    with pytest.raises(grpc.RpcError) as refused:
        call_mesh(server, request)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details().startswith("authorization")
    response = call_mesh(server, request, metadata=(("authorization", "Bearer s3cret"),))
    assert len(response.meshes) == 1


def test_cancelled_calls_and_expired_deadlines_do_no_work(server_factory, hand_keypoints):
    server = server_factory(warmup=False, request_timeout_s=1.0, max_batch_size=1, mesh_workers=1)
    gated = GatedBase(server.engine.base)
    server.engine.base = gated
    request = halo_pb2.GenerateMeshRequest(hands=[hand(hand_keypoints[0])], resolution=64)
    channel = grpc.insecure_channel(server.grpc_target)
    stub = halo_pb2_grpc.HaloServiceStub(channel)

    running = stub.GenerateMesh.future(request, timeout=60)
    assert gated.entered.wait(30)
    cancelled = stub.GenerateMesh.future(request, timeout=60)
    wait_until(lambda: server.metric("halo_queue_depth") == 1)
    cancelled.cancel()
    with pytest.raises(grpc.RpcError) as expired:
        stub.GenerateMesh(request, timeout=0.3)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # REST has no client deadline: the server's request timeout (1 s here) expires it in the queue.
    rest_expired = threading.Thread(target=lambda: results.append(
        httpx.post(f"{server.http_url}/mesh", json={"keypoints": hand_keypoints[1].tolist()}, timeout=60)
    ))
    results: list = []
    rest_expired.start()
    wait_until(lambda: server.metric("halo_inflight_requests") >= 2)
    time.sleep(1.2)
    gated.gate.set()
    assert len(running.result(60).meshes) == 1
    rest_expired.join(60)
    channel.close()
    assert results[0].status_code == 504
    assert results[0].json()["detail"].startswith("deadline")
    assert server.metric("halo_batch_size_count") == 1
    assert server.metric("halo_meshes_total", {"resolution": "64"}) == 1
    dropped = server.metric("halo_dropped_total", {"reason": "cancelled"}) + server.metric(
        "halo_dropped_total", {"reason": "deadline"}
    )
    assert dropped == 3
    assert server.metric("halo_dropped_total", {"reason": "deadline"}) >= 1
