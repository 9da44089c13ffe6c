"""Physics check of a grasp with MuJoCo: does the hand hold the object when gravity pulls on it?

The hand is static collision geometry that follows the skeleton: the proxy's 27 capsules (the 20 bones
plus 7 across the palm, ``hand_proxy.CAPSULES``, radii fitted to the base model's surface) and one
convex palm plate (the hull of the wrist, thumb CMC and four finger MCPs, thickened by the proxy's mean
palm radius on each side of the palm plane). Why not a convex decomposition of the hand mesh: CoACD
takes about a second per hand mesh, every grasp has a new hand, and the pieces only approximate the
mesh again, while the capsules follow the skeleton exactly and were fitted to cover the base model's
surface (90th percentile of the vertex distances per segment) at no cost per hand.

The object is one free body made of convex pieces (``collision.convex_pieces``: the prepared, closed
object cut into nearly convex pieces from its voxelised solid, cached per mesh). Mass and inertia are
MuJoCo's, from the pieces' volumes at ``density`` (1000 kg/m3 unless given; overlapping pieces count
twice, a few per cent on a mug).

Contacts: sliding friction 0.8 (dry skin on plastic or glass is 0.5-1.0), torsional 5 mm (a finger
pad's contact patch), elliptic friction cones, noslip iterations so a held object does not creep.
Contacts push only where the surfaces touch (``SKIN_MARGIN_M`` = 0). A 2 mm margin (standing in for
a finger pad's give) pushed on surfaces that did not touch, a grip force the static hand does not
have: on 80 refined grasps of 10 test objects (``scripts/hold_test.py``) it called 72.5 % stable,
without it 57.5 %, and an exact-mesh PyBullet run without margin or settle 17.5 %; the verdicts agree
with PyBullet's on 45 % of the grasps with the margin and 60 % without.

Initial interpenetration: sampled hands overlap the object by a few millimetres, and MuJoCo's soft
contacts push overlapping bodies apart. This happens first, in a gravity-free settle of
``SETTLE_S`` (critically damped contacts, so the object is eased out, not shot out); the object's
velocity is then zeroed and its pose after the settle is the reference the gravity test measures from.
How far the settle moved it is reported too (``sim_settle_cm``) and counts against the grasp: an object
that moved ``STABLE_CM`` or more in the settle was not held where the grasp put it (the sampled grasp
overlapped it deeply, or squeezed it out of a hold that does not enclose it, the usual way a refined
grasp fails), so the grasp is not stable whatever gravity does afterwards.

Gravity is then tried along the six axis directions, each from the settled state for ``DURATION_S``.
The displacement is the distance the object's centre of mass travelled; the grasp is ``stable`` if it
moved less than ``STABLE_CM`` in every direction and in the settle. An unheld object falls about 123 cm
in that time.

Cost: 0.03-0.2 s per grasp on one CPU core (the model is compiled once per grasp and each direction
runs 125 steps of 4 ms). MuJoCo can abort its process or run for a minute on a pathological contact
set, so each grasp is simulated in a worker process with a time limit (``contained``); a grasp whose
simulation crashed, overran or raised gets a result that says so (``failure``) and the request goes
on. The grasps of a batch run on one worker per available core.

Shapes: S grasps, G gravity directions, V vertices. Metres and seconds unless a name says cm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mujoco
import numpy as np
import trimesh

from .collision import PhysicsError, check_object, convex_pieces
from .contained import ContainedPool, Failure, shared_pool
from .hand_proxy import CAPSULES, PALM_CAPSULES

log = logging.getLogger("halo.physics")

DENSITY_KG_M3 = 1000.0
SLIDING_FRICTION = 0.8
TORSIONAL_FRICTION_M = 0.005
ROLLING_FRICTION_M = 0.0001  # unused with condim 4 (no rolling friction), but MuJoCo wants three values
CONDIM = 4  # normal, two sliding and one torsional direction
NOSLIP_ITERATIONS = 10
TIMESTEP_S = 0.004
SKIN_MARGIN_M = 0.0  # contacts engage this far from the proxy surface: only where the surfaces touch
CONTACT_TIMECONST_S = 0.02  # MuJoCo's default contact stiffness (critically damped)
SETTLE_S = 0.1
DURATION_S = 0.5
GRAVITY_M_S2 = 9.81
STABLE_CM = 2.0
AXIS_DIRECTIONS = np.concatenate([np.eye(3), -np.eye(3)])  # (6,3) unit gravity directions
PALM_JOINTS = (0, 1, 5, 9, 13, 17)  # wrist, thumb CMC, index/middle/ring/pinky MCP (mano order)
TIME_LIMIT_S = 30.0  # per grasp; a normal one takes 0.02-0.2 s on a quiet core
ARENA_BYTES = 64 * 2**20  # MuJoCo's default (about 13 MB) runs out on objects of many pieces held tightly
RANK_CANDIDATES = 2  # ranking by stability draws this many samples per grasp it returns


OVERFLOW_WARNINGS = (mujoco.mjtWarning.mjWARN_CNSTRFULL, mujoco.mjtWarning.mjWARN_CONTACTFULL)
DIVERGENCE_WARNINGS = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                       mujoco.mjtWarning.mjWARN_BADQACC)


def _route_warning(message: str) -> None:
    """MuJoCo warning text -> Python logging (instead of MUJOCO_LOG.TXT in the working directory)."""
    log.warning("mujoco: %s", message)


mujoco.set_mju_user_warning(_route_warning)


@dataclass(frozen=True)
class PhysicsResult:
    """One grasp's physics check; ``failure`` says why there is no verdict (the simulation crashed, overran or
    raised), and then the displacements are infinite."""

    displacement_cm: np.ndarray  # (G,) centre-of-mass travel under gravity along each direction, cm
    settle_cm: float  # travel during the gravity-free settle (interpenetration pushed apart), cm
    failure: Failure | None = None

    @property
    def mean_cm(self) -> float:
        """Mean displacement over the gravity directions, cm."""
        return float(self.displacement_cm.mean())

    @property
    def worst_cm(self) -> float:
        """Largest displacement over the gravity directions, cm."""
        return float(self.displacement_cm.max())

    @property
    def held(self) -> int:
        """Gravity directions in which the object moved less than ``STABLE_CM``."""
        return int((self.displacement_cm < STABLE_CM).sum())

    @property
    def stable(self) -> bool:
        """Held in every gravity direction, and not pushed ``STABLE_CM`` or more out of place in the settle."""
        return self.held == len(self.displacement_cm) and self.settle_cm < STABLE_CM

    def metrics(self) -> dict[str, float | bool | str]:
        """The grasp-metric entries (units in the names); a failed check gives ``sim_failed`` and its reason."""
        if self.failure is not None:
            return {"sim_failed": True, "sim_failure": f"{self.failure.reason}: {self.failure.detail}"}
        return {
            "sim_displacement_cm": self.mean_cm,
            "sim_displacement_worst_cm": self.worst_cm,
            "sim_directions_held": self.held,
            "sim_settle_cm": self.settle_cm,
            "stable": self.stable,
        }


def free_fall_cm(duration_s: float = DURATION_S) -> float:
    """Distance a body falls from rest in ``duration_s`` seconds, g t^2 / 2, cm (MuJoCo's steps give 1 % less)."""
    return GRAVITY_M_S2 * duration_s ** 2 / 2 * 100


def palm_normal(keypoints: np.ndarray) -> np.ndarray:
    """(21,3) right-hand mano keypoints -> (3,) unit normal of the palm plane, pointing out of the palm side."""
    wrist, index, pinky = keypoints[0], keypoints[5], keypoints[17]
    normal = np.cross(index - wrist, pinky - wrist)
    return normal / np.linalg.norm(normal)


def palm_plate(keypoints: np.ndarray, half_thickness: float) -> np.ndarray:
    """(21,3) mano keypoints, metres -> (12,3) corners of the palm plate: palm joints +- half_thickness along the normal."""
    offset = palm_normal(keypoints) * half_thickness
    palm = keypoints[list(PALM_JOINTS)]
    return np.concatenate([palm + offset, palm - offset])


def _check_inputs(keypoints: np.ndarray, radii: np.ndarray, directions: np.ndarray, density: float) -> None:
    """Raise PhysicsError naming the first bad input."""
    if keypoints.ndim != 3 or keypoints.shape[1:] != (21, 3) or not np.isfinite(keypoints).all():
        raise PhysicsError(f"keypoints: expected finite (S,21,3) values, got shape {list(keypoints.shape)}")
    if radii.shape != (len(CAPSULES),) or not np.isfinite(radii).all() or (radii <= 0).any():
        raise PhysicsError(f"radii: expected {len(CAPSULES)} positive capsule radii, got shape {list(radii.shape)}")
    if directions.ndim != 2 or directions.shape[1] != 3 or len(directions) == 0:
        raise PhysicsError(f"directions: expected (G,3) gravity directions, got shape {list(directions.shape)}")
    if not (np.isfinite(directions).all() and (np.linalg.norm(directions, axis=1) > 0).all()):
        raise PhysicsError("directions: every gravity direction must be a finite non-zero vector")
    if not (np.isfinite(density) and density > 0):
        raise PhysicsError(f"density: expected a positive density in kg/m3, got {density!r}")


def build_model(keypoints: np.ndarray, radii: np.ndarray, pieces: tuple[np.ndarray, ...],
                density: float = DENSITY_KG_M3) -> mujoco.MjModel:
    """(21,3) mano keypoints, (C,) capsule radii, convex pieces (V,3), metres -> a compiled MuJoCo model.

    The hand's geoms sit on the world body (static); the object is body 1 with a free joint, its body
    frame at the origin of the keypoints' frame.
    """
    spec = mujoco.MjSpec()
    spec.option.timestep = TIMESTEP_S
    spec.memory = ARENA_BYTES
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.noslip_iterations = NOSLIP_ITERATIONS
    spec.option.gravity = [0.0, 0.0, 0.0]  # the settle has none; ``simulate`` sets it per direction
    friction = [SLIDING_FRICTION, TORSIONAL_FRICTION_M, ROLLING_FRICTION_M]
    contact = {"friction": friction, "condim": CONDIM, "margin": SKIN_MARGIN_M, "solref": [CONTACT_TIMECONST_S, 1.0]}
    for (start, end), radius in zip(CAPSULES.tolist(), radii, strict=True):
        spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_CAPSULE, size=[float(radius), 0, 0],
                                fromto=[*keypoints[start], *keypoints[end]], **contact)
    palm_radius = float(np.mean(radii[-len(PALM_CAPSULES):]))
    spec.add_mesh(name="palm", uservert=palm_plate(keypoints, palm_radius).ravel().tolist())
    spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname="palm", **contact)
    add_object(spec, pieces, density, contact)
    return spec.compile()


def add_object(spec: mujoco.MjSpec, pieces: tuple[np.ndarray, ...], density: float, contact: dict) -> None:
    """Add the object to a model spec: body 1, free, one mesh geom per convex piece (V,3), metres, kg/m3."""
    body = spec.worldbody.add_body(name="object")
    body.add_freejoint()
    for index, vertices in enumerate(pieces):
        spec.add_mesh(name=f"piece{index}", uservert=vertices.ravel().tolist())
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"piece{index}", density=density, **contact)


def diverged(data: mujoco.MjData) -> bool:
    """Whether MuJoCo met a NaN or huge value (it then resets the state; such an object counts as dropped).

    Raises RuntimeError if contacts were dropped for want of memory: then there is no verdict to give."""
    if any(data.warning[kind].number > 0 for kind in OVERFLOW_WARNINGS):
        raise RuntimeError(f"contacts: more than the simulator's {ARENA_BYTES // 2**20} MB arena holds; no verdict")
    return any(data.warning[kind].number > 0 for kind in DIVERGENCE_WARNINGS)


def simulate(model: mujoco.MjModel, directions: np.ndarray = AXIS_DIRECTIONS) -> PhysicsResult:
    """Compiled grasp model, (G,3) gravity directions -> displacement of the object under each, after the settle."""
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    start = data.xipos[1].copy()
    mujoco.mj_step(model, data, nstep=round(SETTLE_S / TIMESTEP_S))
    if diverged(data):
        return PhysicsResult(np.full(len(directions), free_fall_cm()), free_fall_cm())
    data.qvel[:] = 0.0
    mujoco.mj_forward(model, data)
    settled = data.xipos[1].copy()
    steps = round(DURATION_S / TIMESTEP_S)
    displacement = np.empty(len(directions))
    for index, direction in enumerate(directions / np.linalg.norm(directions, axis=1, keepdims=True)):
        model.opt.gravity[:] = direction * GRAVITY_M_S2
        run = mujoco.MjData(model)
        run.qpos[:] = data.qpos
        mujoco.mj_step(model, run, nstep=steps)
        displacement[index] = free_fall_cm() if diverged(run) else np.linalg.norm(run.xipos[1] - settled) * 100
    model.opt.gravity[:] = 0.0
    return PhysicsResult(displacement, float(np.linalg.norm(settled - start) * 100))


def _simulate_grasp(task: tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], np.ndarray, float]) -> PhysicsResult:
    """(keypoints (21,3), radii (C,), pieces, directions (G,3), density) -> one grasp's result (run in a worker)."""
    keypoints, radii, pieces, directions, density = task
    return simulate(build_model(keypoints, radii, pieces, density), directions)


def check_grasps(keypoints: np.ndarray, radii: np.ndarray, obj: trimesh.Trimesh,
                 directions: np.ndarray = AXIS_DIRECTIONS, density: float = DENSITY_KG_M3,
                 pool: ContainedPool | None = None, method: str = "voxel") -> list[PhysicsResult]:
    """(S,21,3) mano keypoints, (C,) proxy capsule radii, object mesh (same frame, metres) -> S physics results.

    Each grasp is simulated in a worker process of ``pool`` (default: the shared one, a worker per core)
    within ``TIME_LIMIT_S``; one that fails has ``failure`` set. ``method``: the object's decomposition
    (``collision.convex_pieces``)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    _check_inputs(keypoints, radii, directions, density)
    check_object(obj)
    pieces = convex_pieces(obj, method)
    tasks = [(hand, radii, pieces, directions, float(density)) for hand in keypoints]
    outcomes = (pool or shared_pool()).map(_simulate_grasp, tasks, TIME_LIMIT_S)
    failed = np.full(len(directions), np.inf)
    results = [PhysicsResult(failed, np.inf, outcome) if isinstance(outcome, Failure) else outcome for outcome in outcomes]
    for result in results:
        if result.failure is not None:
            log.warning("physics check failed (%s): %s", result.failure.reason, result.failure.detail)
    return results


def most_stable(results: list[PhysicsResult], n: int) -> list[int]:
    """Physics results -> indices of the n most stable (smallest worst displacement, then smallest mean)."""
    return sorted(range(len(results)), key=lambda i: (results[i].worst_cm, results[i].mean_cm))[:n]
