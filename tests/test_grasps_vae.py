"""HALO-VAE pieces: the pose-space network, checkpoint round trip, pose-space refinement, occupancy terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import models
from models.canonical import MODEL_SCALE, canonicalize, transform_points
from models.data.objects import make_object
from models.grasps.hand_object import (
    RefineConfig,
    back_off,
    descend,
    hand_logits,
    hand_object_terms,
    proxy_gaps,
    refine,
)
from models.grasps.hand_proxy import DISTAL_CAPSULES, fit_proxy
from models.grasps.metrics import grasp_metrics
from models.grasps.model import GraspVAE, VAEConfig, kl_divergence, load_vae_weights, save_vae
from models.grasps.object_input import bps_basis, object_grids, object_points
from models.hand_pose import HandPose, angle_bounds, angles_from_raw, neutral_angles, raw_from_angles
from models.occupancy import OccupancyDecoder
from models.plausibility import plausible
from models.train.vae import augment_rotations, load_grasp_data

SMALL = VAEConfig(bps_points=32, latent=8, hidden=32, object_code=16)
# Every bone but wrist -> ring / pinky MCP, which the palm arch (their metacarpals flexing) moves: these keep
# their length whatever the pose.
RIGID_BONES = [bone for bone in range(20) if bone not in (12, 16)]


def a_hand(batch: int = 3) -> torch.Tensor:
    """(B,21,3) plausible mano keypoints: fingers fanned out from a wrist at the origin, metres."""
    joints = [np.zeros(3)]
    for finger, angle in enumerate(np.linspace(-0.9, 0.6, 5)):
        direction = np.array([np.cos(angle), np.sin(angle), 0.1 * finger])
        for joint in range(1, 5):
            joints.append(direction * (0.04 + 0.025 * joint))
    hand = torch.as_tensor(np.stack(joints), dtype=torch.float32)
    return hand + 0.01 * torch.arange(batch, dtype=torch.float32)[:, None, None]


def bone_lengths(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,21,3) mano keypoints -> (B,20) bone lengths."""
    parents = [0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19]
    return (keypoints[:, 1:] - keypoints[:, parents]).norm(dim=-1)


def test_vae_decodes_poses_whose_keypoints_are_human_hands(rigged_hand) -> None:
    model = GraspVAE(SMALL, rigged_hand.skeleton)
    keypoints, bps = a_hand(4), torch.rand(4, 32) * 0.1
    pose, mean, log_variance = model(keypoints, bps)
    assert pose.raw.shape == (4, 21 + 1) and mean.shape == (4, 8) and log_variance.shape == (4, 8)
    assert torch.allclose(kl_divergence(torch.zeros(2, 8), torch.zeros(2, 8)), torch.zeros(2))
    assert (kl_divergence(mean, log_variance) >= 0).all()
    # A wild decoder (raw angles far beyond any limit) still gives hands inside the joint limits, at the
    # skeleton's bone lengths. The wrist is put back near the origin: the test is about the hand's shape.
    with torch.no_grad():
        model.decoder[-1].weight.mul_(100)
        wild = model.decode(torch.randn(64, 8) * 5, torch.randn(64, 16))
        assert wild.raw.abs().max() > 20
        wild.translation = wild.translation.clamp(-1, 1)
        hands = model.keypoints(wild)
    low, high = angle_bounds(wild.angles)
    assert bool(((wild.angles >= low - 1e-4) & (wild.angles <= high + 1e-4)).all())
    lengths = bone_lengths(hands)[:, RIGID_BONES]
    torch.testing.assert_close(lengths, lengths[:1].expand(64, -1), atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_keeps_the_skeleton(tmp_path, rigged_hand) -> None:
    model = GraspVAE(SMALL, rigged_hand.skeleton).eval()
    card = save_vae(model, tmp_path / "vae.safetensors", {"name": "test-vae"})
    loaded, loaded_card = load_vae_weights(tmp_path / "vae.safetensors")
    assert loaded.config == model.config and loaded_card["sha256"] == card["sha256"]
    latent, code = torch.randn(2, 8), torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.keypoints(loaded.decode(latent, code)), model.keypoints(model.decode(latent, code)))


def test_hand_logits_give_the_fused_max_and_its_keypoint_gradients() -> None:
    """The winner-only shortcut used by refinement and VAE training changes neither values nor gradients."""
    torch.manual_seed(0)
    decoder = OccupancyDecoder().double().requires_grad_(False)  # float64: only the summation order differs
    points = torch.rand(3, 64, 3, dtype=torch.float64) * 0.1 - 0.05
    results = []
    for shortcut in (False, True):
        hand = a_hand().double().requires_grad_(True)
        if shortcut:
            logits = hand_logits(decoder, hand, points)
        else:
            canonical = canonicalize(hand)
            model_points = transform_points(canonical.normalization_matrix, points) * MODEL_SCALE
            code = decoder.hand_code(canonical.part_matrices, canonical.bone_lengths)
            logits = decoder.part_logits(model_points, code).amax(0)
        (logits * torch.linspace(-1, 1, 64, dtype=torch.float64)).sum().backward()
        results.append((logits.detach(), hand.grad))
    (full, full_grad), (short, short_grad) = results
    torch.testing.assert_close(short, full, atol=1e-10, rtol=1e-10)
    assert full_grad.abs().max() > 0
    torch.testing.assert_close(short_grad, full_grad, atol=1e-9, rtol=1e-9)


def test_hand_object_terms_see_points_inside_the_hand() -> None:
    """Penetration is the mean occupancy of interior points; fingertip distance is measured in metres."""
    torch.manual_seed(0)
    decoder = OccupancyDecoder().requires_grad_(False)
    hand = a_hand(1)
    tips = hand[:, [4, 8, 12]]
    terms = hand_object_terms(decoder, hand, tips.clone(), tips.clone())
    assert terms.fingertips.item() == pytest.approx(0.0, abs=1e-6)
    far = hand_object_terms(decoder, hand, tips + 0.5, tips + torch.tensor([0.0, 0.0, 0.02]))
    assert far.fingertips.item() == pytest.approx(0.02, abs=1e-5)
    assert 0.0 <= far.penetration.item() <= 1.0 and far.contact.item() >= 0.0


def write_shard(folder, skeleton, indices: list[int], splits: list[str], owner: list[int], basis) -> None:
    """A synthesis-style shard: the objects' point sets and one open-hand pose per grasp (forward kinematics)."""
    points = [object_points(make_object(i)[0], basis, seed=i) for i in indices]
    count = len(owner)
    angles = neutral_angles(count) * 0.3
    rotation = torch.eye(3).repeat(count, 1, 1)
    translation = torch.tensor([[0.0, 0.0, 0.08]]).repeat(count, 1) + 0.01 * torch.arange(count)[:, None]
    keypoints = skeleton.keypoints(angles, rotation, translation)
    np.savez(folder / "shard_00000.npz", object_index=np.array(indices), object_split=np.array(splits),
             object_kind=np.array(["box"] * len(indices)), bps=np.stack([p.bps for p in points]),
             surface=np.stack([p.surface for p in points]), interior=np.stack([p.interior for p in points]),
             keypoints=keypoints.numpy(), angles=angles.numpy(), rotation=rotation.numpy(),
             translation=translation.numpy(), grasp_object=np.array(owner), attempts=np.array(2 * count),
             seconds=np.array(1.0))


def test_grasp_data_loads_splits_and_rotates_poses_with_their_objects(tmp_path, rigged_hand) -> None:
    basis = bps_basis(16, 0.15)
    skeleton = rigged_hand.skeleton
    write_shard(tmp_path, skeleton, [0, 16, 18], ["train", "val", "test"], [0, 0, 1, 2], basis)
    data = load_grasp_data(tmp_path)
    train, test = data.subset("train"), data.subset("test")
    assert len(train.keypoints) == 2 and len(test.keypoints) == 1 and test.object_index.tolist() == [18]
    rotated = augment_rotations(train, 1, basis)
    assert len(rotated.keypoints) == 4 and rotated.owner.tolist() == [0, 0, 1, 1]
    # The rotated pose (angles, rotation, wrist) still gives the rotated keypoints by forward kinematics.
    again = skeleton.keypoints(rotated.angles, rotated.rotation, rotated.translation)
    torch.testing.assert_close(again, rotated.keypoints, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rotated.keypoints[2], train.keypoints[0], atol=1e-3)


@pytest.fixture(scope="module")
def sunk_hand(rigged_hand):
    """The shipped base model, a skeleton hand pressed ~8 mm (keypoints) into a block below it, its proxy."""
    try:
        base = models.load_base()
    except FileNotFoundError:
        pytest.skip("the shipped base checkpoint is absent")
    skeleton = rigged_hand.skeleton
    angles = neutral_angles(1) * 0.2
    pose = HandPose(raw_from_angles(angles), torch.eye(3)[None], torch.zeros(1, 3))
    hand = skeleton.keypoints(angles_from_raw(pose.raw), pose.rotation, pose.translation)
    lowest = hand[0, hand[0, :, 2].argmin()]
    # A block under the hand's lowest joint (the thumb tip), small enough for its point samples to be dense.
    slab = trimesh.creation.box(extents=(0.06, 0.06, 0.03))
    slab.apply_translation((lowest[0].item(), lowest[1].item(), lowest[2].item() + 0.008 - 0.015))
    points = object_points(slab, bps_basis(16, 0.15), seed=0)
    centre = torch.as_tensor(points.centre, dtype=torch.float32)
    tensors = {name: torch.as_tensor(getattr(points, name), dtype=torch.float32)[None]
               for name in ("interior", "surface", "shell", "shell_depth")}
    pose.translation = pose.translation - centre
    fit_hands = skeleton.keypoints(neutral_angles(2) * torch.tensor([[0.2], [1.0]]), torch.eye(3).repeat(2, 1, 1),
                                   torch.zeros(2, 3)).double().numpy()
    proxy = fit_proxy(fit_hands, base.mesh(fit_hands, resolution=64))
    centred = slab.copy()
    centred.apply_translation(-points.centre)
    tensors["sdf"] = object_grids([centred], 32, 0.03)
    return base, skeleton, proxy, slab, pose, hand - centre, centre, tensors


def measured_depth_mm(base, slab: trimesh.Trimesh, keypoints: torch.Tensor) -> float:
    """(1,21,3) keypoints -> max penetration depth of the hand mesh (resolution 64) into the slab, mm."""
    return grasp_metrics(base.mesh(keypoints[0].numpy(), resolution=64), slab)["max_penetration_depth_mm"]


def test_pose_space_refinement_pulls_a_sunk_hand_out_and_keeps_it_a_hand(sunk_hand) -> None:
    base, skeleton, proxy, slab, pose, hand, centre, points = sunk_hand
    before = measured_depth_mm(base, slab, hand + centre)
    refined = refine(base.decoder, skeleton, proxy, pose, points["sdf"], points["shell"], points["shell_depth"],
                     points["surface"], RefineConfig(backoff_target_m=0))
    after = measured_depth_mm(base, slab, refined + centre)
    assert before > 8.0 and after < 0.5 * before
    torch.testing.assert_close(bone_lengths(refined)[:, RIGID_BONES], bone_lengths(hand)[:, RIGID_BONES], atol=1e-5,
                               rtol=1e-5)
    assert plausible(refined.double().numpy()).all()


def test_back_off_moves_the_hand_rigidly_out_of_the_object(sunk_hand) -> None:
    base, _, proxy, slab, _, hand, centre, points = sunk_hand
    moved = back_off(base.decoder, proxy, hand, points["shell"], points["shell_depth"], points["surface"],
                     RefineConfig())
    shift = (moved - hand)[0]
    torch.testing.assert_close(shift, shift[:1].expand(21, -1))  # one translation for all joints
    assert shift[0, 2] > 0.9 * shift[0].norm()  # up, out of the slab's top face
    assert measured_depth_mm(base, slab, moved + centre) < 0.5 * measured_depth_mm(base, slab, hand + centre)


def test_closing_moves_the_fingers_onto_the_object_and_holds_the_wrist(sunk_hand) -> None:
    """The closing steps (``descend`` with the wrist held) of a hand lifted 2 cm above the block: the wrist and
    the palm stay, the fingers flex down onto the block and keep their bone lengths."""
    _, skeleton, proxy, _, pose, _, _, points = sunk_hand
    lifted = pose.translation + torch.tensor([[0.0, 0.0, 0.02]])
    pulled = torch.ones(1, 5)
    before = skeleton.keypoints(angles_from_raw(pose.raw), pose.rotation, lifted)
    raw, rotation, translation = descend(skeleton, proxy, points["sdf"], pulled, pose.raw, pose.rotation, lifted,
                                         RefineConfig().close_steps, RefineConfig(), wrist=False)
    after = skeleton.keypoints(angles_from_raw(raw), rotation, translation)
    torch.testing.assert_close(rotation, pose.rotation)
    torch.testing.assert_close(translation, lifted)
    fixed = [0, 5, 9]  # the wrist and the index and middle knuckles (the palm arch moves the other two)
    torch.testing.assert_close(after[:, fixed], before[:, fixed], atol=1e-6, rtol=0)
    tip_gap = lambda hand: proxy_gaps(hand, proxy, points["sdf"])[:, DISTAL_CAPSULES].amin(-1)  # noqa: E731
    assert (tip_gap(after)[0, 1:] < tip_gap(before)[0, 1:] - 0.005).all()  # every finger moved down by 5 mm or more
    torch.testing.assert_close(bone_lengths(after)[:, RIGID_BONES], bone_lengths(before)[:, RIGID_BONES], atol=1e-5,
                               rtol=1e-5)
    assert plausible(after.double().numpy()).all()


def test_vae_training_with_the_halo_terms_records_them(tmp_path, rigged_hand, monkeypatch) -> None:
    """A few steps of ``train_vae`` through the frozen shipped base: the HALO losses are logged and carded."""
    import json

    from models.api import SHIPPED_BASE
    from models.train import vae as vae_training
    from models.train.vae import TrainConfig, train_vae

    if not SHIPPED_BASE.is_file():
        pytest.skip("the shipped base checkpoint is absent")
    monkeypatch.setattr(vae_training.RiggedHand, "from_gltf", lambda path: rigged_hand)
    basis = bps_basis(SMALL.bps_points, SMALL.bps_radius_m, SMALL.bps_seed)
    write_shard(tmp_path, rigged_hand.skeleton, [0, 1, 16], ["train", "train", "val"], [0, 0, 1, 1, 2, 2], basis)
    (tmp_path / "config.json").write_text(json.dumps({"bps_points": SMALL.bps_points, "bps_radius_m": SMALL.bps_radius_m}))
    config = TrainConfig(steps=4, batch=4, halo_batch=2, halo_points=16, rotations=1)
    out = tmp_path / "vae.safetensors"
    card = train_vae(tmp_path, tmp_path / "run", out, config, SHIPPED_BASE, SMALL, checkpoint_every=2,
                     hand_asset=tmp_path)
    assert card["training"]["halo_terms"] and card["training"]["base_checkpoint"]["name"] == "halo_base"
    assert {"penetration", "contact", "fingertips", "angles"} <= set(card["final_losses"]["train"])
    assert all(np.isfinite(value) for value in card["final_losses"]["train"].values())
    model, _ = load_vae_weights(out)
    assert model.config.latent == SMALL.latent and len(model.config.skeleton_joints) == 25
