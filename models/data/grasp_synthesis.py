"""Grasp synthesis: pose the rigged hand around a procedural object by gradient descent, then filter.

Many hands are optimised at once (objects x approach directions in one batch). Each hand starts
with its palm facing the object from a random direction, the thumb opposed, and one of three grasp
types (``GRASP_TYPES``, in turn): a power wrap (all pads and the palm pulled on, fingers half closed),
a standard grasp (thumb, index and middle pads, ring and pinky and palm weaker) or a precision grip
(thumb, index and middle pads only, fingers more open). The pose lives in the anatomical pose space (``models.hand_pose``): Adam moves the
unbounded parameters whose sigmoid maps into the joint limits, so every hand it reaches is within
them and PIP / DIP joints only flex. It minimises

    E = w_pen * penetration + w_contact * contact + w_palm * palm contact + w_self * self-contact
        + w_opposition * opposition

* penetration: squared depth of hand vertices inside the object (object SDF, trilinear on a grid),
* contact: distance of the pads (weighted by the grasp type) to the surface,
* palm contact: distance of the palm to the surface (weighted by the grasp type),
* self-contact: fingertips and distal joints of different fingers closer than 12 mm,
* opposition: the squared length of the mean surface normal at the pads and the palm, each weighted by
  how close it is: contacts all on one side of the object squeeze it out of a still hand.

Kept grasps pass exact checks on the skinned mesh (libigl): penetration depth <= 2 mm, thumb plus at
least two fingers within 3 mm of the surface, fingertips of different fingers >= 10 mm apart; and then
the served physics check (``models.grasps.physics``, the capsule proxy fitted to the base model): the
object must stay within 2 cm in the settle and under gravity along each of the six axis directions.
Only grasps a still hand holds become training data.

Frames: object-centred (bounding-box centre at 0), metres, mano keypoints with fingertips on the skin.
Each kept grasp is stored as its pose (angles in degrees, rotation, wrist translation) and its
keypoints, which forward kinematics of the same pose gives.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from ..api import load_base
from ..geometry import inside_mesh, surface_distance
from ..grasps import hand_object
from ..grasps.api import skeleton_proxy
from ..grasps.object_input import BPS_POINTS, BPS_RADIUS_M, ObjectGrids, bps_basis, object_grids, object_points
from ..grasps.physics import check_grasps
from ..hand_pose import TABLE_HIGH, TABLE_LOW, angles_from_raw, axis_angle_to_matrix, raw_from_angles
from .asset import fetch_hand_asset
from .objects import make_object, object_split
from .rigged_hand import RiggedHand

FINGERS = ("index", "middle", "ring", "pinky")
PAD_JOINTS = ("thumb-phalanx-distal", *(f"{f}-finger-phalanx-distal" for f in FINGERS))
PALM_JOINTS = ("wrist", *(f"{f}-finger-metacarpal" for f in FINGERS))
KNUCKLE_JOINTS = tuple(f"{f}-finger-phalanx-proximal" for f in FINGERS)
TIP_JOINTS = ("thumb-tip", *(f"{f}-finger-tip" for f in FINGERS))


@dataclass(frozen=True)
class GraspType:
    """How one kind of grasp is pulled onto the object."""

    pads: tuple[float, float, float, float, float]  # contact weight of the thumb, index, middle, ring, pinky pads
    palm: float  # palm contact weight, times SynthesisConfig.w_palm
    flexion: tuple[float, float]  # start pose: joint angles at this fraction of their range


GRASP_TYPES = {
    "power": GraspType((1.0, 1.0, 1.0, 1.0, 1.0), 4.0, (0.45, 0.75)),
    "standard": GraspType((1.0, 1.0, 1.0, 0.4, 0.4), 1.0, (0.25, 0.65)),
    "precision": GraspType((1.0, 1.0, 0.6, 0.05, 0.05), 0.0, (0.2, 0.5)),
}


@dataclass
class SynthesisConfig:
    steps: int = 160
    learning_rate: float = 0.01  # radians for the global rotation, decimetres for the translation
    pose_learning_rate: float = 0.05  # raw pose parameters (about 1.4 degrees at mid-range for a 110-degree joint)
    grid: int = 40  # SDF grid points per axis
    grid_margin_m: float = 0.03
    w_penetration: float = 3e4  # per squared metre summed over vertices
    w_contact: float = 30.0  # per metre of pad distance
    w_palm: float = 5.0
    w_self: float = 3e3
    self_distance_m: float = 0.012
    w_opposition: float = 1.0  # per squared unit length of the contacts' mean surface normal
    opposition_range_m: float = 0.005  # a contact counts exp(-distance / range) in that mean
    keep_depth_m: float = 0.002
    keep_contact_m: float = 0.003
    keep_tip_gap_m: float = 0.010
    physics: bool = True  # keep only grasps the physics check calls stable


class GraspSynthesizer:
    """Optimises batches of rigged-hand grasps around objects (see the module docstring)."""

    def __init__(self, hand: RiggedHand, config: SynthesisConfig | None = None,
                 proxy_radii: np.ndarray | None = None) -> None:
        """``proxy_radii``: (C,) capsule radii of the physics check, metres (needed when config.physics)."""
        self.hand = hand
        self.config = config or SynthesisConfig()
        if self.config.physics and proxy_radii is None:
            raise ValueError("proxy_radii: the physics filter needs the capsule radii of the hand proxy")
        self.proxy_radii = proxy_radii
        self.skeleton = hand.skeleton
        names = hand.joint_names
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

    @staticmethod
    def grasp_types(count: int) -> list[str]:
        """The grasp type of each of ``count`` hands of one object (the types in turn)."""
        names = list(GRASP_TYPES)
        return [names[i % len(names)] for i in range(count)]

    def initial_pose(self, types: list[str], rng: np.random.Generator) -> torch.Tensor:
        """Grasp type per hand -> (B,D) raw pose parameters: fingers as open as the type says, random jitter."""
        ranges = np.array([GRASP_TYPES[name].flexion for name in types])  # (B,2)
        fraction = rng.uniform(ranges[:, :1], ranges[:, 1:], (len(types), len(TABLE_LOW)))
        return raw_from_angles(TABLE_LOW + (TABLE_HIGH - TABLE_LOW) * torch.as_tensor(fraction, dtype=torch.float32))

    def skinned(self, raw: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                subset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,D) raw pose, (B,3,3), (B,3) m -> (B,V,3) vertices (or a subset), (B,J,3) joints, object frame."""
        scales = raw.new_ones(raw.shape[0], self.hand.num_joints)
        local = self.skeleton.local_rotations(angles_from_raw(raw))
        skinning, world = self.hand.skinning_transforms(local, scales)
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

    def energy(self, raw: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
               grids: ObjectGrids, objects: int, pad_weights: torch.Tensor, palm_weights: torch.Tensor) -> torch.Tensor:
        """(B,D) raw pose, (B,3,3), (B,3) with B = objects x per-object hands, (B,5) pad and (B,) palm
        weights -> (B,) grasp energy."""
        c = self.config
        vertices, joints = self.skinned(raw, rotation, translation, self.subset)
        batch = vertices.shape[0]
        sdf = grids(vertices.reshape(objects, -1, 3)).reshape(batch, -1)
        penetration = (torch.relu(-sdf) ** 2).sum(1)
        nearest_pads = [sdf[:, index].abs().min(1) for index in self.subset_pads]
        pads = torch.stack([found.values for found in nearest_pads], 1)
        pad_at = torch.stack([found.indices for found in nearest_pads], 1)
        contact = (pads * pad_weights).sum(1)
        palm, palm_at = sdf[:, self.subset_palm].abs().min(1)
        nearest = torch.cat([torch.stack([index[at] for index, at in zip(self.subset_pads, pad_at.T, strict=True)], 1),
                             self.subset_palm[palm_at][:, None]], 1)  # (B,6) the pads' and palm's nearest vertices
        weights = torch.cat([pad_weights, palm_weights[:, None]], 1) * torch.exp(-torch.cat([pads, palm[:, None]], 1)
                                                                                / c.opposition_range_m)
        contacts = vertices.gather(1, nearest[..., None].expand(-1, -1, 3))
        opposition = hand_object.opposition(grids.normals(contacts.reshape(objects, -1, 3)).reshape(contacts.shape),
                                            weights)
        points = joints[:, self.self_joints]
        gaps = torch.cdist(points, points)
        other = self.self_finger[:, None] != self.self_finger[None]
        close = (torch.relu(c.self_distance_m - gaps) ** 2 * other).sum((1, 2))
        return (c.w_penetration * penetration + c.w_contact * contact + c.w_palm * palm_weights * palm
                + c.w_self * close + c.w_opposition * opposition)

    def optimise(self, meshes: list[trimesh.Trimesh], per_object: int, seed: int) -> dict[str, torch.Tensor]:
        """Objects (object-centred, metres) -> optimised raw pose, rotation, translation of O x per_object hands."""
        rng = np.random.default_rng(seed)
        grids = object_grids(meshes, self.config.grid, self.config.grid_margin_m)
        base_rotation, translation = self.placement(meshes, per_object, rng)
        types = self.grasp_types(per_object) * len(meshes)
        pad_weights = torch.tensor([GRASP_TYPES[name].pads for name in types])
        palm_weights = torch.tensor([GRASP_TYPES[name].palm for name in types])
        raw = self.initial_pose(types, rng).requires_grad_(True)
        spin = torch.zeros(len(base_rotation), 3, requires_grad=True)
        # Adam's steps are about the learning rate in every parameter: radians for the angles, and
        # decimetres for the translation so that a step moves the hand ~1 mm.
        shift = (translation * 10).requires_grad_(True)
        rates = (self.config.pose_learning_rate, self.config.learning_rate)
        optimiser = torch.optim.Adam([{"params": [raw], "lr": rates[0]}, {"params": [spin, shift], "lr": rates[1]}])
        for step in range(self.config.steps):
            for group, rate in zip(optimiser.param_groups, rates, strict=True):
                group["lr"] = rate * (0.3 if step > 0.7 * self.config.steps else 1.0)
            rotation = axis_angle_to_matrix(spin) @ base_rotation
            energy = self.energy(raw, rotation, shift / 10, grids, len(meshes), pad_weights, palm_weights)
            optimiser.zero_grad()
            energy.sum().backward()
            optimiser.step()
        with torch.no_grad():
            rotation = axis_angle_to_matrix(spin) @ base_rotation
        return {"raw": raw.detach(), "rotation": rotation, "translation": shift.detach() / 10}

    def keep(self, mesh: trimesh.Trimesh, vertices: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """Exact quality filter of K skinned hands (K,V,3), (K,J,3) around one object (metres) -> (K,) bool.

        All hands of the object go through libigl in one call (one tree build per object).
        """
        c = self.config
        count, per_hand = vertices.shape[:2]
        flat = vertices.reshape(-1, 3)
        distance = surface_distance(mesh, flat).reshape(count, per_hand)
        inside = inside_mesh(mesh, flat).reshape(count, per_hand)
        depth_ok = np.where(inside, distance, 0.0).max(axis=1) <= c.keep_depth_m
        touching = np.stack([distance[:, index.numpy()].min(axis=1) <= c.keep_contact_m for index in self.pads], 1)
        contact_ok = touching[:, 0] & (touching[:, 1:].sum(axis=1) >= 2)
        tips = joints[:, self.tip_joints.numpy()]
        gaps = np.linalg.norm(tips[:, :, None] - tips[:, None], axis=-1) + np.eye(tips.shape[1])
        return depth_ok & contact_ok & (gaps.min(axis=(1, 2)) >= c.keep_tip_gap_m)

    def holds(self, mesh: trimesh.Trimesh, keypoints: np.ndarray) -> np.ndarray:
        """(K,21,3) mano keypoints around one object (metres) -> (K,) whether the physics check calls each stable."""
        if len(keypoints) == 0:
            return np.zeros(0, dtype=bool)
        results = check_grasps(keypoints.astype(np.float64), self.proxy_radii, mesh)
        return np.array([result.stable for result in results])

    def synthesise(self, meshes: list[trimesh.Trimesh], per_object: int, seed: int) -> list[dict[str, np.ndarray]]:
        """Objects -> per object, its kept grasps: angles (K,D) degrees, rotation (K,3,3), translation (K,3) m,
        keypoints (K,21,3) (mano, metres, object frame) and the grasp type's index in GRASP_TYPES (K,)."""
        result = self.optimise(meshes, per_object, seed)
        with torch.no_grad():
            vertices, joints = self.skinned(result["raw"], result["rotation"], result["translation"])
            angles = angles_from_raw(result["raw"])
            keypoints = self.skeleton.keypoints(angles, result["rotation"], result["translation"])
        vertices, joints = (x.double().numpy().reshape(len(meshes), per_object, *x.shape[1:]) for x in (vertices, joints))
        kept = np.concatenate([self.keep(mesh, v, j) for mesh, v, j in zip(meshes, vertices, joints, strict=True)])
        if self.config.physics:
            hands = keypoints.numpy().reshape(len(meshes), per_object, 21, 3)
            for row, mesh in enumerate(meshes):
                candidates = np.flatnonzero(kept[row * per_object : (row + 1) * per_object])
                stable = self.holds(mesh, hands[row, candidates])
                kept[row * per_object + candidates[~stable]] = False
        chosen = np.flatnonzero(kept)
        names = list(GRASP_TYPES)
        pose = {"angles": angles, "rotation": result["rotation"], "translation": result["translation"],
                "keypoints": keypoints,
                "grasp_type": torch.tensor([names.index(name) for name in self.grasp_types(per_object)] * len(meshes))}
        return [{name: value[chosen[chosen // per_object == row]].numpy() for name, value in pose.items()}
                for row in range(len(meshes))]


def synthesise_dataset(out: Path, objects: int, per_object: int, batch_objects: int, config: SynthesisConfig,
                       hand_asset: Path | None = None, seed: int = 0, start: int = 0, split: str = "all") -> None:
    """Write shards ``out/shard_XXXXX.npz`` of kept grasps for objects start..objects-1 (skips done shards).

    ``split`` keeps only that split's objects ("all": every object); a shard is named by its first object.
    Several workers may share ``out`` when they start at different multiples of ``batch_objects``.
    """
    out.mkdir(parents=True, exist_ok=True)
    hand = RiggedHand.from_gltf(hand_asset or fetch_hand_asset())
    radii = skeleton_proxy(hand.skeleton, load_base()).radii.numpy() if config.physics else None
    synthesizer = GraspSynthesizer(hand, config, radii)
    basis = bps_basis(BPS_POINTS, BPS_RADIUS_M)
    (out / "config.json").write_text(json.dumps({
        "synthesis": asdict(config), "objects": objects, "per_object": per_object, "seed": seed,
        "bps_points": BPS_POINTS, "bps_radius_m": BPS_RADIUS_M, "grasp_types": list(GRASP_TYPES),
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
        owner = [row for row, grasps in enumerate(kept) for _ in grasps["keypoints"]]
        pose = {name: np.concatenate([grasps[name] for grasps in kept]) for name in kept[0]}
        pose = {name: value.astype(np.float32) if value.dtype.kind == "f" else value for name, value in pose.items()}
        np.savez_compressed(
            shard.with_suffix(".part.npz"),
            object_index=np.array(indices), object_kind=np.array([kind for _, kind in made]),
            object_split=np.array([object_split(i) for i in indices]),
            bps=np.stack([p.bps for p in points]).astype(np.float32),
            surface=np.stack([p.surface for p in points]).astype(np.float32),
            interior=np.stack([p.interior for p in points]).astype(np.float32),
            **pose, grasp_object=np.array(owner, dtype=np.int64),
            attempts=np.array(len(indices) * per_object), seconds=np.array(time.perf_counter() - started),
        )
        shard.with_suffix(".part.npz").replace(shard)
        elapsed = time.perf_counter() - started
        print(f"{shard.name}: {len(owner)}/{len(indices) * per_object} kept in {elapsed:.1f} s "
              f"({len(owner) / elapsed:.2f} grasps/s)", flush=True)
