"""Hold test: the MuJoCo 6-direction check (``models/grasps/physics.py``) against an exact-mesh PyBullet run.

Default grasps (refined, seed = object order) of the first test objects go through:

* ``today``: the check before the honest one (a 2 mm contact margin, settle not counted);
* ``no margin``: the same with contacts only where surfaces touch;
* ``settle counted``: today's margin, but a grasp whose object moved ``STABLE_CM`` or more in the settle fails;
* ``honest``: no margin and the settle counted;
* ``mesh_pieces``: the honest check with the hand as the prism skin of its mesh
  (``field_protocol.hand_prisms``) instead of the capsule proxy: MuJoCo with the hand's real shape;
* ``bullet``: PyBullet (PyPI ``pybullet``, not a project dependency), the hand as its exact triangle mesh
  (a static concave body), the object as the same convex pieces, the same friction (0.8, Bullet
  multiplies the two bodies' coefficients: hand 1 x object 0.8), density, gravity and 0.5 s per
  direction, from the grasp as sampled (no settle), with no collision margin (Bullet's default is 1 mm
  per body) and no damping; stable if it moved less than 2 cm in every direction;
* the field's simulation (``field_protocol``) in MuJoCo and the same settings in PyBullet on the exact
  hand mesh with Bullet's defaults (as the field runs it), to check the MuJoCo mapping.

    python scripts/hold_test.py --objects 10 --grasps 8 --json hold.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import mujoco
import numpy as np
import pybullet
import trimesh

import models
from models.data.objects import make_object, split_indices
from models.grasps import field_protocol, physics
from models.grasps.collision import convex_pieces

BULLET_TIMESTEP_S = 1 / 240
BULLET_SOLVER_ITERATIONS = 150
HAND_FRICTION_FOR_OURS = 1.0  # Bullet multiplies: 1.0 x object's 0.8 = our check's 0.8
EARLIER_MARGIN_M = 0.002  # the contact margin of the check before the honest one


def centre_of_mass(pieces: tuple[np.ndarray, ...]) -> np.ndarray:
    """The pieces' volumetric centre of mass (overlaps counted twice, as MuJoCo does), metres."""
    hulls = [trimesh.convex.convex_hull(piece) for piece in pieces]
    volumes = np.array([hull.volume for hull in hulls])
    return (np.array([hull.center_mass for hull in hulls]) * volumes[:, None]).sum(0) / volumes.sum()


def check_in_process(keypoints: np.ndarray, radii: np.ndarray, pieces: tuple[np.ndarray, ...],
                     margin: float) -> list[physics.PhysicsResult]:
    """Our check of (S,21,3) grasps with the given contact margin, in this process (the served check
    runs in worker processes, where the margin could not be changed)."""
    default, physics.SKIN_MARGIN_M = physics.SKIN_MARGIN_M, margin
    try:
        return [physics.simulate(physics.build_model(hand, radii, pieces)) for hand in keypoints]
    finally:
        physics.SKIN_MARGIN_M = default


def mesh_piece_check(hand: trimesh.Trimesh, pieces: tuple[np.ndarray, ...]) -> physics.PhysicsResult:
    """Our 6-direction check (no margin, settle included) with the hand as the convex pieces of its mesh
    (``field_protocol.hand_prisms``) instead of the capsule proxy: the same engine, the hand's real shape."""
    spec = mujoco.MjSpec()
    spec.option.timestep = physics.TIMESTEP_S
    spec.memory = physics.ARENA_BYTES
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.noslip_iterations = physics.NOSLIP_ITERATIONS
    spec.option.gravity = [0.0, 0.0, 0.0]
    contact = {"friction": [physics.SLIDING_FRICTION, physics.TORSIONAL_FRICTION_M, physics.ROLLING_FRICTION_M],
               "condim": physics.CONDIM, "margin": 0.0, "solref": [physics.CONTACT_TIMECONST_S, 1.0]}
    for index, vertices in enumerate(field_protocol.hand_prisms(hand)):
        spec.add_mesh(name=f"hand{index}", uservert=vertices.ravel().tolist())
        spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"hand{index}", **contact)
    body = spec.worldbody.add_body(name="object")
    body.add_freejoint()
    for index, vertices in enumerate(pieces):
        spec.add_mesh(name=f"piece{index}", uservert=vertices.ravel().tolist())
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"piece{index}", density=physics.DENSITY_KG_M3,
                      **contact)
    return physics.simulate(spec.compile())


def bullet_displacements(client: int, hand: trimesh.Trimesh, pieces: tuple[np.ndarray, ...], mass: float,
                         gravity: np.ndarray, seconds: float, hand_friction: float, object_friction: float,
                         object_restitution: float, exact: bool) -> np.ndarray:
    """Exact hand mesh, object pieces (metres), (G,3) gravity vectors (m/s2) -> (G,) displacement of the
    object's centre of mass after ``seconds``, cm. ``exact``: no collision margin and no damping (else
    Bullet's defaults, as the field runs it: 1 mm margin per body, damping 0.04)."""
    com = centre_of_mass(pieces)
    folder = tempfile.TemporaryDirectory()
    files = []
    for index, piece in enumerate(pieces):  # pybullet builds a compound of convex hulls only from files
        files.append(f"{folder.name}/piece{index}.obj")
        trimesh.convex.convex_hull(piece - com).export(files[-1])
    moved = []
    for vector in gravity:
        pybullet.resetSimulation(physicsClientId=client)
        pybullet.setPhysicsEngineParameter(fixedTimeStep=BULLET_TIMESTEP_S, numSolverIterations=BULLET_SOLVER_ITERATIONS,
                                           physicsClientId=client)
        pybullet.setGravity(*vector, physicsClientId=client)
        hand_shape = pybullet.createCollisionShape(
            pybullet.GEOM_MESH, vertices=np.asarray(hand.vertices).tolist(),
            indices=np.asarray(hand.faces).ravel().tolist(), flags=pybullet.GEOM_FORCE_CONCAVE_TRIMESH,
            physicsClientId=client)
        hand_body = pybullet.createMultiBody(baseMass=0, baseCollisionShapeIndex=hand_shape, physicsClientId=client)
        pybullet.changeDynamics(hand_body, -1, lateralFriction=hand_friction, restitution=0.0, physicsClientId=client)
        shape = pybullet.createCollisionShapeArray(
            shapeTypes=[pybullet.GEOM_MESH] * len(files), fileNames=files, physicsClientId=client)
        body = pybullet.createMultiBody(baseMass=mass, baseCollisionShapeIndex=shape, basePosition=com.tolist(),
                                        physicsClientId=client)
        pybullet.changeDynamics(body, -1, lateralFriction=object_friction, restitution=object_restitution,
                                physicsClientId=client)
        if exact:
            pybullet.changeDynamics(hand_body, -1, collisionMargin=0.0, physicsClientId=client)
            pybullet.changeDynamics(body, -1, collisionMargin=0.0, linearDamping=0.0, angularDamping=0.0,
                                    physicsClientId=client)
        for _ in range(round(seconds / BULLET_TIMESTEP_S)):
            pybullet.stepSimulation(physicsClientId=client)
        position = np.array(pybullet.getBasePositionAndOrientation(body, physicsClientId=client)[0])
        moved.append(np.linalg.norm(position - com) * 100)
    folder.cleanup()
    return np.array(moved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--grasps", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    vae = models.load_vae(base=models.load_base())
    radii = vae.proxy.radii.numpy()
    client = pybullet.connect(pybullet.DIRECT)
    records = []
    started = time.perf_counter()
    for order, index in enumerate(split_indices("test", args.objects)):
        obj, kind = make_object(index)
        keypoints = vae.sample_keypoints(obj, args.grasps, order, True)
        hands = vae.base.mesh(keypoints, resolution=args.resolution)
        pieces = convex_pieces(obj)
        today = check_in_process(keypoints, radii, pieces, EARLIER_MARGIN_M)
        touching = check_in_process(keypoints, radii, pieces, 0.0)
        mass = physics.DENSITY_KG_M3 * sum(trimesh.convex.convex_hull(piece).volume for piece in pieces)
        field_mujoco = field_protocol.simulation_displacements(hands, obj)
        field_gravity = field_protocol.GRAVITY_DIRECTION[None] * field_protocol.GRAVITY_M_S2
        for grasp, hand in enumerate(hands):
            mesh_pieces = mesh_piece_check(hand, pieces)
            bullet = bullet_displacements(client, hand, pieces, mass, physics.AXIS_DIRECTIONS * physics.GRAVITY_M_S2,
                                          physics.DURATION_S, HAND_FRICTION_FOR_OURS, physics.SLIDING_FRICTION, 0.0, True)
            field_bullet = bullet_displacements(
                client, hand, pieces, field_protocol.OBJECT_MASS_KG, field_gravity,
                field_protocol.STEPS * field_protocol.TIMESTEP_S, field_protocol.HAND_FRICTION,
                field_protocol.OBJECT_FRICTION, field_protocol.OBJECT_RESTITUTION, False)[0]
            records.append({
                "object": index, "kind": kind, "grasp": grasp,
                "today_worst_cm": today[grasp].worst_cm, "today_settle_cm": today[grasp].settle_cm,
                "today": today[grasp].held == len(physics.AXIS_DIRECTIONS),
                "no_margin_worst_cm": touching[grasp].worst_cm, "no_margin_settle_cm": touching[grasp].settle_cm,
                "no_margin": touching[grasp].held == len(physics.AXIS_DIRECTIONS),
                "settle_counted": today[grasp].held == len(physics.AXIS_DIRECTIONS)
                and today[grasp].settle_cm < physics.STABLE_CM,
                "honest": touching[grasp].held == len(physics.AXIS_DIRECTIONS)
                and touching[grasp].settle_cm < physics.STABLE_CM,
                "mesh_pieces": mesh_pieces.stable, "mesh_pieces_held": mesh_pieces.held,
                "mesh_pieces_settle_cm": mesh_pieces.settle_cm,
                "bullet_worst_cm": float(bullet.max()), "bullet_held": int((bullet < physics.STABLE_CM).sum()),
                "bullet": bool((bullet < physics.STABLE_CM).all()),
                "field_mujoco_cm": float(field_mujoco[grasp]), "field_bullet_cm": float(field_bullet),
            })
        print(f"object {index} ({kind}): {time.perf_counter() - started:.0f} s", flush=True)
    report(records)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=1)


def report(records: list[dict]) -> None:
    """Stable shares, agreement with the exact-mesh run, and the field simulation in both engines."""
    bullet = np.array([record["bullet"] for record in records])
    print(f"{len(records)} grasps; bullet (exact hand mesh) stable share {bullet.mean():.3f}")
    print("| check | stable share | agreement with bullet | stable here, not in bullet | not here, stable in bullet |")
    print("|---|---|---|---|---|")
    for name in ("today", "no_margin", "settle_counted", "honest", "mesh_pieces"):
        verdict = np.array([record[name] for record in records])
        print(f"| {name} | {verdict.mean():.3f} | {(verdict == bullet).mean():.3f} | {(verdict & ~bullet).sum()} "
              f"| {(~verdict & bullet).sum()} |")
    mujoco_cm = np.array([record["field_mujoco_cm"] for record in records])
    bullet_cm = np.array([record["field_bullet_cm"] for record in records])
    print(f"field simulation: MuJoCo {mujoco_cm.mean():.2f} +- {mujoco_cm.std():.2f} cm, PyBullet (exact hand) "
          f"{bullet_cm.mean():.2f} +- {bullet_cm.std():.2f} cm, Pearson r {np.corrcoef(mujoco_cm, bullet_cm)[0, 1]:.2f}, "
          f"median |difference| {np.median(np.abs(mujoco_cm - bullet_cm)):.2f} cm")


if __name__ == "__main__":
    main()
