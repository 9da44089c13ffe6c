"""``halo eval vae``: grasp metrics on held-out test objects, refined vs raw samples vs the synthesis data.

For each test object (procedural objects never used in training) it samples ``samples`` grasps with
and without refinement (same seed, hence the same latent codes), meshes them with the base model and
scores them against the object; the third row scores the synthesised training-style grasps of the
same objects, meshed the same way. Diversity pools the keypoints of all objects (k-means, 20
clusters, on hand-canonicalised keypoints); the pairwise distance is per object, averaged. Every row
also reports the plausibility share (``models.plausibility``: PIP/DIP hinges within human ranges,
thumb bends), and real hand keypoints, if given, add a plausibility-only sanity row.
"""

from __future__ import annotations

import time

import numpy as np
import trimesh

from ..data.objects import make_object
from ..plausibility import plausible_share
from .api import HaloVAE
from .metrics import canonical_keypoints, cluster_diversity, grasp_metrics_many, mean_pairwise_distance, summarize


def score(name: str, keypoints: list[np.ndarray], meshes: list[list[trimesh.Trimesh]],
          objects: list[trimesh.Trimesh]) -> dict:
    """Per-object keypoints (S,21,3) and hand meshes -> summary metrics for one method."""
    per_grasp = [metrics for hands, obj in zip(meshes, objects, strict=True) for metrics in grasp_metrics_many(hands, obj)]
    pooled = np.concatenate(keypoints)
    return {
        "method": name,
        **summarize(per_grasp),
        **cluster_diversity(canonical_keypoints(pooled)),
        "object_frame_cluster_entropy": cluster_diversity(pooled)["cluster_entropy"],
        "mean_pairwise_keypoint_distance_cm": float(np.mean([mean_pairwise_distance(k) for k in keypoints])),
        "plausible_share": plausible_share(pooled),
    }


def evaluate_vae(vae: HaloVAE, object_indices: list[int], samples: int = 20, resolution: int = 128,
                 data_keypoints: dict[int, np.ndarray] | None = None, seed: int = 0,
                 real_keypoints: np.ndarray | None = None) -> dict:
    """Test object numbers -> {"rows": [refined, raw, synthesis data], "real_hands": ..., "seconds": ...}."""
    objects = [make_object(index)[0] for index in object_indices]
    rows, seconds = [], {}
    for refine in (True, False):
        started = time.perf_counter()
        keypoints = [vae.sample_keypoints(obj, samples, seed + i, refine) for i, obj in enumerate(objects)]
        meshes = [vae.base.mesh(k, resolution=resolution) for k in keypoints]
        name = "vae + refinement" if refine else "vae, raw samples"
        seconds[name] = time.perf_counter() - started
        rows.append(score(name, keypoints, meshes, objects))
    if data_keypoints:
        have = [i for i, index in enumerate(object_indices) if len(data_keypoints.get(index, [])) >= 2]
        keypoints = [data_keypoints[object_indices[i]][:samples].astype(np.float64) for i in have]
        meshes = [vae.base.mesh(k, resolution=resolution) for k in keypoints]
        rows.append(score("synthesis data", keypoints, meshes, [objects[i] for i in have]))
    result = {"objects": len(objects), "samples_per_object": samples, "resolution": resolution,
              "rows": rows, "seconds": seconds}
    if real_keypoints is not None:
        result["real_hands"] = {"hands": len(real_keypoints), "plausible_share": plausible_share(real_keypoints)}
    return result


def format_table(result: dict) -> str:
    """Evaluation result -> a Markdown table."""
    columns = [
        ("contact_ratio", "contact ratio", "{:.3f}"),
        ("mean_penetration_volume_cm3", "pen. volume cm3", "{:.2f}"),
        ("mean_max_penetration_depth_mm", "pen. depth mm", "{:.2f}"),
        ("cluster_entropy", "entropy (20 cl.)", "{:.2f}"),
        ("mean_cluster_size_cm", "cluster size cm", "{:.2f}"),
        ("mean_pairwise_keypoint_distance_cm", "pairwise dist. cm", "{:.2f}"),
        ("plausible_share", "plausible", "{:.3f}"),
        ("grasps", "grasps", "{}"),
    ]
    lines = ["| method | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
    if "real_hands" in result:
        real = result["real_hands"]
        lines.append(f"\nreal hand keypoints: {real['plausible_share']:.3f} plausible ({real['hands']} hands)")
    return "\n".join(lines)
