"""``halo train base``: train the HALO occupancy decoder on synthetic posed hands (CPU friendly).

Every step draws fresh poses of the rigged hand, labels query points by winding number and feeds
the decoder exactly what inference feeds it: ``canonicalize(keypoints)`` -> part matrices and bone
lengths, query points in the model frame. The loss is BCE on the max-over-parts logit. The learning
rate follows a cosine over the run's time budget (or step budget), so a 1-3 hour CPU run ends fully
annealed. Training state is saved every few minutes and a rerun with the same run folder resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halo train base``."""
    defaults = TrainConfig()
    parser.add_argument("--time-budget", type=float, default=defaults.time_budget_s / 60, help="minutes of training")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time budget only)")
    parser.add_argument("--hands-per-step", type=int, default=defaults.hands_per_step)
    parser.add_argument(
        "--points-per-hand",
        type=int,
        default=defaults.labels.uniform_points + defaults.labels.surface_points,
        help="query points per hand; 1/6 uniform in the box, the rest near the surface",
    )
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=float, default=defaults.checkpoint_every_s / 60, help="minutes")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/base"), help="resumable state, curve.png")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help="exported .safetensors (+ .json card)")
    parser.add_argument(
        "--hand-asset", type=Path, default=None, help="rigged hand glTF (default: fetch WebXR generic hand)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the hand asset is downloaded")
    parser.add_argument(
        "--init", type=Path, default=None, help="start from these base weights (fine-tuning) instead of random ones"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed ``halo train base`` options."""
    defaults = TrainConfig()
    uniform = max(1, args.points_per_hand // 6)
    return replace(
        defaults,
        hands_per_step=args.hands_per_step,
        labels=replace(defaults.labels, uniform_points=uniform, surface_points=args.points_per_hand - uniform),
        learning_rate=args.lr,
        time_budget_s=args.time_budget * 60,
        max_steps=args.max_steps,
        seed=args.seed,
        checkpoint_every_s=args.checkpoint_every * 60,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``halo train base``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    hand = RiggedHand.from_gltf(args.hand_asset or fetch_hand_asset(args.cache_dir))
    command = shlex.join(["halo", "train", "base", *_options(args)])
    state = train(config, hand, args.run_dir, args.out, command, progress=not args.no_progress, init=args.init)
    summary = {"steps": state.step, "wall_time_s": round(state.elapsed_s, 1), "val_point_iou": state.val_iou[-1]}
    print(json.dumps({"output": str(args.out), **summary}))
    return 0


def _options(args: argparse.Namespace) -> list[str]:
    """The options that change the trained weights, as command-line words."""
    return [
        f"--time-budget={args.time_budget:g}",
        f"--max-steps={args.max_steps}",
        f"--hands-per-step={args.hands_per_step}",
        f"--points-per-hand={args.points_per_hand}",
        f"--lr={args.lr:g}",
        f"--seed={args.seed}",
        *(["--init=INIT"] if args.init else []),
    ]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``base`` under a ``train`` sub-command group; the handler is ``args.func``."""
    parser = subparsers.add_parser("base", help="train the base occupancy model on synthetic hands")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser
