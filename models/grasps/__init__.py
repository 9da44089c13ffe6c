"""HALO-VAE grasps: object encoding, keypoint VAE, occupancy-based refinement, grasp metrics, physics check."""

from .api import RANK_NAMES, Grasp, GraspRequestError, HaloVAE, RankName, load_vae
from .collision import PhysicsError
from .collision import check_object as check_physics_object
from .object_input import ObjectError, prepare_object, validate_object

__all__ = ["RANK_NAMES", "Grasp", "GraspRequestError", "HaloVAE", "ObjectError", "PhysicsError", "RankName",
           "check_physics_object", "load_vae", "prepare_object", "validate_object"]
