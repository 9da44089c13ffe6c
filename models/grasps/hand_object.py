"""Hand-object terms through the frozen HALO occupancy, and test-time refinement of grasp keypoints.

For B hands (keypoints) and their objects' point sets, all in the object frame (metres):

* penetration = mean HALO occupancy of points inside the object (0 when the hand stays outside),
* contact     = max(0, 2 - best HALO logit over the object's surface points): 0 once the hand
                surface encloses some of the object's surface,
* fingertips  = mean distance of the thumb, index and middle fingertip keypoints (which lie on the
                skin) to the object's surface samples.

Refinement keeps every bone length fixed: keypoints are rebuilt from the wrist position and one
free direction per bone, and a few Adam steps minimise penetration + contact + fingertip distance + a pull to the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..canonical import MODEL_SCALE, canonicalize, transform_points
from ..occupancy import OccupancyDecoder

# mano fingertips of the thumb, index and middle finger: the grasp data has them on the surface.
CONTACT_TIPS = (4, 8, 12)
# Contact asks for a surface point clearly inside the hand (occupancy sigmoid(2) = 0.88), not just at
# its boundary: the measured contact (hand within 2 mm) then survives the push-out of penetration.
CONTACT_LOGIT = 2.0
# mano parent of each joint (the wrist has none).
MANO_PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)


def part_logits(decoder: OccupancyDecoder, keypoints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,21,3) mano keypoints, (B,N,3) points (same frame, metres) -> (P,B,N) per-part occupancy logits."""
    canonical = canonicalize(keypoints)
    model_points = transform_points(canonical.normalization_matrix, points) * MODEL_SCALE
    code = decoder.hand_code(canonical.part_matrices, canonical.bone_lengths)
    return decoder.part_logits(model_points, code)


@dataclass
class HandObjectTerms:
    penetration: torch.Tensor  # (B,) mean occupancy of object interior points (a volume fraction)
    contact: torch.Tensor  # (B,) hinge on the best hand logit over the surface points (0 once touching)
    fingertips: torch.Tensor  # (B,) mean distance of thumb, index, middle tips to the surface samples, metres


def hand_object_terms(decoder: OccupancyDecoder, keypoints: torch.Tensor, interior: torch.Tensor,
                      surface: torch.Tensor) -> HandObjectTerms:
    """(B,21,3) keypoints, (B,I,3) interior and (B,S,3) surface points (metres) -> per-hand terms."""
    logits = part_logits(decoder, keypoints, torch.cat([interior, surface], dim=1)).amax(0)
    inner, outer = logits[:, : interior.shape[1]], logits[:, interior.shape[1]:]
    tips = keypoints[:, list(CONTACT_TIPS)]
    tip_distance = torch.cdist(tips, surface).amin(2).mean(1)
    return HandObjectTerms(torch.sigmoid(inner).mean(1), torch.relu(CONTACT_LOGIT - outer.amax(1)), tip_distance)


def bone_vectors(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,21,3) mano keypoints -> (B,20,3) vectors parent -> joint for joints 1..20."""
    parents = list(MANO_PARENTS[1:])
    return keypoints[:, 1:] - keypoints[:, parents]


def from_bones(wrist: torch.Tensor, directions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B,3) wrist, (B,20,3) bone directions (any length), (B,20) lengths -> (B,21,3) mano keypoints."""
    steps = F.normalize(directions, dim=-1) * lengths[..., None]
    joints = [wrist]
    for joint in range(1, 21):
        joints.append(joints[MANO_PARENTS[joint]] + steps[:, joint - 1])
    return torch.stack(joints, dim=1)


@dataclass
class RefineConfig:
    steps: int = 60
    learning_rate: float = 1e-3
    points: int = 96  # interior and surface points each
    w_penetration: float = 80.0
    w_contact: float = 1.0
    w_fingertips: float = 30.0  # per metre
    w_stay: float = 1e3  # per squared metre of mean keypoint displacement


def refine(decoder: OccupancyDecoder, keypoints: torch.Tensor, interior: torch.Tensor, surface: torch.Tensor,
           config: RefineConfig | None = None) -> torch.Tensor:
    """(B,21,3) keypoints, (B,I,3), (B,S,3) object points (metres) -> (B,21,3) refined, same bone lengths."""
    config = config or RefineConfig()
    interior, surface = interior[:, : config.points], surface[:, : config.points]
    start = keypoints.detach()
    bones = bone_vectors(start)
    lengths = bones.norm(dim=-1)
    wrist = start[:, 0].clone().requires_grad_(True)
    directions = bones.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([wrist, directions], lr=config.learning_rate)
    for _ in range(config.steps):
        current = from_bones(wrist, directions, lengths)
        terms = hand_object_terms(decoder, current, interior, surface)
        stay = ((current - start) ** 2).sum(-1).mean(1)
        loss = (config.w_penetration * terms.penetration + config.w_contact * terms.contact
                + config.w_fingertips * terms.fingertips + config.w_stay * stay)
        optimiser.zero_grad()
        loss.sum().backward()
        optimiser.step()
    with torch.no_grad():
        return from_bones(wrist, directions, lengths)
