"""The object as the physics check's collision geometry: convex pieces of its solid, cached by content.

The object is first prepared (``object_repair.prepare``: closed, outward-facing, bounded size). If each
connected body fills at least ``CONVEX_VOLUME_SHARE`` of its convex hull, the bodies' hulls are the
pieces. Otherwise (a mug's handle, a torus, a bottle with a neck) the whole solid, with overlapping
bodies merged, is cut into convex pieces from its voxels, with no search: a set of voxels is a piece once it fills ``SOLID_SHARE`` of its convex hull; otherwise it is halved across its longest side and each half's connected parts are tried
again, largest first, up to ``MAX_PIECES`` pieces. A piece's hull is taken over its voxel centres and
the surface points of the object nearest to them, so it hugs the real surface, not the voxel steps.
That takes 10-60 ms where CoACD took 0.2-0.9 s for a closed handle and 40-60 s for an open mesh;
``method="coacd"`` keeps CoACD for comparison (the README reports what the faster pieces cost in the
stable share).

Units: metres. Shapes: V vertices of a piece.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree

from ..geometry import signed_volume
from .object_repair import LruCache, hull_volume, mesh_key, prepare, surface_samples, voxel_solid

CONVEX_VOLUME_SHARE = 0.95
SOLID_SHARE = 0.9
DECOMPOSITION_GRID = 32  # voxels along the longest side of a body cut into pieces
MAX_PIECES = 16
MAX_HULL_VERTICES = 64
MIN_PIECE_VOXELS = 4
MIN_PIECE_VOLUME_M3 = 1e-9  # pieces under 1 mm3 are dropped (MuJoCo refuses flat hulls)
MIN_OBJECT_VOLUME_M3 = 1e-7  # an object whose hull holds under 0.1 cm3 is flat: nothing to drop
COACD_THRESHOLD = 0.05
COACD_SEED = 0
# A lighter search than CoACD's defaults: 0.2-0.9 s instead of 1-40 s per closed piece, within 1 % of the same volume.
COACD_SEARCH = {"resolution": 500, "mcts_iterations": 30, "mcts_nodes": 10, "mcts_max_depth": 2}
PIECE_CACHE_SIZE = 32
METHODS = ("voxel", "coacd")


class PhysicsError(ValueError):
    """Invalid physics-check input; the message starts with the field name."""


def check_object(obj: trimesh.Trimesh) -> None:
    """Raise PhysicsError (``object: ...``) unless the mesh (metres) encloses a volume a body can be made of."""
    volume = hull_volume(np.asarray(obj.vertices, dtype=np.float64))
    if volume < MIN_OBJECT_VOLUME_M3:
        raise PhysicsError(f"object: its convex hull holds {volume * 1e6:.3g} cm3; the physics check needs a solid "
                           f"of at least {MIN_OBJECT_VOLUME_M3 * 1e6:g} cm3 (a flat or degenerate mesh cannot be dropped)")


def _is_nearly_convex(body: trimesh.Trimesh) -> bool:
    """Whether a closed body has nearly the volume of its convex hull."""
    return abs(signed_volume(body)) >= CONVEX_VOLUME_SHARE * hull_volume(np.asarray(body.vertices))


def _few_vertices(hull_points: np.ndarray, count: int = MAX_HULL_VERTICES) -> np.ndarray:
    """(V,3) vertices of a convex hull -> at most ``count`` of them, spread by farthest-point sampling (their hull
    lies inside the original; MuJoCo's collision cost grows with a piece's vertices, a lathe-turned can has 4,000)."""
    if len(hull_points) <= count:
        return hull_points
    chosen = [int(np.argmax(np.linalg.norm(hull_points - hull_points.mean(0), axis=1)))]
    distance = np.linalg.norm(hull_points - hull_points[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(hull_points - hull_points[chosen[-1]], axis=1))
    return hull_points[chosen]


def _solid_share(index: np.ndarray) -> float:
    """(K,3) integer voxel indices -> their volume over that of their convex hull (in voxels).

    The hull of the voxels' cubes is the hull of their centres grown by half a voxel, whose volume is
    about V + A / 2 (the Steiner formula without its edge and corner terms)."""
    try:
        hull = ConvexHull(index.astype(np.float64))
    except (QhullError, ValueError):
        return 1.0  # flat: a slab of voxels is convex
    return len(index) / (hull.volume + hull.area / 2)


def _components(index: np.ndarray) -> list[np.ndarray]:
    """(K,3) integer voxel indices -> the face-connected groups among them, largest first."""
    low = index.min(0)
    mask = np.zeros(index.max(0) - low + 1, dtype=bool)
    mask[tuple((index - low).T)] = True
    label, count = ndimage.label(mask)
    which = label[tuple((index - low).T)]
    groups = [index[which == value] for value in range(1, count + 1)]
    return sorted(groups, key=len, reverse=True)


def _voxel_groups(index: np.ndarray) -> list[np.ndarray]:
    """(K,3) voxel indices of a solid -> groups of them that are each nearly convex (at most MAX_PIECES)."""
    pending, done = _components(index), []
    while pending:
        group = pending.pop(0)
        if len(done) + len(pending) + 1 >= MAX_PIECES or len(group) < 2 * MIN_PIECE_VOXELS or _solid_share(group) >= SOLID_SHARE:
            done.append(group)
            continue
        axis = int(np.argmax(np.ptp(group, axis=0)))
        cut = (group[:, axis].min() + group[:, axis].max() + 1) / 2
        halves = [group[group[:, axis] < cut], group[group[:, axis] >= cut]]
        pending = sorted(pending + [part for half in halves for part in _components(half)], key=len, reverse=True)
    return [group for group in done if len(group) >= MIN_PIECE_VOXELS] or done[:1]


def voxel_pieces(solid: trimesh.Trimesh, grid: int = DECOMPOSITION_GRID) -> list[np.ndarray]:
    """Closed mesh, metres -> vertices (V,3) of the convex hulls of its solid's nearly convex voxel groups."""
    vertices, faces = np.asarray(solid.vertices, dtype=np.float64), np.asarray(solid.faces, dtype=np.int64)
    solid = voxel_solid(vertices, faces, grid)
    index = np.argwhere(solid.solid)
    groups = _voxel_groups(index)
    label = np.concatenate([np.full(len(group), number) for number, group in enumerate(groups)])
    centres = solid.low + (np.concatenate(groups) + 0.5) * solid.voxel
    surface = surface_samples(vertices, faces, solid.voxel / 2)
    nearest = label[cKDTree(centres).query(surface)[1]]
    pieces = []
    for number in range(len(groups)):
        points = np.concatenate([centres[label == number], surface[nearest == number]])
        if hull_volume(points) > MIN_PIECE_VOLUME_M3:
            pieces.append(points[ConvexHull(points).vertices])
    return pieces


def coacd_pieces(body: trimesh.Trimesh) -> list[np.ndarray]:
    """Closed body, metres -> vertices (V,3) of CoACD's convex pieces (the slow path, for comparison)."""
    import coacd  # imported here: only the comparison path needs it

    coacd.set_log_level("error")
    parts = coacd.run_coacd(coacd.Mesh(np.asarray(body.vertices), np.asarray(body.faces)), threshold=COACD_THRESHOLD,
                            max_convex_hull=MAX_PIECES, seed=COACD_SEED, **COACD_SEARCH)
    return [np.asarray(trimesh.Trimesh(vertices, faces).convex_hull.vertices) for vertices, faces in parts]


def _decompose(obj: trimesh.Trimesh, method: str) -> tuple[np.ndarray, ...]:
    """Object mesh, metres -> vertices (V,3) of each convex piece of its prepared solid."""
    prepared = prepare(obj)
    bodies = prepared.split(only_watertight=False, repair=False)
    if len(bodies) <= MAX_PIECES and all(_is_nearly_convex(body) for body in bodies):
        pieces = [np.asarray(body.vertices)[ConvexHull(body.vertices).vertices] for body in bodies]
    elif method == "voxel":
        pieces = voxel_pieces(prepared)  # all bodies at once: overlapping parts (a handle set into a wall) merge
    else:
        pieces = [piece for body in bodies for piece in coacd_pieces(body)]
    kept = tuple(_few_vertices(piece) for piece in pieces if hull_volume(piece) > MIN_PIECE_VOLUME_M3)
    return kept or (_few_vertices(np.asarray(prepared.convex_hull.vertices, dtype=np.float64)),)


_piece_cache = LruCache(PIECE_CACHE_SIZE)


def convex_pieces(obj: trimesh.Trimesh, method: str = "voxel") -> tuple[np.ndarray, ...]:
    """Object mesh, metres -> vertices (V,3) of each convex piece (least recently used cache of 32 meshes).

    ``method``: "voxel" (default, tens of milliseconds) or "coacd" (CoACD, seconds; for comparison)."""
    if method not in METHODS:
        raise PhysicsError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    key = (mesh_key(np.asarray(obj.vertices), np.asarray(obj.faces)), method)
    return _piece_cache.get(key, lambda: _decompose(obj, method))
