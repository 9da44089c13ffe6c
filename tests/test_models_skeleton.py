"""Joint orders, parents and mirroring (models/skeleton.py)."""

import numpy as np
import pytest

from models import skeleton


@pytest.mark.parametrize("order", ["mano", "biomech", "halo", "mediapipe", "OpenPose"])
def test_joint_orders_round_trip(order):
    keypoints = np.random.default_rng(0).normal(size=(4, 21, 3))
    converted = skeleton.from_mano(keypoints, order)
    np.testing.assert_array_equal(skeleton.to_mano(converted, order), keypoints)


def test_halo_order_is_biomech_composed_with_the_documented_table():
    biomech_to_halo = [0, 2, 7, 12, 3, 8, 13, 5, 10, 15, 4, 9, 14, 1, 6, 11, 16, 17, 18, 19, 20]
    np.testing.assert_array_equal(skeleton.MANO_TO_BIOMECH[biomech_to_halo], skeleton.MANO_TO_HALO)


def test_parts_follow_finger_bones_of_levels_one_to_three():
    assert sorted(skeleton.PART_BONES.tolist()) == list(range(5, 20))
    # index, middle, pinky, ring, thumb: three consecutive levels of one finger each
    fingers = skeleton.BONE_FINGER[skeleton.PART_BONES].reshape(5, 3)
    assert fingers.tolist() == [[1] * 3, [2] * 3, [4] * 3, [3] * 3, [0] * 3]
    assert skeleton.BONE_LEVEL[skeleton.PART_BONES].reshape(5, 3).tolist() == [[1, 2, 3]] * 5


def test_unknown_names_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="joint_order"):
        skeleton.resolve_joint_order("smpl")
    with pytest.raises(ValueError, match="hand"):
        skeleton.resolve_hand("both")


def test_mirror_is_an_involution_that_flips_orientation():
    np.testing.assert_array_equal(skeleton.MIRROR @ skeleton.MIRROR, np.eye(3))
    assert np.linalg.det(skeleton.MIRROR) == -1
