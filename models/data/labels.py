"""Occupancy training labels: query points in the model box and inside/outside by winding number.

Per posed hand, query points are drawn in the model frame M (x_M = 2.5 * normalised keypoint frame,
the decoder's frame): uniform in the MISE box plus area-weighted surface samples with Gaussian
noise, as HALO does. A point is inside when the generalised winding number of the posed mesh is
above 0.5, which stays right where LBS makes fingers touch or slightly interpenetrate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from ..canonical import MODEL_SCALE, canonicalize, transform_points
from ..geometry import inside_mesh
from .poses import PoseBatch, PoseSamplerConfig, sample_poses
from .rigged_hand import RiggedHand

BOX_HALF_SIDE = 0.55  # model units: the MISE box [-0.55, 0.55]^3


@dataclass(frozen=True)
class LabelConfig:
    """How many query points per hand and how they are spread (model units)."""

    uniform_points: int = 512
    surface_points: int = 1536
    surface_noise: tuple[float, ...] = (0.01, 0.0025)  # std per axis; surface points split evenly

    def to_dict(self) -> dict:
        """JSON-friendly settings."""
        return asdict(self)


@dataclass
class LabelledBatch:
    """B posed hands with their query points and labels."""

    keypoints: torch.Tensor  # (B,21,3) metres, keypoint frame, mano order
    points: torch.Tensor  # (B,N,3) model frame M
    occupancy: torch.Tensor  # (B,N) 1 inside, 0 outside
    parts: torch.Tensor  # (B,N) int64 HALO part (0..15) of the skin nearest to each point
    vertices_model: list[np.ndarray]  # B x (V,3) posed mesh in M (float64)
    families: list[str]


def surface_samples(vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(V,3), (F,3) -> (count,3) points uniform on the surface (area-weighted faces, uniform barycentrics)."""
    corners = vertices[faces]
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    chosen = corners[rng.choice(len(faces), size=count, p=areas / areas.sum())]
    r1, r2 = np.sqrt(rng.uniform(size=(count, 1))), rng.uniform(size=(count, 1))
    return (1 - r1) * chosen[:, 0] + r1 * (1 - r2) * chosen[:, 1] + r1 * r2 * chosen[:, 2]


def query_points(vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator, config: LabelConfig) -> np.ndarray:
    """(V,3) mesh in M -> (N,3) query points in M: uniform in the box, then noisy surface samples."""
    uniform = rng.uniform(-BOX_HALF_SIDE, BOX_HALF_SIDE, (config.uniform_points, 3))
    groups = np.array_split(np.arange(config.surface_points), len(config.surface_noise))
    near = surface_samples(vertices, faces, config.surface_points, rng)
    for sigma, rows in zip(config.surface_noise, groups, strict=True):
        near[rows] += rng.normal(0.0, sigma, (len(rows), 3))
    return np.concatenate([uniform, near])


def to_model_frame(keypoints: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B,21,3) mano keypoints, (B,N,3) points, metres, keypoint frame -> (B,N,3) model frame M."""
    return MODEL_SCALE * transform_points(canonicalize(keypoints).normalization_matrix, points)


def label_poses(hand: RiggedHand, poses: PoseBatch, rng: np.random.Generator, config: LabelConfig) -> LabelledBatch:
    """Pose ``hand`` and draw labelled query points for each pose."""
    with torch.no_grad():
        posed = poses.apply(hand)
        vertices_model = to_model_frame(posed.keypoints.double(), posed.vertices.double()).numpy()
    faces = hand.faces.numpy()
    points, labels, parts = [], [], []
    for vertices in vertices_model:
        query = query_points(vertices, faces, rng, config)
        points.append(query)
        labels.append(inside_mesh(trimesh.Trimesh(vertices, faces, process=False), query))
        parts.append(hand.vertex_parts.numpy()[cKDTree(vertices).query(query)[1]])
    return LabelledBatch(
        keypoints=posed.keypoints,
        points=torch.as_tensor(np.stack(points), dtype=torch.float32),
        occupancy=torch.as_tensor(np.stack(labels), dtype=torch.float32),
        parts=torch.as_tensor(np.stack(parts)),
        vertices_model=list(vertices_model),
        families=poses.families,
    )


def sample_labelled(
    hand: RiggedHand,
    count: int,
    rng: np.random.Generator,
    pose_config: PoseSamplerConfig | None = None,
    label_config: LabelConfig | None = None,
) -> LabelledBatch:
    """Draw ``count`` random poses and label query points around each."""
    poses = sample_poses(hand, count, rng, pose_config)
    return label_poses(hand, poses, rng, label_config or LabelConfig())
