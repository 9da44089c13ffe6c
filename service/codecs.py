"""What the server sends: meshes and grasps as JSON arrays, PLY / OBJ / GLB files or packed bytes.

Decoding what clients send is ``service.inputs``'s work; the one error here (a format that cannot
hold the answer) is an ``InputError`` naming the ``format`` field.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import orjson
import trimesh

from models import Grasp
from service.errors import InputError

MEDIA_TYPES = {
    "json": "application/json",
    "ply": "application/x-ply",
    "obj": "model/obj",
    "glb": "model/gltf-binary",
}
MEDIA_TYPE_TO_FORMAT = {media: fmt for fmt, media in MEDIA_TYPES.items()}


def negotiate_format(requested: str | None, accept: str | None) -> str:
    """Output format from an explicit ``format`` field, else the first known Accept media type."""
    if requested:
        fmt = requested.lower()
        if fmt not in MEDIA_TYPES:
            raise InputError(f"format: unknown format {requested!r}; expected one of {sorted(MEDIA_TYPES)}")
        return fmt
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in MEDIA_TYPE_TO_FORMAT:
            return MEDIA_TYPE_TO_FORMAT[media]
    return "json"


# JSON vertices are rounded to 0.1 micrometre: far below the marching-cubes grid step (millimetres),
# and a third shorter to send and parse than full float64 digits.
JSON_DECIMALS = 7


def mesh_to_dict(mesh: trimesh.Trimesh) -> dict[str, np.ndarray]:
    """A mesh as arrays for ``json_bytes``: vertices (N,3) metres (rounded to 0.1 um), faces (M,3) indices."""
    return {
        "vertices": np.round(np.asarray(mesh.vertices, dtype=np.float64), JSON_DECIMALS),
        "faces": np.ascontiguousarray(mesh.faces, dtype=np.int64),
    }


def json_bytes(payload: object) -> bytes:
    """Compact JSON; numpy arrays are written natively (an order of magnitude faster than ``json``)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def meshes_to_file(meshes: Sequence[trimesh.Trimesh], fmt: str) -> bytes:
    """Meshes as one binary PLY / text OBJ (single mesh) or a GLB scene (any number of meshes)."""
    if fmt == "glb":
        scene = trimesh.Scene()
        for index, mesh in enumerate(meshes):
            scene.add_geometry(mesh, geom_name=f"hand_{index}", node_name=f"hand_{index}")
        return scene.export(file_type="glb")
    if len(meshes) != 1:
        raise InputError(f"format: {fmt} holds one mesh; use glb or json for several hands")
    data = meshes[0].export(file_type=fmt)
    return data.encode() if isinstance(data, str) else data


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The numeric entries of a grasp's metrics (booleans as 0 / 1), for the wire."""
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float | np.number)}


def mesh_to_packed(mesh: trimesh.Trimesh) -> tuple[bytes, bytes]:
    """(N,3) vertices, (M,3) faces -> float32 little-endian and uint32 little-endian bytes."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    faces = np.ascontiguousarray(mesh.faces, dtype="<u4")
    return vertices.tobytes(), faces.tobytes()


def normals_to_packed(mesh: trimesh.Trimesh) -> bytes:
    """(N,3) unit vertex normals -> float32 little-endian bytes."""
    return np.ascontiguousarray(mesh.vertex_normals, dtype="<f4").tobytes()


# Unit normals to 1e-4: finer than any shading shows, and a third of the JSON of full digits.
NORMAL_DECIMALS = 4
LIVE_ENCODINGS = ("json", "base64")


def live_mesh_payload(mesh: trimesh.Trimesh, encoding: str) -> dict:
    """A live-stream mesh with its vertex normals: JSON arrays (``json``) or packed float32 / uint32
    little-endian arrays in base64 strings (``base64``, the same bytes as gRPC's)."""
    if encoding == "base64":
        vertices, faces = mesh_to_packed(mesh)
        packed = {"vertices": vertices, "faces": faces, "normals": normals_to_packed(mesh)}
        return {name: base64.b64encode(data).decode("ascii") for name, data in packed.items()}
    return {**mesh_to_dict(mesh), "normals": np.round(np.asarray(mesh.vertex_normals), NORMAL_DECIMALS)}


def grasp_payload(grasp: Grasp) -> dict:
    """A sampled grasp (keypoints (21,3) m, mesh, metrics dict) as JSON-ready data."""
    return {
        "keypoints": np.ascontiguousarray(grasp.keypoints, dtype=np.float64),
        "mesh": mesh_to_dict(grasp.mesh),
        "metrics": numeric_metrics(grasp.metrics),
    }
