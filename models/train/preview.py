"""Preview images of hand meshes with their skeletons (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

# Keypoint chains of the mano order: one line per finger from the wrist.
FINGER_CHAINS = ([0, 1, 2, 3, 4], [0, 5, 6, 7, 8], [0, 9, 10, 11, 12], [0, 13, 14, 15, 16], [0, 17, 18, 19, 20])


def _view_rotation(keypoints: np.ndarray) -> np.ndarray:
    """(21,3) keypoints -> (3,3) rotation showing the palm from above, fingers pointing up the image."""
    forward = keypoints[9] - keypoints[0]
    forward /= np.linalg.norm(forward)
    across = keypoints[5] - keypoints[17]
    normal = np.cross(across, forward)
    normal /= np.linalg.norm(normal)
    side = np.cross(forward, normal)
    return np.stack([side, forward, normal])


def render_hands(meshes: list[trimesh.Trimesh], keypoints: np.ndarray, titles: list[str], path: str | Path) -> None:
    """Meshes (metres) with (B,21,3) keypoints -> a PNG grid, four hands a row, each seen from the palm side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    columns = min(4, len(meshes))
    rows = -(-len(meshes) // columns)
    figure = plt.figure(figsize=(3.2 * columns, 3.4 * rows))
    for index, (mesh, joints, title) in enumerate(zip(meshes, keypoints, titles, strict=True)):
        rotation = _view_rotation(joints)
        vertices = (mesh.vertices - joints[0]) @ rotation.T
        skeleton = (joints - joints[0]) @ rotation.T
        centre = vertices.mean(0)
        axis = figure.add_subplot(rows, columns, index + 1, projection="3d")
        shade = 0.55 + 0.45 * np.abs(mesh.face_normals @ rotation.T @ np.array([0.3, -0.3, 0.9]))
        colours = np.clip(shade[:, None] * np.array([0.93, 0.76, 0.62]), 0, 1)
        axis.add_collection3d(Poly3DCollection(vertices[mesh.faces], facecolors=colours, linewidths=0, alpha=0.85))
        for chain in FINGER_CHAINS:
            axis.plot(*skeleton[chain].T, color="tab:blue", linewidth=1.2)
        axis.scatter(*skeleton.T, color="tab:red", s=6)
        radius = 0.1
        axis.set(xlim=(centre[0] - radius, centre[0] + radius), ylim=(centre[1] - radius, centre[1] + radius))
        axis.set_zlim(centre[2] - radius, centre[2] + radius)
        axis.view_init(60, -90)
        axis.set_axis_off()
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
