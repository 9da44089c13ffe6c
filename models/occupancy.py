"""HALO's piecewise occupancy decoder, fused across its 16 part MLPs, and checkpoint I/O.

For a query x in the model frame M, part b sees y_b = T_b x (its canonical frame) plus its bone
length, a shared bone-length code and a projection of the global pose code, and runs a small
residual MLP; the hand's occupancy is the hard max over parts (``halo_reference/README.md``).

Speed: the first layer is linear in x, so everything except ``A0[:, :3] @ R_b`` times x is a per-hand
constant. ``HandCode`` folds those terms once per hand; per point only a (3 -> 64) product per part
remains, and the 16 part MLPs then run as one batched matmul over parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import file_sha256, read_weights, save_weights


@dataclass
class DecoderConfig:
    num_parts: int = 16
    hidden: int = 64  # width of each part MLP
    num_residual: int = 3  # hidden 64 -> 64 layers with a skip connection
    pose_code: int = 8  # per-part projection of the 48-d global pose code
    bone_code: int = 16  # shared bone-length code
    bone_hidden: int = 40
    leaky_slope: float = 0.1

    @property
    def input_size(self) -> int:
        return 3 + 1 + self.bone_code + self.pose_code


@dataclass
class HandCode:
    """Per-hand folded first layer: pre-activation h = x @ weight[b, p] + bias[b, p]."""

    weight: torch.Tensor  # (B,P,3,H)
    bias: torch.Tensor  # (B,P,H)


class OccupancyDecoder(nn.Module):
    """The 16 part MLPs of HALO with their weights stacked along a leading part axis."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DecoderConfig()
        parts, hidden = config.num_parts, config.hidden
        self.pose_weight = nn.Parameter(torch.empty(parts, config.pose_code, 3 * parts))
        self.pose_bias = nn.Parameter(torch.empty(parts, config.pose_code))
        self.bone_encoder = nn.Sequential(
            nn.Linear(parts, config.bone_hidden), nn.ReLU(), nn.Linear(config.bone_hidden, config.bone_code)
        )
        self.input_weight = nn.Parameter(torch.empty(parts, hidden, config.input_size))
        self.input_bias = nn.Parameter(torch.empty(parts, hidden))
        self.hidden_weight = nn.Parameter(torch.empty(config.num_residual, parts, hidden, hidden))
        self.hidden_bias = nn.Parameter(torch.empty(config.num_residual, parts, hidden))
        self.output_weight = nn.Parameter(torch.empty(parts, 1, hidden))
        self.output_bias = nn.Parameter(torch.empty(parts, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Per-part nn.Linear default initialisation (uniform in +-1/sqrt(fan_in))."""
        for weight, bias in [
            (self.pose_weight, self.pose_bias),
            (self.input_weight, self.input_bias),
            (self.hidden_weight, self.hidden_bias),
            (self.output_weight, self.output_bias),
        ]:
            bound = weight.shape[-1] ** -0.5
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def hand_code(self, part_matrices: torch.Tensor, bone_lengths: torch.Tensor) -> HandCode:
        """(B,P,4,4) M -> C_b matrices, (B,P) bone lengths in metres -> HandCode with (B,P,3,H) and (B,P,H)."""
        batch, parts = bone_lengths.shape
        rotation, translation = part_matrices[:, :, :3, :3], part_matrices[:, :, :3, 3]
        global_code = translation.reshape(batch, 1, 3 * parts)
        pose = (self.pose_weight @ global_code.unsqueeze(-1)).squeeze(-1) + self.pose_bias  # (B,P,pose)
        bones = self.bone_encoder(bone_lengths)  # (B,bone)
        point_weight, length_weight, bone_weight, pose_weight = self.input_weight.split(
            [3, 1, self.config.bone_code, self.config.pose_code], dim=-1
        )
        bias = (
            (point_weight @ translation.unsqueeze(-1)).squeeze(-1)
            + length_weight.squeeze(-1) * bone_lengths.unsqueeze(-1)
            + torch.einsum("bk,phk->bph", bones, bone_weight)
            + (pose_weight @ pose.unsqueeze(-1)).squeeze(-1)
            + self.input_bias
        )
        weight = (point_weight @ rotation).transpose(-1, -2)  # (B,P,3,H)
        return HandCode(weight, bias)

    def part_logits(self, points: torch.Tensor, code: HandCode) -> torch.Tensor:
        """(B,N,3) points in the model frame, HandCode -> (P,B,N) logit of each part."""
        slope = self.config.leaky_slope
        parts, (batch, count, _) = self.config.num_parts, points.shape
        weight = code.weight.transpose(0, 1).reshape(parts * batch, 3, -1)  # (P*B,3,H)
        bias = code.bias.transpose(0, 1).reshape(parts * batch, 1, -1)
        hidden = torch.baddbmm(bias, points.repeat(parts, 1, 1), weight)
        hidden = F.leaky_relu_(hidden, slope).reshape(parts, batch * count, -1)
        # The skip connection is folded into the weights, A h + h = (A + I) h, and bias and activation
        # run in place: no copies of the (P, B*N, H) activations.
        identity = torch.eye(self.config.hidden, dtype=hidden.dtype, device=hidden.device)
        for layer_weight, layer_bias in zip(self.hidden_weight, self.hidden_bias, strict=True):
            hidden = torch.bmm(hidden, layer_weight.transpose(1, 2) + identity)
            hidden = F.leaky_relu_(hidden.add_(layer_bias.unsqueeze(1)), slope)
        out = torch.baddbmm(self.output_bias.unsqueeze(1), hidden, self.output_weight.transpose(1, 2))
        return out.reshape(parts, batch, count)

    def chosen_part_logits(self, points: torch.Tensor, code: HandCode, parts: torch.Tensor) -> torch.Tensor:
        """(B,N,3) model-frame points, HandCode, (B,N) part per point -> (B,N) that part's logit, differentiable.

        Runs each part's MLP only on the points assigned to it (disjoint groups, hence the loop over
        parts): 1/16 of the fused forward. First-layer weights are per hand; a one-hot hand code turns
        them into one dense matmul per part.
        """
        batch, count = parts.shape
        slope = self.config.leaky_slope
        order = torch.argsort(parts.reshape(-1))
        sizes = torch.bincount(parts.reshape(-1), minlength=self.config.num_parts).tolist()
        hand_of_row = torch.arange(batch, device=points.device).repeat_interleave(count)[order]
        hands = F.one_hot(hand_of_row, batch).to(points.dtype)
        xyz = points.reshape(-1, 3)[order]
        # Row n: [one-hot(hand) (x) xyz, one-hot(hand)] so that row @ [W (3B,H); bias (B,H)] = xyz @ W_hand + bias_hand.
        features = torch.cat([(hands[:, :, None] * xyz[:, None, :]).reshape(-1, 3 * batch), hands], dim=1)
        outputs = []
        for part, rows in enumerate(features.split(sizes)):
            if len(rows) == 0:
                continue
            first = torch.cat([code.weight[:, part].reshape(3 * batch, -1), code.bias[:, part]])
            hidden = F.leaky_relu(rows @ first, slope)
            for weight, bias in zip(self.hidden_weight[:, part], self.hidden_bias[:, part], strict=True):
                hidden = F.leaky_relu(torch.addmm(hidden + bias, hidden, weight.T), slope)
            outputs.append(torch.addmm(self.output_bias[part], hidden, self.output_weight[part].T))
        logits = points.new_empty(batch * count).index_put((order,), torch.cat(outputs)[:, 0])
        return logits.reshape(batch, count)

    def max_part_logits(self, points: torch.Tensor, code: HandCode) -> torch.Tensor:
        """(B,N,3) model-frame points, HandCode -> (B,N) max-over-parts logits, differentiable.

        Equal to ``part_logits(points, code).amax(0)`` with identical gradients, but cheaper to
        differentiate: the hard max sends gradient only to each point's winning part, so all parts run
        once without autograd to find the winners and autograd runs only the winners.
        """
        if not torch.is_grad_enabled():
            return self.part_logits(points, code).amax(0)
        with torch.no_grad():
            winner = self.part_logits(points, code).argmax(0)
        return self.chosen_part_logits(points, code, winner)

    def forward(self, points: torch.Tensor, part_matrices: torch.Tensor, bone_lengths: torch.Tensor) -> torch.Tensor:
        """(B,N,3) model-frame points, (B,P,4,4), (B,P) metres -> (B,N) occupancy logits (max over parts)."""
        return self.part_logits(points, self.hand_code(part_matrices, bone_lengths)).amax(0)

    @torch.inference_mode()
    def occupancy(self, points: torch.Tensor, code: HandCode, chunk_points: int = 1024) -> torch.Tensor:
        """(B,N,3) model-frame points, HandCode -> (B,N) probabilities, evaluated in chunks of ~chunk_points."""
        step = max(1, chunk_points // points.shape[0])
        logits = [self.part_logits(chunk, code).amax(0) for chunk in points.split(step, dim=1)]
        return torch.sigmoid(torch.cat(logits, dim=1))

    @torch.inference_mode()
    def nearest_parts_occupancy(
        self,
        points: torch.Tensor,
        hand: torch.Tensor,
        part_distance: torch.Tensor,
        code: HandCode,
        parts_per_point: int = 6,
        rows_per_chunk: int = 16_384,
        helper: Executor | None = None,
    ) -> torch.Tensor:
        """(T,3) model-frame points of hands ``hand`` (T,), (T,P) distance to each part -> (T,) probabilities.

        The max runs over each point's ``parts_per_point`` nearest parts only: a part's MLP is only ever
        the largest near its own bone. The (point, part) pairs are grouped by (part, hand), each group
        padded to whole blocks of rows that share one MLP, so the ragged work is a batched matmul over blocks.
        ``helper``: a thread pool that computes the second half of the blocks meanwhile (an idle core)."""
        if len(hand) > 1 and bool((hand[1:] < hand[:-1]).any()):
            order = torch.argsort(hand, stable=True)
            result = torch.empty(len(points), device=points.device)
            result[order] = self.nearest_parts_occupancy(
                points[order], hand[order], part_distance[order], code, parts_per_point, rows_per_chunk, helper
            )
            return result
        parts, hands = self.config.num_parts, code.bias.shape[0]
        nearest = part_distance.topk(min(parts_per_point, parts), dim=1, largest=False).indices  # (T,K)
        member = torch.zeros(len(points), parts, dtype=torch.bool, device=points.device)
        member.scatter_(1, nearest, True)
        # Part-major nonzero lists pairs by part, then point; points come sorted by hand, so every
        # (part, hand) group is contiguous without a sort.
        pair_part, pair_point = member.T.nonzero(as_tuple=True)
        group = pair_part * hands + hand[pair_point]
        sizes = torch.bincount(group, minlength=parts * hands)
        block = _block_size(len(group), int((sizes > 0).sum()))
        padded_sizes = (sizes + block - 1) // block * block
        rank = torch.arange(len(group), device=points.device) - (sizes.cumsum(0) - sizes)[group]
        slot = (padded_sizes.cumsum(0) - padded_sizes)[group] + rank
        inputs = points.new_zeros(int(padded_sizes.sum()), 3)
        inputs[slot] = points[pair_point]
        block_group = torch.repeat_interleave(torch.arange(len(sizes), device=points.device), padded_sizes // block)
        identity = torch.eye(self.config.hidden, dtype=points.dtype, device=points.device)
        weights = (
            code.weight.transpose(0, 1).flatten(0, 1),  # (P*B,3,H), row part * B + hand
            code.bias.transpose(0, 1).flatten(0, 1).unsqueeze(1),  # (P*B,1,H)
            self.hidden_weight.transpose(-1, -2) + identity,  # (L,P,H,H), skip connection folded in
            self.hidden_bias.unsqueeze(2),  # (L,P,1,H)
            self.output_weight.transpose(1, 2),  # (P,H,1)
            self.output_bias.unsqueeze(1),  # (P,1,1)
        )
        blocks = inputs.view(-1, block, 3)
        chunk_blocks = max(1, rows_per_chunk // block)
        if helper is not None:  # at least two chunks, one for each thread
            chunk_blocks = min(chunk_blocks, max(1, (len(blocks) + 1) // 2))
        chunks = list(zip(blocks.split(chunk_blocks), block_group.split(chunk_blocks), strict=True))
        logits = torch.cat(
            split_map(lambda chunk: self._block_logits(chunk[0], chunk[1] // hands, chunk[1], weights), chunks, helper)
        )
        best = torch.full((len(points),), -torch.inf, device=points.device)
        best.scatter_reduce_(0, pair_point, logits[slot], reduce="amax")
        return torch.sigmoid(best)

    def _block_logits(
        self, inputs: torch.Tensor, part: torch.Tensor, groups: torch.Tensor, weights: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """(n,S,3) points, (n,) part and (part, hand) group of each block, stacked weights -> (n*S,) part logits."""
        first_weight, first_bias, hidden_weight, hidden_bias, output_weight, output_bias = weights
        slope = self.config.leaky_slope
        hidden = F.leaky_relu_(torch.baddbmm(first_bias[groups], inputs, first_weight[groups]), slope)
        for layer_weight, layer_bias in zip(hidden_weight, hidden_bias, strict=True):
            hidden = F.leaky_relu_(torch.bmm(hidden, layer_weight[part]).add_(layer_bias[part]), slope)
        return torch.baddbmm(output_bias[part], hidden, output_weight[part]).reshape(-1)


MAX_BLOCK = 8192


def split_map(fn: Callable, items: Sequence, helper: Executor | None) -> list:
    """``[fn(item) for item in items]``; with a ``helper`` pool its second half runs there meanwhile (inference mode)."""
    if helper is None or len(items) < 2:
        return [fn(item) for item in items]
    half = (len(items) + 1) // 2

    def second_half() -> list:
        with torch.inference_mode():  # grad mode is per thread
            return [fn(item) for item in items[half:]]

    later = helper.submit(second_half)
    return [fn(item) for item in items[:half]] + later.result()


def _block_size(pairs: int, groups: int) -> int:
    """Rows per block for ``pairs`` (point, part) pairs in ``groups`` groups: about half a mean group, 64..512.

    Small refinement rounds would otherwise spend most of a 512-row block on padding."""
    mean_group = pairs / max(1, groups)
    return int(min(MAX_BLOCK, max(64, 2 ** math.floor(math.log2(max(1.0, mean_group / 2))))))


# ---------------------------------------------------------------------------------------------
# Checkpoints: our safetensors format (+ a JSON model card beside it) and the published HALO pickle.


def save_decoder(decoder: OccupancyDecoder, path: str | Path, card: dict) -> dict:
    """Write weights (safetensors) and the card (JSON, with config and sha256 filled in); returns the card."""
    return save_weights(decoder, path, card, "halo-decoder")


def published_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Published HALO ``model_best.pt`` -> our fused state dict, without executing arbitrary pickle code."""
    # weights_only loading refuses every global except tensors and the ones allow-listed here: the
    # checkpoint stores its best validation loss as a numpy float32 scalar.
    # It was pickled under numpy 1's module name, hence the explicit name.
    allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.float32))]
    with torch.serialization.safe_globals(allowed):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    source = checkpoint["model"]
    parts = DecoderConfig().num_parts

    def stack(pattern: str) -> torch.Tensor:
        return torch.stack([source[pattern.format(part=part)] for part in range(parts)])

    return {
        "pose_weight": stack("decoder.global_proj{part}.weight"),
        "pose_bias": stack("decoder.global_proj{part}.bias"),
        "bone_encoder.0.weight": source["decoder.bone_encoder.linear1.weight"],
        "bone_encoder.0.bias": source["decoder.bone_encoder.linear1.bias"],
        "bone_encoder.2.weight": source["decoder.bone_encoder.linear2.weight"],
        "bone_encoder.2.bias": source["decoder.bone_encoder.linear2.bias"],
        "input_weight": stack("decoder.lin{part}_0.weight"),
        "input_bias": stack("decoder.lin{part}_0.bias"),
        "hidden_weight": torch.stack([stack(f"decoder.lin{{part}}_{layer}.weight") for layer in (1, 2, 3)]),
        "hidden_bias": torch.stack([stack(f"decoder.lin{{part}}_{layer}.bias") for layer in (1, 2, 3)]),
        "output_weight": stack("decoder.lin{part}_4.weight"),
        "output_bias": stack("decoder.lin{part}_4.bias"),
    }


def load_decoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[OccupancyDecoder, dict]:
    """Our .safetensors or the published HALO .pt -> (decoder in eval mode on ``device``, model card)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, card = read_weights(path)
        config = DecoderConfig(**card.get("config", {}))
    else:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: no such file {path}")
        state = published_state_dict(path)
        config = DecoderConfig()
        card = {
            "name": "halo-published",
            "source": "published HALO base checkpoint (3DV 2021), converted on load",
            "sha256": file_sha256(path),
            "path": path.name,
        }
    decoder = OccupancyDecoder(config)
    decoder.load_state_dict(state)
    return decoder.to(device).eval(), card
