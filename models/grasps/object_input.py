"""Object meshes as the grasp VAE sees them: validation, the object-centred frame, point sets, BPS code.

Units: object meshes are in metres. The object-centred frame is the input frame shifted so that the
centre of the bounding box is at the origin (no rotation), so grasps come back in the caller's frame
by adding ``centre`` again. Inside / outside follows the generalised winding number (see metrics).

The basis point set (BPS) code is the distance from a fixed set of points in a ball around the
origin to the object surface: a fixed-length, order-free description of the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from ..geometry import inside_mesh, inside_solid, surface_distance
from ..units import unit_hint
from .object_repair import ObjectError, prepare

MIN_EXTENT_M, MAX_EXTENT_M = 0.005, 0.5
MAX_FACES = 200_000
SURFACE_POINTS = 512
INTERIOR_POINTS = 512
SHELL_POINTS = 1024
SHELL_DEPTH_M = 0.03
BPS_POINTS = 512
BPS_RADIUS_M = 0.15


def validate_object(mesh: object) -> trimesh.Trimesh:
    """Any mesh-like input -> a checked triangle mesh in metres; raises ObjectError with the reason."""
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if mesh.geometry else trimesh.Trimesh()
    if not isinstance(mesh, trimesh.Trimesh):
        raise ObjectError(f"object: expected a triangle mesh, got {type(mesh).__name__}")
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise ObjectError("object: the mesh is empty (no vertices or no faces)")
    if len(mesh.faces) > MAX_FACES:
        raise ObjectError(f"object: {len(mesh.faces)} faces, at most {MAX_FACES} allowed; simplify the mesh")
    vertices = np.asarray(mesh.vertices)
    if not np.isfinite(vertices).all():
        raise ObjectError("object: vertex coordinates contain NaN or infinite values")
    faces = np.asarray(mesh.faces)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ObjectError("object: faces index vertices that do not exist")
    extent = float(np.ptp(vertices, axis=0).max())
    if not MIN_EXTENT_M <= extent <= MAX_EXTENT_M:
        scale = unit_hint(extent, (1.0, 50.0), (10.0, 500.0))
        hint = f"it looks like {scale}" if scale else "graspable objects are 0.5-50 cm"
        raise ObjectError(
            f"object: largest extent is {extent:.4g}, expected {MIN_EXTENT_M}-{MAX_EXTENT_M} m; "
            f"object meshes must be in metres ({hint})"
        )
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def prepare_object(mesh: object) -> trimesh.Trimesh:
    """Any mesh-like input -> the checked, repaired and closed object the grasp pipeline works on
    (``object_repair.prepare``, cached by content); raises ObjectError with the reason."""
    return prepare(validate_object(mesh))


def bps_basis(count: int, radius: float, seed: int = 0) -> np.ndarray:
    """(count,3) fixed basis points, uniform in a ball of ``radius`` metres (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * radius * np.cbrt(rng.uniform(size=(count, 1)))


@dataclass
class ObjectPoints:
    """One object in its centred frame: BPS code and point sets for the occupancy losses (metres)."""

    centre: np.ndarray  # (3,) bounding-box centre in the input frame
    bps: np.ndarray  # (K,) distance of each basis point to the surface
    surface: np.ndarray  # (S,3) area-uniform surface samples
    interior: np.ndarray | None  # (I,3) samples inside the object (surface samples if it has no inside); None if not drawn
    shell: np.ndarray  # (H,3) samples inside the object within SHELL_DEPTH_M of its surface
    shell_depth: np.ndarray  # (H,) distance of each shell sample to the surface (0 if it has no inside)


def interior_samples(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count,3) points inside ``mesh`` by rejection in its box; surface points if nothing is inside."""
    low, high = mesh.bounds
    found = np.zeros((0, 3))
    for _ in range(8):
        candidates = rng.uniform(low, high, size=(8 * count, 3))
        found = np.concatenate([found, candidates[inside_mesh(mesh, candidates)]])
        if len(found) >= count:
            return found[:count]
    if len(found) == 0:
        return trimesh.sample.sample_surface(mesh, count, seed=rng)[0]
    return found[rng.integers(0, len(found), count)]


def shell_samples(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count,3) points under the surface (depth up to SHELL_DEPTH_M, most of them shallow) and their (count,) depths, metres.

    Surface samples are moved along their face normal both ways (normals of user meshes may point
    inwards); the moved points inside the object are kept. An object without inside gives its surface.
    """
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=rng)
    depth = SHELL_DEPTH_M * rng.uniform(0.02, 1.0, size=(count, 1)) ** 2
    normals = np.asarray(mesh.face_normals)[faces]
    candidates = np.concatenate([points - normals * depth, points + normals * depth])
    found = candidates[inside_mesh(mesh, candidates)]
    if len(found) == 0:
        return np.asarray(points), np.zeros(count)
    found = found[rng.permutation(len(found))[:count]] if len(found) >= count else found[rng.integers(0, len(found), count)]
    return found, surface_distance(mesh, found)


def object_points(mesh: trimesh.Trimesh, basis: np.ndarray, seed: int = 0, interior: bool = True) -> ObjectPoints:
    """Validated mesh (metres), (K,3) BPS basis -> ObjectPoints in the bounding-box-centred frame.

    The interior samples feed only the training losses; sampling grasps skips them (``interior=False``)."""
    rng = np.random.default_rng(seed)
    centre = mesh.bounds.mean(axis=0)
    centred = mesh.copy()
    centred.apply_translation(-centre)
    surface = trimesh.sample.sample_surface(centred, SURFACE_POINTS, seed=rng)[0]
    inside = interior_samples(centred, INTERIOR_POINTS, rng) if interior else None
    shell, shell_depth = shell_samples(centred, SHELL_POINTS, rng)
    return ObjectPoints(centre=centre, bps=surface_distance(centred, basis), surface=np.asarray(surface),
                        interior=inside, shell=shell, shell_depth=shell_depth)


NORMAL_STEP_M = 0.002  # central-difference step of ObjectGrids.normals


@dataclass
class ObjectGrids:
    """Signed distance of O objects on regular grids (negative inside), for trilinear lookup."""

    sdf: torch.Tensor  # (O,1,G,G,G) metres, indexed [z, y, x] as grid_sample expects
    low: torch.Tensor  # (O,3) grid corner, metres
    high: torch.Tensor  # (O,3) opposite corner, metres

    def to(self, device: torch.device | str) -> ObjectGrids:
        """The same grids on ``device``."""
        return ObjectGrids(self.sdf.to(device), self.low.to(device), self.high.to(device))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(O,N,3) points, metres -> (O,N) signed distance, metres (plus the distance to the grid outside it)."""
        low, high = self.low[:, None], self.high[:, None]
        inside = torch.minimum(torch.maximum(points, low), high)
        grid = (2 * (inside - low) / (high - low) - 1)[:, :, None, None, :]
        sampled = F.grid_sample(self.sdf, grid, align_corners=True)[:, 0, :, 0, 0]
        return sampled + (points - inside).norm(dim=-1)

    def normals(self, points: torch.Tensor, step: float = NORMAL_STEP_M) -> torch.Tensor:
        """(O,N,3) points, metres -> (O,N,3) unit outward surface normals (central differences of the distance)."""
        offsets = torch.cat([torch.eye(3), -torch.eye(3)]).to(points) * step  # (6,3)
        probes = (points[:, :, None] + offsets).reshape(points.shape[0], -1, 3)
        distance = self(probes).reshape(*points.shape[:2], 2, 3)
        return F.normalize(distance[:, :, 0] - distance[:, :, 1], dim=-1)


def object_grids(meshes: list[trimesh.Trimesh], size: int, margin: float) -> ObjectGrids:
    """Meshes (metres) -> ObjectGrids with ``size``^3 samples over each bounding box plus ``margin``."""
    sdfs, lows, highs = [], [], []
    for mesh in meshes:
        low, high = mesh.bounds[0] - margin, mesh.bounds[1] + margin
        axes = [np.linspace(lo, hi, size) for lo, hi in zip(low, high, strict=True)]
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        points = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
        distance = surface_distance(mesh, points)
        sign = np.where(inside_solid(mesh, points), -1.0, 1.0)
        sdfs.append((sign * distance).reshape(size, size, size))
        lows.append(low)
        highs.append(high)
    as_tensor = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    return ObjectGrids(as_tensor(sdfs)[:, None], as_tensor(lows), as_tensor(highs))


def stack_points(items: list[ObjectPoints]) -> dict[str, torch.Tensor]:
    """ObjectPoints list -> float32 tensors bps (O,K), surface (O,S,3), interior (O,I,3), centre (O,3)."""
    return {
        name: torch.as_tensor(np.stack([getattr(item, name) for item in items]), dtype=torch.float32)
        for name in ("bps", "surface", "interior", "centre")
    }
