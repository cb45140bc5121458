"""The shapes world: vocabulary, scene model, and pybullet simulation of random scenes.

A scene is a side view of a few flat-coloured rigid bodies (ball, box, wedge) resting on a floor.
Coordinates are world units: ``x`` to the right (0 at the image centre), ``y`` up (0 at the floor);
``angle`` is the counter-clockwise rotation in that plane (radians). Bodies are simulated in 3-D
with pybullet (DIRECT mode, no GUI) but kept in the x-z plane, which is the scene's x-y plane.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

logger = logging.getLogger(__name__)

SHAPES = ("ball", "box", "wedge")
COLOURS = {  # flat, saturated, well separated (RGB in 0..255)
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "magenta": (210, 30, 200),
    "cyan": (20, 200, 210),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": 1.2, "large": 2.0}  # extent in world units (ball diameter, box side)
SIZE_NAMES = tuple(SIZES)
WEDGE_SCALE = 1.2  # a wedge is a right triangle with both legs WEDGE_SCALE * size
BACKGROUND = (230, 230, 230)
FLOOR = (150, 150, 150)

# the camera sees x in [-VIEW_WIDTH/2, VIEW_WIDTH/2] and y in [0, VIEW_HEIGHT] above a grey floor strip
VIEW_WIDTH = 6.4
VIEW_HEIGHT = 6.0
FLOOR_FRACTION = 2.0 / 32.0  # fraction of the image height below the floor line
DEPTH = 1.0  # extrusion of prisms along the (hidden) depth axis


@dataclass(frozen=True)
class SceneObject:
    """One rigid body: its category and its pose in world units."""

    shape: str
    colour: str
    size: str
    x: float = 0.0
    y: float = 0.0
    angle: float = 0.0

    @property
    def extent(self) -> float:
        """Nominal extent in world units (ball diameter, box side, wedge leg / WEDGE_SCALE)."""
        return SIZES[self.size]

    def phrase(self, with_size: bool = False) -> str:
        """The object's noun phrase, e.g. 'red ball' or 'large red ball'."""
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A list of objects plus the support relation found by the simulation."""

    objects: tuple[SceneObject, ...]
    supports: tuple[tuple[int, int], ...] = field(default=())  # (upper, lower) pairs in contact
    settled: bool = True  # False when something was still moving at the end of the simulation

    def on(self, i: int, j: int) -> bool:
        """True when object i rests on object j."""
        return (i, j) in self.supports

    def mirrored(self) -> "Scene":
        """The left-right mirror image (same supports)."""
        objs = tuple(replace(o, x=-o.x, angle=_mirror_angle(o)) for o in self.objects)
        return Scene(objs, self.supports, self.settled)

    def recoloured(self, mapping: dict[str, str]) -> "Scene":
        """The same geometry with colours renamed by `mapping`."""
        objs = tuple(replace(o, colour=mapping.get(o.colour, o.colour)) for o in self.objects)
        return Scene(objs, self.supports, self.settled)

    def subset(self, keep: list[int]) -> "Scene":
        """The scene restricted to the objects at indices `keep` (supports remapped)."""
        new = {old: k for k, old in enumerate(keep)}
        sup = tuple((new[i], new[j]) for i, j in self.supports if i in new and j in new)
        return Scene(tuple(self.objects[i] for i in keep), sup, self.settled)


def _mirror_angle(o: SceneObject) -> float:
    """Angle of the mirrored object (a mirrored right triangle is the triangle rotated by 90 deg)."""
    if o.shape == "wedge":
        return math.pi / 2 - o.angle
    return -o.angle


def wedge_vertices(leg: float) -> np.ndarray:
    """Right-triangle vertices (3, 2) at angle 0, centred on its centroid: legs along -x..+x, -y..+y."""
    return np.array([[-leg / 3, -leg / 3], [2 * leg / 3, -leg / 3], [-leg / 3, 2 * leg / 3]])


def local_outline(o: SceneObject) -> np.ndarray:
    """Vertices (K, 2) of a box or wedge in the object's frame (world units)."""
    s = o.extent
    if o.shape == "box":
        h = s / 2
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if o.shape == "wedge":
        return wedge_vertices(WEDGE_SCALE * s)
    raise ValueError(f"no polygon outline for shape {o.shape!r}")


def world_outline(o: SceneObject) -> np.ndarray:
    """Vertices (K, 2) of a box or wedge in world coordinates."""
    c, s = math.cos(o.angle), math.sin(o.angle)
    rot = np.array([[c, -s], [s, c]])
    return local_outline(o) @ rot.T + np.array([o.x, o.y])


def bounds(o: SceneObject) -> tuple[float, float, float, float]:
    """The object's bounding box in world units: (x0, x1, y0, y1)."""
    if o.shape == "ball":
        r = o.extent / 2
        return o.x - r, o.x + r, o.y - r, o.y + r
    v = world_outline(o)
    (x0, y0), (x1, y1) = v.min(0), v.max(0)
    return float(x0), float(x1), float(y0), float(y1)


def top_height(o: SceneObject) -> float:
    """Highest world y reached by the object."""
    return bounds(o)[3]


# --------------------------------------------------------------------------- simulation


class _Sim:
    """One reusable pybullet DIRECT client (created lazily, one per process)."""

    client: int | None = None

    @classmethod
    def get(cls):
        """Return (pybullet module, client id)."""
        import importlib

        p = _quietly(importlib.import_module, "pybullet")
        if cls.client is None or not p.isConnected(cls.client):
            cls.client = _quietly(p.connect, p.DIRECT)
        return p, cls.client


def _quietly(fn, *args):
    """fn(*args) with the process's stdout and stderr closed: pybullet's C code prints its build time on import,
    which would land in the middle of a progress bar or a command's output."""
    import ctypes
    import os
    import sys

    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        return fn(*args)
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers what it printed: let it go to the null device
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in saved + [null]:
            os.close(fd)


def _quat_y(p, angle: float):
    """Quaternion of a CCW scene rotation (x right, z up), i.e. a rotation of -angle about +y."""
    return p.getQuaternionFromEuler([0.0, -angle, 0.0])


def _angle_from_quat(p, q) -> float:
    """CCW scene angle of the body's x axis in the x-z plane."""
    m = p.getMatrixFromQuaternion(q)
    return math.atan2(m[6], m[0])


def _make_body(p, cid: int, o: SceneObject, static: bool = False) -> int:
    """Create the pybullet body of a scene object at its pose (``static``: mass 0, it never moves)."""
    s = o.extent
    if o.shape == "ball":
        col = p.createCollisionShape(p.GEOM_SPHERE, radius=s / 2, physicsClientId=cid)
        mass = s**3
    elif o.shape == "box":
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[s / 2, DEPTH / 2, s / 2], physicsClientId=cid)
        mass = s**2
    else:
        tri = wedge_vertices(WEDGE_SCALE * s)
        verts = [[vx, sy * DEPTH / 2, vz] for vx, vz in tri for sy in (-1, 1)]
        col = p.createCollisionShape(p.GEOM_MESH, vertices=verts, physicsClientId=cid)
        mass = 0.5 * (WEDGE_SCALE * s) ** 2
    body = p.createMultiBody(0.0 if static else mass, col, basePosition=[o.x, 0.0, o.y],
                             baseOrientation=_quat_y(p, o.angle), physicsClientId=cid)
    p.changeDynamics(body, -1, lateralFriction=0.9, restitution=0.0, rollingFriction=0.01 if o.shape == "ball" else 0.0,
                     linearDamping=0.2, angularDamping=0.3, physicsClientId=cid)
    return body


def simulate(objects: list[SceneObject], steps: int = 360, dt: float = 1.0 / 120.0, gravity: float = 9.81,
             velocities: list[tuple[float, float, float]] | None = None, static: list[bool] | None = None,
             observe=None) -> Scene:
    """Simulate the objects from their poses (and optional (vx, vy, spin) velocities) for a fixed number
    of steps in the x-z plane, under gravity pointing down; ``static`` objects stay where they are.
    ``observe(step, poses)``, when given, sees every object's (x, y, angle) at step 0 and after each step."""
    p, cid = _Sim.get()
    p.resetSimulation(physicsClientId=cid)
    p.setGravity(0, 0, -gravity, physicsClientId=cid)
    p.setTimeStep(dt, physicsClientId=cid)
    plane = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=cid)
    floor = p.createMultiBody(0, plane, physicsClientId=cid)
    p.changeDynamics(floor, -1, lateralFriction=0.9, restitution=0.0, physicsClientId=cid)
    bodies = [_make_body(p, cid, o, bool(static and static[k])) for k, o in enumerate(objects)]
    for b, (vx, vy, spin) in zip(bodies, velocities or []):
        p.resetBaseVelocity(b, [vx, 0.0, vy], [0.0, -spin, 0.0], physicsClientId=cid)  # CCW spin is -y
    if observe is not None:
        observe(0, [(o.x, o.y, o.angle) for o in objects])
    for step in range(steps):  # fixed step count: never hangs
        p.stepSimulation(physicsClientId=cid)
        poses = []
        for b in bodies:  # planar constraint: project the state back onto the x-z plane
            pos, q = p.getBasePositionAndOrientation(b, physicsClientId=cid)
            lin, ang = p.getBaseVelocity(b, physicsClientId=cid)
            angle = _angle_from_quat(p, q)
            p.resetBasePositionAndOrientation(b, [pos[0], 0.0, pos[2]], _quat_y(p, angle), physicsClientId=cid)
            p.resetBaseVelocity(b, [lin[0], 0.0, lin[2]], [0.0, ang[1], 0.0], physicsClientId=cid)
            poses.append((float(pos[0]), float(pos[2]), angle))
        if observe is not None:
            observe(step + 1, poses)
    p.performCollisionDetection(physicsClientId=cid)
    out, supports, speed = [], [], 0.0
    for o, b in zip(objects, bodies):
        pos, q = p.getBasePositionAndOrientation(b, physicsClientId=cid)
        speed = max(speed, float(np.linalg.norm(p.getBaseVelocity(b, physicsClientId=cid)[0])))
        out.append(replace(o, x=float(pos[0]), y=float(pos[2]), angle=_angle_from_quat(p, q)))
    for i, bi in enumerate(bodies):
        for j, bj in enumerate(bodies):
            # i rests on j when a contact normal (from j towards i) points up
            if i != j and any(c[7][2] > 0.5 for c in p.getContactPoints(bi, bj, physicsClientId=cid)):
                supports.append((i, j))
    return Scene(tuple(out), tuple(supports), settled=speed < 0.3)


def in_view(o: SceneObject, margin: float = 0.1) -> bool:
    """True when the object lies fully inside the visible area."""
    lo_x, hi_x, lo_y, hi_y = bounds(o)
    w = VIEW_WIDTH / 2 - margin
    return lo_x > -w and hi_x < w and lo_y > -0.1 and hi_y < VIEW_HEIGHT - margin


def random_objects(rng: np.random.Generator, n_objects: int, distinct_colours: bool = True) -> list[SceneObject]:
    """Sample categories and initial (non-overlapping, stacked-in-the-air) poses for n objects."""
    colours = rng.choice(len(COLOUR_NAMES), size=n_objects, replace=not distinct_colours)
    objs, y = [], 0.1
    for k in range(n_objects):
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
        ext = SIZES[size] * (WEDGE_SCALE if shape == "wedge" else 1.0)
        half = 0.75 * ext
        if k > 0 and rng.random() < 0.4:  # encourage stacking: aim near an earlier object
            x = objs[rng.integers(k)].x + rng.normal(0, 0.25)
        else:
            x = rng.uniform(-VIEW_WIDTH / 2 + half, VIEW_WIDTH / 2 - half)
        x = float(np.clip(x, -VIEW_WIDTH / 2 + half, VIEW_WIDTH / 2 - half))
        if shape == "wedge":
            angle = float(rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.05))
        elif shape == "box":
            angle = float(rng.normal(0, 0.1))
        else:
            angle = 0.0
        y += half + 0.05
        objs.append(SceneObject(shape, COLOUR_NAMES[colours[k]], size, x, y, angle))
        y += half + 0.05
    return objs


def random_scene(rng: np.random.Generator, n_objects: int | None = None, max_objects: int = 4,
                 distinct_colours: bool = True, tries: int = 6) -> Scene:
    """A random settled scene with 1..max_objects objects that fits in the view (bounded retries)."""
    scene = None
    n = int(n_objects) if n_objects is not None else int(rng.integers(1, max_objects + 1))
    for _ in range(tries):
        scene = simulate(random_objects(rng, n, distinct_colours))
        if scene.settled and all(in_view(o) for o in scene.objects):
            return scene
    logger.debug("random_scene: dropping out-of-view objects after %d tries", tries)
    keep = [k for k, o in enumerate(scene.objects) if in_view(o)]
    if not keep:  # degenerate fallback: one object resting on the floor in the middle
        return simulate([SceneObject("box", COLOUR_NAMES[0], "small", 0.0, 0.7, 0.0)])
    return scene.subset(keep)
