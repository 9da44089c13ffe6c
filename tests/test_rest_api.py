"""REST front end against a real server on 127.0.0.1 with the real base model."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import trimesh
from service_helpers import GatedBase, wait_until

import models
from tools.client import GrpcClient, HaloError, RestClient


@pytest.fixture(scope="module")
def direct_base(base_checkpoint):
    return models.load_base(base_checkpoint, device="cpu")


def hand_body(keypoints: np.ndarray, **extra) -> dict:
    return {"keypoints": np.asarray(keypoints).tolist(), **extra}


def test_mesh_round_trip_matches_the_model_called_directly(live_server, direct_base, hand_keypoints):
    kps = hand_keypoints[0]
    expected = direct_base.mesh(kps, resolution=64)
    with RestClient(live_server.http_url) as client:
        got = client.mesh(kps, resolution=64)
    np.testing.assert_array_equal(got.faces, expected.faces)
    np.testing.assert_allclose(got.vertices, expected.vertices, rtol=0, atol=0.51e-7)  # JSON: 0.1 um
    assert got.is_watertight


def test_several_hands_in_one_request_match_single_calls_and_respect_handedness(
    live_server, direct_base, hand_keypoints
):
    kps = hand_keypoints[[1, 2]]
    expected = direct_base.mesh(kps, hand=["right", "left"], resolution=64)
    with RestClient(live_server.http_url) as client:
        got = client.meshes(kps, hand=["right", "left"], resolution=64)
    assert len(got) == 2
    for mesh, reference in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mesh.faces, reference.faces)
        np.testing.assert_allclose(mesh.vertices, reference.vertices, rtol=0, atol=0.51e-7)


@pytest.mark.parametrize(
    ("how", "media_type", "file_type"),
    [
        ({"format": "ply"}, "application/x-ply", "ply"),
        ({"format": "obj"}, "model/obj", "obj"),
        ({"accept": "model/gltf-binary"}, "model/gltf-binary", "glb"),
    ],
)
def test_binary_formats_by_field_or_accept_header(live_server, direct_base, hand_keypoints, how, media_type,
                                                  file_type):
    kps = hand_keypoints[3]
    expected = direct_base.mesh(kps, resolution=64)
    body = hand_body(kps, resolution=64, **({"format": how["format"]} if "format" in how else {}))
    headers = {"Accept": how["accept"]} if "accept" in how else {}
    response = httpx.post(f"{live_server.http_url}/mesh", json=body, headers=headers, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    loaded = trimesh.load(io.BytesIO(response.content), file_type=file_type, force="mesh", process=False)
    assert len(loaded.faces) == len(expected.faces)
    np.testing.assert_allclose(np.sort(loaded.vertices, axis=0), np.sort(expected.vertices, axis=0), atol=1e-5)


def test_occupancy_matches_the_model(live_server, direct_base, hand_keypoints):
    kps = hand_keypoints[4]
    points = np.random.default_rng(0).uniform(-0.1, 0.1, (200, 3))
    with RestClient(live_server.http_url) as client:
        got = client.occupancy(kps, points)
    np.testing.assert_allclose(got, direct_base.occupancy(kps, points), atol=1e-6)


def test_health_ready_models_and_metrics(live_server):
    base = live_server.http_url
    assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{base}/readyz").status_code == 200
    described = httpx.get(f"{base}/models").json()
    assert described["models"]["base"]["available"] is True
    assert described["models"]["base"]["card"]["sha256"]
    text = httpx.get(f"{base}/metrics").text
    for name in ("halo_requests_total", "halo_request_duration_seconds_bucket", "halo_queue_depth",
                 "halo_batch_size_bucket", "halo_stage_duration_seconds_bucket", "halo_points_evaluated_total",
                 "halo_model_info", "process_resident_memory_bytes"):
        assert name in text
    assert 'halo_model_info{device="cpu",model="base"' in text


def test_without_a_grasp_model_grasps_answer_503_and_unavailable_with_the_reason(server_factory, tmp_path):
    server = server_factory(vae_checkpoint=tmp_path / "no_vae.safetensors", warmup=False)
    obj = trimesh.creation.box(extents=(0.05, 0.05, 0.05))
    body = {"object": {"vertices": obj.vertices.tolist(), "faces": obj.faces.tolist()}, "num_samples": 2}
    response = httpx.post(f"{server.http_url}/grasps", json=body, timeout=30)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("grasp model not available")
    assert httpx.get(f"{server.http_url}/models").json()["models"]["vae"]["available"] is False
    with GrpcClient(server.grpc_target) as client, pytest.raises(HaloError) as refused:
        client.grasps(obj, num_samples=1)
    assert refused.value.status == "UNAVAILABLE"
    assert refused.value.detail.startswith("grasp model not available")
    assert httpx.get(f"{server.http_url}/readyz").status_code == 200  # meshes are still served


def _kps(hand_keypoints, change=None):
    kps = hand_keypoints[0].copy()
    return change(kps) if change else kps


def _set(kps, index, value):
    kps[index] = value
    return kps


BAD_MESH_BODIES = {
    "wrong shape": (lambda k: {"keypoints": k[:20].tolist()}, 422, "keypoints"),
    "not numbers": (lambda k: {"keypoints": [["a", "b", "c"]] * 21}, 422, "keypoints"),
    "NaN": (lambda k: {"keypoints": _set(k, (5, 1), np.nan).tolist()}, 422, "keypoints"),
    "Inf": (lambda k: {"keypoints": _set(k, (7, 2), np.inf).tolist()}, 422, "keypoints"),
    "degenerate": (lambda k: {"keypoints": _set(k, 6, k[5]).tolist()}, 422, "keypoints"),
    "millimetres": (lambda k: {"keypoints": (k * 1000).tolist()}, 422, "keypoints"),
    "unknown joint order": (lambda k: {"keypoints": k.tolist(), "joint_order": "smplx"}, 422, "joint_order"),
    "unknown hand": (lambda k: {"keypoints": k.tolist(), "hand": "middle"}, 422, "hand"),
    "bad resolution": (lambda k: {"keypoints": k.tolist(), "resolution": 100}, 422, "resolution"),
    "too high resolution": (lambda k: {"keypoints": k.tolist(), "resolution": 512}, 422, "resolution"),
    "unknown format": (lambda k: {"keypoints": k.tolist(), "format": "fbx"}, 422, "format"),
    "both forms": (lambda k: {"keypoints": k.tolist(), "hands": [{"keypoints": k.tolist()}]}, 422, "keypoints"),
    "bad hand in a list": (lambda k: {"hands": [{"keypoints": k.tolist()}, {"keypoints": (k * 0).tolist()}]},
                           422, "hands[1].keypoints"),
}


@pytest.mark.parametrize("case", list(BAD_MESH_BODIES))
def test_bad_mesh_input_answers_4xx_naming_the_field(live_server, hand_keypoints, case):
    make_body, status, field = BAD_MESH_BODIES[case]
    body = make_body(hand_keypoints[0].copy())
    response = httpx.post(f"{live_server.http_url}/mesh", content=json.dumps(body),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(field), response.json()


def test_oversize_body_answers_413(live_server):
    response = httpx.post(f"{live_server.http_url}/mesh", content=b"[" + b"0," * 600_000 + b"0]",
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413
    assert response.json()["detail"].startswith("body")


def _upload(server, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.http_url}/grasps", files={"file": (name, data)}, data={"num_samples": "1"},
                      timeout=30)


def test_bad_object_uploads_answer_4xx_naming_the_file(server_factory):
    server = server_factory(max_upload_bytes=50_000, max_object_faces=100, warmup=False)
    box = trimesh.creation.box(extents=(0.05, 0.05, 0.05))
    sphere = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces > 100
    cases = {
        "empty": (_upload(server, "object.obj", b""), 422),
        "corrupt": (_upload(server, "object.glb", b"glTF this is not a binary gltf"), 422),
        "wrong extension": (_upload(server, "object.exe", box.export(file_type="obj").encode()), 422),
        "too many faces": (_upload(server, "object.ply", sphere.export(file_type="ply")), 413),
        "huge file": (_upload(server, "object.obj", b"v 0 0 0\n" * 10_000), 413),
        "too many form fields": (
            httpx.post(f"{server.http_url}/grasps", files={"file": ("object.obj", b"v 0 0 0\n")},
                       data={f"field{index}": "1" for index in range(12)}, timeout=30),
            422,
        ),
    }
    for case, (response, status) in cases.items():
        assert response.status_code == status, (case, response.text)
        assert response.json()["detail"].startswith("file"), (case, response.json())
    too_many = {"object": {"vertices": sphere.vertices.tolist(), "faces": sphere.faces.tolist()}}
    response = httpx.post(f"{server.http_url}/grasps", json=too_many, timeout=30)
    assert response.status_code == 413 and response.json()["detail"].startswith("object.faces")


def test_bearer_token_is_required_when_configured(server_factory, hand_keypoints):
    server = server_factory(auth_token="s3cret", warmup=False)
    body = hand_body(hand_keypoints[0], resolution=64)
    missing = httpx.post(f"{server.http_url}/mesh", json=body, timeout=30)
    wrong = httpx.post(f"{server.http_url}/mesh", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["detail"].startswith("authorization")
    with RestClient(server.http_url, token="s3cret") as client:
        assert client.mesh(hand_keypoints[0], resolution=64).is_watertight
    with pytest.raises(HaloError) as refused, RestClient(server.http_url) as client:
        client.occupancy(hand_keypoints[0], np.zeros((1, 3)))
    assert refused.value.status == 401
    assert httpx.get(f"{server.http_url}/healthz").status_code == 200


def test_errors_carry_the_request_id_and_no_stack_trace(live_server):
    response = httpx.post(f"{live_server.http_url}/mesh", json={"keypoints": []}, headers={"X-Request-ID": "abc123"},
                          timeout=30)
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "abc123"
    assert response.json()["request_id"] == "abc123"
    assert "Traceback" not in response.text


def test_a_client_that_disconnects_while_queued_causes_no_work(server_factory, hand_keypoints):
    server = server_factory(warmup=False, max_batch_size=1, mesh_workers=1)
    gated = GatedBase(server.engine.base)
    server.engine.base = gated
    body = hand_body(hand_keypoints[0], resolution=64)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{server.http_url}/mesh", json=body, timeout=60)
        assert gated.entered.wait(30)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.http_url}/mesh", json=body, timeout=httpx.Timeout(60, read=0.5))
        wait_until(lambda: server.metric("halo_requests_total", {"endpoint": "mesh", "protocol": "rest",
                                                                 "status": "499"}) == 1)
        gated.gate.set()
        assert running.result(60).status_code == 200
    wait_until(lambda: server.metric("halo_dropped_total", {"reason": "cancelled"}) == 1)
    assert server.metric("halo_meshes_total", {"resolution": "64"}) == 1


def test_without_a_base_model_the_server_lives_but_is_not_ready(tmp_path, hand_keypoints):
    from conftest import start_server

    server = start_server(base_checkpoint=tmp_path / "missing.safetensors")
    try:
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200
        assert httpx.get(f"{server.http_url}/readyz").status_code == 503
        described = httpx.get(f"{server.http_url}/models").json()["models"]
        assert described["base"]["available"] is False and "missing.safetensors" in described["base"]["reason"]
        response = httpx.post(f"{server.http_url}/mesh", json={"keypoints": [[0.0] * 3] * 21}, timeout=30)
        assert response.status_code == 422  # input errors are still reported first
        response = httpx.post(f"{server.http_url}/mesh", json=hand_body(hand_keypoints[0]), timeout=30)
        assert response.status_code == 503 and response.json()["detail"].startswith("base model not available")
    finally:
        server.stop()
