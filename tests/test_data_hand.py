"""The rigged hand: glTF loading, linear blend skinning, fingertip keypoints on the skin."""

from __future__ import annotations

import igl
import numpy as np
import pytest
import torch
import trimesh

from models.data.poses import sample_poses, split_rng
from models.data.rigged_hand import WEBXR_JOINT_MAP, ray_exit
from models.geometry import inside_mesh
from models.hand_pose import axis_angle_to_matrix
from models.skeleton import MANO_NON_TIPS, MANO_TIPS


def test_loader_gives_a_watertight_hand_with_25_joints_mapped_to_21(rigged_hand):
    skinned = rigged_hand.skinned
    mesh = trimesh.Trimesh(skinned.vertices, skinned.faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.body_count == 1
    assert mesh.volume > 0  # outward faces
    assert 1100 <= len(skinned.vertices) <= 1250  # seam duplicates merged (the file stores 1360)
    assert len(skinned.joint_names) == 25 and set(skinned.joint_names) == set(WEBXR_JOINT_MAP.parents)
    assert len(set(rigged_hand.mano_index.tolist())) == 21
    np.testing.assert_allclose(skinned.skin_weights.sum(1), 1.0, atol=1e-6)
    # Skin regions map onto all 16 HALO parts; the palm (part 0) is the largest.
    counts = torch.bincount(rigged_hand.vertex_parts, minlength=16)
    assert (counts > 20).all() and int(counts.argmax()) == 0
    # Every joint's parent comes from the name map: the wrist is the only root.
    assert (skinned.parents == -1).sum() == 1 and skinned.joint_names[int(np.argmin(skinned.parents))] == "wrist"


def test_rest_pose_reproduces_the_bind_pose(rigged_hand):
    posed = rigged_hand.pose(rigged_hand.rest_rotations(2))
    expected = rigged_hand.rest_vertices - rigged_hand.rest_root
    torch.testing.assert_close(posed.vertices, expected.expand(2, -1, -1), atol=1e-6, rtol=0)
    bind_joints = rigged_hand.bind[:, :3, 3] - rigged_hand.rest_root
    torch.testing.assert_close(posed.joints[0], bind_joints, atol=1e-6, rtol=0)


def test_global_similarity_moves_vertices_and_keypoints_together(rigged_hand):
    rotation = axis_angle_to_matrix(torch.tensor([[0.3, -1.2, 0.5]]))
    translation, scale = torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([1.1])
    rest = rigged_hand.pose(rigged_hand.rest_rotations())
    moved = rigged_hand.pose(
        rigged_hand.rest_rotations(), global_rotation=rotation, translation=translation, scale=scale
    )
    expected = scale * rest.keypoints @ rotation.transpose(1, 2) + translation[:, None]
    torch.testing.assert_close(moved.keypoints, expected, atol=1e-5, rtol=0)


def test_flexing_a_joint_moves_only_its_finger(rigged_hand):
    rotations = torch.zeros(1, rigged_hand.num_joints, 3)
    rotations[0, rigged_hand.joint_names.index("index-finger-phalanx-proximal"), 0] = -1.2
    rest, bent = rigged_hand.pose(torch.zeros_like(rotations)), rigged_hand.pose(rotations)
    moved = (bent.keypoints - rest.keypoints).norm(dim=-1)[0]
    assert (moved[6:9] > 0.01).all()  # index PIP, DIP, tip
    untouched = [i for i in range(21) if i not in (6, 7, 8)]
    assert moved[untouched].max() < 1e-6


def test_fingertip_keypoints_lie_on_the_skin_beyond_the_tip_joints(rigged_hand):
    posed = rigged_hand.pose(rigged_hand.rest_rotations())
    tips = posed.keypoints[0, MANO_TIPS].double().numpy()
    squared, _, _ = igl.point_mesh_squared_distance(tips, posed.vertices[0].double().numpy(), rigged_hand.faces.numpy())
    assert np.sqrt(squared).max() < 1e-5
    # The WebXR tip joints sit inside the fingertips; the keypoints move out by about a centimetre.
    shift = np.linalg.norm(tips - posed.joints[0, rigged_hand.tip_index].numpy(), axis=1)
    assert ((shift > 0.005) & (shift < 0.015)).all()


def test_ray_exit_on_a_cube():
    cube = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    vertices = torch.as_tensor(cube.vertices, dtype=torch.float32)[None]
    origins = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.2, -0.3]]])
    directions = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, -3.0]]])
    hits = ray_exit(vertices, torch.as_tensor(cube.faces), origins, directions)
    torch.testing.assert_close(hits, torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.2, -1.0]]]))


def test_bone_scale_stretches_the_bone(rigged_hand):
    scales = torch.ones(1, rigged_hand.num_joints)
    joint = rigged_hand.joint_names.index("middle-finger-phalanx-intermediate")
    scales[0, joint] = 0.8
    rest = rigged_hand.pose(rigged_hand.rest_rotations())
    short = rigged_hand.pose(rigged_hand.rest_rotations(), bone_scales=scales)
    length = lambda p: (p.keypoints[0, 10] - p.keypoints[0, 9]).norm()  # noqa: E731  middle MCP -> PIP
    assert float(length(short) / length(rest)) == pytest.approx(0.8, abs=1e-5)


def test_sampled_keypoints_are_consistent_with_the_mesh(rigged_hand):
    poses = sample_poses(rigged_hand, 24, split_rng("test", 7))
    with torch.no_grad():
        posed = poses.apply(rigged_hand)
    inside, palm = [], []
    for vertices, keypoints in zip(posed.vertices.double().numpy(), posed.keypoints.double().numpy(), strict=True):
        mesh = trimesh.Trimesh(vertices, rigged_hand.faces.numpy(), process=False)
        inside.append(inside_mesh(mesh, keypoints[MANO_NON_TIPS]))
        palm.append(np.linalg.norm(keypoints[9] - keypoints[0]))
    assert np.mean(inside) >= 0.98
    # Wrist -> middle MCP of the asset is 9.2 cm; hand scale 0.85-1.15 and palm bones +-5 %.
    assert min(palm) >= 0.07 and max(palm) <= 0.115
