"""The server's backends: load the base and grasp models, warm them up, say what is loaded and why not.

A model that fails to load leaves its role empty with the reason; the server still starts, and the
endpoints that need the model answer "unavailable" with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import trimesh

import models
from models import HaloBase, HaloVAE
from models.assets import sample_hand
from service.config import Settings
from service.metrics import Metrics

log = logging.getLogger("halo.engine")

# The object the grasp model samples for at start-up (a 6 cm cube).
WARM_UP_OBJECT_M = (0.06, 0.06, 0.06)


@dataclass
class LoadedModels:
    """What ``load_models`` found: each model, or the reason it is missing."""

    base: HaloBase | None = None
    vae: HaloVAE | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


def load_models(settings: Settings, device: str, metrics: Metrics) -> LoadedModels:
    """Load the base model, then the grasp model on top of it; failures are recorded, not raised."""
    loaded = LoadedModels()
    try:
        loaded.base = models.load_base(settings.base_checkpoint, device=device)
    except Exception as error:
        loaded.unavailable["base"] = f"base model not available: {error}"
        log.error("base model not loaded", extra={"reason": str(error)})
        loaded.unavailable["vae"] = "grasp model not available: it needs the base model"
        return loaded
    record_model(metrics, "base", loaded.base.card, device)
    try:
        loaded.vae = models.load_vae(settings.vae_checkpoint, base=loaded.base, device=device)
    except Exception as error:
        loaded.unavailable["vae"] = f"grasp model not available: {error}"
        log.warning("grasp model not loaded", extra={"reason": str(error)})
    else:
        record_model(metrics, "vae", loaded.vae.card, device)
    return loaded


def record_model(metrics: Metrics, role: str, card: dict | None, device: str) -> None:
    """Publish a loaded model's identity (``halo_model_info``) and log it."""
    card = card or {}
    labels = (role, str(card.get("name", role)), str(card.get("sha256", "")), device)
    metrics.model_info.labels(*labels).set(1)
    # Not "name": that is a LogRecord attribute, and logging refuses to overwrite it.
    log.info("model loaded", extra={"model": role, "checkpoint": card.get("name"), "device": device})


def warm_up_meshes(base: HaloBase, resolution: int) -> None:
    """Mesh the bundled sample hand once (the first request then pays no lazy initialisation)."""
    sample = sample_hand()
    kps = np.asarray(sample["keypoints"], dtype=np.float64)[None]
    base.mesh_with_stats(kps, joint_order=sample["joint_order"], hand=sample["hand"], resolution=resolution)


def warm_up_grasps(vae: HaloVAE, resolution: int) -> None:
    """Sample two physics-checked grasps of a cube (the first grasp request would otherwise pay about a second of
    set-up, and the physics check's worker processes start now)."""
    vae.sample(trimesh.creation.box(extents=WARM_UP_OBJECT_M), n=2, seed=0, refine=True, resolution=resolution,
               physics=True)


def describe_model(model: HaloBase | HaloVAE | None, role: str, device: str, unavailable: dict[str, str]) -> dict:
    """One model's entry of ``GET /models``: its card and device, or why it is unavailable."""
    if model is None:
        return {"available": False, "reason": unavailable.get(role, "loading")}
    return {"available": True, "device": device, "card": dict(getattr(model, "card", {}) or {})}
