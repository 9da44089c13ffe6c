"""Random, anatomically plausible hand poses for the WebXR hand skeleton.

A pose is a point of the anatomical pose space (``models.hand_pose``: joint angles inside hard
limits, no twist or sideways bend at PIP and DIP), per-joint bone-length factors, a hand scale and a
rigid placement. The angles become per-joint local rotations for the rigged hand.

Poses come from a mixture of families (open, relaxed, pointing, pinching, grasp-like, fist, free)
so that both everyday shapes and the corners of the joint limits are covered. Train and evaluation
poses come from disjoint random streams (``split``), so held-out poses are never trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..hand_pose import DOF_NAMES, clip_angles
from .rigged_hand import PosedHand, RiggedHand

FINGERS = ("index", "middle", "ring", "pinky")
FAMILIES = ("open", "relaxed", "pointing", "pinching", "grasp", "fist", "free")
SPLITS = {"train": 0, "val": 1, "test": 2}

# Radians. Curl c in [0, 1] drives MCP, PIP and DIP flexion together (DIP follows PIP); the hard
# limits are those of the pose space, these are only the family shapes.
MCP_PER_CURL, PIP_PER_CURL, DIP_PER_PIP = 1.45, 1.75, 0.7
# Abduction at full spread (towards the thumb is positive).
SPREAD = {"index": 0.3, "middle": 0.05, "ring": -0.2, "pinky": -0.4}
# Palm arch (degrees) at full curl of the ring and pinky fingers.
ARCH_PER_CURL = 9.0
# Thumb ranges of the "free" family: CMC flexion / abduction / axial rotation, MCP and IP flexion.
THUMB_FREE = ((-0.35, 1.0), (-0.45, 0.6), (-0.3, 0.7), (-0.2, 0.95), (-0.35, 1.3))


@dataclass(frozen=True)
class PoseSamplerConfig:
    """Settings of the pose distribution (recorded in the model card)."""

    family_weights: tuple[float, ...] = (0.15, 0.2, 0.1, 0.15, 0.2, 0.08, 0.12)  # one per FAMILIES entry
    hand_scale: tuple[float, float] = (0.85, 1.15)  # overall size factor
    finger_length: tuple[float, float] = (0.88, 1.06)  # phalanges of one finger together, vs the asset
    phalanx_length: tuple[float, float] = (0.7, 1.3)  # relative proportions of a finger's phalanges
    palm_bone_length: tuple[float, float] = (0.95, 1.05)  # each metacarpal-level bone
    joint_noise: float = 0.08  # radians, added to every driven angle
    translation_m: float = 0.3  # placement uniform in a cube of this half-side
    families: tuple[str, ...] = field(default=FAMILIES)

    def to_dict(self) -> dict:
        """JSON-friendly settings."""
        return asdict(self)


@dataclass
class PoseBatch:
    """Parameters of B poses (inputs of ``RiggedHand.pose``) and the family of each."""

    local_rotations: torch.Tensor  # (B,J,3,3)
    bone_scales: torch.Tensor  # (B,J)
    global_rotation: torch.Tensor  # (B,3,3)
    translation: torch.Tensor  # (B,3) metres
    scale: torch.Tensor  # (B,)
    families: list[str]

    def apply(self, hand: RiggedHand) -> PosedHand:
        """Pose ``hand`` with these parameters."""
        return hand.pose(self.local_rotations, self.bone_scales, self.global_rotation, self.translation, self.scale)


def split_rng(split: str, seed: int) -> np.random.Generator:
    """Random stream for (split, seed); different splits never share a stream."""
    return np.random.default_rng([SPLITS[split], seed])


def _random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """-> (count,3,3) rotations uniform on SO(3) (from unit quaternions)."""
    q = rng.normal(size=(count, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        axis=1,
    ).reshape(count, 3, 3)


def _family_curls(rng: np.random.Generator, family: str) -> tuple[np.ndarray, float, np.ndarray]:
    """-> curl per finger (4,), spread in [-0.3, 1], thumb (cmc flex, abduction, twist, mcp, ip) (5,)."""
    u = rng.uniform
    if family == "open":
        curls = u(-0.15, 0.15, 4)
        thumb = np.array([u(-0.3, 0.2), u(-0.1, 0.6), u(-0.2, 0.3), u(-0.2, 0.3), u(-0.3, 0.3)])
        return curls, u(0.0, 1.0), thumb
    if family == "relaxed":
        base = u(0.05, 0.4)
        curls = base + np.array([0.0, 0.05, 0.1, 0.15]) + u(-0.08, 0.08, 4)
        thumb = np.array([u(0.0, 0.5), u(0.0, 0.4), u(0.0, 0.4), u(0.0, 0.5), u(0.0, 0.6)])
        return curls, u(0.0, 0.5), thumb
    if family == "pointing":
        curls = np.concatenate([u(-0.1, 0.15, 1), u(0.7, 1.0, 3)])
        thumb = np.array([u(0.3, 0.9), u(-0.2, 0.3), u(0.0, 0.6), u(0.2, 0.9), u(0.0, 1.0)])
        return curls, u(-0.2, 0.3), thumb
    if family == "pinching":
        curls = np.concatenate([u(0.25, 0.65, 1), u(0.0, 0.9, 3)])
        thumb = np.array([u(0.4, 0.9), u(0.0, 0.4), u(0.3, 0.7), u(0.1, 0.6), u(0.0, 0.8)])
        return curls, u(-0.2, 0.4), thumb
    if family == "grasp":
        base = u(0.3, 0.85)
        curls = base + u(-0.12, 0.12, 4)
        thumb = np.array([u(0.2, 0.9), u(0.0, 0.6), u(0.2, 0.7), u(0.0, 0.7), u(0.0, 0.9)])
        return curls, u(-0.1, 0.6), thumb
    if family == "fist":
        curls = u(0.85, 1.05, 4)
        thumb = np.array([u(0.4, 1.0), u(-0.3, 0.2), u(0.2, 0.7), u(0.3, 0.9), u(0.2, 1.1)])
        return curls, u(-0.3, 0.1), thumb
    if family == "free":
        curls = u(-0.2, 1.05, 4)
        lows, highs = zip(*THUMB_FREE, strict=True)
        return curls, u(-0.3, 1.0), u(np.array(lows), np.array(highs))
    raise ValueError(f"family: unknown pose family {family!r}; expected one of {FAMILIES}")


def _pose_angles(rng: np.random.Generator, family: str, noise: float) -> np.ndarray:
    """-> (D,) pose-space angles of one hand of the given family, degrees (not yet clipped to the limits)."""
    curls, spread, thumb = _family_curls(rng, family)
    angles: dict[str, float] = {}
    jitter = lambda: rng.normal(0.0, noise)  # noqa: E731
    for finger, curl in zip(FINGERS, curls, strict=True):
        pip = curl * PIP_PER_CURL + jitter()
        # Spread fades as the finger curls (abduction is small in a fist).
        abduction = spread * SPREAD[finger] * (1.0 - 0.6 * np.clip(curl, 0.0, 1.0)) + jitter()
        angles |= {f"{finger}_mcp_flexion": curl * MCP_PER_CURL + jitter(), f"{finger}_pip_flexion": pip,
                   f"{finger}_dip_flexion": DIP_PER_PIP * pip + jitter(), f"{finger}_mcp_spread": abduction}
    thumb_names = ("thumb_cmc_flexion", "thumb_cmc_abduction", "thumb_cmc_rotation", "thumb_mcp_flexion",
                   "thumb_ip_flexion")
    angles |= {name: value + jitter() for name, value in zip(thumb_names, thumb, strict=True)}
    degrees = np.degrees([angles.get(name, 0.0) for name in DOF_NAMES])
    degrees[DOF_NAMES.index("palm_arch")] = ARCH_PER_CURL * np.clip(np.mean(curls[2:]) + 0.3, 0.0, 1.3)
    return degrees


def _bone_scales(rng: np.random.Generator, hand: RiggedHand, config: PoseSamplerConfig) -> np.ndarray:
    """-> (J,) length factor of the bone ending at each joint.

    Palm bones vary little. Each finger's phalanges get independent factors that change the
    finger's proportions, then one factor sets the finger's total length relative to the asset.
    """
    names = hand.joint_names
    scales = rng.uniform(*config.palm_bone_length, len(names))
    scales[names.index("wrist")] = 1.0
    rest = hand.rest_bone_lengths.numpy()
    for finger in ("thumb", *FINGERS):
        chain = [names.index(n) for n in hand.finger_chains[finger]]
        proportions = rng.uniform(*config.phalanx_length, len(chain))
        total = rng.uniform(*config.finger_length) * rest[chain].sum()
        scales[chain] = proportions * total / (proportions * rest[chain]).sum()
    return scales


def sample_poses(
    hand: RiggedHand, count: int, rng: np.random.Generator, config: PoseSamplerConfig | None = None
) -> PoseBatch:
    """Draw ``count`` random poses for ``hand`` (its joint names must be the WebXR ones)."""
    config = config or PoseSamplerConfig()
    weights = np.asarray(config.family_weights, dtype=np.float64)
    families = [str(f) for f in rng.choice(config.families, size=count, p=weights / weights.sum())]
    angles = clip_angles(torch.as_tensor(
        np.stack([_pose_angles(rng, family, config.joint_noise) for family in families]), dtype=torch.float32))
    bones = np.stack([_bone_scales(rng, hand, config) for _ in range(count)])
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return PoseBatch(
        local_rotations=hand.skeleton.local_rotations(angles),
        bone_scales=as_tensor(bones),
        global_rotation=as_tensor(_random_rotations(rng, count)),
        translation=as_tensor(rng.uniform(-config.translation_m, config.translation_m, (count, 3))),
        scale=as_tensor(rng.uniform(*config.hand_scale, count)),
        families=families,
    )
