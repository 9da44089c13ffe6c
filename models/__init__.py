"""HALO: keypoints -> neural occupancy -> watertight hand meshes (and grasps). Pure PyTorch + numpy."""

from . import skeleton
from .api import HaloBase, load_base, resolve_device
from .canonical import KeypointError, validate_keypoints
from .meshing import RESOLUTIONS, MeshStats

__all__ = [
    "RESOLUTIONS",
    "HaloBase",
    "KeypointError",
    "MeshStats",
    "load_base",
    "resolve_device",
    "skeleton",
    "validate_keypoints",
]
