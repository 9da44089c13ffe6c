"""HALO-VAE: a conditional VAE over 21 grasp keypoints given an object's basis-point-set code.

    object code  o = f(bps)                         BPS distances (K,) -> (C,)
    encoder      q(z | keypoints, o) = N(mu, sigma)  (21*3 + C) -> 2 x latent
    decoder      keypoints = g(z, o)                 (latent + C) -> 21*3

Keypoints are mano order, metres, in the object-centred frame (bounding-box centre at 0). Inside the
network lengths are in decimetres so that inputs are of order one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..skeleton import NUM_JOINTS
from ..weights import read_weights, save_weights
from .object_input import BPS_POINTS, BPS_RADIUS_M

NETWORK_UNITS_PER_M = 10.0


@dataclass
class VAEConfig:
    bps_points: int = BPS_POINTS
    bps_radius_m: float = BPS_RADIUS_M
    bps_seed: int = 0
    latent: int = 64
    hidden: int = 512
    object_code: int = 256


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GraspVAE(nn.Module):
    """Conditional VAE p(keypoints | object) with a Gaussian latent."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig()
        keypoint_size = NUM_JOINTS * 3
        self.object_encoder = nn.Sequential(_mlp([config.bps_points, config.hidden, config.object_code]), nn.ReLU())
        self.encoder = _mlp([keypoint_size + config.object_code, config.hidden, config.hidden, 2 * config.latent])
        self.decoder = _mlp([config.latent + config.object_code, config.hidden, config.hidden, keypoint_size])
        # Mean bone lengths of the training hands (mano bones 1..20, metres): sampled skeletons are
        # rebuilt with them, so a sample is always a hand of the trained size.
        self.register_buffer("bone_lengths", torch.full((NUM_JOINTS - 1,), 0.03))

    def object_code(self, bps: torch.Tensor) -> torch.Tensor:
        """(B,K) BPS distances, metres -> (B,C) object code."""
        return self.object_encoder(bps * NETWORK_UNITS_PER_M)

    def encode(self, keypoints: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,21,3) metres, (B,C) -> posterior mean and log-variance, each (B,latent)."""
        features = torch.cat([keypoints.flatten(1) * NETWORK_UNITS_PER_M, code], dim=1)
        mean, log_variance = self.encoder(features).chunk(2, dim=1)
        return mean, log_variance.clamp(-10, 10)

    def decode(self, latent: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(B,latent), (B,C) -> (B,21,3) keypoints, metres, object-centred frame."""
        flat = self.decoder(torch.cat([latent, code], dim=1)) / NETWORK_UNITS_PER_M
        return flat.reshape(-1, NUM_JOINTS, 3)

    def forward(self, keypoints: torch.Tensor, bps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,21,3) metres, (B,K) -> reconstruction (B,21,3), posterior mean and log-variance (B,latent)."""
        code = self.object_code(bps)
        mean, log_variance = self.encode(keypoints, code)
        latent = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)
        return self.decode(latent, code), mean, log_variance


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """(B,L), (B,L) -> (B,) KL(N(mean, exp(log_variance)) || N(0, I)), nats."""
    return 0.5 * (mean**2 + log_variance.exp() - 1 - log_variance).sum(1)


def save_vae(model: GraspVAE, path: str | Path, card: dict) -> dict:
    """Write weights (safetensors) and a JSON card beside them (config and sha256 filled in); returns the card."""
    return save_weights(model, path, card, "halo-vae")


def load_vae_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[GraspVAE, dict]:
    """.safetensors + card -> (GraspVAE in eval mode on ``device``, card)."""
    state, card = read_weights(path)
    model = GraspVAE(VAEConfig(**card.get("config", {})))
    model.load_state_dict(state)
    return model.to(device).eval(), card
