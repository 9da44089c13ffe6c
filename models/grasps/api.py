"""The public grasp model: ``vae.sample(object_mesh, n, seed, refine=True, physics=False, rank=None) -> list[Grasp]``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import trimesh

from ..api import CHECKPOINT_DIR, HaloBase, load_base, resolve_device
from ..canonical import KeypointError, validate_keypoints
from ..geometry import closest_points, signed_distance
from ..hand_pose import HandSkeleton, neutral_angles
from . import hand_object
from .hand_proxy import HandProxy, fit_proxy
from .metrics import (
    CONTACT_DISTANCE_M,
    grasp_metrics_many,
    metrics_of,
    near_vertices,
    penetration_volumes,
    per_hand_threads,
    split_rows,
    vertex_extremes,
)
from .model import GraspVAE, load_vae_weights
from .object_input import (
    ObjectError,
    ObjectGrids,
    ObjectPoints,
    bps_basis,
    object_grids,
    object_points,
    prepare_object,
)
from .physics import RANK_CANDIDATES, PhysicsResult, check_grasps, most_stable

SHIPPED_VAE = CHECKPOINT_DIR / "halo_vae.safetensors"
MAX_SAMPLES = 64
REDRAWS = 3  # attempts to replace samples that are not valid hand skeletons
REDRAW_SEED_STEP = 7919
PROXY_FIT_RESOLUTION = 128
# Refinement draws this many samples per grasp it returns and keeps those whose contacts oppose best and
# reach least deep into the object (``hand_object.hold_score``). On a can, a box, a ball and 8 test objects
# (16 grasps each) the physics check held 0.76 of the grasps with 2 candidates per grasp, 0.886 with 4,
# 0.932 with 8 and 0.938 with 16; 8 cost 0.08 s more than 4 for 8 grasps (the proxy steps are cheap; only
# the kept samples are backed off, meshed and measured).
HOLD_CANDIDATES = 8
SDF_GRID = 20  # samples per side of the object's distance grid that refinement reads
SDF_MARGIN_M = 0.03
RankName = Literal["none", "stability"]  # how sample() orders its draws; the one declaration of the choices
RANK_NAMES: tuple[str, ...] = get_args(RankName)
# A refined grasp is returned only if it touches the object and penetrates it by at most this much;
# a sample that does not is replaced by a fresh one, REPLACEMENT_DRAWS candidates per failure a round.
MAX_PENETRATION_CM3 = 5.0
REPLACEMENT_ROUNDS = 3
REPLACEMENT_DRAWS = 2
REPLACEMENT_SEED_STEP = 104_729
# A failing sample can instead be moved rigidly out of the object by the shortest of these distances that
# passes (HALO is rigid-motion equivariant: the mesh moves with it): first for near misses, last for any slot
# the replacement rounds did not fix.
PUSH_OUT_M = (0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.018, 0.025)
# A slot that still fails after that is tried once more at these: on objects larger than the hand the
# sampled hands can sit several centimetres inside (pybullet_data's 50 cm stone and 32 cm lego brick,
# 3 seeds x 8 grasps: returned grasps penetrated up to 153 cm3, 42 of 48 passed; with these, 47 of 48).
FAR_PUSH_OUT_M = (0.035, 0.05, 0.07)
PUSH_FIRST_CM3 = 10.0  # a sample over the bound by at most this much is pushed out before any fresh one is drawn
# Returned grasps whose deepest vertex lies deeper in the object than this are eased out the same way: by
# the shortest of EASE_OUT_M that brings them within it and keeps them passing, else by the one that leaves
# them least deep (``_eased_out``). The field reports the mean of this depth (GrabNet 0.40 cm): on 12 test and
# 12 real objects x 8 it went from 0.31 / 0.38 cm to 0.25 / 0.28 cm, the 6-direction stable share from
# 0.97 / 0.96 to 0.94 / 0.96.
MAX_DEPTH_M = 0.0025
EASE_OUT_M = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006)


def is_acceptable(metrics: dict) -> bool:
    """Whether a refined grasp's metrics pass: in contact, penetration at most MAX_PENETRATION_CM3."""
    return bool(metrics["contact"]) and metrics["penetration_volume_cm3"] <= MAX_PENETRATION_CM3


def is_valid_hand(keypoints: np.ndarray) -> bool:
    """(21,3) mano keypoints, metres -> whether the base model accepts them as a hand."""
    try:
        validate_keypoints(keypoints)
    except KeypointError:
        return False
    return True


class GraspRequestError(ValueError):
    """Invalid sampling request; the message starts with the field name, e.g. ``n: ...``."""


@dataclass
class Grasp:
    """One sampled grasp in the caller's object frame."""

    keypoints: np.ndarray  # (21,3) metres, mano order
    mesh: trimesh.Trimesh  # watertight hand mesh, metres
    metrics: dict = field(default_factory=dict)  # see metrics.grasp_metrics, plus "refined"


class HaloVAE:
    """A loaded grasp VAE on top of a HALO base model (which meshes the hands and drives refinement)."""

    def __init__(self, model: GraspVAE, card: dict, base: HaloBase) -> None:
        self.model = model
        self.card = card
        self.base = base
        self.device = base.device
        config = model.config
        self.basis = bps_basis(config.bps_points, config.bps_radius_m, config.bps_seed)
        self.skeleton = model.skeleton
        for parameter in base.decoder.parameters():
            parameter.requires_grad_(False)
        self.proxy = skeleton_proxy(self.skeleton, base)

    def sample_keypoints(self, object_mesh: trimesh.Trimesh, n: int, seed: int = 0, refine_steps: bool = True,
                         refine_config: hand_object.RefineConfig | None = None) -> np.ndarray:
        """Validated object mesh (metres) -> (n,21,3) mano keypoints in its frame (trained bone lengths, optionally refined).

        A sample whose skeleton the base model would refuse (e.g. a collinear palm) is drawn again
        from another latent, so every returned hand can be meshed.
        """
        points = object_points(object_mesh, self.basis, seed=seed, interior=False)
        centred = object_mesh.copy()
        centred.apply_translation(-points.centre)
        sdf = object_grids([centred], SDF_GRID, SDF_MARGIN_M).to(self.device) if refine_steps else None
        keypoints = self._draw(points, sdf, n, seed, refine_steps, refine_config)
        for attempt in range(1, REDRAWS + 1):
            invalid = np.flatnonzero([not is_valid_hand(hand) for hand in keypoints])
            if len(invalid) == 0:
                break
            keypoints[invalid] = self._draw(points, sdf, len(invalid), seed + attempt * REDRAW_SEED_STEP,
                                            refine_steps, refine_config)
        return keypoints + points.centre

    def _draw(self, points: ObjectPoints, sdf: ObjectGrids | None, n: int, seed: int, refine_steps: bool,
              refine_config: hand_object.RefineConfig | None) -> np.ndarray:
        """Object points and distance grid -> (n,21,3) float64 keypoints in the object's centred frame, from
        latents of ``seed``."""
        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        drawn = n * HOLD_CANDIDATES if refine_steps else n
        generator = torch.Generator().manual_seed(seed)
        latent = torch.randn(drawn, self.model.config.latent, generator=generator).to(self.device)
        with torch.no_grad():
            code = self.model.object_code(as_tensor(points.bps)[None]).expand(drawn, -1)
            pose = self.model.decode(latent, code)
        if not refine_steps:
            with torch.no_grad():
                return self.skeleton.pose_keypoints(pose).double().cpu().numpy()
        batched = lambda a: as_tensor(a)[None].expand(drawn, *np.shape(a))  # noqa: E731
        keypoints = hand_object.refine(self.base.decoder, self.skeleton, self.proxy, pose, sdf, batched(points.shell),
                                       batched(points.shell_depth), batched(points.surface), refine_config, keep=n)
        return keypoints.double().cpu().numpy()

    def check_physics(self, obj: trimesh.Trimesh, keypoints: np.ndarray,
                      keep: int | None = None) -> tuple[np.ndarray, list[PhysicsResult]]:
        """Validated object, (S,21,3) keypoints in its frame -> the keypoints and their physics results; with
        ``keep``, only the ``keep`` most stable (worst direction first, then the mean), most stable first."""
        results = check_grasps(keypoints, self.proxy.radii.numpy(), obj)
        if keep is None:
            return keypoints, results
        order = most_stable(results, keep)
        return keypoints[order], [results[i] for i in order]

    def sample(self, object_mesh: trimesh.Trimesh, n: int = 10, seed: int = 0, refine: bool = True,
               resolution: int = 128, physics: bool = False, rank: RankName | None = None,
               max_candidates: int = MAX_SAMPLES) -> list[Grasp]:
        """Object mesh (metres) -> n grasps, each with keypoints (21,3), hand mesh and metrics; raises ObjectError.

        The object is repaired and closed first (``object_repair``). ``physics``: add the MuJoCo check's
        fields (``physics.PhysicsResult.metrics``). ``rank="stability"`` implies it: draws
        ``RANK_CANDIDATES * n`` samples (at most ``max_candidates``), returns the n that moved least under
        gravity (worst direction first, then the mean), and meshes only those. Refined grasps that miss the
        object or penetrate it by more than MAX_PENETRATION_CM3 are replaced by fresh samples (their
        ``redraws`` metric counts the fresh samples drawn for that slot); returned ones that reach deeper than
        MAX_DEPTH_M into it are eased out where a short move keeps them passing (``pushed_out_mm``).
        """
        obj = prepare_object(object_mesh)
        if not isinstance(n, int | np.integer) or not 1 <= n <= MAX_SAMPLES:
            raise GraspRequestError(f"n: expected an integer from 1 to {MAX_SAMPLES}, got {n!r}")
        if rank is not None and rank not in RANK_NAMES:
            raise GraspRequestError(f"rank: expected one of {', '.join(RANK_NAMES)}, got {rank!r}")
        ranked = rank == "stability"
        draw = max(int(n), min(RANK_CANDIDATES * int(n), max_candidates, MAX_SAMPLES)) if ranked else int(n)
        timing = dict.fromkeys(("sample_s", "physics_s", "mesh_s", "metrics_s"), 0.0)
        keypoints = self._timed(timing, "sample_s", self.sample_keypoints, obj, draw, seed, refine)
        results: list[PhysicsResult | None] = [None] * int(n)
        if ranked:  # the stability of every candidate decides which are meshed
            keypoints, results = self._timed(timing, "physics_s", self.check_physics, obj, keypoints, int(n))
        meshes, metrics = self._measured(obj, keypoints, resolution, timing)
        redraws = np.zeros(len(keypoints), dtype=int)
        push = lambda hands, hand_meshes, _: _pushed_out(obj, hands, hand_meshes)  # noqa: E731
        push_far = lambda hands, hand_meshes, _: _pushed_out(obj, hands, hand_meshes, FAR_PUSH_OUT_M)  # noqa: E731
        if refine:  # near misses are moved out first: far cheaper than sampling and meshing fresh hands
            self._push_out(keypoints, meshes, metrics, results, timing, self._failing(metrics, PUSH_FIRST_CM3), push)
        for attempt in range(1, REPLACEMENT_ROUNDS + 1 if refine else 1):
            failing = [i for i, values in enumerate(metrics) if not is_acceptable(values)]
            if not failing:
                break
            fresh = self._timed(timing, "sample_s", self.sample_keypoints, obj, REPLACEMENT_DRAWS * len(failing),
                                seed + attempt * REPLACEMENT_SEED_STEP, refine)
            fresh_meshes, fresh_metrics = self._measured(obj, fresh, resolution, timing)
            passing = [j for j, values in enumerate(fresh_metrics) if is_acceptable(values)]
            # Slots no fresh sample fixes take the least penetrating fresh one in contact, if it beats theirs.
            others = sorted((j for j, values in enumerate(fresh_metrics) if values["contact"] and j not in passing),
                            key=lambda j: fresh_metrics[j]["penetration_volume_cm3"])
            redraws[failing] += REPLACEMENT_DRAWS
            for slot, j in zip(failing, passing + others, strict=False):
                if j in passing or fresh_metrics[j]["penetration_volume_cm3"] < metrics[slot]["penetration_volume_cm3"]:
                    keypoints[slot], meshes[slot], metrics[slot], results[slot] = fresh[j], fresh_meshes[j], fresh_metrics[j], None
        if refine:
            self._push_out(keypoints, meshes, metrics, results, timing, self._failing(metrics, np.inf), push)
            self._push_out(keypoints, meshes, metrics, results, timing, self._failing(metrics, np.inf), push_far)
            deep = [slot for slot, values in enumerate(metrics) if is_acceptable(values) and not _shallow(values)]
            self._push_out(keypoints, meshes, metrics, results, timing, deep, partial(_eased_out, obj))
        if physics or ranked:  # only the grasps returned, and only those not simulated yet
            unchecked = [i for i, result in enumerate(results) if result is None]
            if unchecked:
                _, checked = self._timed(timing, "physics_s", self.check_physics, obj, keypoints[unchecked])
                for i, result in zip(unchecked, checked, strict=True):
                    results[i] = result
            for values, result in zip(metrics, results, strict=True):
                values.update(result.metrics())
        order = most_stable(results, len(results)) if ranked else range(len(keypoints))
        return [Grasp(keypoints=keypoints[i], mesh=meshes[i],
                      metrics={**metrics[i], "refined": bool(refine), "redraws": int(redraws[i]), "batch_timing": timing})
                for i in order]

    def _push_out(self, keypoints: np.ndarray, meshes: list, metrics: list[dict], results: list,
                  timing: dict[str, float], slots: list[int], move: Callable[..., list]) -> None:
        """The grasps in ``slots`` are moved out of the object by ``move(keypoints, meshes, metrics)`` (of those
        slots) where it moves them, their ``pushed_out_mm`` adding up over calls; the lists are updated in place."""
        if not slots:
            return
        pushed = self._timed(timing, "metrics_s", move, [keypoints[slot] for slot in slots],
                             [meshes[slot] for slot in slots], [metrics[slot] for slot in slots])
        for slot, moved in zip(slots, pushed, strict=True):
            if moved is not None:
                moved[2]["pushed_out_mm"] += metrics[slot].get("pushed_out_mm", 0.0)
                keypoints[slot], meshes[slot], metrics[slot], results[slot] = *moved, None

    @staticmethod
    def _failing(metrics: list[dict], up_to_cm3: float) -> list[int]:
        """Slots of the grasps that fail and penetrate by at most ``up_to_cm3``."""
        return [slot for slot, values in enumerate(metrics)
                if not is_acceptable(values) and values["penetration_volume_cm3"] <= up_to_cm3]

    @staticmethod
    def _timed(timing: dict[str, float], stage: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, its seconds added to ``timing[stage]``."""
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            timing[stage] += time.perf_counter() - started

    def _measured(self, obj: trimesh.Trimesh, keypoints: np.ndarray, resolution: int,
                  timing: dict[str, float]) -> tuple[list[trimesh.Trimesh], list[dict]]:
        """Prepared object, (S,21,3) keypoints -> their hand meshes and metrics against the object."""
        meshes = self._timed(timing, "mesh_s", lambda: self.base.mesh(keypoints, resolution=resolution))
        return meshes, self._timed(timing, "metrics_s", grasp_metrics_many, meshes, obj)


def skeleton_proxy(skeleton: HandSkeleton, base: HaloBase) -> HandProxy:
    """The capsule proxy of a hand skeleton: radii fitted to the base model's surface on an open and a
    half-closed hand (the proxy that refinement and the physics check use)."""
    angles = neutral_angles(2)
    angles[0] *= 0.2
    eye = torch.eye(3).repeat(2, 1, 1)
    with torch.no_grad():
        keypoints = skeleton.to("cpu").keypoints(angles, eye, torch.zeros(2, 3)).double().numpy()
    return fit_proxy(keypoints, base.mesh(keypoints, resolution=PROXY_FIT_RESOLUTION))


def _outward_directions(obj: trimesh.Trimesh, meshes: list[trimesh.Trimesh],
                        near: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray | None]:
    """Hand meshes penetrating the object and their ``near_vertices`` -> per hand (3,) unit mean direction from
    its vertices inside the object to the surface; None where no vertex is inside."""
    inside = [np.asarray(mesh.vertices)[index[signed < 0]] for mesh, (index, signed) in zip(meshes, near, strict=True)]
    directions: list[np.ndarray | None] = []
    for points, surface in zip(inside, split_rows(closest_points(obj, np.concatenate(inside)), inside), strict=True):
        outward = (surface - points).mean(axis=0) if len(points) else np.zeros(3)
        length = np.linalg.norm(outward)
        directions.append(outward / length if length > 0 else None)
    return directions


def _passing_moves(keypoints: list[np.ndarray], directions: list[np.ndarray | None],
                   moves: dict[int, tuple[float, trimesh.Trimesh, dict]], count: int
                   ) -> list[tuple[np.ndarray, trimesh.Trimesh, dict] | None]:
    """The move found for some of ``count`` hands (distance in metres along its direction, moved mesh, its
    metrics) -> per hand its moved keypoints, mesh and metrics with ``pushed_out_mm``; None where no move was
    found or the moved grasp fails."""
    return [(keypoints[i] + directions[i] * moves[i][0], moves[i][1], {**moves[i][2], "pushed_out_mm": moves[i][0] * 1e3})
            if i in moves and is_acceptable(moves[i][2]) else None for i in range(count)]


def _pushed_out(obj: trimesh.Trimesh, keypoints: list[np.ndarray], meshes: list[trimesh.Trimesh],
                distances: tuple[float, ...] = PUSH_OUT_M) -> list[tuple[np.ndarray, trimesh.Trimesh, dict] | None]:
    """Grasps that penetrate the object too deeply -> each hand moved rigidly along ``_outward_directions`` by the
    shortest of ``distances`` (metres, increasing) that brings its penetration within the bound (a binary search,
    every hand at once: three rounds of penetration volumes for the eight of PUSH_OUT_M), with ``pushed_out_mm``
    in its metrics; None where that hand then fails (no longer in contact) or cannot be moved."""
    directions = _outward_directions(obj, meshes, near_vertices(meshes, obj, 0.0))
    low = np.zeros(len(meshes), dtype=int)
    high = np.full(len(meshes), len(distances) - 1)
    found: dict[int, tuple[float, trimesh.Trimesh, float]] = {}  # distance, moved mesh, its volume
    searching = [i for i, direction in enumerate(directions) if direction is not None]
    while searching:  # the volume decides the search; depth and contact are measured once, for the moves found
        middle = {i: (low[i] + high[i]) // 2 for i in searching}
        moved = [_moved(meshes[i], directions[i] * distances[middle[i]]) for i in searching]
        for i, candidate, volume in zip(searching, moved, per_hand_threads(penetration_volumes, moved, obj), strict=True):
            if volume <= MAX_PENETRATION_CM3:
                found[i], high[i] = (distances[middle[i]], candidate, volume), middle[i] - 1
            else:
                low[i] = middle[i] + 1
        searching = [i for i in searching if low[i] <= high[i]]
    extremes = dict(zip(found, vertex_extremes([mesh for _, mesh, _ in found.values()], obj), strict=True))
    moves = {i: (distance, mesh, metrics_of(volume, *extremes[i])) for i, (distance, mesh, volume) in found.items()}
    return _passing_moves(keypoints, directions, moves, len(meshes))


def _moved(mesh: trimesh.Trimesh, offset: np.ndarray) -> trimesh.Trimesh:
    """Mesh, (3,) offset (metres) -> the mesh translated, built from its moved vertices (a full copy costs ten
    times as much)."""
    return trimesh.Trimesh(np.asarray(mesh.vertices) + offset, mesh.faces, process=False)


def _eased_out(obj: trimesh.Trimesh, keypoints: list[np.ndarray], meshes: list[trimesh.Trimesh], metrics: list[dict]
               ) -> list[tuple[np.ndarray, trimesh.Trimesh, dict] | None]:
    """Passing grasps that reach deeper than MAX_DEPTH_M -> each hand moved rigidly along ``_outward_directions``
    by the shortest of EASE_OUT_M that brings it within the bound still touching, else by the one that leaves it
    least deep while touching, with ``pushed_out_mm`` in its metrics; None where that move is not less deep or no
    longer passes.

    Distances are tried nearest first (one round for every hand still searching; depth is not monotonic in
    the distance: fingers on the far side move in). A signed distance is 1-Lipschitz, so after a move of t only
    the vertices now nearer than t + CONTACT_DISTANCE_M to the surface can touch it or be inside: each round
    asks the object about those alone, which gives the depth and the gap exactly; only the chosen moves' volumes
    are measured."""
    near = near_vertices(meshes, obj, EASE_OUT_M[-1] + CONTACT_DISTANCE_M)
    directions = _outward_directions(obj, meshes, near)
    searching = [i for i, direction in enumerate(directions) if direction is not None]
    touching: dict[int, list[tuple[float, float, float]]] = {i: [] for i in searching}  # distance, depth, gap
    for distance in EASE_OUT_M:
        if not searching:
            break
        asked = [np.asarray(meshes[i].vertices)[near[i][0][near[i][1] < distance + CONTACT_DISTANCE_M]]
                 + directions[i] * distance for i in searching]
        for i, signed in zip(searching, split_rows(signed_distance(obj, np.concatenate(asked)), asked), strict=True):
            if len(signed) and signed.min() <= CONTACT_DISTANCE_M:
                touching[i].append((distance, max(0.0, -float(signed.min())), max(0.0, float(signed.min()))))
        searching = [i for i in searching if not (touching[i] and touching[i][-1][1] <= MAX_DEPTH_M)]
    chosen = {i: options[-1] if options[-1][1] <= MAX_DEPTH_M else min(options, key=lambda option: option[1])
              for i, options in touching.items() if options}
    chosen = {i: option for i, option in chosen.items() if option[1] * 1e3 < metrics[i]["max_penetration_depth_mm"]}
    moved = {i: _moved(meshes[i], directions[i] * distance) for i, (distance, _, _) in chosen.items()}
    # The rounds found the depth and the gap exactly; only the volume is left to measure.
    volumes = dict(zip(moved, per_hand_threads(penetration_volumes, list(moved.values()), obj), strict=True))
    moves = {i: (distance, moved[i], metrics_of(volumes[i], depth, gap)) for i, (distance, depth, gap) in chosen.items()}
    return _passing_moves(keypoints, directions, moves, len(meshes))


def _shallow(metrics: dict) -> bool:
    """Whether a grasp passes and its deepest vertex is within MAX_DEPTH_M of the object's surface."""
    return is_acceptable(metrics) and metrics["max_penetration_depth_mm"] <= MAX_DEPTH_M * 1e3


def load_vae(path: str | Path | None = None, base: HaloBase | None = None, device: str | torch.device = "cpu") -> HaloVAE:
    """Load the grasp VAE: ``None`` -> the shipped checkpoint; ``base`` defaults to the shipped base model."""
    if path is None:
        if not SHIPPED_VAE.is_file():
            raise FileNotFoundError("checkpoint: the shipped VAE checkpoint is not installed; pass a path")
        path = SHIPPED_VAE
    base = base if base is not None else load_base(device=device)
    model, card = load_vae_weights(path, resolve_device(base.device))
    return HaloVAE(model, card, base)


__all__ = ["Grasp", "GraspRequestError", "HaloVAE", "ObjectError", "load_vae"]
