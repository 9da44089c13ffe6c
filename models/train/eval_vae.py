"""``halo eval vae``: the grasp model's metrics table on held-out test objects, with its baselines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..api import load_base
from ..data.objects import make_object, split_indices
from ..grasps.api import SHIPPED_VAE, HaloVAE, load_vae
from ..grasps.evaluate import evaluate_vae
from ..grasps.hand_object import RefineConfig
from ..grasps.preview import render_grasps
from ..weights import update_card
from .vae import load_grasp_data

PREVIEW_OBJECTS, PREVIEW_GRASPS = 3, 4  # the preview: test objects, refined grasps each


@dataclass(frozen=True)
class EvalVAEConfig:
    """One ``halo eval vae`` run."""

    checkpoint: Path | None = None  # VAE (None: the shipped one)
    base_checkpoint: Path | None = None  # base model (None: the shipped one)
    device: str = "auto"
    resolution: int = 128
    seed: int = 0
    data: Path | None = None  # grasp data folder (adds the synthesis-data baseline)
    objects: int = 10  # number of test objects
    samples: int = 20  # grasps per object
    real_keypoints: np.ndarray | None = None  # (T,21,3) real right-hand keypoints: a plausibility sanity row
    physics: bool = True  # MuJoCo check of every grasp: stable share, displacement, a ranked row
    write_card: bool = False  # store the results in the VAE's model card
    preview: Path | None = None  # also render PREVIEW_GRASPS grasps on each of the first PREVIEW_OBJECTS objects


def run(config: EvalVAEConfig) -> dict:
    """Evaluate as ``config`` says; -> the results (rows per method, models, objects, the command)."""
    vae = load_vae(config.checkpoint, base=load_base(config.base_checkpoint, device=config.device),
                   device=config.device)
    data_keypoints: dict[int, np.ndarray] = {}
    indices = split_indices("test", config.objects)
    if config.data:
        test = load_grasp_data(config.data).subset("test")
        indices = [int(i) for i in test.object_index[: config.objects]]
        for row, index in enumerate(test.object_index):
            data_keypoints[int(index)] = test.keypoints[test.owner == row].numpy()
    result = evaluate_vae(vae, indices, config.samples, config.resolution, data_keypoints, config.seed,
                          config.real_keypoints, config.physics)
    result["vae"] = {"name": vae.card.get("name"), "sha256": vae.card.get("sha256")}
    result["base"] = {"name": vae.base.card.get("name"), "sha256": vae.base.card.get("sha256")}
    result["object_indices"] = indices
    result["refinement"] = asdict(RefineConfig())
    result["eval_command"] = (f"halo eval vae{' --data DATA' if config.data else ''} --objects {config.objects}"
                              f" --samples {config.samples} --resolution {config.resolution} --seed {config.seed}"
                              f"{' --real-keypoints KEYPOINTS' if config.real_keypoints is not None else ''}"
                              f"{'' if config.physics else ' --no-physics'}")
    if config.write_card:
        update_card(config.checkpoint or SHIPPED_VAE, evaluation=result)
    if config.preview:
        write_preview(vae, indices[:PREVIEW_OBJECTS], config.preview, config.resolution, config.seed)
    return result


def write_preview(vae: HaloVAE, object_indices: list[int], path: Path, resolution: int, seed: int) -> None:
    """PNG of ``PREVIEW_GRASPS`` refined grasps on each of the given test objects."""
    rows = []
    for index in object_indices:
        obj, kind = make_object(index)
        grasps = vae.sample(obj, n=PREVIEW_GRASPS, seed=seed, refine=True, resolution=resolution)
        rows.append((f"test object {index} ({kind})", obj, [grasp.mesh for grasp in grasps]))
    render_grasps(rows, path, columns=PREVIEW_GRASPS)
