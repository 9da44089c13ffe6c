"""A cheap differentiable stand-in for the HALO hand surface: capsules along the skeleton.

Each capsule is a segment between two mano keypoints with a radius. The 20 bones give the fingers
and the palm's rays; more segments across the knuckles, the thenar web and the base of the palm fill
the palm. The radii are fitted to the base model's own surface: mesh a few hands, give each mesh
vertex to its nearest segment, and take a high quantile (``RADIUS_QUANTILE``) of the distances per
segment, so the proxy errs on the side of covering the hand (penetration is what it must not miss). The signed distance of a point to the
hand is then ``min over capsules (distance to segment - radius)`` (negative inside), about a
thousand times cheaper than the occupancy network, so refinement can take most of its steps on it.

Shapes: B hands, N points, C capsules; metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..skeleton import MANO_TIPS

# mano parent of each joint (the wrist has none).
MANO_PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
BONE_CAPSULES = tuple((MANO_PARENTS[joint], joint) for joint in range(1, 21))
# Across the knuckles (index-middle-ring-pinky MCPs), the thenar web (thumb CMC and MCP to the index
# MCP) and the base of the palm (thumb CMC to the ring and pinky MCPs).
PALM_CAPSULES = ((5, 9), (9, 13), (13, 17), (2, 5), (1, 5), (1, 13), (1, 17))
RADIUS_QUANTILE = 0.9
AXIS_SAMPLES = 5  # points along each capsule's axis where the object's distance field is read
CAPSULES = torch.tensor(BONE_CAPSULES + PALM_CAPSULES)  # (C,2) mano keypoint pairs
# The distal segment of each finger (thumb first): where grasp contact is made.
DISTAL_CAPSULES = torch.tensor([joint - 1 for joint in MANO_TIPS])
# The segment before it (the thumb's proximal phalanx, the fingers' middle phalanges).
MIDDLE_CAPSULES = DISTAL_CAPSULES - 1
# The capsules across the palm.
PALM_CAPSULE_ROWS = torch.arange(len(BONE_CAPSULES), len(BONE_CAPSULES) + len(PALM_CAPSULES))
# Capsule -> finger (0 thumb .. 4 pinky) for the phalanx capsules beyond the first bone, -1 otherwise.
FINGER_OF_CAPSULE = torch.tensor([(joint - 1) // 4 if (joint - 1) % 4 else -1 for joint in range(1, 21)]
                                 + [-1] * len(PALM_CAPSULES))


def segment_distance(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """(B,N,3) points, (B,C,3) segment starts and ends -> (B,N,C) distance of each point to each segment."""
    axis = end - start  # (B,C,3)
    length2 = (axis * axis).sum(-1).clamp_min(1e-12)  # (B,C)
    offset = points[:, :, None] - start[:, None]  # (B,N,C,3)
    along = ((offset * axis[:, None]).sum(-1) / length2[:, None]).clamp(0.0, 1.0)  # (B,N,C)
    return (offset - along[..., None] * axis[:, None]).norm(dim=-1)


@dataclass
class HandProxy:
    """Capsule radii (C,) in metres, one per ``CAPSULES`` row."""

    radii: torch.Tensor

    def capsule_distance(self, keypoints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B,21,3) mano keypoints, (B,N,3) points (metres) -> (B,N,C) signed distance to each capsule surface."""
        pairs = CAPSULES.to(keypoints.device)
        distance = segment_distance(points, keypoints[:, pairs[:, 0]], keypoints[:, pairs[:, 1]])
        return distance - self.radii.to(keypoints)

    def axis_points(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(B,21,3) keypoints -> (B,C,A,3) points along each capsule's axis, ends included."""
        pairs = CAPSULES.to(keypoints.device)
        start, end = keypoints[:, pairs[:, 0]], keypoints[:, pairs[:, 1]]
        along = torch.linspace(0, 1, AXIS_SAMPLES, dtype=keypoints.dtype, device=keypoints.device)[:, None]
        return start[:, :, None] + along * (end - start)[:, :, None]

    def signed_distance(self, keypoints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B,21,3) keypoints, (B,N,3) points -> (B,N) signed distance to the hand (negative inside), metres."""
        return self.capsule_distance(keypoints, points).amin(-1)


def fit_proxy(keypoints: np.ndarray, meshes: list) -> HandProxy:
    """(H,21,3) mano keypoints and their H hand meshes (trimesh, metres) -> capsule radii fitted to the meshes."""
    joints = torch.as_tensor(np.asarray(keypoints), dtype=torch.float64)
    pairs = CAPSULES
    per_capsule: list[list[torch.Tensor]] = [[] for _ in range(len(pairs))]
    for hand, mesh in zip(joints, meshes, strict=True):
        vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)[None]
        distance = segment_distance(vertices, hand[None, pairs[:, 0]], hand[None, pairs[:, 1]])[0]  # (V,C)
        nearest = distance.argmin(1)
        for capsule in range(len(pairs)):
            per_capsule[capsule].append(distance[nearest == capsule, capsule])
    fallback = float(torch.cat([d for pieces in per_capsule for d in pieces]).quantile(RADIUS_QUANTILE))
    radii = [float(torch.cat(pieces).quantile(RADIUS_QUANTILE)) if sum(len(p) for p in pieces) else fallback
             for pieces in per_capsule]
    return HandProxy(torch.tensor(radii, dtype=torch.float32))
