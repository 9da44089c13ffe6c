"""Parity with the original HALO implementation (../shared/halo_reference/reference.npz), float32."""

import numpy as np
import pytest
import torch
import trimesh

from models.canonical import MODEL_SCALE, canonicalize, transform_points
from models.geometry import chamfer_distance
from models.meshing import MeshStats, bone_distances, extract_meshes, part_distances

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("precision", [torch.float32, torch.float64])
def test_canonicalisation_matches_reference(reference, precision):
    canonical = canonicalize(torch.from_numpy(reference["keypoints_mano_m"]).to(precision))
    assert np.abs(canonical.normalization_matrix.numpy() - reference["normalization_mat"]).max() <= 1e-4
    assert np.abs(canonical.part_matrices.numpy() - reference["halo_trans_mats"]).max() <= 1e-4
    assert np.abs(canonical.bone_lengths.numpy() - reference["bone_lengths"]).max() <= 1e-6
    normalized_cm = canonical.joints.numpy() * 100
    assert np.abs(normalized_cm - reference["normalized_kps"]).max() <= 1e-3


def test_canonicalisation_is_invariant_to_rigid_motion(reference):
    moved = canonicalize(torch.from_numpy(reference["extra_rt_keypoints_mano_m"][None]).double())
    source = int(reference["extra_rt_source_frame"])
    frame = list(reference["frames"]).index(source)
    assert np.abs(moved.part_matrices[0].numpy() - reference["halo_trans_mats"][frame]).max() <= 1e-4


def test_decoder_matches_reference_on_stored_inputs(reference, published_base):
    decoder = published_base.decoder
    code = decoder.hand_code(
        torch.from_numpy(reference["halo_trans_mats"]), torch.from_numpy(reference["bone_lengths"])
    )
    occupancy = decoder.occupancy(torch.from_numpy(reference["query_points"]), code).numpy()
    assert np.abs(occupancy - reference["occupancy"]).max() <= 1e-3
    assert ((occupancy > 0.5) == (reference["occupancy"] > 0.5)).mean() >= 0.999


def test_occupancy_end_to_end_from_keypoints(reference, published_base):
    """Keypoints -> our canonicalisation -> decoder. The reference's own float32 matrices carry ~4e-5 of
    rounding noise; at surface points (p ~ 0.5, the steepest part of the sigmoid) that moves a few
    probabilities by up to ~5e-3, so the bound is on the decision and on almost all points."""
    agree, within, worst = [], [], 0.0
    for frame in range(len(reference["frames"])):
        points_model = torch.from_numpy(reference["query_points"][frame])[None].double()
        to_keypoint_frame = torch.linalg.inv(
            torch.from_numpy(reference["normalization_mat"][frame : frame + 1]).double()
        )
        points = transform_points(to_keypoint_frame, points_model / MODEL_SCALE)[0].numpy()
        occupancy = published_base.occupancy(reference["keypoints_mano_m"][frame], points)
        expected = reference["occupancy"][frame]
        agree.append(((occupancy > 0.5) == (expected > 0.5)).mean())
        within.append((np.abs(occupancy - expected) <= 1e-3).mean())
        worst = max(worst, float(np.abs(occupancy - expected).max()))
    assert min(agree) >= 0.999
    assert np.mean(within) >= 0.9999
    assert worst <= 1e-2


@pytest.mark.parametrize("culled", [True, False], ids=["culled", "full-grid"])
def test_meshes_match_reference_at_128(reference, published_base, culled):
    frames = [0, 5, 11] if culled else [3]
    canonical = canonicalize(torch.from_numpy(reference["keypoints_mano_m"][frames]).double())
    stats = MeshStats()
    meshes = extract_meshes(published_base.decoder, canonical, 128, 0.06 if culled else None, stats)
    for frame, (vertices, faces) in zip(frames, meshes, strict=True):
        ours = trimesh.Trimesh(vertices, faces, process=False)
        theirs = trimesh.Trimesh(reference[f"mesh_vertices_{frame}"], reference[f"mesh_faces_{frame}"], process=False)
        assert ours.is_watertight and ours.volume > 0
        assert abs(len(ours.vertices) - len(theirs.vertices)) <= 10
        # vertex-to-nearest-vertex bounds the surface Chamfer distance from above: the stricter test
        assert chamfer_distance(ours.vertices, theirs.vertices) <= 1e-4  # 0.1 mm


def test_rigidly_moved_input_gives_the_moved_reference_mesh(reference, published_base):
    mesh = published_base.mesh(reference["extra_rt_keypoints_mano_m"], smooth=0)  # parity mode: no smoothing
    theirs = trimesh.Trimesh(reference["extra_rt_mesh_vertices"], reference["extra_rt_mesh_faces"], process=False)
    assert chamfer_distance(mesh.vertices, theirs.vertices) <= 1e-4


def test_nearest_parts_evaluation_equals_all_parts_where_it_matters(reference, published_base):
    """Meshing evaluates each point's 6 nearest parts only; on the reference query points that must give
    the same occupancy as all 16 parts wherever the hand is (p > 0.01) and never change the decision."""
    decoder = published_base.decoder
    canonical = canonicalize(torch.from_numpy(reference["keypoints_mano_m"]).double())
    code = decoder.hand_code(canonical.part_matrices.float(), canonical.bone_lengths.float())
    points = torch.from_numpy(reference["query_points"])
    full = decoder.occupancy(points, code)
    hands = torch.arange(len(points)).repeat_interleave(points.shape[1])
    distances = part_distances(bone_distances(points, canonical.joints.float() * MODEL_SCALE))
    nearest = decoder.nearest_parts_occupancy(points.reshape(-1, 3), hands, distances.reshape(-1, 16), code)
    nearest = nearest.reshape(full.shape)
    relevant = full > 0.01
    assert torch.equal(nearest[relevant], full[relevant])
    assert torch.equal(nearest > 0.5, full > 0.5)
    assert (full - nearest).max() <= 0.01


def test_nearest_parts_evaluation_does_not_depend_on_point_order(reference, published_base):
    """Pairs are grouped by (part, hand) without a sort when points come hand by hand; shuffled input must
    give the same values, point for point."""
    decoder = published_base.decoder
    canonical = canonicalize(torch.from_numpy(reference["keypoints_mano_m"][:3]).double())
    code = decoder.hand_code(canonical.part_matrices.float(), canonical.bone_lengths.float())
    points = torch.from_numpy(reference["query_points"][:3, :4000])
    hands = torch.arange(3).repeat_interleave(points.shape[1])
    distances = part_distances(bone_distances(points, canonical.joints.float() * MODEL_SCALE)).reshape(-1, 16)
    in_order = decoder.nearest_parts_occupancy(points.reshape(-1, 3), hands, distances, code)
    shuffle = torch.randperm(len(hands), generator=torch.Generator().manual_seed(0))
    shuffled = decoder.nearest_parts_occupancy(points.reshape(-1, 3)[shuffle], hands[shuffle], distances[shuffle], code)
    assert torch.allclose(shuffled, in_order[shuffle], atol=1e-6)
