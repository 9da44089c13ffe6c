"""The files the command line reads: keypoint and point arrays, object meshes, keypoint sequences."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import trimesh

from models import ObjectError

OBJECT_FORMATS = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")


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


def load_keypoints(path: str | Path) -> np.ndarray:
    """A JSON file holding one hand (21,3), a list of hands (K,21,3) or {"keypoints": ...} -> (K,21,3)."""
    kps = read_array(path, "keypoints")
    return kps[None] if kps.ndim == 2 else kps


def read_object(path: Path) -> trimesh.Trimesh:
    """An object mesh file (.obj/.ply/.stl/.glb/...) -> one triangle mesh (scenes are merged)."""
    if path.suffix.lower() not in OBJECT_FORMATS:
        raise ObjectError(f"object: unknown mesh format {path.suffix!r}; use one of {', '.join(OBJECT_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"object: no such file {path}")
    return trimesh.load(str(path), force="mesh", process=False)


def read_keypoint_sequence(path: Path) -> np.ndarray:
    """(T,21,3) right-hand mano keypoints from .npy, .json or .pkl (a pickle is code: trusted files only)."""
    if path.suffix == ".pkl":
        with path.open("rb") as handle:
            array = np.asarray(pickle.load(handle), dtype=np.float64)
    elif path.suffix == ".json":
        array = np.asarray(json.loads(path.read_text()), dtype=np.float64)
    else:
        array = np.load(path).astype(np.float64)
    if array.ndim != 3 or array.shape[1:] != (21, 3):
        raise ValueError(f"real-keypoints: expected (T,21,3) keypoints, got shape {list(array.shape)}")
    return array
