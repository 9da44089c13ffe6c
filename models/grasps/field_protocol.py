"""The field's grasp metrics, as GraspTTA, HALO, GrabNet and the papers since report them.

* **Simulation displacement**: the hand is static, the object a free body of 1 kg made of convex pieces;
  friction 3 on both, restitution 0 (hand) and 0.5 (object); gravity of 9.8 m/s2 along +y of the data's
  frame (the field's simulation sets gravity to (0, 9.8, 0) whatever the object); 35 steps of 1/240 s
  with 150 solver iterations, from the grasp as given (no settle: pushing an overlapping object out
  counts). Reported per grasp as the distance the object's centre of mass travelled (cm), and over
  grasps as mean +- std.
* **Penetration volume** inside both meshes on 1 mm voxels (cm3), **max penetration depth** of the
  hand's vertices inside the object (cm), **contact ratio**: share of grasps whose hand touches (a
  vertex within ``metrics.CONTACT_DISTANCE_M``) or penetrates the object.
* **Diversity** as in HALO's evaluation: k-means with 20 codes on the 63-d keypoints (cm) in each
  hand's wrist frame; the entropy of the cluster histogram (nats) and the cluster size, the mean 63-d
  distance of a grasp to its code (cm).

The field runs it in PyBullet; this is MuJoCo, with these mappings:

* *Hand*: PyBullet takes the hand's triangle mesh as one static concave body, colliding triangle by
  triangle. MuJoCo collides meshes as their convex hulls, so the hand is its surface as a skin of
  prisms (``hand_prisms``): the mesh simplified to ``HAND_FACES`` triangles (a hand of 10,000 at
  resolution 128 keeps its volume within 4 %; its vertices lie 0.6 mm from the simplified surface on
  average, 2 mm at the 95th percentile), each triangle extruded ``SKIN_THICKNESS_M`` inward along the
  vertex normals. An earlier mapping cut the hand into 20 convex hulls along its bones; the hulls
  filled the hand's concavities (12-17 % more volume, most of it the thenar web) and read 0.5-1.4 cm
  higher than PyBullet on average (below).
* *Object*: the physics check's convex pieces (``collision.convex_pieces``) where the field runs
  V-HACD; 1 kg by setting the density to 1 kg over the pieces' volume.
* *Friction and restitution*: Bullet multiplies the two bodies' coefficients, so the field's contact has
  friction 3 x 3 = 9 and restitution 0.5 x 0 = 0. MuJoCo's contacts are damped springs with no
  restitution parameter; a damped spring of damping ratio zeta bounces back with restitution
  exp(-zeta pi / sqrt(1 - zeta^2)), so restitution e maps to zeta = -ln e / sqrt(pi^2 + ln^2 e)
  (``restitution_damping_ratio``), and the field's e = 0 to zeta = 1, critically damped. The spring's
  time constant (``CONTACT_TIMECONST_S``) is free: chosen below by agreement with
  PyBullet. Condim 3 (no torsional friction, as in Bullet).
* *Margin*: Bullet gives every collision shape a margin of 1 mm that it collides with (a cube resting
  on a floor mesh in PyBullet stands 2 mm above it; with both margins set to 0, 0.01 mm into it), so
  the field's contacts engage 2 mm before the surfaces touch. MuJoCo's contact margin does the same
  (bodies rest ``margin`` apart): ``CONTACT_MARGIN_M`` = 2 mm. Bullet's default damping (0.04 per
  second) is left out: it changes a 35-step fall by under 1 %.
* *Friction cone* and *spring*: MuJoCo's default pyramidal cone (with friction 9 the elliptic cone holds
  nearly every grasp: 0.24 and 0.29 cm on the two sets below, against PyBullet's 0.70 and 1.58), and the spring's time constant
  and the skin's triangle count chosen by agreement with PyBullet run the field's way on the exact hand
  mesh (``scripts/hold_test.py``), on two sets of refined draws of the shipped VAE: 12 test objects and
  7 real ones x 4 (PyBullet 0.73 +- 1.16 cm) and 8 other test objects and 8 other real
  ones x 4 (PyBullet 1.64 +- 2.71 cm). Of 800 or 2000 triangles and 0.02-0.06 s, 800 and 0.04 s have the
  smallest worst difference of the mean over the two sets: 1.12 +- 1.48 cm (+0.39) and 1.28 +- 1.75 cm (-0.36), per grasp
  Pearson r 0.35 and 0.80, mean |difference| 0.82 and 0.89 cm. The bone hulls read 2.17 +- 1.95 (+1.44)
  and 2.17 +- 2.06 (+0.53), mean |difference| 1.58 and 1.23 cm; 2000 triangles read 0.6-1.1 cm low on the
  second set at every time constant. PyBullet against itself with its margins set to 0 agrees per grasp
  with r 0.73-0.77: a grasp's 35 steps are sensitive to small changes of contact.
  Its weak spot: a ball squeezed 1.5 mm in a fist of the hand mesh slides 0.6-5.5 cm in 35 steps here,
  where PyBullet holds it within 0.2 cm in the five directions the fist closes.
* *Solver*: MuJoCo's Newton solver with at most 150 iterations (it usually converges in fewer).
* *Centre of mass*: the field moves the vertex mean (where Bullet puts the body); this is the pieces'
  volumetric centre of mass.

Shapes: S grasps, V vertices. Metres, kilograms and seconds unless a name says cm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import fast_simplification
import mujoco
import numpy as np
import trimesh
from scipy.spatial import ConvexHull

from .collision import check_object, convex_pieces
from .metrics import CONTACT_DISTANCE_M, canonical_keypoints, keypoint_clusters, penetration_volumes, vertex_extremes
from .parallel import thread_map
from .physics import ARENA_BYTES, add_object, diverged

TIMESTEP_S = 1 / 240
STEPS = 35
SOLVER_ITERATIONS = 150
OBJECT_MASS_KG = 1.0
HAND_FRICTION = 3.0
OBJECT_FRICTION = 3.0
HAND_RESTITUTION = 0.0
OBJECT_RESTITUTION = 0.5
GRAVITY_M_S2 = 9.8
GRAVITY_DIRECTION = np.array([0.0, 1.0, 0.0])  # +y of the data frame, as the field sets it
CONTACT_TIMECONST_S = 0.04
CONTACT_MARGIN_M = 0.002  # Bullet's default collision margin, 1 mm on each body
PENETRATION_VOXEL_M = 0.001
HAND_FACES = 800
SKIN_THICKNESS_M = 0.004
MIN_TRIANGLE_HEIGHT_M = 1e-4
MIN_NORMAL_COSINE = 0.5
DIVERSITY_CODES = 20


def restitution_damping_ratio(restitution: float) -> float:
    """Coefficient of restitution in [0, 1) -> damping ratio of the contact spring that bounces back that much."""
    if not 0.0 <= restitution < 1.0:
        raise ValueError(f"restitution: expected a value in [0, 1), got {restitution!r}")
    if restitution == 0.0:
        return 1.0
    log = math.log(restitution)
    return -log / math.sqrt(math.pi ** 2 + log ** 2)


def combined_friction() -> float:
    """Friction of a hand-object contact: Bullet's product of the two bodies' coefficients."""
    return HAND_FRICTION * OBJECT_FRICTION


def combined_restitution() -> float:
    """Restitution of a hand-object contact: Bullet's product of the two bodies' coefficients."""
    return HAND_RESTITUTION * OBJECT_RESTITUTION


def free_fall_cm(steps: int = STEPS) -> float:
    """Distance a free body falls in ``steps`` semi-implicit Euler steps from rest (Bullet's and MuJoCo's), cm."""
    return GRAVITY_M_S2 * TIMESTEP_S ** 2 * steps * (steps + 1) / 2 * 100


def hand_prisms(hand: trimesh.Trimesh, faces: int = HAND_FACES) -> np.ndarray:
    """Hand mesh (metres) -> (F,6,3) convex prisms: each triangle of its ``faces``-triangle simplification
    and the same triangle ``SKIN_THICKNESS_M`` inward along the vertex normals (along the face's normal where a
    vertex normal folds away from it); slivers are left out."""
    vertices, triangles = _simplified(hand, faces)
    simplified = trimesh.Trimesh(vertices.astype(np.float64), triangles, process=False)
    longest_edge = np.linalg.norm(simplified.vertices[triangles] - simplified.vertices[np.roll(triangles, 1, axis=1)],
                                  axis=-1).max(1)
    # A sliver's prism is nearly flat, which MuJoCo refuses to take the hull of; its neighbours cover it.
    kept = np.flatnonzero(2 * simplified.area_faces / np.maximum(longest_edge, 1e-12) > MIN_TRIANGLE_HEIGHT_M)
    triangles = triangles[kept]
    outer = simplified.vertices[triangles]  # (F,3,3)
    face_normal = simplified.face_normals[kept]
    normal = simplified.vertex_normals[triangles]
    # A vertex normal far from its face's (a fold of the simplified surface) would flatten the prism.
    normal = np.where((normal * face_normal[:, None]).sum(-1, keepdims=True) > MIN_NORMAL_COSINE, normal,
                      face_normal[:, None])
    return np.concatenate([outer, outer - SKIN_THICKNESS_M * normal], axis=1)


def _simplified(hand: trimesh.Trimesh, faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Hand mesh -> (V,3) vertices and (F,3) triangles of its ``faces``-triangle quadric simplification.

    Once, in a run of 120 hands, the simplifier returned triangles that index past its vertices; the same
    run repeated twice did not, nor did 960 repeats of 32 other hands, so a broken result is simplified once
    more before it is refused."""
    for _ in range(2):
        vertices, triangles = fast_simplification.simplify(np.asarray(hand.vertices, dtype=np.float32),
                                                           np.asarray(hand.faces, dtype=np.int32), target_count=faces)
        if len(triangles) and triangles.min() >= 0 and triangles.max() < len(vertices):
            return vertices, triangles
    raise ValueError(f"hand: its {len(hand.faces)}-triangle mesh could not be simplified to {faces} triangles")


def build_model(hand: np.ndarray | tuple[np.ndarray, ...], obj: tuple[np.ndarray, ...],
                gravity: np.ndarray = GRAVITY_DIRECTION) -> mujoco.MjModel:
    """Convex pieces (V,3) of the hand and of the object (metres), gravity direction (3,) -> a compiled model.

    The hand's pieces sit on the world body (static); the object is body 1 with a free joint, 1 kg."""
    spec = mujoco.MjSpec()
    spec.option.timestep = TIMESTEP_S
    spec.memory = ARENA_BYTES  # as the physics check: ``diverged`` raises when contacts overflow the arena
    spec.option.iterations = SOLVER_ITERATIONS
    spec.option.gravity = (np.asarray(gravity, dtype=np.float64) / np.linalg.norm(gravity) * GRAVITY_M_S2).tolist()
    contact = {"friction": [combined_friction(), 0.0, 0.0], "condim": 3, "margin": CONTACT_MARGIN_M,
               "solref": [CONTACT_TIMECONST_S, restitution_damping_ratio(combined_restitution())]}
    for index, vertices in enumerate(hand):
        spec.add_mesh(name=f"hand{index}", uservert=vertices.ravel().tolist())
        spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"hand{index}", **contact)
    add_object(spec, obj, OBJECT_MASS_KG / sum(ConvexHull(vertices).volume for vertices in obj), contact)
    return spec.compile()


def simulate(model: mujoco.MjModel) -> float:
    """Compiled grasp model -> distance the object's centre of mass travels in ``STEPS`` steps, cm."""
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    start = data.xipos[1].copy()
    mujoco.mj_step(model, data, nstep=STEPS)
    if diverged(data):
        return free_fall_cm()
    mujoco.mj_kinematics(model, data)  # a step leaves the poses of its start in ``xipos``
    return float(np.linalg.norm(data.xipos[1] - start) * 100)


def simulation_displacements(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh,
                             gravity: np.ndarray = GRAVITY_DIRECTION, workers: int | None = None) -> np.ndarray:
    """S hand meshes, object mesh (one frame, metres) -> (S,) displacement, cm."""
    check_object(obj)
    pieces = convex_pieces(obj)
    return np.array(thread_map(lambda i: simulate(build_model(hand_prisms(hands[i]), pieces, gravity)),
                               range(len(hands)), workers))


def field_diversity(keypoints: np.ndarray, codes: int = DIVERSITY_CODES, seed: int = 0) -> dict[str, float]:
    """(S,21,3) mano keypoints, metres -> HALO's k-means entropy (nats) and cluster size (mean 63-d distance to the code, cm)."""
    offsets, entropy = keypoint_clusters(canonical_keypoints(keypoints), codes, seed)
    return {"entropy": entropy, "cluster_size_cm": float(np.linalg.norm(offsets.reshape(len(offsets), -1), axis=1).mean())}


@dataclass(frozen=True)
class FieldGrasp:
    """One grasp on the field's protocol."""

    displacement_cm: float
    penetration_volume_cm3: float
    max_penetration_depth_cm: float
    contact: bool


def field_grasps(hands: list[trimesh.Trimesh], obj: trimesh.Trimesh, workers: int | None = None) -> list[FieldGrasp]:
    """S hand meshes, object mesh (one frame, metres) -> S field-protocol grasps."""
    if not hands:
        return []
    displacement = simulation_displacements(hands, obj, workers=workers)
    volumes = penetration_volumes(hands, obj, PENETRATION_VOXEL_M, math.inf)
    return [FieldGrasp(float(moved), volume, depth * 100, bool(depth > 0 or gap <= CONTACT_DISTANCE_M))
            for moved, volume, (depth, gap) in zip(displacement, volumes, vertex_extremes(hands, obj), strict=True)]


def summarize_field(grasps: list[FieldGrasp], keypoints: np.ndarray) -> dict[str, float]:
    """Field-protocol grasps and all their (S,21,3) keypoints -> the field's table row."""
    displacement = np.array([grasp.displacement_cm for grasp in grasps])
    return {
        "grasps": len(grasps),
        "simulation_displacement_mean_cm": float(displacement.mean()),
        "simulation_displacement_std_cm": float(displacement.std()),
        "penetration_volume_cm3": float(np.mean([grasp.penetration_volume_cm3 for grasp in grasps])),
        "max_penetration_depth_cm": float(np.mean([grasp.max_penetration_depth_cm for grasp in grasps])),
        "contact_ratio": float(np.mean([grasp.contact for grasp in grasps])),
        **field_diversity(keypoints),
    }
