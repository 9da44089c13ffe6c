"""Mesh encoding and decoding at the server's edge: JSON arrays, PLY / OBJ / GLB files, packed bytes.

Uploaded objects are parsed with trimesh's format readers only (never pickle), after size checks.
Every error is an ``InputError`` whose message starts with the offending field.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import trimesh

MEDIA_TYPES = {
    "json": "application/json",
    "ply": "application/x-ply",
    "obj": "model/obj",
    "glb": "model/gltf-binary",
}
MEDIA_TYPE_TO_FORMAT = {media: fmt for fmt, media in MEDIA_TYPES.items()}
UPLOAD_FORMATS = ("obj", "ply", "stl", "glb")


class InputError(ValueError):
    """A request field is invalid; the message starts with the field name."""


class PayloadTooLargeError(InputError):
    """A body, upload or mesh exceeds the server's configured limit."""


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


def packed_to_mesh(vertices: bytes, faces: bytes, field: str = "mesh") -> trimesh.Trimesh:
    """Packed float32 / uint32 little-endian bytes -> mesh, checking lengths and indices."""
    if len(vertices) % 12 or len(faces) % 12:
        raise InputError(f"{field}: vertices and faces must be whole float32 / uint32 triples")
    v = np.frombuffer(vertices, dtype="<f4").reshape(-1, 3).astype(np.float64)
    f = np.frombuffer(faces, dtype="<u4").reshape(-1, 3).astype(np.int64)
    return arrays_to_mesh(v, f, field)


def arrays_to_mesh(vertices: np.ndarray, faces: np.ndarray, field: str = "object") -> trimesh.Trimesh:
    """(N,3) metres + (M,3) indices -> mesh, after shape, finiteness and index checks."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) < 3:
        raise InputError(f"{field}.vertices: expected at least 3 rows of [x, y, z]")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) < 1:
        raise InputError(f"{field}.faces: expected at least 1 row of [i, j, k]")
    if not np.isfinite(vertices).all():
        raise InputError(f"{field}.vertices: contains NaN or Inf")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f"{field}.faces: index out of range 0..{len(vertices) - 1}")
    return trimesh.Trimesh(vertices=vertices, faces=faces.astype(np.int64), process=False)


def check_object_size(mesh: trimesh.Trimesh, max_faces: int, field: str = "object") -> trimesh.Trimesh:
    """Reject objects with more than ``max_faces`` faces."""
    if len(mesh.faces) > max_faces:
        raise PayloadTooLargeError(f"{field}.faces: {len(mesh.faces)} faces; the limit is {max_faces}")
    return mesh


def decode_upload(data: bytes, filename: str, max_bytes: int, max_faces: int) -> trimesh.Trimesh:
    """An uploaded .obj / .ply / .stl / .glb file -> one triangle mesh (scenes are concatenated)."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if ext not in UPLOAD_FORMATS:
        raise InputError(f"file: unsupported extension {ext!r}; expected one of {list(UPLOAD_FORMATS)}")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"file: {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise InputError("file: empty upload")
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=ext, force="mesh", process=False)
    except Exception as error:  # trimesh raises many types on malformed files
        raise InputError(f"file: could not parse the {ext} file ({type(error).__name__})") from error
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError(f"file: the {ext} file holds no triangles")
    check_object_size(loaded, max_faces, field="file")
    return arrays_to_mesh(loaded.vertices, loaded.faces, field="file")


def read_array(path: str | Path, key: str) -> np.ndarray:
    """A .npy file, or a JSON file holding an array or an object with ``key`` -> float64 array."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float64)
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        if key not in data:
            raise ValueError(f"{path.name}: expected a JSON array or an object with a {key!r} field")
        data = data[key]
    return np.asarray(data, dtype=np.float64)
