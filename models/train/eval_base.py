"""``halo eval base``: measure a base checkpoint on held-out synthetic hands and on real keypoints.

Synthetic (poses from the ``test`` split, never trained on): IoU of the occupancy on 100k points,
reported apart as volumetric IoU (50k uniform in the padded bounding box of the true and the predicted
hand, as Occupancy Networks and NASA define it) and near-surface IoU (50k surface samples moved by 4 mm Gaussian noise, far
harsher); symmetric Chamfer distance of the extracted mesh to the posed ground-truth mesh; the
fraction of non-tip keypoints inside the mesh; the fraction of meshes that are watertight and one
piece, as delivered and before single-voxel specks are dropped (``meshing.drop_specks``).

Real (``kps_seq.pkl`` of the HALO reference folder, when present): watertight single-piece meshes,
non-tip keypoints inside, mesh volumes, and the Chamfer distance to the published model's meshes
in ``reference.npz`` (reported, not a target: the two models learnt different hands).
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..api import SHIPPED_BASE, HaloBase, load_base
from ..canonical import MODEL_SCALE, canonicalize, transform_points
from ..data.asset import fetch_hand_asset
from ..data.labels import LabelConfig, query_points
from ..data.poses import sample_poses, split_rng
from ..data.rigged_hand import RiggedHand
from ..geometry import chamfer_distance, inside_mesh
from ..skeleton import MANO_NON_TIPS
from ..weights import update_card
from .preview import render_hands

DEFAULT_REFERENCE_DIR = Path("../shared/halo_reference")
IOU_POINTS = 50_000  # per kind: uniform in the hand's bounding box, and near the surface
NEAR_SURFACE = LabelConfig(uniform_points=0, surface_points=IOU_POINTS, surface_noise=(0.01,))  # 4 mm in metres
BOX_PADDING = 0.05  # of the bounding box's longest side, on every side
CHAMFER_SAMPLES = 30_000
VOLUME_RANGE_CM3 = (150.0, 500.0)
MESH_BATCH = 8


def mesh_checks(mesh: trimesh.Trimesh, keypoints: np.ndarray, specks: int = 0) -> dict[str, float]:
    """Extracted mesh (metres), its (21,3) keypoints, specks dropped -> watertight/one-piece flags, inside, volume cm3."""
    watertight = bool(mesh.is_watertight and mesh.is_winding_consistent)
    single = watertight and mesh.body_count == 1
    return {
        "watertight": float(watertight),
        "watertight_single": float(single),
        "watertight_single_before_specks": float(single and specks == 0),
        "non_tip_inside": float(inside_mesh(mesh, keypoints[MANO_NON_TIPS]).mean()),
        "volume_cm3": float(mesh.volume * 1e6) if watertight else float("nan"),
    }


def surface_chamfer_mm(a: trimesh.Trimesh, b: trimesh.Trimesh, seed: int) -> float:
    """Symmetric Chamfer distance between two meshes' surfaces (area-uniform samples), millimetres."""
    rng = np.random.default_rng(seed)
    samples = [
        mesh.sample(CHAMFER_SAMPLES, seed=int(rng.integers(2**31))) if len(mesh.faces) else np.zeros((1, 3))
        for mesh in (a, b)
    ]
    return 1000.0 * chamfer_distance(*samples)


@torch.no_grad()
def iou_samples(
    base: HaloBase, keypoints: np.ndarray, truth: trimesh.Trimesh, seed: int, predicted: trimesh.Trimesh | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """-> ((2n,) predicted occupancy, (2n,) true inside) of n points uniform in the padded box, then n near the surface.

    The box holds the true hand and, when given, the ``predicted`` mesh, so that a prediction fatter
    than the truth is counted wherever it reaches.
    """
    rng = np.random.default_rng(seed)
    low, high = truth.bounds
    if predicted is not None and len(predicted.vertices):
        low, high = np.minimum(low, predicted.bounds[0]), np.maximum(high, predicted.bounds[1])
    padding = BOX_PADDING * (high - low).max()
    uniform = rng.uniform(low - padding, high + padding, (IOU_POINTS, 3))
    # Near-surface points are drawn in the model frame, where the label noise is defined.
    normalization = canonicalize(torch.as_tensor(keypoints, dtype=torch.float64)[None]).normalization_matrix
    vertices = MODEL_SCALE * transform_points(normalization, torch.as_tensor(truth.vertices)[None])[0]
    near_model = query_points(vertices.numpy(), truth.faces, rng, NEAR_SURFACE)
    near = transform_points(torch.linalg.inv(normalization), torch.as_tensor(near_model)[None] / MODEL_SCALE)[0]
    points = np.concatenate([uniform, near.numpy()])
    return base.occupancy(keypoints, points), inside_mesh(truth, points)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean arrays."""
    return float((predicted & truth).sum() / max(1, (predicted | truth).sum()))


def occupancy_iou(
    base: HaloBase, keypoints: np.ndarray, truth: trimesh.Trimesh, seed: int, predicted: trimesh.Trimesh
) -> dict[str, float]:
    """Occupancy > 0.5 vs winding number of the true mesh -> {"iou_volumetric", "iou_near_surface"}."""
    occupancy, inside = iou_samples(base, keypoints, truth, seed, predicted)
    predicted = occupancy > 0.5
    return {
        "iou_volumetric": iou(predicted[:IOU_POINTS], inside[:IOU_POINTS]),
        "iou_near_surface": iou(predicted[IOU_POINTS:], inside[IOU_POINTS:]),
    }


def _mean(rows: list[dict], key: str) -> float:
    return float(np.nanmean([row[key] for row in rows]))


def synthetic_rows(
    base: HaloBase, hand: RiggedHand, count: int, seed: int, resolution: int, shard: tuple[int, int] = (0, 1)
) -> list[dict[str, float]]:
    """Per-pose metrics of the held-out poses ``shard[0]::shard[1]`` out of ``count`` (test split)."""
    poses = sample_poses(hand, count, split_rng("test", seed))
    with torch.no_grad():
        posed = poses.apply(hand)
    indices = list(range(shard[0], count, shard[1]))
    keypoints = posed.keypoints.double().numpy()
    faces = hand.faces.numpy()
    rows = []
    for start in range(0, len(indices), MESH_BATCH):
        chunk = indices[start : start + MESH_BATCH]
        meshes, stats = base.mesh_with_stats(keypoints[chunk], resolution=resolution)
        for index, mesh, specks in zip(chunk, meshes, stats.specks_dropped, strict=True):
            truth = trimesh.Trimesh(posed.vertices[index].double().numpy(), faces, process=False)
            row = mesh_checks(mesh, keypoints[index], specks)
            row.update(occupancy_iou(base, keypoints[index], truth, seed=index, predicted=mesh))
            row["chamfer_mm"] = surface_chamfer_mm(mesh, truth, seed=index)
            rows.append(row)
    return rows


def summarize_synthetic(rows: list[dict[str, float]], seed: int, resolution: int) -> dict[str, float]:
    """Per-pose rows -> the reported synthetic metrics."""
    return {
        "poses": len(rows),
        "split_seed": seed,
        "resolution": resolution,
        "iou_volumetric_mean": _mean(rows, "iou_volumetric"),
        "iou_volumetric_min": float(min(row["iou_volumetric"] for row in rows)),
        "iou_near_surface_mean": _mean(rows, "iou_near_surface"),
        "chamfer_mm_mean": _mean(rows, "chamfer_mm"),
        "chamfer_mm_max": float(max(row["chamfer_mm"] for row in rows)),
        "watertight_fraction": _mean(rows, "watertight"),
        "watertight_single_fraction": _mean(rows, "watertight_single"),
        "watertight_single_before_specks_fraction": _mean(rows, "watertight_single_before_specks"),
        "non_tip_inside_fraction": _mean(rows, "non_tip_inside"),
    }


def evaluate_synthetic(base: HaloBase, hand: RiggedHand, count: int, seed: int, resolution: int) -> dict[str, float]:
    """Metrics over ``count`` held-out synthetic poses (test split), in this process."""
    return summarize_synthetic(synthetic_rows(base, hand, count, seed, resolution), seed, resolution)


def _synthetic_shard(
    checkpoint: Path | None, asset: Path, count: int, seed: int, resolution: int, shard: tuple[int, int]
) -> list[dict[str, float]]:
    """Worker process: load the model and hand, evaluate one shard of the held-out poses on one thread."""
    torch.set_num_threads(1)
    return synthetic_rows(load_base(checkpoint), RiggedHand.from_gltf(asset), count, seed, resolution, shard)


def evaluate_real(base: HaloBase, reference_dir: Path, resolution: int, batch: int = 10) -> dict[str, float] | None:
    """Metrics on the 170 real keypoint frames of the HALO reference folder (None when it is absent)."""
    keypoints = _real_keypoints(reference_dir)
    if keypoints is None:
        return None
    reference_path = reference_dir / "reference.npz"
    meshes: list[trimesh.Trimesh] = []
    specks: list[int] = []
    for start in range(0, len(keypoints), batch):
        batch_meshes, stats = base.mesh_with_stats(keypoints[start : start + batch], resolution=resolution)
        meshes.extend(batch_meshes)
        specks.extend(stats.specks_dropped)
    rows = [mesh_checks(*row) for row in zip(meshes, keypoints, specks, strict=True)]
    volumes = np.array([row["volume_cm3"] for row in rows])
    low, high = VOLUME_RANGE_CM3
    result = {
        "frames": len(rows),
        "resolution": resolution,
        "watertight_fraction": _mean(rows, "watertight"),
        "watertight_single_fraction": _mean(rows, "watertight_single"),
        "watertight_single_before_specks_fraction": _mean(rows, "watertight_single_before_specks"),
        "non_tip_inside_fraction": _mean(rows, "non_tip_inside"),
        "volume_cm3_min": float(np.nanmin(volumes)),
        "volume_cm3_max": float(np.nanmax(volumes)),
        "volume_cm3_mean": float(np.nanmean(volumes)),
        "volume_in_range_fraction": float(np.mean((volumes >= low) & (volumes <= high))),
    }
    if reference_path.is_file():
        reference = np.load(reference_path)
        distances = [
            surface_chamfer_mm(
                meshes[int(frame)],
                trimesh.Trimesh(reference[f"mesh_vertices_{i}"], reference[f"mesh_faces_{i}"], process=False),
                seed=i,
            )
            for i, frame in enumerate(reference["frames"])
        ]
        result["chamfer_mm_to_published_mean"] = float(np.mean(distances))
        result["chamfer_mm_to_published_max"] = float(np.max(distances))
    return result


def _real_keypoints(reference_dir: Path) -> np.ndarray | None:
    """(170,21,3) float64 keypoints of ``kps_seq.pkl`` (metres, mano order), or None when absent."""
    path = reference_dir / "kps_seq.pkl"
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        # A plain list of float32 arrays: no custom classes are unpickled.
        return np.stack(pickle.load(handle)).astype(np.float64)


def write_preview(base: HaloBase, hand: RiggedHand, reference_dir: Path, path: Path, resolution: int) -> None:
    """PNG of the model's meshes for 4 held-out synthetic poses (and 4 real frames when present)."""
    with torch.no_grad():
        keypoints = sample_poses(hand, 4, split_rng("test", 1)).apply(hand).keypoints.double().numpy()
    titles = [f"held-out synthetic {i}" for i in range(4)]
    real = _real_keypoints(reference_dir)
    if real is not None:
        frames = [0, 50, 100, 150]
        keypoints = np.concatenate([keypoints, real[frames]])
        titles += [f"kps_seq frame {frame}" for frame in frames]
    render_hands(base.mesh(keypoints, resolution=resolution), keypoints, titles, path)


@dataclass(frozen=True)
class EvalBaseConfig:
    """One ``halo eval base`` run."""

    checkpoint: Path | None = None  # None: the shipped base checkpoint
    poses: int = 200  # held-out synthetic poses
    seed: int = 0  # seed of the held-out (test split) poses
    resolution: int = 128
    reference_dir: Path = DEFAULT_REFERENCE_DIR
    hand_asset: Path | None = None  # rigged hand glTF (None: fetch the WebXR generic hand into cache_dir)
    cache_dir: Path | None = None
    write_card: bool = False  # store the metrics in the checkpoint's model card
    preview: Path | None = None  # also render a PNG of a few meshes
    threads: int = 0  # torch threads of the main process (0: default)
    workers: int = 2  # processes (one thread each) for the synthetic poses


def run(config: EvalBaseConfig) -> dict:
    """Evaluate as ``config`` says; -> the metrics (synthetic, real if the reference folder is there)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    base = load_base(config.checkpoint)
    asset = config.hand_asset or fetch_hand_asset(config.cache_dir)
    hand = RiggedHand.from_gltf(asset)
    if config.preview is not None:
        write_preview(base, hand, config.reference_dir, config.preview, config.resolution)
    started = time.perf_counter()
    # Worker processes take the synthetic poses in shards while this one meshes the real frames.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(config.workers, mp_context=spawn) as pool:
        shards = [
            pool.submit(_synthetic_shard, config.checkpoint, asset, config.poses, config.seed, config.resolution,
                        (k, config.workers))
            for k in range(config.workers)
        ]
        real = evaluate_real(base, config.reference_dir, config.resolution)
        rows = [row for shard in shards for row in shard.result()]
    metrics: dict = {"synthetic": summarize_synthetic(rows, config.seed, config.resolution)}
    if real is not None:
        metrics["real_kps_seq"] = real
    metrics["eval_command"] = (f"halo eval base --poses {config.poses} --seed {config.seed}"
                               f" --resolution {config.resolution}")
    metrics["eval_wall_time_s"] = round(time.perf_counter() - started, 1)
    if config.write_card:
        update_card(config.checkpoint or SHIPPED_BASE, metrics=metrics)
    return metrics
