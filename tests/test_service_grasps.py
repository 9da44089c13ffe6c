"""Grasp endpoints on both protocols with the shipped grasp VAE (skipped until it is shipped)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from models.grasps.api import SHIPPED_VAE
from tools.client import GrpcClient, RestClient


@pytest.fixture(scope="module")
def grasp_server(base_checkpoint):
    if not SHIPPED_VAE.is_file():
        pytest.skip("no shipped grasp checkpoint models/checkpoints/halo_vae.safetensors yet")
    from conftest import start_server

    server = start_server(base_checkpoint=base_checkpoint, warmup=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def box() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(0.06, 0.08, 0.05))


def test_grasps_match_the_model_called_directly(grasp_server, box):
    vae = grasp_server.engine.vae
    expected = vae.sample(box, n=2, seed=3, refine=False, resolution=64)
    with RestClient(grasp_server.http_url) as client:
        got = client.grasps(box, num_samples=2, seed=3, refine=False)
    assert len(got) == 2
    for grasp, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(grasp.keypoints, reference.keypoints, atol=1e-9)
        assert len(grasp.mesh.faces) == len(reference.mesh.faces)
        assert grasp.metrics["max_penetration_depth_mm"] == pytest.approx(reference.metrics["max_penetration_depth_mm"])


def test_uploaded_file_json_object_and_grpc_give_the_same_grasps(grasp_server, box, tmp_path):
    path = tmp_path / "box.ply"
    box.export(path)
    with RestClient(grasp_server.http_url) as client:
        from_json = client.grasps(box, num_samples=1, seed=5, refine=False)
        from_file = client.grasps(path, num_samples=1, seed=5, refine=False)
    with GrpcClient(grasp_server.grpc_target) as client:
        from_grpc = client.grasps(box, num_samples=1, seed=5, refine=False)
    np.testing.assert_allclose(from_file[0].keypoints, from_json[0].keypoints, atol=1e-6)
    np.testing.assert_allclose(from_grpc[0].keypoints, from_json[0].keypoints, atol=1e-5)  # float32 on the wire


def test_stream_grasps_yields_each_grasp_as_a_one_grasp_sample(grasp_server, box):
    with GrpcClient(grasp_server.grpc_target) as client:
        streamed = client.grasps(box, num_samples=2, seed=3, refine=False, stream=True)
        singles = [client.grasps(box, num_samples=1, seed=3 + i, refine=False)[0] for i in range(2)]
    assert len(streamed) == 2
    for grasp, single in zip(streamed, singles, strict=True):
        np.testing.assert_allclose(grasp.keypoints, single.keypoints, atol=1e-7)


def test_an_object_in_millimetres_is_refused_naming_the_object(grasp_server, box):
    huge = box.copy()
    huge.apply_scale(1000)
    with RestClient(grasp_server.http_url) as client:
        response = client.http.post("/grasps", json={"object": {"vertices": huge.vertices.tolist(),
                                                                 "faces": huge.faces.tolist()}})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("object")


def test_grpc_client_that_leaves_refine_out_gets_refined_grasps_like_rest(grasp_server, box):
    """A client with no .proto (descriptors from server reflection, as grpcurl does) that sends no ``refine``."""
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(grasp_server.grpc_target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        question = reflection_pb2.ServerReflectionRequest(file_containing_symbol="halo.v1.HaloService")
        (answer,) = list(reflection.ServerReflectionInfo(iter([question]), timeout=10))
        pool = descriptor_pool.DescriptorPool()
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
        request_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("halo.v1.GenerateGraspsRequest"))
        response_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("halo.v1.GenerateGraspsResponse"))
        request = request_class(num_samples=1, seed=2, resolution=64)
        request.object.vertices = np.asarray(box.vertices, dtype="<f4").tobytes()
        request.object.faces = np.asarray(box.faces, dtype="<u4").tobytes()
        call = channel.unary_unary("/halo.v1.HaloService/GenerateGrasps", request_serializer=request_class.SerializeToString,
                                   response_deserializer=response_class.FromString)
        response = call(request, timeout=120)
    assert response.grasps[0].metrics.values["refined"] == 1.0
    with RestClient(grasp_server.http_url) as client:
        (rest,) = client.grasps(box, num_samples=1, seed=2)
    assert rest.metrics["refined"] == 1.0  # REST refines by default
    np.testing.assert_allclose(np.asarray(response.grasps[0].keypoints).reshape(21, 3), rest.keypoints, atol=1e-5)
