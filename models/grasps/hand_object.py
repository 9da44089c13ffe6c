"""Hand-object terms through the frozen HALO occupancy, and test-time refinement of grasp keypoints.

For B hands (keypoints) and their objects' point sets, all in the object frame (metres):

* penetration = mean HALO occupancy of points inside the object (0 when the hand stays outside),
* contact     = max(0, 2 - best HALO logit over the object's surface points): 0 once the hand
                surface encloses some of the object's surface,
* fingertips  = mean distance of the thumb, index and middle fingertip keypoints (which lie on the
                skin) to the object's surface samples.

Refinement keeps every bone length fixed: keypoints are rebuilt from the wrist position and one
free direction per bone, and a few Adam steps minimise penetration + contact + fingertip distance + a pull
to the start. With shell points (object points just under its surface, with their depth) two more
things aim at the deepest penetration, which the mean occupancy barely sees:

* depth       = mean over shell points of relu(hand logit + margin) x depth (mm): the logit, unlike the
                occupancy, keeps its gradient deep inside the hand, and deeper points weigh more;
* back-off    = a last rigid move of the whole hand along the mean outward direction of the shell
                points still inside it, by the shortest of a few candidate distances that leaves no
                shell point deeper than ``backoff_target_m`` inside the hand (or the best candidate).
"""

from __future__ import annotations

from collections.abc import Callable
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


def hand_query(decoder: OccupancyDecoder, keypoints: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B,21,3) mano keypoints -> a function of (B,N,3) points (same frame, metres) -> (B,N) occupancy logits.

    The hand is canonicalised once; the function may then be asked about many point sets.
    """
    canonical = canonicalize(keypoints)
    code = decoder.hand_code(canonical.part_matrices, canonical.bone_lengths)

    def logits(points: torch.Tensor) -> torch.Tensor:
        return decoder.max_part_logits(transform_points(canonical.normalization_matrix, points) * MODEL_SCALE, code)

    return logits


def hand_logits(decoder: OccupancyDecoder, keypoints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,21,3) mano keypoints, (B,N,3) points (same frame, metres) -> (B,N) occupancy logits, differentiable."""
    return hand_query(decoder, keypoints)(points)


@dataclass
class HandObjectTerms:
    penetration: torch.Tensor  # (B,) mean occupancy of object interior points (a volume fraction)
    contact: torch.Tensor  # (B,) hinge on the best hand logit over the surface points (0 once touching)
    fingertips: torch.Tensor  # (B,) mean distance of thumb, index, middle tips to the surface samples, metres


def hand_object_terms(decoder: OccupancyDecoder, keypoints: torch.Tensor, interior: torch.Tensor,
                      surface: torch.Tensor) -> HandObjectTerms:
    """(B,21,3) keypoints, (B,I,3) interior and (B,S,3) surface points (metres) -> per-hand terms."""
    logits = hand_logits(decoder, keypoints, torch.cat([interior, surface], dim=1))
    return terms_from_logits(keypoints, logits[:, : interior.shape[1]], logits[:, interior.shape[1]:], surface)


def terms_from_logits(keypoints: torch.Tensor, interior_logits: torch.Tensor, surface_logits: torch.Tensor,
                      surface: torch.Tensor) -> HandObjectTerms:
    """(B,21,3) keypoints, (B,I) and (B,S) hand logits at the interior and (B,S,3) surface points -> per-hand terms."""
    tip_distance = torch.cdist(keypoints[:, list(CONTACT_TIPS)], surface).amin(2).mean(1)
    return HandObjectTerms(torch.sigmoid(interior_logits).mean(1),
                           torch.relu(CONTACT_LOGIT - surface_logits.amax(1)), tip_distance)


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


def depth_penetration(shell_logits: torch.Tensor, shell_depth: torch.Tensor, margin: float) -> torch.Tensor:
    """(B,H) hand logits at shell points, (B,H) their depth (metres) -> (B,) mean relu(logit + margin) x depth, mm."""
    return (torch.relu(shell_logits + margin) * shell_depth * 1e3).mean(1)


@dataclass
class RefineConfig:
    steps: int = 60
    learning_rate: float = 1e-3
    points: int = 96  # interior and surface points each
    shell_points: int = 256
    w_penetration: float = 80.0
    w_contact: float = 1.0
    w_fingertips: float = 30.0  # per metre
    w_stay: float = 1e3  # per squared metre of mean keypoint displacement
    w_depth: float = 2.0  # per logit x mm
    depth_margin: float = 2.0  # logit: shell points count from just outside the hand surface
    backoff_target_m: float = 0.003  # 0: no back-off
    backoff_max_m: float = 0.03
    backoff_candidates: int = 16  # distances grow quadratically: fine steps first


def back_off(decoder: OccupancyDecoder, keypoints: torch.Tensor, shell: torch.Tensor, shell_depth: torch.Tensor,
             surface: torch.Tensor, config: RefineConfig) -> torch.Tensor:
    """(B,21,3) keypoints, (B,H,3) shell, (B,H) depths, (B,S,3) surface (metres) -> (B,21,3) rigidly moved out."""
    with torch.no_grad():
        logits = hand_query(decoder, keypoints)
        inside = logits(shell) > 0
        nearest = torch.cdist(shell, surface).argmin(2)
        outward = F.normalize(torch.gather(surface, 1, nearest[..., None].expand(-1, -1, 3)) - shell, dim=-1)
        direction = F.normalize((outward * (inside * shell_depth)[..., None]).sum(1), dim=-1)
        distances = config.backoff_max_m * torch.linspace(0, 1, config.backoff_candidates, dtype=keypoints.dtype) ** 2
        worst = torch.stack([
            torch.where(logits(shell - direction[:, None] * distance) > 0,
                        shell_depth, 0).amax(1)
            for distance in distances
        ], dim=1)
        acceptable = worst <= config.backoff_target_m
        choice = torch.where(acceptable.any(1), acceptable.float().argmax(1), worst.argmin(1))
        return keypoints + direction[:, None] * distances[choice][:, None, None]


def refine(decoder: OccupancyDecoder, keypoints: torch.Tensor, interior: torch.Tensor, surface: torch.Tensor,
           config: RefineConfig | None = None, shell: torch.Tensor | None = None,
           shell_depth: torch.Tensor | None = None) -> torch.Tensor:
    """(B,21,3) keypoints, (B,I,3), (B,S,3) object points, optional (B,H,3) shell and (B,H) depths (metres)
    -> (B,21,3) refined keypoints, same bone lengths."""
    config = config or RefineConfig()
    full_shell, full_surface = shell, surface
    interior, surface = interior[:, : config.points], surface[:, : config.points]
    use_depth = shell is not None and config.w_depth > 0
    if use_depth:
        shell, shell_depth_used = shell[:, : config.shell_points], shell_depth[:, : config.shell_points]
    start = keypoints.detach()
    bones = bone_vectors(start)
    lengths = bones.norm(dim=-1)
    wrist = start[:, 0].clone().requires_grad_(True)
    directions = bones.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([wrist, directions], lr=config.learning_rate)
    # One decoder call per step for all point sets: the hand is canonicalised once per step.
    queries = torch.cat([interior, surface, *([shell] if use_depth else [])], 1)
    sizes = [interior.shape[1], surface.shape[1], shell.shape[1] if use_depth else 0]
    for _ in range(config.steps):
        current = from_bones(wrist, directions, lengths)
        interior_logits, surface_logits, shell_logits = hand_logits(decoder, current, queries).split(sizes, dim=1)
        terms = terms_from_logits(current, interior_logits, surface_logits, surface)
        stay = ((current - start) ** 2).sum(-1).mean(1)
        loss = (config.w_penetration * terms.penetration + config.w_contact * terms.contact
                + config.w_fingertips * terms.fingertips + config.w_stay * stay)
        if use_depth:
            loss = loss + config.w_depth * depth_penetration(shell_logits, shell_depth_used, config.depth_margin)
        optimiser.zero_grad()
        loss.sum().backward()
        optimiser.step()
    with torch.no_grad():
        refined = from_bones(wrist, directions, lengths)
    if full_shell is not None and config.backoff_target_m > 0:
        refined = back_off(decoder, refined, full_shell, shell_depth, full_surface, config)
    return refined
