"""The anatomical hand-pose space: a joint table with hard limits, bounded parameters, forward kinematics.

One pose is D = 22 joint angles (degrees, anatomical sign: flexion and spread towards the thumb are
positive) plus a global rotation and translation. The angles live in hard limits: an unbounded
parameter ``raw`` maps to ``low + (high - low) * sigmoid(raw)``, so no optimiser and no network can
leave them. Twist and sideways bend at the PIP and DIP joints do not exist in this space: those
joints have flexion only. The DIP angle is bounded relative to the PIP angle (the two are coupled by
the oblique retinacular ligament: a DIP bent without its PIP, or far more than it, is not a human pose).

Forward kinematics runs on a ``HandSkeleton``: the rest pose of a rigged hand (the 25 WebXR joints,
each with its bind-pose transform relative to its parent). Angles drive local rotations about the
joint's own bind-frame axes (bones run along -z, +y is the back of the hand, so flexion is a negative
rotation about x and spread a rotation about y). The 21 keypoints are the mano joints of that
skeleton, fingertips pushed out along the distal bone onto the skin.

Shapes: B hands, D angles, J skeleton joints. Angles in degrees, lengths in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .skeleton import MANO_TIPS

FINGERS = ("index", "middle", "ring", "pinky")


@dataclass(frozen=True)
class Dof:
    """One degree of freedom: an angle in [low, high] degrees driving local rotation components."""

    name: str
    low: float
    high: float
    targets: tuple[tuple[str, int, float], ...]  # (skeleton joint, local axis 0/1/2, radians per radian)


def _finger_dofs(finger: str) -> list[Dof]:
    joint = f"{finger}-finger-phalanx-"
    spread = {"index": (-15.0, 25.0), "middle": (-15.0, 15.0), "ring": (-20.0, 12.0), "pinky": (-30.0, 12.0)}
    return [
        Dof(f"{finger}_mcp_flexion", -20.0, 90.0, ((joint + "proximal", 0, -1.0),)),
        Dof(f"{finger}_mcp_spread", *spread[finger], ((joint + "proximal", 1, 1.0),)),
        Dof(f"{finger}_pip_flexion", -5.0, 105.0, ((joint + "intermediate", 0, -1.0),)),
        Dof(f"{finger}_dip_flexion", -5.0, 80.0, ((joint + "distal", 0, -1.0),)),  # also bounded by the PIP
    ]


# Limits are active ranges of motion from clinical goniometry norms (MCP 0-90 flexion with ~20
# hyperextension, PIP 0-100/110, DIP 0-80, finger abduction of 15-30 degrees, larger for index and
# pinky), narrowed where the rigged hand's skin folds badly. The thumb CMC is a saddle joint with
# flexion, abduction and the axial rotation that opposes it; its ranges are those of the pose
# sampler the base model was trained on. Palm arch cups the ring and pinky metacarpals together.
JOINT_TABLE: tuple[Dof, ...] = (
    Dof("thumb_cmc_flexion", -20.0, 60.0, (("thumb-metacarpal", 0, -1.0),)),
    Dof("thumb_cmc_abduction", -25.0, 45.0, (("thumb-metacarpal", 1, 1.0),)),
    Dof("thumb_cmc_rotation", -20.0, 40.0, (("thumb-metacarpal", 2, 1.0),)),
    Dof("thumb_mcp_flexion", -10.0, 60.0, (("thumb-phalanx-proximal", 0, -1.0),)),
    Dof("thumb_ip_flexion", -15.0, 80.0, (("thumb-phalanx-distal", 0, -1.0),)),
    *(dof for finger in FINGERS for dof in _finger_dofs(finger)),
    Dof("palm_arch", 0.0, 12.0, (("ring-finger-metacarpal", 0, -0.7), ("pinky-finger-metacarpal", 0, -1.3))),
)
DOF_NAMES = tuple(dof.name for dof in JOINT_TABLE)
NUM_DOFS = len(JOINT_TABLE)
# DIP bounds relative to the PIP angle p (degrees): [DIP_LOW_SLOPE * p - DIP_LOW_OFFSET,
# DIP_HIGH_SLOPE * p + DIP_HIGH_OFFSET], inside the DIP's own table limits.
DIP_LOW_SLOPE, DIP_LOW_OFFSET = 0.35, 10.0
DIP_HIGH_SLOPE, DIP_HIGH_OFFSET = 0.9, 15.0
# MCP spread shrinks as the MCP flexes (the collateral ligaments tighten): at 90 degrees of flexion
# the spread range is this fraction of its table range.
SPREAD_AT_FULL_FLEXION = 0.4
PIP_COLUMNS = tuple(DOF_NAMES.index(f"{finger}_pip_flexion") for finger in FINGERS)
DIP_COLUMNS = tuple(DOF_NAMES.index(f"{finger}_dip_flexion") for finger in FINGERS)
MCP_COLUMNS = tuple(DOF_NAMES.index(f"{finger}_mcp_flexion") for finger in FINGERS)
SPREAD_COLUMNS = tuple(DOF_NAMES.index(f"{finger}_mcp_spread") for finger in FINGERS)
TABLE_LOW = torch.tensor([dof.low for dof in JOINT_TABLE])
TABLE_HIGH = torch.tensor([dof.high for dof in JOINT_TABLE])
TIP_KEYPOINTS = torch.as_tensor(MANO_TIPS)  # mano keypoints of the fingertips, thumb first


def angle_bounds(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,D) angles, degrees -> (B,D) low and high bounds (DIPs depend on the PIPs, spreads on the MCP flexion)."""
    low = TABLE_LOW.to(angles).expand_as(angles).clone()
    high = TABLE_HIGH.to(angles).expand_as(angles).clone()
    pip = angles[:, PIP_COLUMNS]
    low[:, DIP_COLUMNS] = torch.clamp(DIP_LOW_SLOPE * pip - DIP_LOW_OFFSET, min=low[:, DIP_COLUMNS])
    high[:, DIP_COLUMNS] = torch.clamp(DIP_HIGH_SLOPE * pip + DIP_HIGH_OFFSET, max=high[:, DIP_COLUMNS])
    flexed = torch.clamp(angles[:, MCP_COLUMNS] / 90.0, 0.0, 1.0)
    narrowing = 1.0 - (1.0 - SPREAD_AT_FULL_FLEXION) * flexed
    low[:, SPREAD_COLUMNS] = low[:, SPREAD_COLUMNS] * narrowing
    high[:, SPREAD_COLUMNS] = high[:, SPREAD_COLUMNS] * narrowing
    return low, high


def angles_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """(B,D) unbounded parameters -> (B,D) angles, degrees, inside the hard limits (differentiable)."""
    fraction = torch.sigmoid(raw)
    # The PIP and MCP flexions come from the table limits; the DIP and spread bounds follow from them.
    low, high = angle_bounds(TABLE_LOW.to(raw) + (TABLE_HIGH - TABLE_LOW).to(raw) * fraction)
    return low + (high - low) * fraction


def raw_from_angles(angles: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """(B,D) angles, degrees (clipped into the limits) -> (B,D) raw parameters; inverse of ``angles_from_raw``."""
    low, high = angle_bounds(clip_angles(angles))
    fraction = ((angles - low) / (high - low).clamp_min(1e-6)).clamp(eps, 1 - eps)
    return torch.logit(fraction)


def clip_angles(angles: torch.Tensor) -> torch.Tensor:
    """(B,D) angles, degrees -> (B,D) clipped into the table limits, then into the dependent (DIP, spread) ranges."""
    clipped = torch.clamp(angles, TABLE_LOW.to(angles), TABLE_HIGH.to(angles))
    low, high = angle_bounds(clipped)
    return torch.clamp(clipped, low, high)


def rotation_6d_to_matrix(six: torch.Tensor) -> torch.Tensor:
    """(B,6) two 3-vectors -> (B,3,3) rotation whose first two columns are them, Gram-Schmidt orthonormalised."""
    first = F.normalize(six[:, :3], dim=-1)
    second = F.normalize(six[:, 3:] - (first * six[:, 3:]).sum(-1, keepdim=True) * first, dim=-1)
    return torch.stack([first, second, torch.cross(first, second, dim=-1)], dim=-1)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(...,3) axis * angle, radians -> (...,3,3) rotation matrices (Rodrigues, safe at zero)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sin * skew + (1.0 - cos) * (skew @ skew)


@dataclass
class HandPose:
    """B hands in the pose space: what the VAE decodes and refinement moves."""

    raw: torch.Tensor  # (B,D) unbounded angle parameters (angles = angles_from_raw(raw))
    rotation: torch.Tensor  # (B,3,3) hand orientation
    translation: torch.Tensor  # (B,3) wrist position, metres

    @property
    def angles(self) -> torch.Tensor:
        """(B,D) joint angles, degrees, inside the limits."""
        return angles_from_raw(self.raw)


@dataclass
class HandSkeleton:
    """Rest pose of a rigged hand: what forward kinematics needs (metres, the asset's frame)."""

    joint_names: list[str]  # (J,) skeleton joints
    parents: torch.Tensor  # (J,) int64 parent index, -1 for the root
    rest_local: torch.Tensor  # (J,4,4) bind transform of each joint relative to its parent
    keypoint_joints: torch.Tensor  # (21,) int64 skeleton joint of each mano keypoint
    tip_extension: torch.Tensor  # (5,) metres from the tip joint to the skin along the distal bone

    def __post_init__(self) -> None:
        depth = [0] * len(self.joint_names)
        for joint in range(len(depth)):
            ancestor = joint
            while int(self.parents[ancestor]) >= 0:
                ancestor, depth[joint] = int(self.parents[ancestor]), depth[joint] + 1
        # Joints grouped by depth: FK is one batched product per level, not one per joint.
        self.levels = [torch.tensor([j for j, d in enumerate(depth) if d == level]) for level in range(max(depth) + 1)]
        # Frames are built level by level into one growing tensor: where each level's parents sit in
        # it, and the permutation back to joint order at the end.
        built = torch.cat(self.levels)
        slot = torch.empty_like(built)
        slot[built] = torch.arange(len(built))
        self.parent_slots = [slot[self.parents[level]] for level in self.levels[1:]]
        self.joint_slots = slot
        names = self.joint_names
        self.dof_joint = torch.tensor([names.index(j) for dof in JOINT_TABLE for j, _, _ in dof.targets])
        self.dof_axis = torch.tensor([axis for dof in JOINT_TABLE for _, axis, _ in dof.targets])
        self.dof_gain = torch.tensor([gain for dof in JOINT_TABLE for _, _, gain in dof.targets])
        self.dof_column = torch.tensor([c for c, dof in enumerate(JOINT_TABLE) for _ in dof.targets])
        self.root = int(self.levels[0][0])
        self.root_position = self.rest_local[self.root, :3, 3]

    def to(self, device: torch.device | str) -> HandSkeleton:
        """The same skeleton with its tensors on ``device``."""
        return HandSkeleton(self.joint_names, self.parents.to(device), self.rest_local.to(device),
                            self.keypoint_joints.to(device), self.tip_extension.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The skeleton as named tensors (for a checkpoint); the joint names are stored apart."""
        return {"parents": self.parents, "rest_local": self.rest_local, "keypoint_joints": self.keypoint_joints,
                "tip_extension": self.tip_extension}

    def local_rotations(self, angles: torch.Tensor) -> torch.Tensor:
        """(B,D) angles, degrees -> (B,J,3,3) local joint rotations (identity where no angle drives a joint)."""
        device, count = angles.device, len(self.joint_names)
        values = angles[:, self.dof_column.to(device)] * (math.pi / 180) * self.dof_gain.to(angles)
        component = (self.dof_joint * 3 + self.dof_axis).to(device)
        axis_angle = angles.new_zeros(angles.shape[0], count * 3).index_add(1, component, values)
        return axis_angle_to_matrix(axis_angle.reshape(-1, count, 3))

    def joint_frames(self, local_rotations: torch.Tensor) -> torch.Tensor:
        """(B,J,3,3) local rotations -> (B,J,4,4) joint frames in the rest frame (asset coordinates)."""
        batch = local_rotations.shape[0]
        rest = self.rest_local.to(local_rotations)
        turned = torch.cat([rest[:, :3, :3] @ local_rotations, rest[:, :3, 3:].expand(batch, -1, -1, -1)], dim=-1)
        local = torch.cat([turned, rest[:, 3:].expand(batch, -1, -1, -1)], dim=-2)
        frames = local[:, self.levels[0]]
        for level, parent_slots in zip(self.levels[1:], self.parent_slots, strict=True):
            frames = torch.cat([frames, frames[:, parent_slots] @ local[:, level]], dim=1)
        return frames[:, self.joint_slots]

    def keypoints(self, angles: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """(B,D) angles (degrees), (B,3,3) rotation, (B,3) translation (m) -> (B,21,3) mano keypoints, metres.

        The wrist goes to ``translation`` and the hand is turned by ``rotation`` about it.
        """
        joints = self.joint_frames(self.local_rotations(angles))[..., :3, 3] - self.root_position.to(angles)
        tips = self.keypoint_joints[TIP_KEYPOINTS]
        direction = F.normalize(joints[:, tips] - joints[:, self.parents[tips]], dim=-1)
        keypoints = joints[:, self.keypoint_joints].index_add(
            1, TIP_KEYPOINTS.to(angles.device), direction * self.tip_extension[:, None].to(angles))
        return keypoints @ rotation.transpose(1, 2) + translation[:, None]

    def pose_keypoints(self, pose: HandPose) -> torch.Tensor:
        """Poses -> (B,21,3) mano keypoints, metres."""
        return self.keypoints(pose.angles, pose.rotation, pose.translation)


def neutral_angles(batch: int = 1) -> torch.Tensor:
    """-> (B,D) a relaxed half-open hand, degrees (fingers a little curled, thumb slightly opposed)."""
    values = {"thumb_cmc_flexion": 20.0, "thumb_cmc_abduction": 15.0, "thumb_cmc_rotation": 15.0,
              "thumb_mcp_flexion": 15.0, "thumb_ip_flexion": 15.0, "palm_arch": 4.0}
    for finger in FINGERS:
        values |= {f"{finger}_mcp_flexion": 25.0, f"{finger}_pip_flexion": 30.0, f"{finger}_dip_flexion": 15.0}
    return torch.tensor([[values.get(name, 0.0) for name in DOF_NAMES]]).repeat(batch, 1)
