"""The anatomical pose space (hard limits, forward kinematics) and the keypoint plausibility check."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import REFERENCE_DIR

from models import hand_pose
from models.hand_pose import angle_bounds, angles_from_raw, axis_angle_to_matrix, clip_angles, raw_from_angles
from models.plausibility import joint_angles, plausible

KPS_SEQ = REFERENCE_DIR / "kps_seq.pkl"


def test_raw_parameters_always_map_inside_the_limits_and_invert() -> None:
    raw = torch.randn(512, hand_pose.NUM_DOFS) * 10
    angles = angles_from_raw(raw)
    low, high = angle_bounds(angles)
    assert bool(((angles >= low - 1e-4) & (angles <= high + 1e-4)).all())
    assert bool((low >= hand_pose.TABLE_LOW - 1e-4).all() and (high <= hand_pose.TABLE_HIGH + 1e-4).all())
    moderate = angles_from_raw(torch.randn(512, hand_pose.NUM_DOFS))
    torch.testing.assert_close(angles_from_raw(raw_from_angles(moderate)), moderate, atol=0.05, rtol=0)
    # The DIP follows its PIP: a straight PIP allows only a nearly straight DIP.
    straight = clip_angles(torch.zeros(1, hand_pose.NUM_DOFS).index_fill(1, torch.tensor(hand_pose.DIP_COLUMNS), 80.0))
    assert float(straight[0, list(hand_pose.DIP_COLUMNS)].max()) <= hand_pose.DIP_HIGH_OFFSET + 1e-4


def test_forward_kinematics_matches_the_skinned_rigged_hand(rigged_hand) -> None:
    skeleton = rigged_hand.skeleton
    angles = angles_from_raw(torch.randn(16, hand_pose.NUM_DOFS) * 1.5)
    rotation = axis_angle_to_matrix(torch.randn(16, 3))
    translation = torch.randn(16, 3) * 0.1
    keypoints = skeleton.keypoints(angles, rotation, translation)
    posed = rigged_hand.pose(skeleton.local_rotations(angles), global_rotation=rotation, translation=translation)
    joints = [j for j in range(21) if j % 4]  # fingertips: the skin ray of the asset vs a fixed extension
    torch.testing.assert_close(keypoints[:, joints], posed.keypoints[:, joints], atol=1e-5, rtol=0)
    # PIP and DIP are hinges: the distal bone stays in the plane of the proximal bones, whatever the pose.
    assert plausible(keypoints.double().numpy()).mean() >= 0.9


def test_random_points_of_the_pose_space_are_plausible_hands(rigged_hand) -> None:
    angles = angles_from_raw(torch.randn(2000, hand_pose.NUM_DOFS) * 2)
    keypoints = rigged_hand.skeleton.keypoints(angles, torch.eye(3).repeat(2000, 1, 1), torch.zeros(2000, 3))
    assert plausible(keypoints.double().numpy()).mean() >= 0.98


def test_the_check_flags_sideways_and_backwards_bends(rigged_hand) -> None:
    skeleton = rigged_hand.skeleton
    keypoints = skeleton.keypoints(hand_pose.neutral_angles(1), torch.eye(3)[None], torch.zeros(1, 3)).double().numpy()
    assert plausible(keypoints).all()
    pip, dip, tip = keypoints[0, 6], keypoints[0, 7], keypoints[0, 8]

    def turned(axis: np.ndarray, degrees: float) -> np.ndarray:
        """The index finger beyond its PIP turned by ``degrees`` about ``axis`` through the PIP."""
        rotation = axis_angle_to_matrix(torch.as_tensor(axis / np.linalg.norm(axis) * np.radians(degrees))).numpy()
        bent = keypoints.copy()
        bent[0, 7:9] = (np.stack([dip, tip]) - pip) @ rotation.T + pip
        return bent

    angles = joint_angles(keypoints)
    hinge_side = np.cross(dip - pip, keypoints[0, 9] - keypoints[0, 5])  # roughly the palm normal
    assert not plausible(turned(hinge_side, 45.0)).any()  # bent sideways at the PIP
    # Straighten the finger then bend it 40 degrees backwards.
    lateral = keypoints[0, 5] - keypoints[0, 17]
    backwards = turned(lateral, angles.flexion[0, 0, 0] + 40.0)
    backwards_other = turned(lateral, -(angles.flexion[0, 0, 0] + 40.0))
    flexions = [joint_angles(b).flexion[0, 0, 0] for b in (backwards, backwards_other)]
    assert min(flexions) < -25.0
    assert not plausible(backwards if flexions[0] < flexions[1] else backwards_other).any()


def test_real_hand_keypoints_are_plausible() -> None:
    if not KPS_SEQ.is_file():
        pytest.skip("../shared/halo_reference/kps_seq.pkl is absent (third-party data, not committed)")
    with KPS_SEQ.open("rb") as handle:
        keypoints = np.asarray(pickle.load(handle), dtype=np.float64)
    assert keypoints.shape[1:] == (21, 3)
    assert plausible(keypoints).all()
