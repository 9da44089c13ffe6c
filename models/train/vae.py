"""Train the HALO-VAE on synthesised grasps (``halo train vae``): resumable, with a progress bar and curves.

The model decodes a pose (angles, rotation, wrist position); keypoints are its forward kinematics.
Loss per batch (keypoints in metres, reported in cm):

    recon     mean squared keypoint error of the forward-kinematics keypoints, cm^2
    kl        KL(q(z | keypoints, object) || N(0, I)), nats, weight ramped up over the first 20 % of steps
    angles    mean squared joint-angle error, in units of 10 degrees squared
    halo      (only with a base model) on a sub-batch of decoded hands, through the frozen occupancy:
              penetration (mean occupancy of object interior points) + contact (hinge on the best
              surface logit) + fingertip distance to the surface, as in ``grasps.hand_object``
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from ..api import HaloBase, load_base
from ..data.asset import fetch_hand_asset
from ..data.objects import make_object
from ..data.rigged_hand import RiggedHand
from ..grasps.hand_object import hand_object_terms
from ..grasps.model import GraspVAE, VAEConfig, kl_divergence, load_vae_weights, save_vae
from ..grasps.object_input import bps_basis, object_points, stack_points
from ..occupancy import OccupancyDecoder


@dataclass
class TrainConfig:
    steps: int = 6000
    batch: int = 256
    learning_rate: float = 1e-3
    kl_weight: float = 0.02
    angle_weight: float = 0.1
    halo_batch: int = 32
    halo_points: int = 128
    w_penetration: float = 20.0
    w_contact: float = 0.05
    w_fingertips: float = 0.3  # per cm
    time_budget_min: float = 0.0  # stop after this many minutes (0: no limit)
    rotations: int = 4  # randomly rotated copies of every training object and its grasps
    seed: int = 0


@dataclass
class GraspData:
    """All shards of a synthesised data set: objects and the grasps that point to them."""

    keypoints: torch.Tensor  # (G,21,3) metres, object-centred
    angles: torch.Tensor  # (G,D) pose-space joint angles, degrees
    rotation: torch.Tensor  # (G,3,3) hand orientation
    translation: torch.Tensor  # (G,3) wrist position, metres, object-centred
    owner: torch.Tensor  # (G,) row of the grasp's object
    bps: torch.Tensor  # (O,K) metres
    surface: torch.Tensor  # (O,S,3)
    interior: torch.Tensor  # (O,I,3)
    object_index: np.ndarray  # (O,) procedural object number
    split: np.ndarray  # (O,) train / val / test
    attempts: int
    seconds: float

    def subset(self, split: str) -> GraspData:
        """Only the objects of ``split`` and their grasps (rows renumbered)."""
        keep = np.flatnonzero(self.split == split)
        rows = np.full(len(self.split), -1)
        rows[keep] = np.arange(len(keep))
        mask = torch.as_tensor(np.isin(self.owner.numpy(), keep))
        return GraspData(
            self.keypoints[mask], self.angles[mask], self.rotation[mask], self.translation[mask],
            torch.as_tensor(rows)[self.owner[mask]], self.bps[keep], self.surface[keep],
            self.interior[keep], self.object_index[keep], self.split[keep], self.attempts, self.seconds,
        )


def load_grasp_data(folder: Path) -> GraspData:
    """Folder of ``shard_*.npz`` (from ``models.data.grasp_synthesis``) -> GraspData."""
    shards = sorted(folder.glob("shard_*[0-9].npz"))
    if not shards:
        raise FileNotFoundError(f"data: no shard_*.npz files in {folder}; run models.data.grasp_synthesis first")
    grasp_keys = ("keypoints", "angles", "rotation", "translation")
    parts: dict[str, list] = {key: [] for key in (*grasp_keys, "owner", "bps", "surface", "interior", "index", "split")}
    attempts, seconds, objects = 0, 0.0, 0
    for shard in shards:
        with np.load(shard) as data:
            if "angles" not in data:
                raise ValueError(f"data: {shard.name} holds no poses (made before the pose space); re-run the synthesis")
            for key in grasp_keys:
                parts[key].append(data[key])
            parts["owner"].append(data["grasp_object"] + objects)
            for key in ("bps", "surface", "interior"):
                parts[key].append(data[key])
            parts["index"].append(data["object_index"])
            parts["split"].append(data["object_split"])
            attempts += int(data["attempts"])
            seconds += float(data["seconds"])
            objects += len(data["object_index"])
    cat = lambda key: np.concatenate(parts[key])  # noqa: E731
    as_tensor = lambda key: torch.as_tensor(cat(key), dtype=torch.float32)  # noqa: E731
    return GraspData(
        *(as_tensor(key) for key in grasp_keys), torch.as_tensor(cat("owner")), as_tensor("bps"), as_tensor("surface"),
        as_tensor("interior"), cat("index"), cat("split"), attempts, seconds,
    )


def augment_rotations(data: GraspData, copies: int, basis: np.ndarray, seed: int = 0) -> GraspData:
    """Add ``copies`` randomly rotated versions of every object together with its grasps (BPS recomputed)."""
    rng = np.random.default_rng(seed)
    keypoints, rotation, translation = [data.keypoints], [data.rotation], [data.translation]
    owner, bps, surface, interior, index, split = [data.owner], [data.bps], [data.surface], [data.interior], \
        [data.object_index], [data.split]
    count = len(data.object_index)
    for copy in range(copies):
        rotations = Rotation.random(count, random_state=rng).as_matrix()
        points = []
        for row, object_number in enumerate(data.object_index):
            mesh, _ = make_object(int(object_number))
            mesh.apply_transform(np.block([[rotations[row], np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))
            points.append(object_points(mesh, basis, seed=int(object_number) + 7919 * (copy + 1)))
        stacked = stack_points(points)
        grasp_rotation = torch.as_tensor(rotations, dtype=torch.float32)[data.owner]
        shift = stacked["centre"][data.owner]
        keypoints.append(data.keypoints @ grasp_rotation.transpose(1, 2) - shift[:, None])
        rotation.append(grasp_rotation @ data.rotation)
        translation.append((grasp_rotation @ data.translation[..., None])[..., 0] - shift)
        owner.append(data.owner + count * (copy + 1))
        bps.append(stacked["bps"])
        surface.append(stacked["surface"])
        interior.append(stacked["interior"])
        index.append(data.object_index)
        split.append(data.split)
    return GraspData(torch.cat(keypoints), data.angles.repeat(copies + 1, 1), torch.cat(rotation),
                     torch.cat(translation), torch.cat(owner), torch.cat(bps), torch.cat(surface), torch.cat(interior),
                     np.concatenate(index), np.concatenate(split), data.attempts, data.seconds)


def batch_losses(model: GraspVAE, data: GraspData, rows: torch.Tensor, config: TrainConfig, kl_scale: float,
                 decoder: OccupancyDecoder | None) -> dict[str, torch.Tensor]:
    """One batch of grasp rows -> dict of scalar losses (``total`` is optimised)."""
    target = data.keypoints[rows]
    owner = data.owner[rows]
    pose, mean, log_variance = model(target, data.bps[owner])
    recon = model.keypoints(pose)
    losses = {
        "recon": ((recon - target) * 100).pow(2).sum(-1).mean(),
        "kl": kl_divergence(mean, log_variance).mean(),
        "angles": ((pose.angles - data.angles[rows]) / 10).pow(2).mean(),
    }
    total = losses["recon"] + config.kl_weight * kl_scale * losses["kl"] + config.angle_weight * losses["angles"]
    if decoder is not None:
        sub, points = slice(0, config.halo_batch), slice(0, config.halo_points)
        terms = hand_object_terms(decoder, recon[sub], data.interior[owner[sub], points], data.surface[owner[sub], points])
        losses.update(penetration=terms.penetration.mean(), contact=terms.contact.mean(),
                      fingertips=terms.fingertips.mean() * 100)
        total = total + (config.w_penetration * losses["penetration"] + config.w_contact * losses["contact"]
                         + config.w_fingertips * losses["fingertips"])
    losses["total"] = total
    return losses


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss history (one dict per logged step) -> PNG with one panel per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in history[0] if key not in ("step", "split")]
    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for axis, key in zip(np.atleast_1d(axes), keys, strict=True):
        for split in ("train", "val"):
            rows = [h for h in history if h["split"] == split and key in h]
            if rows:
                axis.plot([h["step"] for h in rows], [h[key] for h in rows], label=split)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def train_vae(data_dir: Path, run_dir: Path, out: Path, config: TrainConfig, base_path: Path | None,
              vae_config: VAEConfig | None = None, checkpoint_every: int = 250, command: str = "",
              init: Path | None = None, hand_asset: Path | None = None) -> dict:
    """Train (resuming from ``run_dir/state.pt``, else starting from ``init`` weights if given), write curves
    and the final safetensors + card to ``out``."""
    torch.manual_seed(config.seed)
    data = load_grasp_data(data_dir)
    model, init_card = _initial_model(data_dir, vae_config, init, hand_asset)
    vae_config = model.config
    basis = bps_basis(vae_config.bps_points, vae_config.bps_radius_m, vae_config.bps_seed)
    train, val = data.subset("train"), data.subset("val")
    train = augment_rotations(train, config.rotations, basis, config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    base = load_base(base_path) if base_path is not None else None
    decoder = base.decoder.requires_grad_(False) if base is not None else None
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    step, history, elapsed = 0, [], 0.0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
    generator = torch.Generator().manual_seed(config.seed + step)
    started = time.perf_counter() - elapsed
    bar = tqdm(total=config.steps, initial=step, desc="vae", dynamic_ncols=True)
    while step < config.steps:
        if config.time_budget_min and time.perf_counter() - started > 60 * config.time_budget_min:
            break
        progress = step / config.steps
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
        model.train()
        rows = torch.randint(len(train.keypoints), (config.batch,), generator=generator)
        losses = batch_losses(model, train, rows, config, min(1.0, progress / 0.2), decoder)
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == config.steps:
            history.append({"step": step, "split": "train", **{k: float(v.detach()) for k, v in losses.items()}})
            bar.set_postfix(recon=f"{losses['recon'].item():.2f}", kl=f"{losses['kl'].item():.1f}")
        if (step % checkpoint_every == 0 or step == config.steps) and len(val.keypoints):
            model.eval()
            with torch.no_grad():
                rows = torch.arange(min(len(val.keypoints), 1024))
                val_losses = batch_losses(model, val, rows, config, 1.0, None)
            history.append({"step": step, "split": "val", **{k: float(v) for k, v in val_losses.items()}})
            torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                        "history": history, "elapsed": time.perf_counter() - started}, state_path)
    bar.close()
    plot_curves(history, run_dir / "vae_curves.png")
    wall_time_s = round(time.perf_counter() - started, 1)
    card = _model_card(command, data, train, val, config, step, wall_time_s, history, init_card, base)
    return save_vae(model.eval(), out, card)

def _initial_model(data_dir: Path, vae_config: VAEConfig | None, init: Path | None,
                   hand_asset: Path | None) -> tuple[GraspVAE, dict | None]:
    """-> (the model to train: ``init``'s weights or a fresh one on the rigged hand's skeleton, ``init``'s card);
    refuses a data set synthesised with other BPS settings than the model's."""
    init_card = None
    if init is not None:
        model, init_card = load_vae_weights(init)
        model.train()
    else:
        model = GraspVAE(vae_config, RiggedHand.from_gltf(hand_asset or fetch_hand_asset()).skeleton)
    synthesis = json.loads((data_dir / "config.json").read_text())
    if (synthesis["bps_points"], synthesis["bps_radius_m"]) != (model.config.bps_points, model.config.bps_radius_m):
        raise ValueError("data: the data set's BPS settings differ from the model's; re-run the synthesis")
    return model, init_card


def _model_card(command: str, data: GraspData, train: GraspData, val: GraspData, config: TrainConfig, step: int,
                wall_time_s: float, history: list[dict], init_card: dict | None, base: HaloBase | None) -> dict:
    """The trained VAE's model card: data, training settings and provenance, final losses."""
    return {
        "name": "halo-vae",
        "source": "trained by this project on grasps it synthesised (models.data.grasp_synthesis)",
        "command": command,
        "data": {"grasps": len(data.keypoints), "train_grasps_with_rotations": len(train.keypoints),
                 "train_objects": len(np.unique(train.object_index)), "rotated_copies": config.rotations,
                 "val_objects": len(val.object_index),
                 "synthesis_attempts": data.attempts, "synthesis_seconds": round(data.seconds, 1)},
        "training": {**asdict(config), "steps_done": step, "wall_time_s": wall_time_s,
                     "halo_terms": base is not None,
                     "initialised_from": None if init_card is None else {
                         "name": init_card.get("name"), "sha256": init_card.get("sha256"),
                         "steps": init_card.get("training", {}).get("steps_done"),
                         "halo_terms": init_card.get("training", {}).get("halo_terms")},
                     "base_checkpoint": None if base is None else {"name": base.card.get("name"),
                                                                   "sha256": base.card.get("sha256")}},
        "final_losses": {h["split"]: {k: round(v, 4) for k, v in h.items() if k not in ("step", "split")}
                         for h in history[-3:]},
    }
