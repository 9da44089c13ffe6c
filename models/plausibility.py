"""Is a set of 21 keypoints a hand a human can make? A check on the keypoints alone, for any source.

Per finger (index to pinky), the PIP and DIP joints must bend like hinges in the finger's plane:

* hinge axis   perpendicular to the proximal phalanx and to the palm normal (an MCP spread turns
               the finger's plane about the palm normal); where the phalanx points along the
               palm normal (MCP flexed ~90 degrees) that is undefined, and the hand's lateral axis
               made orthogonal to the phalanx takes over smoothly;
* flexion      signed angle between consecutive phalanges about that axis, positive towards the
               palm: from -25 (hyperextension) to 120 degrees;
* out of plane angle of the distal bone of each joint out of the plane normal to the hinge axis:
               at most 30 degrees.

Thumb joints (CMC, MCP, IP) may bend at most 120 degrees between consecutive bones. The palm normal
is that of a right hand in mano order (mirror a left hand first). Angles are degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FLEXION_DEG = 120.0
MAX_HYPEREXTENSION_DEG = 25.0
MAX_OUT_OF_PLANE_DEG = 30.0
MAX_THUMB_BEND_DEG = 120.0
# mano keypoints of the four fingers (MCP, PIP, DIP, tip) and of the thumb chain from the wrist.
FINGER_CHAINS = np.array([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]])
THUMB_CHAIN = np.array([0, 1, 2, 3, 4])


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


@dataclass
class JointAngles:
    """Angles of S hands, degrees."""

    flexion: np.ndarray  # (S,4,2) PIP and DIP flexion of index..pinky, positive towards the palm
    out_of_plane: np.ndarray  # (S,4,2) absolute out-of-plane bend of the PIP and DIP joints
    thumb_bend: np.ndarray  # (S,3) bend at the thumb CMC, MCP and IP joints


def joint_angles(keypoints: np.ndarray) -> JointAngles:
    """(S,21,3) right-hand mano keypoints, any length unit -> JointAngles."""
    joints = np.asarray(keypoints, dtype=np.float64)
    forward = _unit(joints[:, 9] - joints[:, 0])
    across = joints[:, 5] - joints[:, 17]  # pinky MCP -> index MCP
    palm_normal = _unit(np.cross(across, forward))
    lateral = np.cross(forward, palm_normal)  # flexion towards the palm is a positive turn about it
    bones = _unit(np.diff(joints[:, FINGER_CHAINS], axis=2))  # (S,4,3,3) proximal, middle, distal
    proximal = bones[:, :, 0]
    lateral_hinge = _unit(lateral[:, None] - (lateral[:, None] * proximal).sum(-1, keepdims=True) * proximal)
    spread_hinge = np.cross(proximal, palm_normal[:, None])
    weight = 1.0 - np.linalg.norm(spread_hinge, axis=-1, keepdims=True)
    hinge = _unit(spread_hinge + weight * lateral_hinge)
    before, after = bones[:, :, :2], bones[:, :, 1:]
    turn = (np.cross(before, after) * hinge[:, :, None]).sum(-1)
    flexion = np.degrees(np.arctan2(turn, (before * after).sum(-1)))
    out_of_plane = np.degrees(np.abs(np.arcsin(np.clip((after * hinge[:, :, None]).sum(-1), -1, 1))))
    thumb = _unit(np.diff(joints[:, THUMB_CHAIN], axis=1))  # (S,4,3)
    thumb_bend = np.degrees(np.arccos(np.clip((thumb[:, :-1] * thumb[:, 1:]).sum(-1), -1, 1)))
    return JointAngles(flexion, out_of_plane, thumb_bend)


def plausible(keypoints: np.ndarray) -> np.ndarray:
    """(S,21,3) right-hand mano keypoints -> (S,) bool: every joint within the limits of the module docstring."""
    angles = joint_angles(keypoints)
    fingers_ok = ((angles.flexion <= MAX_FLEXION_DEG) & (angles.flexion >= -MAX_HYPEREXTENSION_DEG)
                  & (angles.out_of_plane <= MAX_OUT_OF_PLANE_DEG)).all(axis=(1, 2))
    return fingers_ok & (angles.thumb_bend <= MAX_THUMB_BEND_DEG).all(axis=1)


def plausible_share(keypoints: np.ndarray) -> float:
    """(S,21,3) right-hand mano keypoints -> fraction of plausible hands (0 for no hands)."""
    return float(plausible(keypoints).mean()) if len(keypoints) else 0.0
