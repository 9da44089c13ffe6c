"""What the clients send and receive, shared by the REST, gRPC and live-stream clients: the error they raise,
the protocol enums, and hands and meshes to and from JSON and protobuf."""

from __future__ import annotations

from typing import Any

import numpy as np
import trimesh

from service.proto_gen.halo.v1 import halo_pb2

JOINT_ORDER_ENUM = {
    "mano": halo_pb2.JOINT_ORDER_MANO,
    "mediapipe": halo_pb2.JOINT_ORDER_MANO,
    "openpose": halo_pb2.JOINT_ORDER_MANO,
    "biomech": halo_pb2.JOINT_ORDER_BIOMECH,
    "halo": halo_pb2.JOINT_ORDER_HALO,
}
HANDEDNESS_ENUM = {"right": halo_pb2.HANDEDNESS_RIGHT, "left": halo_pb2.HANDEDNESS_LEFT}
RANK_ENUM = {"none": halo_pb2.GRASP_RANK_NONE, "stability": halo_pb2.GRASP_RANK_STABILITY}


class HaloError(Exception):
    """The server refused or failed a call."""

    def __init__(self, status: int | str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class Closing:
    """Context-manager support for the clients: ``with Client(...) as client`` closes the connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


def hand_json(keypoints: Any, joint_order: str, hand: str) -> dict:
    """(21,3) keypoints, metres, and how to read them -> the JSON hand of REST and the WebSocket."""
    return {
        "keypoints": np.asarray(keypoints, dtype=np.float64).tolist(),
        "joint_order": joint_order,
        "hand": hand,
    }


def mesh_from_json(data: dict) -> trimesh.Trimesh:
    """A JSON mesh ({"vertices": (V,3) metres, "faces": (F,3)}) -> trimesh."""
    return trimesh.Trimesh(
        np.asarray(data["vertices"], dtype=np.float64),
        np.asarray(data["faces"], dtype=np.int64),
        process=False,
    )


def mesh_from_proto(mesh: halo_pb2.Mesh) -> trimesh.Trimesh:
    """A protobuf mesh (packed little-endian float32 vertices, uint32 faces) -> trimesh."""
    vertices = np.frombuffer(mesh.vertices, dtype="<f4").reshape(-1, 3).astype(np.float64)
    faces = np.frombuffer(mesh.faces, dtype="<u4").reshape(-1, 3).astype(np.int64)
    return trimesh.Trimesh(vertices, faces, process=False)


def hand_proto(keypoints: Any, joint_order: str, hand: str) -> halo_pb2.Hand:
    """(21,3) keypoints, metres, and how to read them -> the protobuf hand."""
    return halo_pb2.Hand(
        keypoints=np.asarray(keypoints, dtype=np.float32).ravel().tolist(),
        joint_order=JOINT_ORDER_ENUM[joint_order],
        handedness=HANDEDNESS_ENUM[hand],
    )


def live_mesh(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> trimesh.Trimesh:
    """Flat vertices (metres), faces and vertex normals of a live reply -> trimesh with those normals."""
    return trimesh.Trimesh(vertices.reshape(-1, 3).astype(np.float64), faces.reshape(-1, 3).astype(np.int64),
                           vertex_normals=normals.reshape(-1, 3).astype(np.float64), process=False)
