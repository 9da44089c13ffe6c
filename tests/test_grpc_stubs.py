"""The checked-in gRPC stubs are exactly what the proto generates (run ``python -m service.protogen``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service import protogen

CHECKED_IN = protogen.DEFAULT_OUT


def test_regenerating_the_stubs_reproduces_the_checked_in_files(tmp_path: Path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev dependency) is not installed")
    stub = (CHECKED_IN / "halo" / "v1" / "halo_pb2_grpc.py").read_text()
    generated_with = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", stub).group(1)
    from importlib.metadata import version

    if version("grpcio-tools") != generated_with:
        pytest.skip(f"stubs were generated with grpcio-tools {generated_with}; installed is {version('grpcio-tools')}")
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in protogen.generate(tmp_path)}
    current = {
        p.relative_to(CHECKED_IN): p.read_bytes()
        for p in CHECKED_IN.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(fresh) == set(current)
    stale = [str(name) for name, data in fresh.items() if current[name] != data]
    assert not stale, f"stale generated files {stale}: run python -m service.protogen"


def test_the_service_offers_the_methods_generic_clients_call_by_name():
    from service.proto_gen.halo.v1 import halo_pb2

    service = halo_pb2.DESCRIPTOR.services_by_name["HaloService"]
    assert service.full_name == "halo.v1.HaloService"
    assert set(service.methods_by_name) == {
        "GenerateMesh", "QueryOccupancy", "GenerateGrasps", "StreamGrasps", "StreamMesh"
    }
    assert service.methods_by_name["StreamGrasps"].server_streaming
    live = service.methods_by_name["StreamMesh"]
    assert live.client_streaming and live.server_streaming
    assert (live.input_type.name, live.output_type.name) == ("MeshFrame", "MeshFrameReply")
    fields = {m: {f.name for f in halo_pb2.DESCRIPTOR.message_types_by_name[m].fields} for m in ("Hand", "Mesh")}
    assert fields == {"Hand": {"keypoints", "joint_order", "handedness"}, "Mesh": {"vertices", "faces"}}
