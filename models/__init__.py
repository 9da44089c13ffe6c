"""HALO: keypoints -> neural occupancy -> watertight hand meshes (and grasps). Pure PyTorch + numpy."""

from . import skeleton
from .api import HaloBase, load_base, resolve_device
from .canonical import KeypointError, validate_keypoints
from .grasps import Grasp, HaloVAE, ObjectError, load_vae
from .meshing import RESOLUTIONS, MeshStats

__all__ = [
    "RESOLUTIONS",
    "Grasp",
    "HaloBase",
    "HaloVAE",
    "KeypointError",
    "MeshStats",
    "ObjectError",
    "load_base",
    "load_vae",
    "resolve_device",
    "skeleton",
    "validate_keypoints",
]
