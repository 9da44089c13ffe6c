"""Hand skeleton conventions: joint orders, parents, the 16 HALO parts, left/right mirroring.

Joint orders are permutations written so that ``keypoints_in_order = keypoints_mano[PERM]``.

* ``mano``: wrist; thumb CMC, MCP, IP, tip; then index, middle, ring, pinky as MCP, PIP, DIP, tip.
  MediaPipe Hands and OpenPose use the same order (aliases ``mediapipe`` and ``openpose``).
* ``biomech``: level-major: wrist; the first joint of thumb, index, middle, ring, pinky; the second
  joints; the third joints; the tips. Canonicalisation runs in this order.
* ``halo``: MANO's internal kinematic order plus tips.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_JOINTS = 21
NUM_PARTS = 16
NUM_BONES = 20

MANO_TO_BIOMECH = np.array([0, 1, 5, 9, 13, 17, 2, 6, 10, 14, 18, 3, 7, 11, 15, 19, 4, 8, 12, 16, 20])
MANO_TO_HALO = np.array([0, 5, 6, 7, 9, 10, 11, 17, 18, 19, 13, 14, 15, 1, 2, 3, 4, 8, 12, 16, 20])

# mano[PERM] for each order; the inverse permutation maps that order back to mano.
JOINT_ORDERS: dict[str, np.ndarray] = {
    "mano": np.arange(NUM_JOINTS),
    "biomech": MANO_TO_BIOMECH,
    "halo": MANO_TO_HALO,
}
JOINT_ORDER_ALIASES = {"mediapipe": "mano", "openpose": "mano"}
TO_MANO: dict[str, np.ndarray] = {name: np.argsort(perm) for name, perm in JOINT_ORDERS.items()}

# Biomech parents: the five first joints hang from the wrist, every other joint from the joint 5 below.
BIOMECH_PARENTS = np.array([-1, 0, 0, 0, 0, 0, *range(1, 16)])

# Bone k (0..19) runs from biomech joint BIOMECH_PARENTS[k + 1] to joint k + 1.
# Its finger is k % 5 (thumb, index, middle, ring, pinky) and its level k // 5 (0 = metacarpal).
BONE_FINGER = np.arange(NUM_BONES) % 5
BONE_LEVEL = np.arange(NUM_BONES) // 5

# The bone each HALO part follows (part 0, the palm, uses the identity transform).
# Part order: palm, index x3, middle x3, pinky x3, ring x3, thumb x3.
PART_BONES = np.array([6, 11, 16, 7, 12, 17, 9, 14, 19, 8, 13, 18, 5, 10, 15])

# Non-tip joints (mano order), the ones that must lie inside a hand mesh.
MANO_TIPS = np.array([4, 8, 12, 16, 20])
MANO_NON_TIPS = np.setdiff1d(np.arange(NUM_JOINTS), MANO_TIPS)

HANDS = ("right", "left")
# A left hand is mirrored through the x = 0 plane of its keypoint frame into a right hand.
MIRROR = np.diag([-1.0, 1.0, 1.0])


def resolve_joint_order(name: str) -> str:
    """Canonical name of a joint order (accepts the aliases ``mediapipe`` and ``openpose``)."""
    key = name.lower()
    key = JOINT_ORDER_ALIASES.get(key, key)
    if key not in JOINT_ORDERS:
        known = sorted([*JOINT_ORDERS, *JOINT_ORDER_ALIASES])
        raise ValueError(f"joint_order: unknown joint order {name!r}; expected one of {known}")
    return key


def to_mano(keypoints: torch.Tensor | np.ndarray, joint_order: str) -> torch.Tensor | np.ndarray:
    """(..., 21, 3) keypoints in ``joint_order`` -> (..., 21, 3) in mano order."""
    return keypoints[..., TO_MANO[resolve_joint_order(joint_order)], :]


def from_mano(keypoints: torch.Tensor | np.ndarray, joint_order: str) -> torch.Tensor | np.ndarray:
    """(..., 21, 3) keypoints in mano order -> (..., 21, 3) in ``joint_order``."""
    return keypoints[..., JOINT_ORDERS[resolve_joint_order(joint_order)], :]


def bones(joint_order: str) -> np.ndarray:
    """(20, 2) bones as (parent, child) joint indices in ``joint_order``."""
    mano_index = TO_MANO[resolve_joint_order(joint_order)]
    parents = MANO_TO_BIOMECH[BIOMECH_PARENTS[1:]]
    children = MANO_TO_BIOMECH[1:]
    return np.stack([mano_index[parents], mano_index[children]], axis=1)


def resolve_hand(hand: str) -> str:
    """Validated handedness, ``right`` or ``left``."""
    key = hand.lower()
    if key not in HANDS:
        raise ValueError(f"hand: unknown handedness {hand!r}; expected 'right' or 'left'")
    return key
