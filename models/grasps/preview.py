"""Preview images of grasps: object and hand meshes drawn with matplotlib (no GPU, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import trimesh
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

LIGHT = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])


def _draw(axis: plt.Axes, meshes: list[tuple[trimesh.Trimesh, tuple[float, float, float]]]) -> None:
    """Add coloured meshes to a 3D axis as one collection (so faces are depth-sorted together)."""
    triangles, colours = [], []
    for mesh, colour in meshes:
        shade = 0.35 + 0.65 * np.clip(mesh.face_normals @ LIGHT, 0, 1)[:, None]
        triangles.append(mesh.triangles)
        colours.append(np.asarray(colour) * shade)
    axis.add_collection3d(Poly3DCollection(np.concatenate(triangles), facecolors=np.concatenate(colours), linewidths=0))


VIEWS = ((20.0, 40.0), (-15.0, 220.0))  # (elevation, azimuth) of the two views of each grasp: front and back


def render_grasps(rows: list[tuple[str, trimesh.Trimesh, list[trimesh.Trimesh]]], path: str | Path,
                  columns: int = 4) -> None:
    """Rows of (title, object mesh, hand meshes) -> PNG at ``path``: each hand from two opposite sides."""
    panels = columns * len(VIEWS)
    figure = plt.figure(figsize=(2.4 * panels, 2.6 * len(rows)))
    for row, (title, obj, hands) in enumerate(rows):
        for column, hand in enumerate(hands[:columns]):
            points = np.concatenate([obj.vertices, hand.vertices])
            centre, half = points.mean(0), np.ptp(points, axis=0).max() / 2
            for view, (elevation, azimuth) in enumerate(VIEWS):
                panel = column * len(VIEWS) + view
                axis = figure.add_subplot(len(rows), panels, row * panels + panel + 1, projection="3d")
                _draw(axis, [(obj, (0.45, 0.6, 0.9)), (hand, (0.95, 0.75, 0.6))])
                for setter, c in zip((axis.set_xlim, axis.set_ylim, axis.set_zlim), centre, strict=True):
                    setter(c - half, c + half)
                axis.set_box_aspect((1, 1, 1))
                axis.view_init(elev=elevation, azim=azimuth + 30 * column)
                axis.set_axis_off()
                axis.set_title(f"{title}, grasp {column + 1}" if panel == 0 else f"grasp {column + 1}"
                               + (" (back)" if view else ""), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
