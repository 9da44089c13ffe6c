"""HALO-VAE pieces: the network, checkpoint round trip, bone-preserving refinement, occupancy terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import models
from models.canonical import MODEL_SCALE, canonicalize, transform_points, validate_keypoints
from models.data.objects import make_object
from models.grasps.hand_object import (
    RefineConfig,
    back_off,
    bone_vectors,
    from_bones,
    hand_logits,
    hand_object_terms,
    refine,
)
from models.grasps.metrics import grasp_metrics
from models.grasps.model import GraspVAE, VAEConfig, kl_divergence, load_vae_weights, save_vae
from models.grasps.object_input import bps_basis, object_points
from models.occupancy import OccupancyDecoder
from models.train.vae import augment_rotations, load_grasp_data

SMALL = VAEConfig(bps_points=32, latent=8, hidden=32, object_code=16)


def a_hand(batch: int = 3) -> torch.Tensor:
    """(B,21,3) plausible mano keypoints: fingers fanned out from a wrist at the origin, metres."""
    joints = [np.zeros(3)]
    for finger, angle in enumerate(np.linspace(-0.9, 0.6, 5)):
        direction = np.array([np.cos(angle), np.sin(angle), 0.1 * finger])
        for joint in range(1, 5):
            joints.append(direction * (0.04 + 0.025 * joint))
    hand = torch.as_tensor(np.stack(joints), dtype=torch.float32)
    return hand + 0.01 * torch.arange(batch, dtype=torch.float32)[:, None, None]


def test_vae_shapes_and_kl() -> None:
    model = GraspVAE(SMALL)
    keypoints, bps = a_hand(4), torch.rand(4, 32) * 0.1
    recon, mean, log_variance = model(keypoints, bps)
    assert recon.shape == (4, 21, 3) and mean.shape == (4, 8) and log_variance.shape == (4, 8)
    assert torch.allclose(kl_divergence(torch.zeros(2, 8), torch.zeros(2, 8)), torch.zeros(2))
    assert (kl_divergence(mean, log_variance) >= 0).all()


def test_checkpoint_round_trip(tmp_path) -> None:
    model = GraspVAE(SMALL).eval()
    card = save_vae(model, tmp_path / "vae.safetensors", {"name": "test-vae"})
    loaded, loaded_card = load_vae_weights(tmp_path / "vae.safetensors")
    assert loaded.config == SMALL and loaded_card["sha256"] == card["sha256"]
    latent, code = torch.randn(2, 8), torch.randn(2, 16)
    torch.testing.assert_close(loaded.decode(latent, code), model.decode(latent, code))


def test_bones_round_trip_and_refinement_keeps_lengths() -> None:
    hand = a_hand()
    validate_keypoints(hand.numpy())  # the test hand is a valid skeleton
    bones = bone_vectors(hand)
    torch.testing.assert_close(from_bones(hand[:, 0], bones * 3.0, bones.norm(dim=-1)), hand)
    torch.manual_seed(0)
    decoder = OccupancyDecoder().requires_grad_(False)
    interior = torch.rand(3, 16, 3) * 0.04 + torch.tensor([0.08, 0.0, 0.0])
    surface = torch.rand(3, 16, 3) * 0.04 + torch.tensor([0.08, 0.0, 0.0])
    refined = refine(decoder, hand, interior, surface, RefineConfig(steps=3, points=16))
    assert not torch.allclose(refined, hand)
    torch.testing.assert_close(bone_vectors(refined).norm(dim=-1), bones.norm(dim=-1), atol=1e-5, rtol=1e-5)


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


def test_grasp_data_loads_splits_and_rotates(tmp_path) -> None:
    basis = bps_basis(16, 0.15)
    indices = [0, 16, 18]  # train, val, test
    points = [object_points(make_object(i)[0], basis, seed=i) for i in indices]
    keypoints = np.stack([a_hand(1)[0].numpy()] * 4)
    np.savez(tmp_path / "shard_00000.npz", object_index=np.array(indices),
             object_split=np.array(["train", "val", "test"]), object_kind=np.array(["box"] * 3),
             bps=np.stack([p.bps for p in points]), surface=np.stack([p.surface for p in points]),
             interior=np.stack([p.interior for p in points]), keypoints=keypoints,
             grasp_object=np.array([0, 0, 1, 2]), attempts=np.array(8), seconds=np.array(1.0))
    data = load_grasp_data(tmp_path)
    train, test = data.subset("train"), data.subset("test")
    assert len(train.keypoints) == 2 and len(test.keypoints) == 1 and test.object_index.tolist() == [18]
    rotated = augment_rotations(train, 1, basis)
    assert len(rotated.keypoints) == 4 and rotated.owner.tolist() == [0, 0, 1, 1]
    # A rigid rotation keeps the hand's shape: pairwise joint distances are unchanged.
    torch.testing.assert_close(torch.cdist(rotated.keypoints[2], rotated.keypoints[2]),
                               torch.cdist(train.keypoints[0], train.keypoints[0]), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def sunk_hand():
    """The shipped base model, a hand pressed 4 mm (keypoints) into a slab below it, and the slab's points."""
    try:
        base = models.load_base()
    except FileNotFoundError:
        pytest.skip("the shipped base checkpoint is absent")
    hand = a_hand(1)
    slab = trimesh.creation.box(extents=(0.12, 0.12, 0.03))
    slab.apply_translation((0.06, 0.0, hand[0, :, 2].min().item() + 0.004 - 0.015))
    points = object_points(slab, bps_basis(16, 0.15), seed=0)
    centre = torch.as_tensor(points.centre, dtype=torch.float32)
    tensors = {name: torch.as_tensor(getattr(points, name), dtype=torch.float32)[None]
               for name in ("interior", "surface", "shell", "shell_depth")}
    return base, slab, hand - centre, centre, tensors


def measured_depth_mm(base, slab: trimesh.Trimesh, keypoints: torch.Tensor) -> float:
    """(1,21,3) keypoints -> max penetration depth of the hand mesh (resolution 64) into the slab, mm."""
    return grasp_metrics(base.mesh(keypoints[0].numpy(), resolution=64), slab)["max_penetration_depth_mm"]


def test_refinement_pulls_a_sunk_hand_out_on_the_meshed_hand(sunk_hand) -> None:
    # Where one hand ends (4-6 mm here) depends on the checkpoint and on how densely the shell samples the
    # slab; the <= 5 mm depth target is a mean over test grasps, which `halo eval vae` measures.
    base, slab, hand, centre, points = sunk_hand
    before = measured_depth_mm(base, slab, hand + centre)
    refined = refine(base.decoder, hand, points["interior"], points["surface"], RefineConfig(steps=20),
                     points["shell"], points["shell_depth"])
    after = measured_depth_mm(base, slab, refined + centre)
    assert before > 10.0 and after < 0.5 * before
    torch.testing.assert_close(bone_vectors(refined).norm(dim=-1), bone_vectors(hand).norm(dim=-1),
                               atol=1e-5, rtol=1e-5)


def test_back_off_moves_the_hand_rigidly_out_of_the_object(sunk_hand) -> None:
    base, slab, hand, centre, points = sunk_hand
    moved = back_off(base.decoder, hand, points["shell"], points["shell_depth"], points["surface"], RefineConfig())
    shift = (moved - hand)[0]
    torch.testing.assert_close(shift, shift[:1].expand(21, -1))  # one translation for all joints
    assert shift[0, 2] > 0.9 * shift[0].norm()  # up, out of the slab's top face
    assert measured_depth_mm(base, slab, moved + centre) < 0.5 * measured_depth_mm(base, slab, hand + centre)


def test_vae_training_with_the_halo_terms_records_them(tmp_path) -> None:
    """A few steps of ``train_vae`` through the frozen shipped base: the HALO losses are logged and carded."""
    import json

    from models.api import SHIPPED_BASE
    from models.train.vae import TrainConfig, train_vae

    if not SHIPPED_BASE.is_file():
        pytest.skip("the shipped base checkpoint is absent")
    basis = bps_basis(SMALL.bps_points, SMALL.bps_radius_m, SMALL.bps_seed)
    indices = [0, 1, 16]  # train, train, val
    points = [object_points(make_object(i)[0], basis, seed=i) for i in indices]
    keypoints = np.stack([a_hand(1)[0].numpy() + 0.05] * 6)
    np.savez(tmp_path / "shard_00000.npz", object_index=np.array(indices),
             object_split=np.array(["train", "train", "val"]), object_kind=np.array(["box"] * 3),
             bps=np.stack([p.bps for p in points]), surface=np.stack([p.surface for p in points]),
             interior=np.stack([p.interior for p in points]), keypoints=keypoints,
             grasp_object=np.array([0, 0, 1, 1, 2, 2]), attempts=np.array(12), seconds=np.array(1.0))
    (tmp_path / "config.json").write_text(json.dumps({"bps_points": SMALL.bps_points, "bps_radius_m": SMALL.bps_radius_m}))
    config = TrainConfig(steps=4, batch=4, halo_batch=2, halo_points=16, rotations=1)
    out = tmp_path / "vae.safetensors"
    card = train_vae(tmp_path, tmp_path / "run", out, config, SHIPPED_BASE, SMALL, checkpoint_every=2)
    assert card["training"]["halo_terms"] and card["training"]["base_checkpoint"]["name"] == "halo_base"
    assert {"penetration", "contact", "fingertips"} <= set(card["final_losses"]["train"])
    assert all(np.isfinite(value) for value in card["final_losses"]["train"].values())
    model, _ = load_vae_weights(out)
    assert model.config == SMALL
