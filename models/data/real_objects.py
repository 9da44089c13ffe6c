"""Real object meshes from openly licensed robotics packages, for testing the grasp pipeline on what users send.

Unlike the procedural objects, these are kept exactly as their packages ship them: some are open (not
watertight), several are made of separate bodies (a mug body and its handle, a ball's panels), a few have
degenerate faces. They are not repaired here, since user meshes look like this too. Files are binary PLY in
metres; ``assets/objects/SOURCES.md`` names each file's package, licence and copyright holder.
"""

from __future__ import annotations

from pathlib import Path

import trimesh

OBJECTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "objects"

REAL_OBJECTS: tuple[str, ...] = (
    "basketball", "bottle", "bread", "can", "cereal", "coffee_mug", "cup", "golf_club",
    "kettle", "lemon", "milk", "mug", "puck", "ring_wrench", "soccer_ball",
)


def real_object_path(name: str) -> Path:
    """Path of the PLY file of real object ``name``."""
    if name not in REAL_OBJECTS:
        raise ValueError(f"name: unknown real object {name!r}; expected one of {REAL_OBJECTS}")
    return OBJECTS_DIR / f"{name}.ply"


def load_real_object(name: str) -> trimesh.Trimesh:
    """Real object ``name`` in metres, as shipped: no vertex merging, no repair, no re-centring."""
    mesh = trimesh.load(real_object_path(name), file_type="ply", process=False)
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"name: {name!r} did not load as a single triangle mesh")
    return mesh


def load_real_objects() -> dict[str, trimesh.Trimesh]:
    """Every real object by name (meshes in metres, as shipped)."""
    return {name: load_real_object(name) for name in REAL_OBJECTS}
