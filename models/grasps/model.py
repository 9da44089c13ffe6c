"""HALO-VAE: a conditional VAE over hand poses given an object's basis-point-set code.

    object code  o = f(bps)                          BPS distances (K,) -> (C,)
    encoder      q(z | keypoints, o) = N(mu, sigma)   (21*3 + C) -> 2 x latent
    decoder      pose = g(z, o)                       (latent + C) -> D raw angles + 6D rotation + translation
    keypoints    forward kinematics of the pose on the training hand's skeleton (``models.hand_pose``)

The decoder emits a point of the anatomical pose space, not free keypoints: its raw angles pass
through the bounded map into the joint limits, and the keypoints come from forward kinematics at the
training hand's bone lengths, so every sample is a valid human hand by construction. Keypoints are
mano order, metres, in the object-centred frame (bounding-box centre at 0); the translation is the
wrist position. Inside the network lengths are in decimetres so that inputs are of order one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..hand_pose import NUM_DOFS, HandPose, HandSkeleton, rotation_6d_to_matrix
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
    skeleton_joints: tuple[str, ...] = field(default=())  # joint names of the stored hand skeleton


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GraspVAE(nn.Module):
    """Conditional VAE p(pose | object) with a Gaussian latent; the hand skeleton is stored with the weights."""

    def __init__(self, config: VAEConfig | None = None, skeleton: HandSkeleton | None = None) -> None:
        super().__init__()
        if skeleton is not None:
            config = VAEConfig(**{**(config or VAEConfig()).__dict__, "skeleton_joints": tuple(skeleton.joint_names)})
        self.config = config = config or VAEConfig()
        keypoint_size = NUM_JOINTS * 3
        self.pose_size = NUM_DOFS + 6 + 3
        self.object_encoder = nn.Sequential(_mlp([config.bps_points, config.hidden, config.object_code]), nn.ReLU())
        self.encoder = _mlp([keypoint_size + config.object_code, config.hidden, config.hidden, 2 * config.latent])
        self.decoder = _mlp([config.latent + config.object_code, config.hidden, config.hidden, self.pose_size])
        # The training hand's rest skeleton: forward kinematics of decoded poses needs only these.
        joints = len(config.skeleton_joints)
        self.register_buffer("skeleton_parents", torch.zeros(joints, dtype=torch.int64))
        self.register_buffer("skeleton_rest_local", torch.eye(4).repeat(joints, 1, 1))
        self.register_buffer("skeleton_keypoint_joints", torch.zeros(NUM_JOINTS, dtype=torch.int64))
        self.register_buffer("skeleton_tip_extension", torch.zeros(5))
        if skeleton is not None:
            for name, tensor in skeleton.tensors().items():
                getattr(self, f"skeleton_{name}").copy_(tensor)

    @property
    def skeleton(self) -> HandSkeleton:
        """The stored hand skeleton (on the model's device)."""
        return HandSkeleton(list(self.config.skeleton_joints), self.skeleton_parents, self.skeleton_rest_local,
                            self.skeleton_keypoint_joints, self.skeleton_tip_extension)

    def object_code(self, bps: torch.Tensor) -> torch.Tensor:
        """(B,K) BPS distances, metres -> (B,C) object code."""
        return self.object_encoder(bps * NETWORK_UNITS_PER_M)

    def encode(self, keypoints: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,21,3) metres, (B,C) -> posterior mean and log-variance, each (B,latent)."""
        features = torch.cat([keypoints.flatten(1) * NETWORK_UNITS_PER_M, code], dim=1)
        mean, log_variance = self.encoder(features).chunk(2, dim=1)
        return mean, log_variance.clamp(-10, 10)

    def decode(self, latent: torch.Tensor, code: torch.Tensor) -> HandPose:
        """(B,latent), (B,C) -> decoded poses (object-centred frame)."""
        out = self.decoder(torch.cat([latent, code], dim=1))
        raw, six, wrist = out.split([NUM_DOFS, 6, 3], dim=1)
        # The identity rotation at zero output keeps the first steps of training well conditioned.
        six = six + six.new_tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        return HandPose(raw, rotation_6d_to_matrix(six), wrist / NETWORK_UNITS_PER_M)

    def keypoints(self, pose: HandPose) -> torch.Tensor:
        """Decoded poses -> (B,21,3) mano keypoints, metres, by forward kinematics."""
        return self.skeleton.pose_keypoints(pose)

    def forward(self, keypoints: torch.Tensor, bps: torch.Tensor) -> tuple[HandPose, torch.Tensor, torch.Tensor]:
        """(B,21,3) metres, (B,K) -> reconstructed pose, posterior mean and log-variance (B,latent)."""
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
    config = card.get("config", {})
    model = GraspVAE(VAEConfig(**{**config, "skeleton_joints": tuple(config.get("skeleton_joints", ()))}))
    model.load_state_dict(state)
    return model.to(device).eval(), card
