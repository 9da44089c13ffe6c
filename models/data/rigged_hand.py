"""A rigged, skinned hand mesh from glTF, posed by linear blend skinning (batched, differentiable).

``load_gltf_skin`` reads any glTF skin; a ``JointMap`` names the skeleton (parents, which joints are
our 21 keypoints). ``RiggedHand.pose`` turns per-joint local rotations, bone-length factors and a
global similarity transform into posed vertices and keypoints (mano order, fingertips on the skin).

Frames: the asset's bind pose is in its own scene frame, metres. Posed outputs are
``scale * global_rotation @ (x - rest_root) + translation`` where ``x`` is the skinned point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygltflib
import torch

from ..hand_pose import HandSkeleton, axis_angle_to_matrix
from ..skeleton import BIOMECH_PARENTS, MANO_TIPS, MANO_TO_BIOMECH, NUM_JOINTS, PART_BONES

_COMPONENT_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
# Bind-pose vertices closer than this (metres) are one vertex split along a UV or normal seam.
SEAM_TOLERANCE_M = 1e-6


@dataclass(frozen=True)
class JointMap:
    """Names a glTF skeleton: each joint's parent, and the joints that are our 21 mano keypoints."""

    parents: dict[str, str | None]  # joint name -> parent joint name (None for the root)
    mano: tuple[str, ...]  # 21 joint names in mano order (tips included)


def _webxr_joint_map() -> JointMap:
    """The 25 WebXR hand joints: wrist, thumb (metacarpal, proximal, distal, tip), fingers with 5 joints each."""
    parents: dict[str, str | None] = {"wrist": None}
    mano = ["wrist"]
    thumb = ["thumb-metacarpal", "thumb-phalanx-proximal", "thumb-phalanx-distal", "thumb-tip"]
    chains = [thumb]
    for finger in ("index", "middle", "ring", "pinky"):
        links = ("metacarpal", "phalanx-proximal", "phalanx-intermediate", "phalanx-distal", "tip")
        chains.append([f"{finger}-finger-{link}" for link in links])
    for chain in chains:
        for parent, joint in zip(["wrist", *chain[:-1]], chain, strict=True):
            parents[joint] = parent
        # The finger metacarpal joints sit in the palm near the wrist; MANO has no keypoint there.
        mano.extend(chain[-4:])
    return JointMap(parents=parents, mano=tuple(mano))


WEBXR_JOINT_MAP = _webxr_joint_map()


def _joint_parts(joint_map: JointMap, joint_names: list[str]) -> np.ndarray:
    """-> (J,) HALO part (0 palm .. 15) of the skin segment each joint drives: the part whose bone starts there."""
    parts = np.zeros(len(joint_names), dtype=np.int64)
    for part, bone in enumerate(PART_BONES, start=1):
        start, end = MANO_TO_BIOMECH[BIOMECH_PARENTS[bone + 1]], MANO_TO_BIOMECH[bone + 1]
        parts[joint_names.index(joint_map.mano[start])] = part
        if end in MANO_TIPS:  # the fingertip joint's skin belongs to the last segment
            parts[joint_names.index(joint_map.mano[end])] = part
    return parts


@dataclass
class SkinnedMesh:
    """A skinned triangle mesh in its bind pose (numpy, metres)."""

    vertices: np.ndarray  # (V,3) float64 bind-pose positions
    faces: np.ndarray  # (F,3) int64, outward-facing
    joint_names: list[str]  # (J,) in skin order
    parents: np.ndarray  # (J,) int64 index of the parent joint, -1 for the root
    bind_transforms: np.ndarray  # (J,4,4) float64 joint -> scene frame in the bind pose
    skin_joints: np.ndarray  # (V,K) int64 joint indices
    skin_weights: np.ndarray  # (V,K) float64, rows sum to 1


def _read_accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    """glTF accessor -> (count, components) array (normalised integers are mapped to [0, 1])."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = np.dtype(_COMPONENT_DTYPES[accessor.componentType])
    width = _TYPE_SIZES[accessor.type]
    stride = view.byteStride or dtype.itemsize * width
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    rows = np.lib.stride_tricks.as_strided(
        np.frombuffer(blob, dtype=np.uint8, count=stride * (accessor.count - 1) + dtype.itemsize * width, offset=start),
        shape=(accessor.count, dtype.itemsize * width),
        strides=(stride, 1),
    )
    array = np.ascontiguousarray(rows).view(dtype).reshape(accessor.count, width)
    if accessor.normalized:
        array = array.astype(np.float64) / np.iinfo(dtype).max
    return array


def _merge_seams(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V,3), (F,3) -> index of the kept copy per vertex (V,), faces on kept vertices without degenerates."""
    keys = np.round(vertices / SEAM_TOLERANCE_M).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    representative = first[inverse.reshape(-1)]
    merged = representative[faces]
    degenerate = (merged[:, 0] == merged[:, 1]) | (merged[:, 1] == merged[:, 2]) | (merged[:, 0] == merged[:, 2])
    return representative, merged[~degenerate]


def load_gltf_skin(path: str | Path, joint_map: JointMap = WEBXR_JOINT_MAP) -> SkinnedMesh:
    """Read the first skinned primitive of a glTF/GLB file; seam duplicates are merged so it is watertight."""
    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()
    skin = gltf.skins[0]
    primitive = next(p for mesh in gltf.meshes for p in mesh.primitives if p.attributes.JOINTS_0 is not None)
    positions = _read_accessor(gltf, blob, primitive.attributes.POSITION).astype(np.float64)
    triangles = _read_accessor(gltf, blob, primitive.indices).reshape(-1, 3).astype(np.int64)
    skin_joints = _read_accessor(gltf, blob, primitive.attributes.JOINTS_0).astype(np.int64)
    skin_weights = _read_accessor(gltf, blob, primitive.attributes.WEIGHTS_0).astype(np.float64)
    # glTF stores matrices column-major.
    inverse_bind = _read_accessor(gltf, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)

    names = [gltf.nodes[node].name for node in skin.joints]
    missing = sorted(set(joint_map.parents) - set(names))
    if missing:
        raise ValueError(f"hand asset: joints {missing} not found in the glTF skin")
    parents = np.array([names.index(p) if (p := joint_map.parents.get(n)) is not None else -1 for n in names])

    representative, faces = _merge_seams(positions, triangles)
    kept = np.unique(representative)
    weights = skin_weights[kept]
    return SkinnedMesh(
        vertices=positions[kept],
        faces=np.searchsorted(kept, faces),
        joint_names=names,
        parents=parents,
        bind_transforms=np.linalg.inv(inverse_bind.astype(np.float64)),
        skin_joints=skin_joints[kept],
        skin_weights=weights / weights.sum(axis=1, keepdims=True),
    )


def ray_exit(
    vertices: torch.Tensor, faces: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """(B,V,3) mesh, (F,3) faces, (B,R,3) origins inside it, (B,R,3) directions -> (B,R,3) first surface hit."""
    corners = vertices[:, faces][:, None]  # (B,1,F,3,3)
    a, edge1, edge2 = (
        corners[..., 0, :],
        corners[..., 1, :] - corners[..., 0, :],
        corners[..., 2, :] - corners[..., 0, :],
    )
    unit = directions / directions.norm(dim=-1, keepdim=True)
    d = unit[:, :, None, :].expand(-1, -1, faces.shape[0], -1)  # (B,R,F,3)
    p = torch.cross(d, edge2.expand_as(d), dim=-1)
    det = (edge1 * p).sum(-1)
    safe_det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
    s = origins[:, :, None, :] - a
    u = (s * p).sum(-1) / safe_det
    q = torch.cross(s, edge1.expand_as(s), dim=-1)
    v = (d * q).sum(-1) / safe_det
    t = (edge2 * q).sum(-1) / safe_det
    hit = (det.abs() >= 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    t = torch.where(hit, t, torch.full_like(t, torch.inf)).amin(dim=-1)
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))  # no hit: keep the origin
    return origins + t[..., None] * unit


@dataclass
class PosedHand:
    """A batch of B posed hands, metres."""

    vertices: torch.Tensor  # (B,V,3)
    joints: torch.Tensor  # (B,J,3) skeleton joint positions (asset joints, skin order)
    keypoints: torch.Tensor  # (B,21,3) mano order; fingertips moved onto the skin


class RiggedHand:
    """A skinned hand posed by linear blend skinning; all tensors float32 on ``device``."""

    def __init__(self, skinned: SkinnedMesh, joint_map: JointMap = WEBXR_JOINT_MAP, device: str = "cpu") -> None:
        if len(joint_map.mano) != NUM_JOINTS:
            raise ValueError(f"joint_map: expected {NUM_JOINTS} keypoint joints, got {len(joint_map.mano)}")
        as_tensor = lambda a, dtype=torch.float32: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        self.skinned = skinned
        self.joint_names = list(skinned.joint_names)
        self.parents = [int(p) for p in skinned.parents]
        count = len(self.parents)
        # Forward kinematics needs parents before children.
        self.order = sorted(range(count), key=self._depth)
        self.rest_vertices = as_tensor(skinned.vertices)
        self.faces = as_tensor(skinned.faces, torch.int64)
        bind = skinned.bind_transforms
        self.bind = as_tensor(bind)
        self.inverse_bind = as_tensor(np.linalg.inv(bind))
        local = np.stack([bind[j] if p < 0 else np.linalg.solve(bind[p], bind[j]) for j, p in enumerate(self.parents)])
        self.rest_local = as_tensor(local)
        weights = np.zeros((len(skinned.vertices), count))
        np.add.at(weights, (np.arange(len(weights))[:, None], skinned.skin_joints), skinned.skin_weights)
        self.weights = as_tensor(weights)
        self.vertex_parts = torch.as_tensor(_joint_parts(joint_map, self.joint_names)[weights.argmax(1)], device=device)
        # A joint with exactly one child stretches its segment along the local direction to that child.
        self.only_child = np.full(count, -1)
        axes = np.zeros((count, 3))
        for joint in range(count):
            children = [c for c, p in enumerate(self.parents) if p == joint]
            if len(children) == 1:
                self.only_child[joint] = children[0]
                offset = local[children[0], :3, 3]
                axes[joint] = offset / np.linalg.norm(offset)
        self.bone_axes = as_tensor(axes)
        self.mano_index = torch.as_tensor([self.joint_names.index(n) for n in joint_map.mano], device=device)
        self.tip_index = self.mano_index[MANO_TIPS]
        self.tip_parent_index = torch.as_tensor([self.parents[int(t)] for t in self.tip_index], device=device)
        self.root = self.parents.index(-1)
        self.rest_bone_lengths = as_tensor(np.linalg.norm(local[:, :3, 3], axis=1) * (skinned.parents >= 0))
        # Phalanx bones of each finger: the bones ending at its last three keypoints (tip included).
        self.finger_chains = {
            finger: joint_map.mano[1 + 4 * number + 1 : 1 + 4 * number + 4]
            for number, finger in enumerate(("thumb", "index", "middle", "ring", "pinky"))
        }
        self.num_joints = count

    def _depth(self, joint: int) -> int:
        """Number of ancestors of ``joint``."""
        depth = 0
        while self.parents[joint] >= 0:
            joint, depth = self.parents[joint], depth + 1
        return depth

    @classmethod
    def from_gltf(cls, path: str | Path, joint_map: JointMap = WEBXR_JOINT_MAP, device: str = "cpu") -> RiggedHand:
        """Load a rigged hand from a glTF/GLB file with the given joint map."""
        return cls(load_gltf_skin(path, joint_map), joint_map, device)

    @property
    def rest_root(self) -> torch.Tensor:
        """(3,) bind-pose position of the root joint (the wrist), metres."""
        return self.bind[self.root, :3, 3]

    def skinning_transforms(
        self, local_rotations: torch.Tensor, bone_scales: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,J,3,3) local rotations, (B,J) bone-length factors -> (B,J,4,4) skinning matrices, (B,J,4,4) joint frames."""
        batch = local_rotations.shape[0]
        dtype, device = local_rotations.dtype, local_rotations.device
        rotate = torch.zeros(batch, self.num_joints, 4, 4, dtype=dtype, device=device)
        rotate[..., :3, :3] = local_rotations
        rotate[..., 3, 3] = 1.0
        local = self.rest_local.to(dtype).expand(batch, -1, -1, -1).clone()
        local[..., :3, 3] = local[..., :3, 3] * bone_scales[..., None]
        local = local @ rotate
        frames: list[torch.Tensor | None] = [None] * self.num_joints
        for joint in self.order:
            parent = self.parents[joint]
            frames[joint] = local[:, joint] if parent < 0 else frames[parent] @ local[:, joint]
        world = torch.stack(frames, dim=1)
        # Stretch each single-child segment along its bone by the child's length factor.
        child = torch.as_tensor(np.maximum(self.only_child, 0), device=device)
        factor = torch.where(torch.as_tensor(self.only_child >= 0, device=device), bone_scales[:, child], 1.0)
        axes = self.bone_axes.to(dtype)
        stretch = torch.eye(4, dtype=dtype, device=device).repeat(batch, self.num_joints, 1, 1)
        stretch[..., :3, :3] += (factor - 1.0)[..., None, None] * (axes[:, :, None] * axes[:, None, :])
        return world @ stretch @ self.inverse_bind.to(dtype), world

    def pose(
        self,
        local_rotations: torch.Tensor,
        bone_scales: torch.Tensor | None = None,
        global_rotation: torch.Tensor | None = None,
        translation: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> PosedHand:
        """(B,J,3,3) or (B,J,3) axis-angle local rotations, (B,J) bone factors, (B,3,3), (B,3) m, (B,) -> PosedHand."""
        if local_rotations.shape[-1] == 3 and local_rotations.dim() == 3:
            local_rotations = axis_angle_to_matrix(local_rotations)
        batch, dtype = local_rotations.shape[0], local_rotations.dtype
        if bone_scales is None:
            bone_scales = local_rotations.new_ones(batch, self.num_joints)
        skinning, world = self.skinning_transforms(local_rotations, bone_scales)
        rest = torch.cat([self.rest_vertices.to(dtype), self.rest_vertices.new_ones(len(self.rest_vertices), 1)], 1)
        blended = torch.einsum("vj,bjkl->bvkl", self.weights.to(dtype), skinning[..., :3, :])
        vertices = torch.einsum("bvkl,vl->bvk", blended, rest)
        joints = world[..., :3, 3]
        vertices, joints = (x - self.rest_root.to(dtype) for x in (vertices, joints))
        if scale is not None:
            vertices, joints = vertices * scale[:, None, None], joints * scale[:, None, None]
        if global_rotation is not None:
            vertices, joints = vertices @ global_rotation.transpose(1, 2), joints @ global_rotation.transpose(1, 2)
        if translation is not None:
            vertices, joints = vertices + translation[:, None], joints + translation[:, None]
        keypoints = joints[:, self.mano_index].clone()
        tips, distal = joints[:, self.tip_index], joints[:, self.tip_parent_index]
        keypoints[:, MANO_TIPS] = ray_exit(vertices, self.faces, tips, tips - distal)
        return PosedHand(vertices=vertices, joints=joints, keypoints=keypoints)

    @functools.cached_property
    def skeleton(self) -> HandSkeleton:
        """The rest skeleton for ``hand_pose`` forward kinematics; fingertip keypoints as in ``pose`` at rest."""
        rest = self.pose(self.rest_rotations(1))
        tips = rest.joints[0, self.tip_index]
        extension = (rest.keypoints[0, MANO_TIPS] - tips).norm(dim=-1)
        return HandSkeleton(list(self.joint_names), torch.as_tensor(self.parents), self.rest_local.clone(),
                            self.mano_index.clone(), extension)

    def rest_rotations(self, batch: int = 1) -> torch.Tensor:
        """-> (B,J,3,3) identity local rotations (the bind pose)."""
        return torch.eye(3, device=self.bind.device).repeat(batch, self.num_joints, 1, 1)
