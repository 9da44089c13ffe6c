"""``halo train base``: train the HALO occupancy decoder on synthetic posed hands (CPU friendly).

Every step draws fresh poses of the rigged hand, labels query points by winding number and feeds
the decoder exactly what inference feeds it: ``canonicalize(keypoints)`` -> part matrices and bone
lengths, query points in the model frame. The loss is BCE on the max-over-parts logit. The learning
rate follows a cosine over the run's time budget (or step budget), so a 1-3 hour CPU run ends fully
annealed. Training state is saved every few minutes and a rerun with the same run folder resumes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..canonical import canonicalize
from ..data.asset import asset_description, fetch_hand_asset
from ..data.labels import LabelConfig, LabelledBatch, sample_labelled
from ..data.poses import PoseSamplerConfig, split_rng
from ..data.rigged_hand import RiggedHand
from ..occupancy import DecoderConfig, OccupancyDecoder, load_decoder, save_decoder

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "checkpoints" / "halo_base.safetensors"


@dataclass
class TrainConfig:
    """Settings of one base-model training run (recorded in the model card)."""

    hands_per_step: int = 8
    labels: LabelConfig = field(default_factory=lambda: LabelConfig(256, 1280, (0.01, 0.003)))
    poses: PoseSamplerConfig = field(default_factory=PoseSamplerConfig)
    learning_rate: float = 1e-3
    part_loss_weight: float = 1.0
    final_learning_rate: float = 2e-5
    time_budget_s: float = 3600.0  # the cosine runs over this much training time ...
    max_steps: int = 0  # ... or over this many steps when > 0 (whichever ends first)
    seed: int = 0
    val_hands: int = 32
    val_every: int = 250
    checkpoint_every_s: float = 180.0


def occupancy_logits(decoder: OccupancyDecoder, keypoints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,21,3) mano keypoints, metres, (B,N,3) model-frame points -> (B,N) logits (the inference path)."""
    canonical = canonicalize(keypoints)
    return decoder(points, canonical.part_matrices, canonical.bone_lengths)


def training_loss(
    decoder: OccupancyDecoder, batch: LabelledBatch, part_loss_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (BCE of the max-over-parts logits, BCE of each point's skin part alone), inputs from ``canonicalize``.

    The part term (as in NASA's skinning-weight supervision) tells each part MLP which region is
    its own, so parts specialise from the start instead of waiting to win points through the max.
    """
    canonical = canonicalize(batch.keypoints)
    code = decoder.hand_code(canonical.part_matrices, canonical.bone_lengths)
    occupancy_loss = F.binary_cross_entropy_with_logits(
        decoder.max_part_logits(batch.points, code), batch.occupancy
    )
    if part_loss_weight == 0:
        return occupancy_loss, torch.zeros(())
    owner = decoder.chosen_part_logits(batch.points, code, batch.parts)
    return occupancy_loss, F.binary_cross_entropy_with_logits(owner, batch.occupancy)


def training_step(
    decoder: OccupancyDecoder, optimizer: torch.optim.Optimizer, batch: LabelledBatch, part_loss_weight: float = 1.0
) -> float:
    """One Adam step on occupancy BCE + ``part_loss_weight`` x part BCE; returns the occupancy BCE."""
    occupancy_loss, part_loss = training_loss(decoder, batch, part_loss_weight)
    loss = occupancy_loss + part_loss_weight * part_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return occupancy_loss.item()


@torch.no_grad()
def point_iou(decoder: OccupancyDecoder, batch: LabelledBatch) -> float:
    """Mean over hands of IoU between predicted (> 0.5) and labelled occupancy on the batch's points."""
    predicted = occupancy_logits(decoder, batch.keypoints, batch.points) > 0
    truth = batch.occupancy > 0.5
    intersection = (predicted & truth).sum(1).float()
    union = (predicted | truth).sum(1).float().clamp_min(1)
    return float((intersection / union).mean())


def learning_rate(config: TrainConfig, step: int, elapsed_s: float) -> float:
    """Cosine from ``learning_rate`` to ``final_learning_rate`` over the time (or step) budget."""
    progress = elapsed_s / config.time_budget_s
    if config.max_steps > 0:
        progress = max(progress, step / config.max_steps)
    weight = 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
    return float(config.final_learning_rate + (config.learning_rate - config.final_learning_rate) * weight)


def finished(config: TrainConfig, step: int, elapsed_s: float) -> bool:
    """True once the time budget or the step budget is used up."""
    return elapsed_s >= config.time_budget_s or (config.max_steps > 0 and step >= config.max_steps)


@dataclass
class RunState:
    """Everything a resumed run needs besides the model and optimizer."""

    step: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)  # per step
    val_steps: list[int] = field(default_factory=list)
    val_iou: list[float] = field(default_factory=list)


def save_state(path: Path, decoder: OccupancyDecoder, optimizer: torch.optim.Optimizer, state: RunState) -> None:
    """Write the resumable training state atomically."""
    partial = path.with_suffix(".part")
    torch.save({"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(), "run": asdict(state)}, partial)
    partial.replace(path)


def load_state(path: Path, decoder: OccupancyDecoder, optimizer: torch.optim.Optimizer) -> RunState:
    """Restore a training state written by ``save_state``."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    decoder.load_state_dict(saved["decoder"])
    optimizer.load_state_dict(saved["optimizer"])
    return RunState(**saved["run"])


def plot_curves(state: RunState, path: Path) -> None:
    """Training loss (smoothed) and validation IoU against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, iou_axis) = plt.subplots(1, 2, figsize=(10, 4))
    losses = np.asarray(state.losses)
    window = max(1, len(losses) // 100)
    smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
    loss_axis.semilogy(np.arange(len(smoothed)) + window, smoothed)
    loss_axis.set(xlabel="step", ylabel="BCE loss (running mean)", title="training loss")
    iou_axis.plot(state.val_steps, state.val_iou, marker=".")
    iou_axis.set(xlabel="step", ylabel="IoU on validation query points", title="validation IoU")
    for axis in (loss_axis, iou_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def model_card(config: TrainConfig, state: RunState, command: str, init_card: dict | None = None) -> dict:
    """Model card for a base checkpoint trained by this module (``init_card``: the weights it started from)."""
    card = {
        "name": "halo_base",
        "source": "trained by this project on synthetic posed hands (halo train base)",
        "asset": asset_description(),
        "training": {
            "command": command,
            "steps": state.step,
            "wall_time_s": round(state.elapsed_s, 1),
            "hands_seen": state.step * config.hands_per_step,
            "final_val_point_iou": state.val_iou[-1] if state.val_iou else None,
            "config": asdict(config),
        },
    }
    if init_card is not None:
        card["training"]["initialised_from"] = {
            key: init_card.get(key) for key in ("name", "sha256", "training", "calibration") if key in init_card
        }
    return card


def train(
    config: TrainConfig,
    hand: RiggedHand,
    run_dir: Path,
    output: Path,
    command: str,
    progress: bool = True,
    init: Path | None = None,
) -> RunState:
    """Train (resuming from ``run_dir`` if it holds a state, else from ``init`` weights if given) and export to ``output``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    init_card = None
    if init is None:
        decoder = OccupancyDecoder(DecoderConfig())
    else:
        decoder, init_card = load_decoder(init)
        decoder.train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.learning_rate)
    state_path = run_dir / "state.pt"
    state = load_state(state_path, decoder, optimizer) if state_path.exists() else RunState()
    validation = sample_labelled(hand, config.val_hands, split_rng("val", config.seed), config.poses, config.labels)

    def checkpoint() -> None:
        save_state(state_path, decoder, optimizer, state)
        plot_curves(state, run_dir / "curve.png")
        save_decoder(decoder, output, model_card(config, state, command, init_card))

    bar = tqdm(desc="train base", initial=state.step, total=config.max_steps or None, disable=not progress)
    last_checkpoint = time.monotonic()
    started, started_elapsed = time.monotonic(), state.elapsed_s
    while not finished(config, state.step, state.elapsed_s):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, state.step, state.elapsed_s)
        # The step index seeds the data, so a resumed run sees the same stream.
        batch = sample_labelled(
            hand,
            config.hands_per_step,
            split_rng("train", config.seed * 10_000_019 + state.step),
            config.poses,
            config.labels,
        )
        state.losses.append(training_step(decoder, optimizer, batch, config.part_loss_weight))
        state.step += 1
        state.elapsed_s = started_elapsed + time.monotonic() - started
        if state.step % config.val_every == 0:
            state.val_steps.append(state.step)
            state.val_iou.append(point_iou(decoder, validation))
            bar.set_postfix(loss=f"{np.mean(state.losses[-50:]):.4f}", val_iou=f"{state.val_iou[-1]:.4f}")
        bar.update(1)
        if time.monotonic() - last_checkpoint >= config.checkpoint_every_s:
            checkpoint()
            last_checkpoint = time.monotonic()
    bar.close()
    if not state.val_steps or state.val_steps[-1] != state.step:
        state.val_steps.append(state.step)
        state.val_iou.append(point_iou(decoder, validation))
    checkpoint()
    return state


@dataclass(frozen=True)
class BaseRun:
    """One ``halo train base`` run: the training settings, where its state and weights go, how it is logged."""

    config: TrainConfig = field(default_factory=TrainConfig)
    run_dir: Path = Path("runs/base")
    out: Path = DEFAULT_OUTPUT
    hand_asset: Path | None = None  # rigged hand glTF (None: fetch the WebXR generic hand into cache_dir)
    cache_dir: Path | None = None
    init: Path | None = None  # start from these base weights instead of random ones
    threads: int = 0  # torch threads (0: torch's default)
    progress: bool = True
    command: str = "halo train base"  # recorded in the model card


def run(job: BaseRun) -> dict:
    """Train as ``job`` says; -> summary (output, steps, wall time, validation point IoU)."""
    if job.threads:
        torch.set_num_threads(job.threads)
    hand = RiggedHand.from_gltf(job.hand_asset or fetch_hand_asset(job.cache_dir))
    state = train(job.config, hand, job.run_dir, job.out, job.command, progress=job.progress, init=job.init)
    return {"output": str(job.out), "steps": state.step, "wall_time_s": round(state.elapsed_s, 1),
            "val_point_iou": state.val_iou[-1]}
