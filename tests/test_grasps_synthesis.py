"""Grasp synthesis: the object SDF grid, a short optimisation that must lower the grasp energy, the grasp types and
the physics filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

import models
from models.data.grasp_synthesis import GRASP_TYPES, GraspSynthesizer, SynthesisConfig
from models.data.objects import make_object
from models.grasps.object_input import object_grids
from models.hand_pose import DOF_NAMES, angles_from_raw


def test_sdf_grid_is_signed_and_extends_outside() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.03)
    grids = object_grids([sphere], size=32, margin=0.02)
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.04, 0.0, 0.0], [0.0, 0.2, 0.0]]])
    sdf = grids(points)[0]
    assert sdf[0].item() == pytest.approx(-0.03, abs=4e-3)  # trilinear under-reads the cone at the centre
    assert sdf[1].item() == pytest.approx(0.01, abs=2e-3)
    assert sdf[2].item() == pytest.approx(0.17, abs=5e-3)  # beyond the grid: distance keeps growing


@pytest.fixture(scope="module")
def rigged_hand():
    from models.data.asset import fetch_hand_asset
    from models.data.rigged_hand import RiggedHand

    try:
        return RiggedHand.from_gltf(fetch_hand_asset())
    except (FileNotFoundError, OSError) as error:
        pytest.skip(f"rigged hand asset unavailable: {error}")


def test_optimisation_lowers_energy_and_returns_poses_inside_the_pose_space(rigged_hand) -> None:
    from models.hand_pose import angle_bounds
    synthesizer = GraspSynthesizer(rigged_hand, SynthesisConfig(steps=25, physics=False))
    mesh, _ = make_object(1)
    rng = np.random.default_rng(0)
    rotation, translation = synthesizer.placement([mesh], 4, rng)
    types = synthesizer.grasp_types(4)
    assert set(types) == set(GRASP_TYPES)
    pose = synthesizer.initial_pose(types, rng)
    pads = torch.tensor([GRASP_TYPES[name].pads for name in types])
    palm = torch.tensor([GRASP_TYPES[name].palm for name in types])
    grids = object_grids([mesh], 24, 0.03)
    before = synthesizer.energy(pose, rotation, translation, grids, 1, pads, palm)
    result = synthesizer.optimise([mesh], 4, seed=0)
    after = synthesizer.energy(result["raw"], result["rotation"], result["translation"], grids, 1, pads, palm)
    assert after.mean() < before.mean()
    kept = synthesizer.synthesise([mesh], 4, seed=0)[0]
    assert kept["keypoints"].shape[1:] == (21, 3) and np.isfinite(kept["keypoints"]).all()
    angles = torch.as_tensor(kept["angles"])
    low, high = angle_bounds(angles)
    assert bool(((angles >= low - 1e-3) & (angles <= high + 1e-3)).all())
    # The stored keypoints are the forward kinematics of the stored pose.
    again = rigged_hand.skeleton.keypoints(angles, torch.as_tensor(kept["rotation"]), torch.as_tensor(kept["translation"]))
    torch.testing.assert_close(again, torch.as_tensor(kept["keypoints"]), atol=1e-5, rtol=0)


def test_dataset_of_one_split_holds_only_its_objects(rigged_hand, tmp_path, monkeypatch) -> None:
    from models.data import grasp_synthesis
    from models.train.vae import load_grasp_data

    monkeypatch.setattr(grasp_synthesis.RiggedHand, "from_gltf", lambda path: rigged_hand)
    grasp_synthesis.synthesise_dataset(tmp_path, objects=40, per_object=2, batch_objects=3,
                                       config=SynthesisConfig(steps=2), hand_asset=tmp_path, split="test")
    assert sorted(path.name for path in tmp_path.glob("shard_*.npz")) == ["shard_00018.npz", "shard_00039.npz"]
    data = load_grasp_data(tmp_path)
    assert data.object_index.tolist() == [18, 19, 38, 39] and set(data.split.tolist()) == {"test"}


def test_the_physics_filter_keeps_only_grasps_the_check_calls_stable(rigged_hand) -> None:
    from models.grasps.physics import check_grasps

    vae = models.load_vae()
    radii = vae.proxy.radii.numpy()
    mesh, _ = make_object(2)  # a sphere: some grasps that pass the exact checks do not hold it
    unfiltered = GraspSynthesizer(rigged_hand, SynthesisConfig(steps=40, physics=False)).synthesise([mesh], 12, seed=3)[0]
    filtered = GraspSynthesizer(rigged_hand, SynthesisConfig(steps=40), radii).synthesise([mesh], 12, seed=3)[0]
    # The same optimisation: the filtered grasps are the unfiltered ones the physics check holds.
    stable = [result.stable for result in check_grasps(unfiltered["keypoints"].astype(np.float64), radii, mesh)]
    np.testing.assert_allclose(filtered["keypoints"], unfiltered["keypoints"][stable], atol=1e-6)
    assert filtered["grasp_type"].tolist() == unfiltered["grasp_type"][stable].tolist()
    with pytest.raises(ValueError, match="proxy_radii"):
        GraspSynthesizer(rigged_hand, SynthesisConfig())


def test_power_grasps_start_more_closed_than_precision_grips(rigged_hand) -> None:
    synthesizer = GraspSynthesizer(rigged_hand, SynthesisConfig(physics=False))
    rng = np.random.default_rng(0)
    power = angles_from_raw(synthesizer.initial_pose(["power"] * 64, rng))
    precision = angles_from_raw(synthesizer.initial_pose(["precision"] * 64, rng))
    flexion = [index for index, name in enumerate(DOF_NAMES) if name.endswith("pip_flexion")]
    assert power[:, flexion].mean() > precision[:, flexion].mean() + 20.0
