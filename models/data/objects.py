"""Procedural graspable objects at everyday sizes (1-15 cm), split by object into train / val / test.

Object ``index`` fully determines the shape (kind, size, proportions, orientation), so the same index
always gives the same mesh and the splits never share an object. Meshes are in metres, centred at
their bounding-box centre (the object-centred frame the grasp VAE works in), randomly rotated.

Mugs, bottles with caps and compounds are unions of closed parts that are simply concatenated (no
boolean operation): inside / outside is decided by the generalised winding number (>= 0.5 means
inside at least one part), which also copes with non-watertight user meshes.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

OBJECT_KINDS = (
    "box", "cylinder", "sphere", "ellipsoid", "capsule", "cone",
    "torus", "mug", "bottle", "hull", "compound", "plate", "tool", "fruit",
)
SPLITS = ("train", "val", "test")
MAX_SIZE_M, MAX_GRIP_M = 0.15, 0.08
SECTIONS = 32


def object_split(index: int) -> str:
    """Split of object ``index``: indices 0-15 mod 20 train (80 %), 16-17 val, 18-19 test."""
    slot = index % 20
    return "train" if slot < 16 else "val" if slot < 18 else "test"


def split_indices(split: str, count: int, start: int = 0) -> list[int]:
    """The first ``count`` object indices (>= start) that belong to ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; expected one of {SPLITS}")
    out: list[int] = []
    index = start
    while len(out) < count:
        if object_split(index) == split:
            out.append(index)
        index += 1
    return out


def _cylinder(radius: float, height: float) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=radius, height=height, sections=SECTIONS)


def _primitive(kind: str, size: float, rng: np.random.Generator) -> trimesh.Trimesh:
    """One closed primitive of ``kind`` whose largest extent is about ``size`` metres."""
    if kind == "box":
        return trimesh.creation.box(extents=size * np.append(1.0, rng.uniform(0.3, 1.0, 2)))
    if kind == "cylinder":
        return _cylinder(size * rng.uniform(0.15, 0.5), size)
    if kind == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=size / 2)
    if kind == "ellipsoid":
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
        sphere.apply_scale(size * np.append(1.0, rng.uniform(0.4, 1.0, 2)))
        return sphere
    if kind == "capsule":
        radius = size * rng.uniform(0.15, 0.35)
        return trimesh.creation.capsule(height=size - 2 * radius, radius=radius, count=[SECTIONS, SECTIONS])
    if kind == "cone":
        return trimesh.creation.cone(radius=size * rng.uniform(0.2, 0.5), height=size, sections=SECTIONS)
    if kind == "torus":
        minor = size * rng.uniform(0.06, 0.15)
        return trimesh.creation.torus(major_radius=size / 2 - minor, minor_radius=minor,
                                      major_sections=SECTIONS, minor_sections=16)
    if kind == "mug":
        radius, height = size * rng.uniform(0.25, 0.4), size * rng.uniform(0.7, 1.0)
        body = _cylinder(radius, height)
        minor = radius * 0.12
        handle = trimesh.creation.torus(major_radius=height * 0.28, minor_radius=minor,
                                        major_sections=SECTIONS, minor_sections=12)
        handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        handle.apply_translation([radius + height * 0.28 - 2 * minor, 0, 0])
        return trimesh.util.concatenate([body, handle])
    if kind == "bottle":
        radius = size * rng.uniform(0.12, 0.3)
        neck = radius * rng.uniform(0.3, 0.5)
        shoulder, top = size * rng.uniform(0.5, 0.7), size
        profile = np.array([
            [0, 0], [radius, 0], [radius, shoulder], [neck, shoulder + (top - shoulder) * 0.4],
            [neck, top], [0, top],
        ])
        bottle = trimesh.creation.revolve(profile, sections=SECTIONS)
        bottle.apply_translation([0, 0, -top / 2])
        return bottle
    if kind == "hull":
        points = rng.normal(size=(rng.integers(8, 24), 3)) * rng.uniform(0.5, 1.0, 3)
        hull = trimesh.convex.convex_hull(points)
        return hull.apply_scale(size / hull.extents.max())
    if kind == "compound":
        parts = [_primitive(str(rng.choice(["box", "cylinder", "sphere", "capsule"])), size * 0.6, rng)
                 for _ in range(rng.integers(2, 4))]
        for part in parts[1:]:
            part.apply_translation(rng.uniform(-0.25, 0.25, 3) * size)
        return trimesh.util.concatenate(parts)
    if kind == "plate":  # books, phones, lids: flat, 0.8-2.5 cm thick
        thickness = rng.uniform(0.008, 0.025)
        if rng.random() < 0.5:
            return _cylinder(size / 2, thickness)
        return trimesh.creation.box(extents=[size, size * rng.uniform(0.4, 1.0), thickness])
    if kind == "tool":  # a thin handle with a head at one end: hammers, spatulas, brushes
        radius, length = rng.uniform(0.008, 0.018), size * rng.uniform(0.6, 0.8)
        handle = _cylinder(radius, length)
        head = trimesh.creation.box(extents=size * np.array([rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.3), 0.0])
                                    + [0, 0, rng.uniform(0.02, 0.04)])
        head.apply_translation([0, 0, length / 2 + head.extents[2] / 2])
        return trimesh.util.concatenate([handle, head])
    if kind == "fruit":  # apples, pears, lemons: a smooth body that tapers towards one end
        fruit = trimesh.creation.icosphere(subdivisions=3, radius=size / 2)
        vertices = np.asarray(fruit.vertices)
        taper = 1.0 - rng.uniform(0.0, 0.35) * (vertices[:, 2:] / (size / 2) + 1) / 2
        fruit.vertices = vertices * np.hstack([taper, taper, np.full_like(taper, rng.uniform(0.8, 1.2))])
        return fruit
    raise ValueError(f"kind: unknown object kind {kind!r}; expected one of {OBJECT_KINDS}")


def make_object(index: int) -> tuple[trimesh.Trimesh, str]:
    """Object number ``index`` -> (mesh in metres, bbox-centred, randomly rotated; its kind)."""
    rng = np.random.default_rng([index, 2021])
    kind = OBJECT_KINDS[index % len(OBJECT_KINDS)]
    size = (rng.uniform(0.05, 0.13) if kind in ("mug", "bottle", "compound", "plate")
            else rng.uniform(0.10, 0.15) if kind == "tool" else rng.uniform(0.03, 0.14))
    mesh = _primitive(kind, size, rng)
    # A hand closes around at most ~8 cm, so the thinnest side is capped there.
    extents = mesh.extents
    mesh.apply_scale(min(1.0, MAX_SIZE_M / extents.max(), MAX_GRIP_M / extents.min()))
    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    mesh.apply_transform(rotation)
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    return mesh, kind


def open_scan(faces: int = 200_000, radius: float = 0.04, seed: int = 3) -> trimesh.Trimesh:
    """A noisy, open scan of a ball with ``faces`` faces (at most 327,680): a cap cut away and 1 % of the faces
    missing, vertices jittered by 0.3 mm (the large, broken meshes a 3D scanner exports), metres."""
    rng = np.random.default_rng(seed)
    sphere = trimesh.creation.icosphere(subdivisions=7, radius=radius)
    kept = np.asarray(sphere.triangles_center)[:, 2] < 0.75 * radius
    kept[rng.choice(np.flatnonzero(kept), len(sphere.faces) // 100, replace=False)] = False
    vertices = np.asarray(sphere.vertices) + rng.normal(scale=0.0003, size=sphere.vertices.shape)
    return trimesh.Trimesh(vertices, np.asarray(sphere.faces)[kept][:faces], process=False)
