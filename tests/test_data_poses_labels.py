"""Pose sampler (families, splits, bone lengths) and occupancy labels (winding numbers in the model box)."""

from __future__ import annotations

import igl
import numpy as np
import torch

from models.canonical import MODEL_SCALE, canonicalize
from models.data.labels import BOX_HALF_SIDE, LabelConfig, label_poses, to_model_frame
from models.data.poses import FAMILIES, PoseSamplerConfig, sample_poses, split_rng


def test_splits_and_seeds_give_different_poses(rigged_hand):
    train = sample_poses(rigged_hand, 4, split_rng("train", 0)).local_rotations
    test = sample_poses(rigged_hand, 4, split_rng("test", 0)).local_rotations
    again = sample_poses(rigged_hand, 4, split_rng("train", 0)).local_rotations
    assert not torch.allclose(train, test)
    torch.testing.assert_close(train, again)


def test_every_family_curls_as_expected(rigged_hand):
    curl = {}
    for family in FAMILIES:
        weights = tuple(float(f == family) for f in FAMILIES)
        poses = sample_poses(rigged_hand, 16, split_rng("val", 3), PoseSamplerConfig(family_weights=weights))
        assert set(poses.families) == {family}
        with torch.no_grad():
            keypoints = rigged_hand.pose(poses.local_rotations, poses.bone_scales).keypoints
        # Fingertip distance to the wrist relative to palm length: large when open, small when curled.
        reach = (keypoints[:, [8, 12, 16, 20]] - keypoints[:, :1]).norm(dim=-1).mean(1)
        curl[family] = float((reach / (keypoints[:, 9] - keypoints[:, 0]).norm(dim=-1)).mean())
    assert curl["open"] > curl["relaxed"] > curl["grasp"] > curl["fist"]
    assert curl["open"] > 1.7 and curl["fist"] < 1.2


def test_bone_lengths_vary_within_the_configured_ranges(rigged_hand):
    config = PoseSamplerConfig()
    poses = sample_poses(rigged_hand, 64, split_rng("val", 1), config)
    assert float(poses.scale.min()) >= config.hand_scale[0] and float(poses.scale.max()) <= config.hand_scale[1]
    assert float(poses.scale.max() / poses.scale.min()) > 1.2
    bones = canonicalize(poses.apply(rigged_hand).keypoints).bone_lengths
    relative = bones / bones.mean(0)
    assert float(relative.min()) > 0.4 and float(relative.max()) < 2.0  # no degenerate or runaway bones
    assert float(relative.std(0).min()) > 0.03  # every part's length really varies


def test_labels_agree_with_exact_winding_numbers(rigged_hand):
    poses = sample_poses(rigged_hand, 3, split_rng("val", 2))
    config = LabelConfig(uniform_points=400, surface_points=800)
    batch = label_poses(rigged_hand, poses, np.random.default_rng(0), config)
    assert batch.points.shape == (3, 1200, 3) and batch.occupancy.shape == (3, 1200)
    uniform = batch.points[:, : config.uniform_points]
    assert float(uniform.abs().max()) <= BOX_HALF_SIDE
    faces = rigged_hand.faces.numpy()
    for vertices, points, labels in zip(batch.vertices_model, batch.points, batch.occupancy, strict=True):
        exact = igl.winding_number(vertices, faces, points.double().numpy()) > 0.5
        assert np.mean(exact == labels.numpy().astype(bool)) >= 0.999
        # Near-surface points straddle the surface; uniform ones are mostly outside the hand.
        assert 0.25 < float(labels[config.uniform_points :].mean()) < 0.75
        assert float(labels[: config.uniform_points].mean()) < 0.05


def test_model_frame_is_the_scaled_normalised_frame(rigged_hand):
    poses = sample_poses(rigged_hand, 2, split_rng("val", 4))
    keypoints = poses.apply(rigged_hand).keypoints.double()
    model = to_model_frame(keypoints, keypoints)
    # Wrist at the origin, middle MCP on the -x axis, as in the reference's frame N (scaled by 2.5).
    torch.testing.assert_close(model[:, 0], torch.zeros(2, 3, dtype=torch.float64), atol=1e-9, rtol=0)
    middle = model[:, 9]
    assert (middle[:, 0] < 0).all() and float(middle[:, 1:].abs().max()) < 1e-9
    torch.testing.assert_close(middle.norm(dim=-1), MODEL_SCALE * (keypoints[:, 9] - keypoints[:, 0]).norm(dim=-1))
