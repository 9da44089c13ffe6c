"""Live meshing: a stream seeded by the previous frame gives the from-scratch mesh of every frame."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import models
from models import skeleton
from models.api import StreamKeypoints, mesh_streams
from models.canonical import MODEL_SCALE, canonicalize
from models.geometry import chamfer_distance
from models.grasps.model import load_vae_weights
from models.meshing import MISE_LEVELS, MeshStats, extract_model_meshes
from models.stream_bench import load_sequence, stream_benchmark, synthetic_sequence
from models.streaming import StreamConfig, carry_vertices, select_hands, step_streams

REPO_ROOT = Path(__file__).resolve().parent.parent
KPS_SEQ = REPO_ROOT.parent / "shared" / "halo_reference" / "kps_seq.pkl"
VAE_CHECKPOINT = REPO_ROOT / "models" / "checkpoints" / "halo_vae.safetensors"
MAX_CHAMFER_M = 2e-4  # 0.2 mm, vertex to nearest vertex (bounds the surface Chamfer distance from above)


@pytest.fixture(scope="module")
def base(base_checkpoint):
    return models.load_base(base_checkpoint)


@pytest.fixture(scope="module")
def own_sequence() -> np.ndarray:
    """(48,21,3): the project's synthetic open -> fist -> open sequence on the grasp model's hand skeleton."""
    if not VAE_CHECKPOINT.is_file():
        pytest.skip("the shipped grasp checkpoint (hand skeleton) is not installed")
    vae, _ = load_vae_weights(VAE_CHECKPOINT)
    return synthetic_sequence(vae.skeleton, frames=48)


@pytest.fixture(scope="module")
def tracked_sequence() -> np.ndarray:
    """(170,21,3): HALO's demo sequence from a hand tracker."""
    if not KPS_SEQ.is_file():
        pytest.skip("../shared/halo_reference/kps_seq.pkl (HALO's tracked demo sequence) is absent")
    return load_sequence(KPS_SEQ)


def _fingertip_gaps(mesh: trimesh.Trimesh, keypoints: np.ndarray) -> np.ndarray:
    """(5,) distance from each fingertip keypoint to the mesh's nearest vertex, metres."""
    tips = keypoints[list(skeleton.MANO_TIPS)]
    return np.linalg.norm(tips[:, None] - np.asarray(mesh.vertices)[None], axis=-1).min(1)


def _assert_stream_matches_scratch(base, frames: np.ndarray, resolution: int) -> models.api.MeshStream:
    stream = base.mesh_stream(resolution=resolution, smooth=0)
    scratch_points = streamed_points = 0
    for index, keypoints in enumerate(frames):
        (streamed,), stats = stream.mesh_with_stats(keypoints)
        (scratch,), scratch_stats = base.mesh_with_stats(keypoints, resolution=resolution)
        assert streamed.is_watertight, f"frame {index}"
        assert chamfer_distance(streamed.vertices, scratch.vertices) <= MAX_CHAMFER_M, f"frame {index}"
        assert len(streamed.split(only_watertight=False)) == len(scratch.split(only_watertight=False)), f"frame {index}"
        np.testing.assert_allclose(_fingertip_gaps(streamed, keypoints), _fingertip_gaps(scratch, keypoints), atol=1e-3)
        if index:
            streamed_points += stats.points_evaluated
            scratch_points += scratch_stats.points_evaluated
    # Seeded frames are the rule, and they evaluate fewer grid points than the coarse-to-fine search.
    assert stream.stats.seeded >= 0.9 * len(frames)
    assert streamed_points < scratch_points
    return stream


@pytest.mark.parametrize("resolution", [64, 128])
def test_stream_matches_scratch_on_every_frame_of_the_tracked_sequence(base, tracked_sequence, resolution):
    _assert_stream_matches_scratch(base, tracked_sequence, resolution)


@pytest.mark.parametrize("resolution", [64, 128])
def test_stream_matches_scratch_on_every_frame_of_our_sequence(base, own_sequence, resolution):
    stream = _assert_stream_matches_scratch(base, own_sequence, resolution)
    assert stream.stats.fallbacks == {"start": 1}


def test_pose_jump_falls_back_to_the_full_extraction(base, own_sequence):
    stream = base.mesh_stream(resolution=64, smooth=0)
    stream.mesh(own_sequence[0])
    fist = own_sequence[len(own_sequence) // 2]
    assert chamfer_distance(stream.mesh(fist).vertices, base.mesh(fist, resolution=64).vertices) == 0.0
    assert stream.stats.fallbacks == {"start": 1, "jump": 1}
    stream.reset()
    stream.mesh(fist)
    assert stream.stats.fallbacks == {"start": 2, "jump": 1}


def test_band_that_does_not_close_falls_back(base, own_sequence):
    stream = base.mesh_stream(config=StreamConfig(resolution=64, max_closure_rounds=1), smooth=0)
    for keypoints in own_sequence[:4]:
        assert chamfer_distance(stream.mesh(keypoints).vertices, base.mesh(keypoints, resolution=64).vertices) == 0.0
    assert stream.stats.fallbacks.get("band_open", 0) >= 1


def test_sparse_seed_grows_to_the_whole_surface(base, own_sequence):
    """Seeded from a tenth of the previous surface, closure still finds the whole hand (or falls back)."""
    stream = base.mesh_stream(config=StreamConfig(resolution=64, max_closure_rounds=20), smooth=0)
    stream.mesh(own_sequence[0])
    (seed,) = stream.mesher.previous
    seed.vertices, seed.parts = seed.vertices[::10], seed.parts[::10]
    mesh = stream.mesh(own_sequence[1])
    assert chamfer_distance(mesh.vertices, base.mesh(own_sequence[1], resolution=64).vertices) <= MAX_CHAMFER_M
    assert stream.stats.seeded == 1 and max(stream.stats.closure_rounds) > 2


@pytest.mark.parametrize("tamper", ["volume", "part"])
def test_lost_piece_is_detected_and_meshed_from_scratch(base, own_sequence, tamper):
    stream = base.mesh_stream(resolution=64, smooth=0)
    stream.mesh(own_sequence[0])
    (seed,) = stream.mesher.previous
    if tamper == "volume":  # as if the last frame held a piece this one lacks
        seed.volume *= 1.5
    else:
        seed.part_counts = seed.part_counts.clone()  # the stream's tensors are inference tensors
        seed.part_counts[3] = 10 * seed.part_counts[3] + 100  # index fingertip part
    mesh = stream.mesh(own_sequence[1])
    assert stream.stats.fallbacks == {"start": 1, tamper: 1}
    assert chamfer_distance(mesh.vertices, base.mesh(own_sequence[1], resolution=64).vertices) == 0.0


def test_two_hands_left_and_right_in_one_stream(base, own_sequence):
    frames = own_sequence[:3]
    stream = base.mesh_stream(resolution=64, smooth=0)
    for keypoints in frames:
        pair = np.stack([keypoints, keypoints @ skeleton.MIRROR])
        right, left = stream.mesh(pair, hand=["right", "left"])
        expected_right, expected_left = base.mesh(pair, hand=["right", "left"], resolution=64)
        assert chamfer_distance(right.vertices, expected_right.vertices) <= MAX_CHAMFER_M
        assert chamfer_distance(left.vertices, expected_left.vertices) <= MAX_CHAMFER_M
        assert left.volume > 0
    assert stream.stats.seeded == 4 and stream.stats.fallbacks == {"start": 2}
    stream.mesh(frames[0])  # one hand now: the stream restarts
    assert stream.stats.fallbacks == {"start": 3}


def test_streams_meshed_together_give_each_stream_its_own_meshes(base, own_sequence):
    """Three streams (one of two hands, one joining late) meshed in one pass == each meshed on its own."""
    together = [base.mesh_stream(resolution=64, smooth=smooth) for smooth in (0, 3, 0)]
    alone = [base.mesh_stream(resolution=64, smooth=smooth) for smooth in (0, 3, 0)]
    for index in range(4):
        frames = [own_sequence[index], own_sequence[[index + 10, index + 20]], own_sequence[index + 30]]
        joined = [0, 1] if index < 2 else [0, 1, 2]
        batch = [StreamKeypoints(together[s], frames[s], hand="left" if s == 1 else "right") for s in joined]
        meshes, stats = mesh_streams(batch)
        assert stats.points_evaluated > 0
        for s, stream_meshes in zip(joined, meshes, strict=True):
            expected = alone[s].mesh_with_stats(frames[s], hand="left" if s == 1 else "right")[0]
            assert len(stream_meshes) == len(expected)
            for mesh, reference in zip(stream_meshes, expected, strict=True):
                np.testing.assert_array_equal(mesh.faces, reference.faces)
                # float32 matmuls over other batch shapes round differently: a micron, far below the grid step
                np.testing.assert_allclose(mesh.vertices, reference.vertices, rtol=0, atol=1e-6)
    for joined_stream, own_stream in zip(together, alone, strict=True):
        assert joined_stream.stats.seeded == own_stream.stats.seeded > 0
        assert joined_stream.stats.fallbacks == own_stream.stats.fallbacks
        assert joined_stream.stats.points_evaluated == own_stream.stats.points_evaluated
    assert together[1].stats.last_fallbacks == ["", ""] and together[2].stats.fallbacks == {"start": 1}


def test_streams_of_other_configs_are_not_meshed_together(base, own_sequence):
    canonical = canonicalize(torch.from_numpy(own_sequence[:1]))
    streams = [base.mesh_stream(resolution=resolution).mesher for resolution in (64, 128)]
    with pytest.raises(ValueError, match="meshers"):
        step_streams(streams, [canonical, canonical])


def test_a_helper_thread_takes_half_the_decoder_work_and_changes_no_mesh(base, own_sequence):
    plain, helped = base.mesh_stream(resolution=64, smooth=0), base.mesh_stream(resolution=64, smooth=0)
    with ThreadPoolExecutor(1) as helper:
        for keypoints in own_sequence[:3]:
            (mesh,), _ = helped.mesh_with_stats(keypoints, helper=helper)
            np.testing.assert_array_equal(mesh.vertices, plain.mesh(keypoints).vertices)
    assert helped.stats.seeded == plain.stats.seeded == 2


def test_bones_carry_their_joints_exactly(own_sequence):
    """A part's rigid transform between two frames moves its bone's end joint onto the next frame's joint."""
    canonical = canonicalize(torch.from_numpy(own_sequence[[10, 11]]))
    joints = canonical.joints * MODEL_SCALE  # (2,21,3) model frame, biomech order
    # Part 3 is the index distal bone (biomech joints 12 -> 17), part 0 the palm (identity: wrist, middle MCP).
    for part, joint in [(3, 17), (3, 12), (0, 3), (0, 0)]:
        moved = carry_vertices(joints[0, joint][None], torch.tensor([0]), torch.tensor([part]),
                               canonical.part_matrices[:1], canonical.part_matrices[1:])
        torch.testing.assert_close(moved[0], joints[1, joint], atol=1e-9, rtol=0)


def test_stream_config_is_checked(base):
    with pytest.raises(ValueError, match="resolution"):
        base.mesh_stream(resolution=100)
    with pytest.raises(ValueError, match="smooth"):
        base.mesh_stream(smooth=-1)
    assert set(MISE_LEVELS) >= {64, 128}


def test_seeded_step_returns_model_frame_meshes_like_the_full_extraction(base, own_sequence):
    canonical = canonicalize(torch.from_numpy(own_sequence[:2]))
    mesher = base.mesh_stream(resolution=64).mesher
    for frame in range(2):
        single = select_hands(canonical, torch.tensor([frame]))
        (vertices, faces), = mesher.step(single, MeshStats())
        (expected, expected_faces), = extract_model_meshes(base.decoder, single, 64)
        assert chamfer_distance(vertices, expected) == 0.0 and len(faces) == len(expected_faces)


def test_stream_benchmark_reports_ratios(base, own_sequence):
    lines = []
    rows = stream_benchmark(base, own_sequence[:4], calibration=lambda: 0.5, resolutions=(64,), log=lines.append)
    (row,) = rows
    assert row["frames"] == 4 and row["resolution"] == 64 and len(lines) == 1
    assert row["stream_ratio"] == pytest.approx(row["stream_ms_per_frame"] / 1000 / 0.5)
    assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["fallbacks"] == {"start": 1}
