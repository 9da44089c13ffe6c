"""HALO's canonicalisation layer: 21 keypoints -> normalisation matrix, 16 part matrices, 16 bone lengths.

Everything follows the spec in ``halo_reference/README.md`` (section "Canonicalisation"): a global
normalisation to a wrist-centred frame N, then per bone a rigid "unpose" transform that maps the
posed hand onto one fixed straight canonical hand. All functions are batched over hands and
differentiable; the small epsilons and clip constants are the reference's and matter in float32.

Frames: K (input keypoints, metres) -> N (normalised, metres) -> M = 2.5 N (model units) -> C_b.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .skeleton import BIOMECH_PARENTS, MANO_TO_BIOMECH, NUM_JOINTS, PART_BONES, to_mano
from .units import unit_hint

MODEL_SCALE = 2.5  # model units per metre of the normalised frame (one model unit = 0.4 m)

# Canonical-hand constants (radians) of the root-plane and root-angle normalisation.
ROOT_PLANE_ANGLES = (0.8, 0.2, 0.2)
ROOT_SPREAD_ANGLES = (0.4, 0.2, 0.2, 0.2)
CLIP = 1e-6

# Plausible size of a hand: distance wrist -> middle-finger MCP, metres.
HAND_SPAN_RANGE_M = (0.02, 0.30)
MIN_BONE_LENGTH_M = 1e-3
MIN_PALM_SINE = 0.02  # sine of the angle between index and middle root bones (about 1.1 degrees)


class KeypointError(ValueError):
    """Invalid keypoints; the message starts with the offending field, e.g. ``keypoints: ...``."""


@dataclass
class Canonical:
    """Inputs of the occupancy decoder for a batch of B hands."""

    normalization_matrix: torch.Tensor  # (B,4,4) K -> N, metres
    part_matrices: torch.Tensor  # (B,16,4,4) M -> C_b, model units
    bone_lengths: torch.Tensor  # (B,16) metres
    joints: torch.Tensor  # (B,21,3) biomech keypoints in the normalised frame N, metres


# ---------------------------------------------------------------------------------------------
# Small batched vector helpers, all on (..., 3) vectors.


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(...,3), (...,3) -> (...) dot product."""
    return (u * v).sum(-1)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(...,3), (...,3) -> (...,3) cross product."""
    return torch.linalg.cross(u, v, dim=-1)


def _unit(v: torch.Tensor, eps: float) -> torch.Tensor:
    """(...,3) -> (...,3) v / max(|v|, eps)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(...,3), (...,3) -> (...) unsigned angle, radians, by the stable half-angle formula."""
    u, v = _unit(u, 1e-10), _unit(v, 1e-10)
    return 2.0 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1))


def _signed_angle(reference: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(...,3) x3 -> (...) angle(u, v), negated where reference . (u x v) < 0."""
    sign = torch.where(_dot(reference, _cross(u, v)) < 0, -1.0, 1.0)
    return _angle(u, v) * sign


def _rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(...,3) axis (used as given, not renormalised), (...) radians -> (...,3,3) Rodrigues rotation."""
    zero = torch.zeros_like(axis[..., 0])
    x, y, z = axis.unbind(-1)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(skew)
    sin, cos = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + sin * skew + (1.0 - cos) * (skew @ skew)


def _align(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(...,3), (...,3) -> (...,3,3) rotation turning direction u onto direction v."""
    return _rotation(_unit(_cross(u, v), 1e-8), _angle(u, v))


def _apply(rotation: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(...,3,3), (...,3) -> (...,3) rotation @ v."""
    return (rotation @ v[..., None])[..., 0]


def _azimuth_elevation(direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(...,3) -> (alpha, beta), each (...) radians: angle about y from +z, and (unsigned) tilt off xz."""
    x, z = direction[..., 0], direction[..., 2]
    horizontal = torch.stack([x, torch.zeros_like(x), z], dim=-1)
    norm = horizontal.norm(dim=-1).clamp_min(1e-9)
    z = torch.where(z.abs() < CLIP, torch.zeros_like(z), z)
    alpha = torch.arccos((z / norm).clamp(-1 + CLIP, 1 - CLIP))
    alpha = torch.where(x + CLIP < 0, -alpha, alpha)
    beta = torch.arccos((_dot(horizontal, direction) / norm).clamp(-1 + CLIP, 1 - CLIP))
    return alpha, beta


def _eye(batch_shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """-> (*batch_shape,3,3) identities with the dtype and device of ``like``."""
    return torch.eye(3, dtype=like.dtype, device=like.device).expand(*batch_shape, 3, 3)


# ---------------------------------------------------------------------------------------------
# Step 1: global normalisation.


def normalization_matrix(joints: torch.Tensor) -> torch.Tensor:
    """(B,21,3) biomech keypoints, metres -> (B,4,4) K -> N: wrist at 0, middle MCP on -x, palm normal +y."""
    wrist = joints[:, 0]
    middle = _unit(joints[:, 3] - wrist, 1e-8)
    index = _unit(joints[:, 2] - wrist, 1e-8)
    first = _align(middle, middle.new_tensor([0.0, -1.0, 0.0]).expand_as(middle))
    normal = _apply(first, _cross(middle, index))
    rotation = _align(normal, normal.new_tensor([0.0, 0.0, 1.0]).expand_as(normal)) @ first
    # Axis change new (x, y, z) = old (y, z, x), a proper rotation.
    rotation = rotation[:, [1, 2, 0]]
    matrix = torch.zeros(joints.shape[0], 4, 4, dtype=joints.dtype, device=joints.device)
    matrix[:, :3, :3] = rotation
    matrix[:, :3, 3] = -_apply(rotation, wrist)
    matrix[:, 3, 3] = 1.0
    return matrix


def transform_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,4,4) rigid matrices, (B,N,3) points -> (B,N,3) transformed points."""
    return points @ matrix[:, :3, :3].transpose(1, 2) + matrix[:, None, :3, 3]


# ---------------------------------------------------------------------------------------------
# Step 2: per-bone unpose matrices (straight canonical right hand).


def _root_rotations(roots: torch.Tensor) -> torch.Tensor:
    """(B,5,3) unit metacarpal directions -> (B,5,3,3) per-finger rotations H_f (root plane, then spread)."""
    b0, b1, b2, b3, b4 = roots.unbind(1)
    eye = _eye(b0.shape[:1], b0)
    plane_thumb, plane_ring, plane_pinky = ROOT_PLANE_ANGLES
    # A. Root-plane normalisation: thumb, ring and pinky metacarpals are turned about their neighbours.
    palm_normal = _cross(b2, b1)
    m0 = _rotation(b1, _signed_angle(b1, _cross(b1, b0), palm_normal) - plane_thumb)
    m3 = _rotation(b2, _signed_angle(b2, _cross(b3, b2), palm_normal) + plane_ring)
    b3r, b4r = _apply(m3, b3), _apply(m3, b4)
    m4 = _rotation(b3r, _signed_angle(b3r, _cross(b4r, b3r), _cross(b3r, b2)) + plane_pinky) @ m3
    plane = torch.stack([m0, eye, eye, m3, m4], dim=1)
    c0, c1, c2, c3, c4 = _apply(plane, roots).unbind(1)
    # B. Root-angle normalisation: fixed spread angles between neighbouring metacarpals.
    spread_thumb, spread_index, spread_ring, spread_pinky = ROOT_SPREAD_ANGLES
    n1 = _rotation(_unit(_cross(c2, c1), 1e-8), spread_index - _angle(c2, c1))
    c1r, c0r = _apply(n1, c1), _apply(n1, c0)
    n0 = _rotation(_unit(_cross(c1r, c0r), 1e-8), spread_thumb - _angle(c1r, c0r)) @ n1
    n3 = _rotation(_unit(_cross(c3, c2), 1e-8), _angle(c3, c2) - spread_ring)
    c3r, c4r = _apply(n3, c3), _apply(n3, c4)
    n4 = _rotation(_unit(_cross(c4r, c3r), 1e-8), _angle(c4r, c3r) - spread_pinky) @ n3
    spread = torch.stack([n0, n1, eye, n3, n4], dim=1)
    return spread @ plane


def _first_frames(roots: torch.Tensor) -> torch.Tensor:
    """(B,5,3) normalised metacarpal directions e_f -> (B,5,3,3) frames (rows x, y, z) of the proximal bones."""
    normals = _unit(_cross(roots[:, :4], roots[:, 1:]), 1e-9)  # p_0..p_3
    p0, p1, p2, p3 = normals.unbind(1)
    helper = torch.stack([p0, p1, (p1 + p2) / 2, (p2 + p3) / 2, p3], dim=1)
    y = _unit(_cross(roots, helper), 1e-9)
    x = _unit(_cross(y, roots), 1e-9)
    return torch.stack([x, y, roots], dim=-2)


def _child_frames(parent: torch.Tensor, parent_direction: torch.Tensor) -> torch.Tensor:
    """(B,5,3,3) parent frames (rows), (B,5,3) parent bone directions -> (B,5,3,3) child frames whose z is the parent bone."""
    local = _apply(parent, parent_direction)
    alpha, beta = _azimuth_elevation(local)
    beta = torch.where(local[..., 1] + CLIP < 0, -beta, beta)
    x, y, z = parent.unbind(-2)
    eye = _eye(alpha.shape, alpha)
    spin_y = torch.where((alpha.abs() >= CLIP)[..., None, None], _rotation(y, alpha), eye)
    tilt_axis = torch.cos(alpha)[..., None] * x - torch.sin(alpha)[..., None] * z
    tilt = torch.where((beta.abs() >= CLIP)[..., None, None], _rotation(tilt_axis, -beta), eye)
    # Rows are rotated as vectors: row' = R row, i.e. F' = F R^T.
    return parent @ (tilt @ spin_y).transpose(-1, -2)


def _straightening(local: torch.Tensor) -> torch.Tensor:
    """(...,3) bone direction in its own frame -> (...,3,3) rotation r taking it onto +z."""
    theta, phi = _azimuth_elevation(local)
    phi = torch.where(local[..., 1] + CLIP > 0, -phi, phi)
    y_axis = local.new_tensor([0.0, 1.0, 0.0]).expand_as(local)
    tilt_axis = torch.stack([torch.cos(theta), torch.zeros_like(theta), -torch.sin(theta)], dim=-1)
    return _rotation(y_axis, -theta) @ _rotation(tilt_axis, -phi)


def unpose_matrices(joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,21,3) normalised biomech keypoints, metres -> ((B,20,4,4) bone unpose matrices in metres, (B,20) bone lengths)."""
    batch = joints.shape[0]
    parents = torch.as_tensor(BIOMECH_PARENTS[1:], device=joints.device)
    bones = joints[:, 1:] - joints[:, parents]  # (B,20,3), level-major: [level * 5 + finger]
    lengths = bones.norm(dim=-1).clamp_min(1e-9)
    directions = bones / lengths[..., None]

    finger_rotation = _root_rotations(directions[:, :5])  # H_f, (B,5,3,3)
    normalised = _apply(finger_rotation.repeat(1, 4, 1, 1), directions).reshape(batch, 4, 5, 3)  # e_k

    # C-F: frame, straightening and chained unpose rotation W per level (levels 1..3; level 0 is I).
    frame = _first_frames(normalised[:, 0])
    chain = _eye((batch, 5), joints)  # r_{k-5} r_{k-10}: the ancestors' straightenings, nearest first
    unpose_levels = [_eye((batch, 5), joints)]
    for level in range(1, 4):
        if level > 1:
            frame = _child_frames(frame, normalised[:, level - 1])
        straighten = _straightening(_apply(frame, normalised[:, level]))
        unpose_levels.append(frame.transpose(-1, -2) @ chain @ straighten @ frame)
        chain = straighten @ chain
    unpose = torch.stack(unpose_levels, dim=1).reshape(batch, 20, 3, 3)  # W_k

    # G: rigid unpose; canonical start points are running sums of the canonical parent bones.
    rotation = unpose @ finger_rotation.repeat(1, 4, 1, 1)
    canonical_bones = (lengths[..., None] * _apply(unpose, normalised.reshape(batch, 20, 3))).reshape(batch, 4, 5, 3)
    starts = torch.cat([torch.zeros_like(canonical_bones[:, :1]), canonical_bones[:, :3].cumsum(1)], dim=1)
    translation = starts.reshape(batch, 20, 3) - _apply(rotation, joints[:, parents])
    matrices = torch.zeros(batch, 20, 4, 4, dtype=joints.dtype, device=joints.device)
    matrices[..., :3, :3] = rotation
    matrices[..., :3, 3] = translation
    matrices[..., 3, 3] = 1.0
    return matrices, lengths


def canonicalize(keypoints: torch.Tensor) -> Canonical:
    """(B,21,3) mano keypoints, metres -> Canonical (normalisation, 16 part matrices M -> C_b, 16 bone lengths)."""
    joints = keypoints[:, MANO_TO_BIOMECH]
    normalization = normalization_matrix(joints)
    normalised = transform_points(normalization, joints)
    bones, lengths = unpose_matrices(normalised)
    part_bones = torch.as_tensor(PART_BONES, device=keypoints.device)
    parts = torch.eye(4, dtype=keypoints.dtype, device=keypoints.device).repeat(keypoints.shape[0], 16, 1, 1)
    parts[:, 1:] = bones[:, part_bones]
    # S^-1 U S with S = diag(0.4, 0.4, 0.4, 1): the translation moves to model units.
    parts[:, 1:, :3, 3] = parts[:, 1:, :3, 3] * MODEL_SCALE
    palm_length = lengths[:, 2:3]  # wrist -> middle MCP
    bone_lengths = torch.cat([palm_length, lengths[:, part_bones]], dim=1)
    return Canonical(normalization, parts, bone_lengths, normalised)


# ---------------------------------------------------------------------------------------------
# Input validation.


def validate_keypoints(keypoints: np.ndarray | torch.Tensor, joint_order: str | Sequence[str] = "mano") -> np.ndarray:
    """(21,3) or (B,21,3) metres in ``joint_order`` (one, or one per hand) -> (B,21,3) float64 mano keypoints; raises KeypointError."""
    if isinstance(keypoints, torch.Tensor):
        keypoints = keypoints.detach().cpu().numpy()
    try:
        array = np.asarray(keypoints, dtype=np.float64)
    except (TypeError, ValueError):
        raise KeypointError("keypoints: expected numbers, an array of shape (21, 3)") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (NUM_JOINTS, 3) or array.shape[0] == 0:
        raise KeypointError(
            f"keypoints: expected shape (21, 3) or (B, 21, 3) (21 joints, xyz in metres), got {tuple(np.shape(keypoints))}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        hand, joint, _ = np.argwhere(bad)[0]
        raise KeypointError(f"keypoints: NaN or infinite value at hand {hand}, joint {joint}")
    orders = [joint_order] * len(array) if isinstance(joint_order, str) else list(joint_order)
    if len(orders) != len(array):
        raise KeypointError(f"joint_order: got {len(orders)} joint orders for {len(array)} hands")
    try:
        array = np.stack([to_mano(joints, order) for joints, order in zip(array, orders, strict=True)])
    except ValueError as error:
        raise KeypointError(str(error)) from None
    for hand, joints in enumerate(array):
        _check_hand(joints, hand)
    return array


def _check_hand(joints: np.ndarray, hand: int) -> None:
    """(21,3) mano keypoints, metres -> None; raises KeypointError for wrong units or a degenerate skeleton."""
    where = f"keypoints (hand {hand})"
    span = float(np.linalg.norm(joints[9] - joints[0]))
    low, high = HAND_SPAN_RANGE_M
    if not low <= span <= high:
        scale = unit_hint(span, (1.5, 25), (15, 300))
        hint = f"they look like {scale}" if scale else "check the units and the joint order"
        raise KeypointError(
            f"{where}: wrist to middle-finger MCP is {span:.4g}, expected {low}-{high} m; keypoints must be in metres ({hint})"
        )
    biomech = joints[MANO_TO_BIOMECH]
    bone_lengths = np.linalg.norm(biomech[1:] - biomech[BIOMECH_PARENTS[1:]], axis=1)
    short = np.flatnonzero(bone_lengths < MIN_BONE_LENGTH_M)
    if short.size:
        child = int(MANO_TO_BIOMECH[short[0] + 1])
        parent = int(MANO_TO_BIOMECH[BIOMECH_PARENTS[short[0] + 1]])
        raise KeypointError(
            f"{where}: joints {parent} and {child} (mano order) coincide "
            f"(bone length {bone_lengths[short[0]] * 1000:.3g} mm); the skeleton is degenerate"
        )
    middle, index = joints[9] - joints[0], joints[5] - joints[0]
    sine = np.linalg.norm(np.cross(middle, index)) / (np.linalg.norm(middle) * np.linalg.norm(index))
    if sine < MIN_PALM_SINE:
        raise KeypointError(
            f"{where}: wrist, index MCP and middle MCP are collinear; the palm orientation is undefined"
        )
