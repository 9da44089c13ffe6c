"""``halo eval vae``: grasp metrics on held-out test objects, refined vs raw samples vs the synthesis data.

For each test object (procedural objects never used in training) it samples ``samples`` grasps with
and without refinement (same seed, hence the same latent codes), meshes them with the base model and
scores them against the object; the third row scores the synthesised training-style grasps of the
same objects, meshed the same way. Diversity pools the keypoints of all objects (k-means, 20
clusters, on hand-canonicalised keypoints); the pairwise distance is per object, averaged. Every row
also reports the plausibility share (``models.plausibility``: PIP/DIP hinges within human ranges,
thumb bends), and real hand keypoints, if given, add a plausibility-only sanity row.

With ``physics`` (the default of ``halo eval vae``) every grasp also goes through the MuJoCo check
(``grasps.physics``): each row reports the stable share (held within 2 cm in all 6 gravity directions) and
the median and mean displacement (mean over the directions, cm), and one more row, "vae + refinement,
ranked by stability", draws twice the samples and keeps the most stable half (what ``rank="stability"``
serves). The first row, "served", is exactly what ``vae.sample`` returns by default: refined samples
whose outliers (no contact, or over 5 cm3 of penetration) were replaced by fresh ones (``redraws``).
The objects are procedural test objects by number, or any meshes (``objects``, e.g. the real-object set).

``evaluate_vae_field`` (``--protocol field``) scores the same grasps on the field's protocol instead
(``grasps.field_protocol``: the simulation displacement of GraspTTA / HALO / GrabNet, penetration on 1 mm
voxels, max depth in cm, contact ratio and HALO's 63-d k-means diversity), with our 6-direction stable
share beside it; the card keeps it under ``field_protocol`` beside the default protocol's entries.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import trimesh

from ..api import load_base
from ..data.objects import make_object, split_indices
from ..data.real_objects import load_real_object, load_real_objects
from ..grasps import field_protocol
from ..grasps.api import SHIPPED_VAE, HaloVAE, load_vae
from ..grasps.hand_object import RefineConfig
from ..grasps.metrics import (
    canonical_keypoints,
    cluster_diversity,
    grasp_metrics_many,
    mean_pairwise_distance,
    summarize,
)
from ..grasps.object_input import prepare_object
from ..grasps.physics import RANK_CANDIDATES, PhysicsResult, check_grasps
from ..grasps.preview import render_grasps
from ..plausibility import plausible_share
from ..weights import card_path, update_card
from .vae import load_grasp_data

PREVIEW_OBJECTS, PREVIEW_GRASPS = 3, 4  # the preview: test objects, refined grasps each
PREVIEW_REAL_OBJECT = "can"  # and one row on this real object


def physics_summary(results: list[PhysicsResult]) -> dict[str, float]:
    """Physics results -> stable share and the median / mean displacement (each grasp's mean over directions, cm)."""
    displacement = np.array([result.mean_cm for result in results])
    return {
        "stable_share": float(np.mean([result.stable for result in results])),
        "median_displacement_cm": float(np.median(displacement)),
        "mean_displacement_cm": float(displacement.mean()),
        "median_worst_displacement_cm": float(np.median([result.worst_cm for result in results])),
    }


def score(name: str, keypoints: list[np.ndarray], meshes: list[list[trimesh.Trimesh]],
          objects: list[trimesh.Trimesh], simulated: list[PhysicsResult] | None = None) -> dict:
    """Per-object keypoints (S,21,3) and hand meshes (and all their physics results) -> summary metrics for one method."""
    per_grasp = [metrics for hands, obj in zip(meshes, objects, strict=True) for metrics in grasp_metrics_many(hands, obj)]
    pooled = np.concatenate(keypoints)
    return {
        "method": name,
        **summarize(per_grasp),
        **cluster_diversity(canonical_keypoints(pooled)),
        "object_frame_cluster_entropy": cluster_diversity(pooled)["cluster_entropy"],
        "mean_pairwise_keypoint_distance_cm": float(np.mean([mean_pairwise_distance(k) for k in keypoints])),
        "plausible_share": plausible_share(pooled),
        **(physics_summary(simulated) if simulated is not None else {}),
    }


def _pooled(per_object: list[list[PhysicsResult] | None]) -> list[PhysicsResult] | None:
    """Physics results per object -> all of them in one list (None when the check was skipped)."""
    return None if any(results is None for results in per_object) else [r for results in per_object for r in results]


def _served_row(vae: HaloVAE, objects: list[trimesh.Trimesh], samples: int, resolution: int, seed: int,
                physics: bool) -> dict:
    """What ``vae.sample`` serves by default on each object -> one scored row, with the fresh samples drawn."""
    served = [vae.sample(obj, n=samples, seed=seed + i, resolution=resolution, physics=physics)
              for i, obj in enumerate(objects)]
    row = score("vae + refinement, served (outliers replaced)", [np.stack([g.keypoints for g in grasps]) for grasps in served],
                [[g.mesh for g in grasps] for grasps in served], [prepare_object(obj) for obj in objects], None)
    row["redraws"] = int(sum(g.metrics["redraws"] for grasps in served for g in grasps))
    if physics:
        grasps = [g for batch in served for g in batch]
        row["stable_share"] = float(np.mean([bool(g.metrics.get("stable")) for g in grasps]))
        displacement = np.array([g.metrics.get("sim_displacement_cm", np.inf) for g in grasps])
        row["median_displacement_cm"] = float(np.median(displacement))
        row["mean_displacement_cm"] = float(displacement.mean())
        row["physics_failures"] = int(sum(bool(g.metrics.get("sim_failed")) for g in grasps))
    return row


def evaluate_vae(vae: HaloVAE, object_indices: list[int], samples: int = 20, resolution: int = 128,
                 data_keypoints: dict[int, np.ndarray] | None = None, seed: int = 0,
                 real_keypoints: np.ndarray | None = None, physics: bool = True,
                 objects: list[trimesh.Trimesh] | None = None) -> dict:
    """Test object numbers (or the meshes ``objects``) -> {"rows": [served, refined, raw, (ranked by stability,)
    synthesis data], "real_hands": ..., "seconds": ...}."""
    objects = [prepare_object(obj) for obj in objects] if objects is not None else [
        make_object(index)[0] for index in object_indices]

    def checked(obj: trimesh.Trimesh, keypoints: np.ndarray, keep: int | None = None
                ) -> tuple[np.ndarray, list[PhysicsResult] | None]:
        return vae.check_physics(obj, keypoints, keep) if physics else (keypoints, None)

    started = time.perf_counter()
    rows = [_served_row(vae, objects, samples, resolution, seed, physics)]
    seconds = {rows[0]["method"]: time.perf_counter() - started}
    methods = {
        "vae + refinement": lambda obj, i: checked(obj, vae.sample_keypoints(obj, samples, seed + i, True)),
        "vae, raw samples": lambda obj, i: checked(obj, vae.sample_keypoints(obj, samples, seed + i, False)),
    }
    if physics:
        methods["vae + refinement, ranked by stability"] = lambda obj, i: checked(
            obj, vae.sample_keypoints(obj, RANK_CANDIDATES * samples, seed + i, True), samples)
    for name, draw in methods.items():
        started = time.perf_counter()
        keypoints, simulated = zip(*[draw(obj, i) for i, obj in enumerate(objects)], strict=True)
        meshes = [vae.base.mesh(k, resolution=resolution) for k in keypoints]
        seconds[name] = time.perf_counter() - started
        rows.append(score(name, list(keypoints), meshes, objects, _pooled(simulated)))
    if data_keypoints:
        have = [i for i, index in enumerate(object_indices) if len(data_keypoints.get(index, [])) >= 2]
        keypoints = [data_keypoints[object_indices[i]][:samples].astype(np.float64) for i in have]
        meshes = [vae.base.mesh(k, resolution=resolution) for k in keypoints]
        simulated = [checked(objects[i], k)[1] for i, k in zip(have, keypoints, strict=True)]
        rows.append(score("synthesis data", keypoints, meshes, [objects[i] for i in have], _pooled(simulated)))
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
        ("max_penetration_volume_cm3", "max pen. cm3", "{:.2f}"),
        ("mean_max_penetration_depth_mm", "pen. depth mm", "{:.2f}"),
        ("cluster_entropy", "entropy (20 cl.)", "{:.2f}"),
        ("mean_cluster_size_cm", "cluster size cm", "{:.2f}"),
        ("mean_pairwise_keypoint_distance_cm", "pairwise dist. cm", "{:.2f}"),
        ("plausible_share", "plausible", "{:.3f}"),
        ("stable_share", "stable", "{:.3f}"),
        ("median_displacement_cm", "median displ. cm", "{:.2f}"),
        ("mean_displacement_cm", "mean displ. cm", "{:.2f}"),
        ("grasps", "grasps", "{}"),
        ("redraws", "redraws", "{}"),
    ]
    columns = [column for column in columns if column[0] in result["rows"][0]]
    lines = ["| method | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(fmt.format(row[key]) if key in row else "" for key, _, fmt in columns)
                     + " |")
    if "real_hands" in result:
        real = result["real_hands"]
        lines.append(f"\nreal hand keypoints: {real['plausible_share']:.3f} plausible ({real['hands']} hands)")
    return "\n".join(lines)


FIELD_COLUMNS = (
    ("simulation_displacement_mean_cm", "sim. displ. cm (mean)", "{:.2f}"),
    ("simulation_displacement_std_cm", "(std)", "{:.2f}"),
    ("max_penetration_depth_cm", "max depth cm", "{:.2f}"),
    ("penetration_volume_cm3", "pen. volume cm3 (1 mm)", "{:.2f}"),
    ("contact_ratio", "contact ratio", "{:.2f}"),
    ("entropy", "entropy", "{:.2f}"),
    ("cluster_size_cm", "cluster size cm", "{:.2f}"),
    ("stable_share", "ours: stable (6 dir.)", "{:.3f}"),
    ("grasps", "grasps", "{}"),
)


def evaluate_vae_field(vae: HaloVAE, object_indices: list[int], samples: int = 20, resolution: int = 128,
                       data_keypoints: dict[int, np.ndarray] | None = None, seed: int = 0, raw: bool = True,
                       objects: list[trimesh.Trimesh] | None = None) -> dict:
    """Test object numbers (or the meshes ``objects``) -> {"rows": [served, refined, (raw,) (synthesis data)],
    "seconds": ...} on the field's protocol, each row with our 6-direction stable share beside it. "served" is
    what ``vae.sample`` returns by default (refined draws, those over its penetration bound replaced or pushed out)."""
    objects = [prepare_object(obj) for obj in objects] if objects is not None else [
        make_object(index)[0] for index in object_indices]
    served = [vae.sample(obj, n=samples, seed=seed + i, resolution=resolution) for i, obj in enumerate(objects)]
    meshed = {"vae + refinement, served": [[grasp.mesh for grasp in grasps] for grasps in served]}  # not again
    draws = {"vae + refinement, served": [np.stack([grasp.keypoints for grasp in grasps]) for grasps in served],
             "vae + refinement": [vae.sample_keypoints(obj, samples, seed + i, True) for i, obj in enumerate(objects)]}
    if raw:
        draws["vae, raw samples"] = [vae.sample_keypoints(obj, samples, seed + i, False) for i, obj in enumerate(objects)]
    if data_keypoints:
        have = [i for i, index in enumerate(object_indices) if len(data_keypoints.get(index, [])) >= 2]
        draws["synthesis data"] = [data_keypoints[object_indices[i]][:samples].astype(np.float64) if i in have
                                   else np.zeros((0, 21, 3)) for i in range(len(objects))]
    rows, seconds = [], {}
    radii = vae.proxy.radii.numpy()
    for name, keypoints in draws.items():
        started = time.perf_counter()
        grasps, stable = [], []
        for index, (obj, hands) in enumerate(zip(objects, keypoints, strict=True)):
            if len(hands) == 0:
                continue
            meshes = meshed[name][index] if name in meshed else vae.base.mesh(hands, resolution=resolution)
            grasps += field_protocol.field_grasps(meshes, obj)
            stable += [result.stable for result in check_grasps(hands, radii, obj)]
        seconds[name] = time.perf_counter() - started
        pooled = np.concatenate([hands for hands in keypoints if len(hands)])
        rows.append({"method": name, **field_protocol.summarize_field(grasps, pooled),
                     "stable_share": float(np.mean(stable))})
    return {"protocol": "field", "objects": len(objects), "samples_per_object": samples, "resolution": resolution,
            "gravity_direction": field_protocol.GRAVITY_DIRECTION.tolist(), "rows": rows, "seconds": seconds}


def format_field_table(result: dict) -> str:
    """Field-protocol evaluation result -> a Markdown table."""
    lines = ["| method | " + " | ".join(title for _, title, _ in FIELD_COLUMNS) + " |",
             "|---|" + "---|" * len(FIELD_COLUMNS)]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(fmt.format(row[key]) for key, _, fmt in FIELD_COLUMNS) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalVAEConfig:
    """One ``halo eval vae`` run."""

    checkpoint: Path | None = None  # VAE (None: the shipped one)
    base_checkpoint: Path | None = None  # base model (None: the shipped one)
    device: str = "auto"
    resolution: int = 128
    seed: int = 0
    data: Path | None = None  # grasp data folder (adds the synthesis-data baseline)
    objects: int = 10  # number of test objects
    samples: int = 20  # grasps per object
    real_keypoints: np.ndarray | None = None  # (T,21,3) real right-hand keypoints: a plausibility sanity row
    physics: bool = True  # MuJoCo check of every grasp: stable share, displacement, a ranked row
    write_card: bool = False  # store the results in the VAE's model card
    preview: Path | None = None  # also render PREVIEW_GRASPS grasps on each of the first PREVIEW_OBJECTS objects
    object_set: str = "procedural"  # or "real": every mesh of the real-object set (models.data.real_objects)
    protocol: str = "default"  # or "field": the field's table (grasps.field_protocol), stored as field_protocol
    raw: bool = True  # protocol "field": also score the raw (unrefined) samples


def run(config: EvalVAEConfig) -> dict:
    """Evaluate as ``config`` says; -> the results (rows per method, models, objects, the command)."""
    vae = load_vae(config.checkpoint, base=load_base(config.base_checkpoint, device=config.device),
                   device=config.device)
    data_keypoints: dict[int, np.ndarray] = {}
    indices = split_indices("test", config.objects)
    if config.data:
        test = load_grasp_data(config.data).subset("test")
        indices = [int(i) for i in test.object_index[: config.objects]]
        for row, index in enumerate(test.object_index):
            data_keypoints[int(index)] = test.keypoints[test.owner == row].numpy()
    meshes = None
    if config.object_set == "real":
        named = load_real_objects()
        indices, data_keypoints, meshes = list(named), {}, list(named.values())
    if config.protocol == "field":
        result = evaluate_vae_field(vae, indices, config.samples, config.resolution, data_keypoints, config.seed,
                                    config.raw, meshes)
    else:
        result = evaluate_vae(vae, indices, config.samples, config.resolution, data_keypoints, config.seed,
                              config.real_keypoints, config.physics, meshes)
    result["vae"] = {"name": vae.card.get("name"), "sha256": vae.card.get("sha256")}
    result["base"] = {"name": vae.base.card.get("name"), "sha256": vae.base.card.get("sha256")}
    result["object_indices"] = indices
    result["refinement"] = asdict(RefineConfig())
    result["eval_command"] = eval_command(config)
    if config.write_card:
        write_card(config.checkpoint or SHIPPED_VAE, config, result)
    if config.preview and config.object_set == "procedural":
        write_preview(vae, indices[:PREVIEW_OBJECTS], config.preview, config.resolution, config.seed)
    return result


def eval_command(config: EvalVAEConfig) -> str:
    """The ``halo eval vae`` command line that reproduces ``config`` (data and keypoint files as placeholders)."""
    field = config.protocol == "field"
    return (f"halo eval vae{' --protocol field' if field else ''} --object-set {config.object_set}"
            f"{' --data DATA' if config.data else ''} --objects {config.objects}"
            f" --samples {config.samples} --resolution {config.resolution} --seed {config.seed}"
            f"{' --real-keypoints KEYPOINTS' if config.real_keypoints is not None and not field else ''}"
            f"{' --no-physics' if not (config.physics or field) else ''}"
            f"{' --no-raw' if field and not config.raw else ''}")


def write_card(checkpoint: Path, config: EvalVAEConfig, result: dict) -> None:
    """Store ``result`` in the VAE's card: the default protocol's as the object set's entry (keeping its
    ``field_protocol``), the field protocol's as ``field_protocol`` inside that entry (keeping the rest)."""
    entry = "evaluation" if config.object_set == "procedural" else "evaluation_real_objects"
    stored = json.loads(card_path(checkpoint).read_text()).get(entry, {})
    if config.protocol == "field":
        update_card(checkpoint, **{entry: {**stored, "field_protocol": result}})
    else:
        kept = {"field_protocol": stored["field_protocol"]} if "field_protocol" in stored else {}
        update_card(checkpoint, **{entry: {**result, **kept}})


def write_preview(vae: HaloVAE, object_indices: list[int], path: Path, resolution: int, seed: int) -> None:
    """PNG of ``PREVIEW_GRASPS`` default grasps (as served) on each of the given test objects and on the real
    ``PREVIEW_REAL_OBJECT``."""
    named = [(f"test object {index} ({kind})", obj) for index in object_indices for obj, kind in [make_object(index)]]
    named.append((f"real object: {PREVIEW_REAL_OBJECT}", prepare_object(load_real_object(PREVIEW_REAL_OBJECT))))
    rows = []
    for title, obj in named:
        grasps = vae.sample(obj, n=PREVIEW_GRASPS, seed=seed, refine=True, resolution=resolution)
        rows.append((title, obj, [grasp.mesh for grasp in grasps]))
    render_grasps(rows, path, columns=PREVIEW_GRASPS)
