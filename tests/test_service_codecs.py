"""Wire encodings: JSON (orjson with numpy), packed gRPC meshes, file formats and upload checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from models.grasps import Grasp
from service.codecs import grasp_payload, json_bytes, mesh_to_dict, mesh_to_packed, negotiate_format
from service.errors import InputError, PayloadTooLargeError
from service.inputs import decode_upload, packed_to_mesh


def test_grasp_json_carries_arrays_and_only_numeric_metrics():
    box = trimesh.creation.box(extents=(0.05, 0.06, 0.07))
    keypoints = np.arange(63, dtype=np.float64).reshape(21, 3) * 1e-3
    grasp = Grasp(keypoints=keypoints, mesh=box,
                  metrics={"max_penetration_depth_mm": 1.5, "contact": True, "batch_timing": {"sample_s": 0.1}})
    decoded = json.loads(json_bytes({"grasps": [grasp_payload(grasp)]}))["grasps"][0]
    np.testing.assert_allclose(decoded["keypoints"], keypoints)
    np.testing.assert_allclose(decoded["mesh"]["vertices"], box.vertices, atol=0.51e-7)
    assert decoded["mesh"]["faces"] == box.faces.tolist()
    assert decoded["metrics"] == {"max_penetration_depth_mm": 1.5, "contact": 1.0}


def test_json_vertices_are_rounded_to_a_tenth_of_a_micrometre():
    mesh = trimesh.Trimesh(vertices=[[0.123456789, 0, 0], [0, 1, 0], [0, 0, 1]], faces=[[0, 1, 2]], process=False)
    assert json.loads(json_bytes(mesh_to_dict(mesh)))["vertices"][0][0] == 0.1234568


def test_packed_meshes_round_trip_and_reject_ragged_or_out_of_range_data():
    box = trimesh.creation.box(extents=(0.05, 0.06, 0.07))
    vertices, faces = mesh_to_packed(box)
    back = packed_to_mesh(vertices, faces)
    np.testing.assert_allclose(back.vertices, box.vertices, atol=1e-7)
    np.testing.assert_array_equal(back.faces, box.faces)
    with pytest.raises(InputError, match=r"^mesh: vertices and faces"):
        packed_to_mesh(vertices[:-4], faces)
    with pytest.raises(InputError, match=r"^mesh.faces: index out of range"):
        packed_to_mesh(vertices, np.full(3, 8, "<u4").tobytes())


def test_format_from_field_then_accept_header_then_json():
    assert negotiate_format("GLB", "application/x-ply") == "glb"
    assert negotiate_format(None, "text/html, application/x-ply;q=0.9") == "ply"
    assert negotiate_format(None, "*/*") == "json"
    with pytest.raises(InputError, match=r"^format"):
        negotiate_format("fbx", None)


def test_uploads_are_parsed_by_extension_within_limits():
    box = trimesh.creation.box(extents=(0.05, 0.06, 0.07))
    for ext in ("obj", "ply", "stl", "glb"):
        data = box.export(file_type=ext)
        loaded = decode_upload(data.encode() if isinstance(data, str) else data, f"box.{ext}", 10**6, 100)
        assert len(loaded.faces) == len(box.faces), ext
    with pytest.raises(PayloadTooLargeError, match=r"^file: "):
        decode_upload(b"x" * 2000, "box.obj", 1000, 100)
    with pytest.raises(PayloadTooLargeError, match=r"^file.faces"):
        decode_upload(box.export(file_type="ply"), "box.ply", 10**6, 4)
