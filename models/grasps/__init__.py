"""HALO-VAE grasps: object encoding, keypoint VAE, occupancy-based refinement, grasp metrics."""

from .api import Grasp, GraspRequestError, HaloVAE, load_vae
from .object_input import ObjectError, validate_object

__all__ = ["Grasp", "GraspRequestError", "HaloVAE", "ObjectError", "load_vae", "validate_object"]
