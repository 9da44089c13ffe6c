"""Grasp synthesis: pose the rigged hand around a procedural object by gradient descent, then filter.

Many hands are optimised at once (objects x approach directions in one batch). Each hand starts
with its palm facing the object from a random direction, a half-open finger pose and the thumb
opposed; Adam then minimises

    E = w_pen * penetration + w_contact * contact + w_limit * joint limits + w_self * self-contact

* penetration: squared depth of hand vertices inside the object (object SDF, trilinear on a grid),
* contact: distance of the thumb, index and middle finger pads (and more weakly ring, pinky, palm)
  to the surface,
* joint limits: squared excess over per-joint flexion / abduction ranges,
* self-contact: fingertips and distal joints of different fingers closer than 12 mm.

Kept grasps pass exact checks on the skinned mesh (libigl): penetration depth <= 2 mm, thumb plus at
least two fingers within 3 mm of the surface, fingertips of different fingers >= 10 mm apart.

Frames: object-centred (bounding-box centre at 0), metres, mano keypoints with fingertips on the skin.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial.transform import Rotation

from ..geometry import inside_mesh
from ..grasps.metrics import surface_distance
from ..grasps.object_input import BPS_POINTS, BPS_RADIUS_M, bps_basis, object_points
from .asset import default_cache_dir, fetch_hand_asset
from .objects import SPLITS, make_object, object_split
from .rigged_hand import RiggedHand, axis_angle_to_matrix

FINGERS = ("index", "middle", "ring", "pinky")
# Local joint axes of the WebXR hand: bones run along -z, +y is the back of the hand, so curling a
# finger is a negative rotation about x and spreading it a rotation about y.
# (joint name, axis, low, high) in radians of the joint's local rotation vector.
JOINT_LIMITS: list[tuple[str, int, float, float]] = [
    ("thumb-metacarpal", 0, -1.2, 0.3),
    ("thumb-metacarpal", 1, -0.4, 0.9),
    ("thumb-metacarpal", 2, -0.5, 0.5),
    ("thumb-phalanx-proximal", 0, -1.0, 0.2),
    ("thumb-phalanx-distal", 0, -1.2, 0.2),
]
for _finger in FINGERS:
    JOINT_LIMITS += [
        (f"{_finger}-finger-phalanx-proximal", 0, -1.6, 0.2),
        (f"{_finger}-finger-phalanx-proximal", 1, -0.3, 0.3),
        (f"{_finger}-finger-phalanx-intermediate", 0, -1.9, 0.0),
        (f"{_finger}-finger-phalanx-distal", 0, -1.4, 0.0),
    ]
PAD_JOINTS = ("thumb-phalanx-distal", *(f"{f}-finger-phalanx-distal" for f in FINGERS))
PAD_WEIGHTS = (1.0, 1.0, 1.0, 0.4, 0.4)
PALM_JOINTS = ("wrist", *(f"{f}-finger-metacarpal" for f in FINGERS))
KNUCKLE_JOINTS = tuple(f"{f}-finger-phalanx-proximal" for f in FINGERS)
TIP_JOINTS = ("thumb-tip", *(f"{f}-finger-tip" for f in FINGERS))


@dataclass
class SynthesisConfig:
    steps: int = 160
    learning_rate: float = 0.01
    grid: int = 40  # SDF grid points per axis
    grid_margin_m: float = 0.03
    w_penetration: float = 3e4  # per squared metre summed over vertices
    w_contact: float = 30.0  # per metre of pad distance
    w_palm: float = 5.0
    w_limit: float = 10.0
    w_self: float = 3e3
    self_distance_m: float = 0.012
    keep_depth_m: float = 0.002
    keep_contact_m: float = 0.003
    keep_tip_gap_m: float = 0.010


@dataclass
class ObjectGrids:
    """Signed distance of O objects on regular grids (negative inside), for trilinear lookup."""

    sdf: torch.Tensor  # (O,1,G,G,G) metres, indexed [z, y, x] as grid_sample expects
    low: torch.Tensor  # (O,3) grid corner, metres
    high: torch.Tensor  # (O,3) opposite corner, metres

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(O,N,3) points, metres -> (O,N) signed distance, metres (plus the distance to the grid outside it)."""
        low, high = self.low[:, None], self.high[:, None]
        inside = torch.minimum(torch.maximum(points, low), high)
        grid = (2 * (inside - low) / (high - low) - 1)[:, :, None, None, :]
        sampled = F.grid_sample(self.sdf, grid, align_corners=True)[:, 0, :, 0, 0]
        return sampled + (points - inside).norm(dim=-1)


def object_grids(meshes: list[trimesh.Trimesh], size: int, margin: float) -> ObjectGrids:
    """Meshes (metres) -> ObjectGrids with ``size``^3 samples over each bounding box plus ``margin``."""
    sdfs, lows, highs = [], [], []
    for mesh in meshes:
        low, high = mesh.bounds[0] - margin, mesh.bounds[1] + margin
        axes = [np.linspace(lo, hi, size) for lo, hi in zip(low, high, strict=True)]
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        points = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
        distance = surface_distance(mesh, points)
        sign = np.where(inside_mesh(mesh, points), -1.0, 1.0)
        sdfs.append((sign * distance).reshape(size, size, size))
        lows.append(low)
        highs.append(high)
    as_tensor = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    return ObjectGrids(as_tensor(sdfs)[:, None], as_tensor(lows), as_tensor(highs))


class GraspSynthesizer:
    """Optimises batches of rigged-hand grasps around objects (see the module docstring)."""

    def __init__(self, hand: RiggedHand, config: SynthesisConfig | None = None) -> None:
        self.hand = hand
        self.config = config or SynthesisConfig()
        names = hand.joint_names
        self.limit_joint = torch.tensor([names.index(n) for n, *_ in JOINT_LIMITS])
        self.limit_axis = torch.tensor([axis for _, axis, *_ in JOINT_LIMITS])
        self.limit_low = torch.tensor([low for *_, low, _ in JOINT_LIMITS])
        self.limit_high = torch.tensor([high for *_, high in JOINT_LIMITS])
        # Pads: vertices skinned mostly to a distal phalanx, on the palm side (local y < 0).
        dominant = hand.weights.argmax(1)
        rest = torch.cat([hand.rest_vertices, torch.ones(len(hand.rest_vertices), 1)], 1)
        local = torch.einsum("vkl,vl->vk", hand.inverse_bind[dominant], rest)[:, :3]
        palmar = local[:, 1] < 0
        self.pads = [torch.nonzero((dominant == names.index(j)) & palmar)[:, 0] for j in PAD_JOINTS]
        palm_joints = torch.tensor([names.index(j) for j in PALM_JOINTS])
        self.palm = torch.nonzero(torch.isin(dominant, palm_joints) & palmar)[:, 0]
        # The optimisation skins every other vertex plus all pad and palm vertices (exact checks use all).
        self.subset = torch.unique(torch.cat([*self.pads, self.palm, torch.arange(0, len(dominant), 2)]))
        self.subset_pads = [torch.searchsorted(self.subset, index) for index in self.pads]
        self.subset_palm = torch.searchsorted(self.subset, self.palm)
        self.tip_joints = torch.tensor([names.index(j) for j in TIP_JOINTS])
        distal = [hand.parents[names.index(j)] for j in TIP_JOINTS]
        self.self_joints = torch.tensor([*self.tip_joints.tolist(), *distal])
        self.self_finger = torch.arange(len(self.self_joints)) % 5
        rest_joints = hand.bind[:, :3, 3] - hand.rest_root
        knuckles = [names.index(j) for j in KNUCKLE_JOINTS]
        self.palm_centre = rest_joints[knuckles].mean(0) * 0.6 + rest_joints[hand.root] * 0.4
        # Palm normal of the bind pose: minus the wrist's local y axis (the back of the hand).
        self.palm_normal = -hand.bind[hand.root, :3, 1]

    def initial_pose(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """-> (count,J,3) local axis-angle rotations: half-open fingers, opposed thumb, random jitter."""
        middle = (self.limit_low + self.limit_high) / 2
        span = self.limit_high - self.limit_low
        values = middle + span * torch.as_tensor(rng.uniform(-0.25, 0.15, (count, len(span))), dtype=torch.float32)
        pose = torch.zeros(count, self.hand.num_joints, 3)
        pose[:, self.limit_joint, self.limit_axis] = values
        return pose

    def skinned(self, pose: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                subset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,J,3) axis-angle, (B,3,3), (B,3) m -> (B,V,3) vertices (or a subset), (B,J,3) joints, object frame."""
        scales = pose.new_ones(pose.shape[0], self.hand.num_joints)
        skinning, world = self.hand.skinning_transforms(axis_angle_to_matrix(pose), scales)
        weights, rest = self.hand.weights, self.hand.rest_vertices
        if subset is not None:
            weights, rest = weights[subset], rest[subset]
        blended = torch.einsum("vj,bjkl->bvkl", weights, skinning[..., :3, :])  # (B,V,3,4)
        # Elementwise product and sum: far faster than V tiny (3,3) @ (3,1) matmuls.
        vertices = (blended[..., :3] * rest[:, None, :]).sum(-1) + blended[..., 3]
        joints = world[..., :3, 3]
        root = self.hand.rest_root
        place = lambda x: (x - root) @ rotation.transpose(1, 2) + translation[:, None]  # noqa: E731
        return place(vertices), place(joints)

    def placement(self, meshes: list[trimesh.Trimesh], per_object: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Palm facing each object from random directions -> (B,3,3) rotations, (B,3) translations."""
        rotations, translations = [], []
        normal = self.palm_normal.numpy()
        for mesh in meshes:
            for _ in range(per_object):
                approach = rng.normal(size=3)
                approach /= np.linalg.norm(approach)  # from the object towards the hand
                # Align the palm normal with -approach, then spin the hand randomly about it.
                align, _ = Rotation.align_vectors([-approach], [normal])
                spin = Rotation.from_rotvec(-approach * rng.uniform(0, 2 * np.pi))
                rotation = (spin * align).as_matrix()
                reach = float((np.asarray(mesh.vertices) @ approach).max())
                palm = approach * (reach + rng.uniform(0.01, 0.025))
                rotations.append(rotation)
                translations.append(palm - rotation @ self.palm_centre.numpy())
        as_tensor = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
        return as_tensor(rotations), as_tensor(translations)

    def energy(self, pose: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
               grids: ObjectGrids, objects: int) -> torch.Tensor:
        """(B,J,3), (B,3,3), (B,3) with B = objects x per-object hands -> (B,) grasp energy."""
        c = self.config
        vertices, joints = self.skinned(pose, rotation, translation, self.subset)
        batch = vertices.shape[0]
        sdf = grids(vertices.reshape(objects, -1, 3)).reshape(batch, -1)
        penetration = (torch.relu(-sdf) ** 2).sum(1)
        pads = torch.stack([sdf[:, index].abs().amin(1) for index in self.subset_pads], 1)
        contact = (pads * pads.new_tensor(PAD_WEIGHTS)).sum(1)
        palm = sdf[:, self.subset_palm].abs().amin(1)
        angles = pose[:, self.limit_joint, self.limit_axis]
        limits = (torch.relu(self.limit_low - angles) ** 2 + torch.relu(angles - self.limit_high) ** 2).sum(1)
        points = joints[:, self.self_joints]
        gaps = torch.cdist(points, points)
        other = self.self_finger[:, None] != self.self_finger[None]
        close = (torch.relu(c.self_distance_m - gaps) ** 2 * other).sum((1, 2))
        return (c.w_penetration * penetration + c.w_contact * contact + c.w_palm * palm
                + c.w_limit * limits + c.w_self * close)

    def optimise(self, meshes: list[trimesh.Trimesh], per_object: int, seed: int) -> dict[str, torch.Tensor]:
        """Objects (object-centred, metres) -> optimised pose, rotation, translation of O x per_object hands."""
        rng = np.random.default_rng(seed)
        grids = object_grids(meshes, self.config.grid, self.config.grid_margin_m)
        base_rotation, translation = self.placement(meshes, per_object, rng)
        pose = self.initial_pose(len(base_rotation), rng).requires_grad_(True)
        spin = torch.zeros(len(base_rotation), 3, requires_grad=True)
        # Adam's steps are about the learning rate in every parameter: radians for the angles, and
        # decimetres for the translation so that a step moves the hand ~1 mm.
        shift = (translation * 10).requires_grad_(True)
        optimiser = torch.optim.Adam([pose, spin, shift], lr=self.config.learning_rate)
        for step in range(self.config.steps):
            for group in optimiser.param_groups:
                group["lr"] = self.config.learning_rate * (0.3 if step > 0.7 * self.config.steps else 1.0)
            rotation = axis_angle_to_matrix(spin) @ base_rotation
            energy = self.energy(pose, rotation, shift / 10, grids, len(meshes))
            optimiser.zero_grad()
            energy.sum().backward()
            optimiser.step()
        with torch.no_grad():
            rotation = axis_angle_to_matrix(spin) @ base_rotation
        return {"pose": pose.detach(), "rotation": rotation, "translation": shift.detach() / 10}

    def keep(self, mesh: trimesh.Trimesh, vertices: np.ndarray, joints: np.ndarray) -> bool:
        """Exact quality filter of one skinned hand (V,3), (J,3) against its object (metres)."""
        c = self.config
        distance = surface_distance(mesh, vertices)
        inside = inside_mesh(mesh, vertices)
        if inside.any() and distance[inside].max() > c.keep_depth_m:
            return False
        touching = [float(distance[index].min()) <= c.keep_contact_m for index in self.pads]
        if not touching[0] or sum(touching[1:]) < 2:
            return False
        tips = joints[self.tip_joints.numpy()]
        gaps = np.linalg.norm(tips[:, None] - tips[None], axis=-1) + np.eye(len(tips))
        return bool(gaps.min() >= c.keep_tip_gap_m)

    def synthesise(self, meshes: list[trimesh.Trimesh], per_object: int, seed: int) -> list[list[np.ndarray]]:
        """Objects -> per object, the kept grasps as (21,3) mano keypoints (metres, object frame)."""
        result = self.optimise(meshes, per_object, seed)
        with torch.no_grad():
            vertices, joints = self.skinned(result["pose"], result["rotation"], result["translation"])
        chosen = [
            hand for hand in range(len(vertices))
            if self.keep(meshes[hand // per_object], vertices[hand].double().numpy(), joints[hand].double().numpy())
        ]
        kept: list[list[np.ndarray]] = [[] for _ in meshes]
        if chosen:
            index = torch.as_tensor(chosen)
            with torch.no_grad():
                posed = self.hand.pose(result["pose"][index], global_rotation=result["rotation"][index],
                                       translation=result["translation"][index])
            for row, hand in enumerate(chosen):
                kept[hand // per_object].append(posed.keypoints[row].numpy())
        return kept


def synthesise_dataset(out: Path, objects: int, per_object: int, batch_objects: int, config: SynthesisConfig,
                       hand_asset: Path | None = None, seed: int = 0, start: int = 0, split: str = "all") -> None:
    """Write shards ``out/shard_XXXXX.npz`` of kept grasps for objects start..objects-1 (skips done shards).

    ``split`` keeps only that split's objects ("all": every object); a shard is named by its first object.
    Several workers may share ``out`` when they start at different multiples of ``batch_objects``.
    """
    out.mkdir(parents=True, exist_ok=True)
    hand = RiggedHand.from_gltf(hand_asset or fetch_hand_asset())
    synthesizer = GraspSynthesizer(hand, config)
    basis = bps_basis(BPS_POINTS, BPS_RADIUS_M)
    (out / "config.json").write_text(json.dumps({
        "synthesis": asdict(config), "objects": objects, "per_object": per_object, "seed": seed,
        "bps_points": BPS_POINTS, "bps_radius_m": BPS_RADIUS_M,
    }, indent=2))
    chosen = [i for i in range(start - start % batch_objects, objects) if split in ("all", object_split(i))]
    for first in range(0, len(chosen), batch_objects):
        indices = chosen[first : first + batch_objects]
        shard = out / f"shard_{indices[0]:05d}.npz"
        if shard.exists():
            continue
        started = time.perf_counter()
        made = [make_object(index) for index in indices]
        meshes = [mesh for mesh, _ in made]
        kept = synthesizer.synthesise(meshes, per_object, seed=seed * 1_000_003 + indices[0])
        points = [object_points(mesh, basis, seed=index) for mesh, index in zip(meshes, indices, strict=True)]
        keypoints = [k for grasps in kept for k in grasps]
        owner = [row for row, grasps in enumerate(kept) for _ in grasps]
        np.savez_compressed(
            shard.with_suffix(".part.npz"),
            object_index=np.array(indices), object_kind=np.array([kind for _, kind in made]),
            object_split=np.array([object_split(i) for i in indices]),
            bps=np.stack([p.bps for p in points]).astype(np.float32),
            surface=np.stack([p.surface for p in points]).astype(np.float32),
            interior=np.stack([p.interior for p in points]).astype(np.float32),
            keypoints=np.array(keypoints, dtype=np.float32).reshape(-1, 21, 3),
            grasp_object=np.array(owner, dtype=np.int64),
            attempts=np.array(len(indices) * per_object), seconds=np.array(time.perf_counter() - started),
        )
        shard.with_suffix(".part.npz").replace(shard)
        elapsed = time.perf_counter() - started
        print(f"{shard.name}: {len(keypoints)}/{len(indices) * per_object} kept in {elapsed:.1f} s "
              f"({len(keypoints) / elapsed:.2f} grasps/s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: synthesise the grasp data set (resumable)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_cache_dir() / "grasps")
    parser.add_argument("--objects", type=int, default=1250)
    parser.add_argument("--per-object", type=int, default=32)
    parser.add_argument("--batch-objects", type=int, default=8)
    parser.add_argument("--steps", type=int, default=SynthesisConfig.steps)
    parser.add_argument("--hand-asset", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first object (for a second worker)")
    parser.add_argument("--split", default="all", choices=("all", *SPLITS),
                        help="only this split's objects (test: the synthesis-data baseline of halo eval vae)")
    args = parser.parse_args(argv)
    synthesise_dataset(args.out, args.objects, args.per_object, args.batch_objects,
                       SynthesisConfig(steps=args.steps), args.hand_asset, args.seed, args.start, args.split)


if __name__ == "__main__":
    main()
