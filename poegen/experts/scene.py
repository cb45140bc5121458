"""Scene specs: objects, physics, camera, prompt and constraints, loaded from YAML or JSON and validated.

Every error names the field (``objects[1].colour``) and says how to fix it. Coordinates are the
shapes world's: x to the right (0 at the view's centre), y up (0 on the floor), in world units;
angles in degrees, counter-clockwise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..validation import check_keys, read_file

log = logging.getLogger("poegen.experts.scene")

MAX_SIM_STEPS = 20_000


class SceneError(ValueError):
    """A malformed scene spec; the message names the field and the fix."""


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    shape: str
    colour: str
    size: str = "small"
    position: Tuple[float, float] = (0.0, 1.0)
    angle: float = 0.0                       # degrees, counter-clockwise
    velocity: Tuple[float, float] = (0.0, 0.0)
    spin: float = 0.0                        # degrees per second, counter-clockwise
    new: bool = False                        # editing: an object to add; the others are already in the image


@dataclass(frozen=True)
class PhysicsSpec:
    gravity: float = 9.81                    # downwards, world units / s^2
    duration: float = 3.0                    # seconds simulated
    time_step: float = 1.0 / 120.0

    @property
    def steps(self) -> int:
        return max(1, round(self.duration / self.time_step))


@dataclass(frozen=True)
class CameraSpec:
    resolution: int = 32                     # square image, pixels; the view itself is the world's fixed one


@dataclass(frozen=True)
class ConstraintSpec:
    type: str                                # "layout" (soft mask agreement) or "hard" (-inf beyond tolerance)
    weight: float = 1.0
    tolerance: float = 2.0                   # pixels, for "hard"


@dataclass(frozen=True)
class SceneSpec:
    objects: Tuple[ObjectSpec, ...]
    physics: PhysicsSpec = PhysicsSpec()
    camera: CameraSpec = CameraSpec()
    prompt: str = ""
    constraints: Tuple[ConstraintSpec, ...] = field(default=(ConstraintSpec("layout"),))


def _keys(d: Any, where: str, allowed: Tuple[str, ...], required: Tuple[str, ...] = ()) -> Dict:
    try:
        return check_keys(d, where, allowed, required)
    except ValueError as e:
        raise SceneError(str(e)) from None


def _number(v: Any, where: str, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SceneError(f"{where}: expected a number, got {v!r}")
    if v < lo or v > hi or (open_lo and v == lo):
        raise SceneError(f"{where}: {v} is outside {'(' if open_lo else '['}{lo}, {hi}]")
    return float(v)


def _pair(v: Any, where: str) -> Tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise SceneError(f"{where}: expected [x, y], got {v!r}")
    return _number(v[0], f"{where}[0]"), _number(v[1], f"{where}[1]")


def _choice(v: Any, where: str, allowed: Tuple[str, ...]) -> str:
    if v not in allowed:
        raise SceneError(f"{where}: {v!r} is not one of {', '.join(allowed)}")
    return v


def parse_scene(data: Dict) -> SceneSpec:
    """A validated SceneSpec from a parsed YAML/JSON mapping."""
    from .shapes.world import COLOUR_NAMES, SHAPES, SIZE_NAMES

    _keys(data, "scene", ("objects", "physics", "camera", "prompt", "constraints"), ("objects",))
    raw = data["objects"]
    if not isinstance(raw, list) or not raw:
        raise SceneError("objects: expected a non-empty list of objects")
    objects, names = [], set()
    for i, o in enumerate(raw):
        w = f"objects[{i}]"
        _keys(o, w, ("name", "shape", "colour", "size", "position", "angle", "velocity", "spin", "new"), ("shape", "colour"))
        if not isinstance(o.get("new", False), bool):
            raise SceneError(f"{w}.new: expected true or false, got {o['new']!r}")
        name = str(o.get("name", f"{o.get('colour')} {o.get('shape')}"))
        if name in names:
            raise SceneError(f"{w}.name: {name!r} is used twice; give each object its own name")
        names.add(name)
        objects.append(ObjectSpec(
            name, _choice(o["shape"], f"{w}.shape", SHAPES), _choice(o["colour"], f"{w}.colour", COLOUR_NAMES),
            _choice(o.get("size", "small"), f"{w}.size", SIZE_NAMES), _pair(o.get("position", [0.0, 1.0]), f"{w}.position"),
            _number(o.get("angle", 0.0), f"{w}.angle"), _pair(o.get("velocity", [0.0, 0.0]), f"{w}.velocity"),
            _number(o.get("spin", 0.0), f"{w}.spin"), o.get("new", False)))
    ph = _keys(data.get("physics", {}), "physics", ("gravity", "duration", "time_step"))
    physics = PhysicsSpec(_number(ph.get("gravity", 9.81), "physics.gravity", 0, 100),
                          _number(ph.get("duration", 3.0), "physics.duration", 0, 60, open_lo=True),
                          _number(ph.get("time_step", 1 / 120), "physics.time_step", 0, 0.05, open_lo=True))
    if physics.steps > MAX_SIM_STEPS:
        raise SceneError(f"physics: duration / time_step = {physics.steps} steps, more than {MAX_SIM_STEPS}; "
                         "shorten the duration or raise the time step")
    cam = _keys(data.get("camera", {}), "camera", ("resolution",))
    resolution = _number(cam.get("resolution", 32), "camera.resolution", 8, 512)
    if resolution != int(resolution):  # not truncated silently
        raise SceneError(f"camera.resolution: {resolution} is not a whole number of pixels")
    camera = CameraSpec(int(resolution))
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise SceneError(f"prompt: expected text, got {prompt!r}")
    constraints, raw = [], data.get("constraints", [{"type": "layout"}])
    if not isinstance(raw, list):  # a mapping would be iterated by its keys
        raise SceneError(f"constraints: expected a list of {{type, weight, tolerance}} mappings (or []), got "
                         f"{type(raw).__name__}; write constraints: [{{type: hard}}]")
    for i, c in enumerate(raw):
        w = f"constraints[{i}]"
        _keys(c, w, ("type", "weight", "tolerance"), ("type",))
        constraints.append(ConstraintSpec(_choice(c["type"], f"{w}.type", ("layout", "hard")),
                                          _number(c.get("weight", 1.0), f"{w}.weight", 0),
                                          _number(c.get("tolerance", 2.0), f"{w}.tolerance", 0, open_lo=True)))
    spec = SceneSpec(tuple(objects), physics, camera, prompt, tuple(constraints))
    _check_geometry(spec)
    return spec


def load_scene(path: str | Path) -> SceneSpec:
    """Load and validate a scene spec from a .yaml/.yml or .json file."""
    path = Path(path)
    try:
        data = read_file(path, "scene")
    except (ValueError, FileNotFoundError) as e:
        raise SceneError(str(e)) from None
    try:
        return parse_scene(data)
    except SceneError as e:
        raise SceneError(f"{path}: {e}") from None


def world_objects(spec: SceneSpec):
    """The shapes world's SceneObjects at the spec's initial poses."""
    from .shapes.world import SceneObject

    return [SceneObject(o.shape, o.colour, o.size, o.position[0], o.position[1], math.radians(o.angle))
            for o in spec.objects]


def _polygon(o):
    """Convex outline (K, 2) of a world object; balls as 24-gons."""
    import numpy as np

    from .shapes.world import world_outline
    if o.shape != "ball":
        return world_outline(o)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return np.stack([o.x + o.extent / 2 * np.cos(t), o.y + o.extent / 2 * np.sin(t)], 1)


def _overlap(a, b, tol: float = 1e-3) -> bool:
    """Separating-axis test of two convex polygons (touching is not overlapping)."""
    import numpy as np
    for poly in (a, b):
        edges = np.roll(poly, -1, 0) - poly
        for nx, ny in np.stack([-edges[:, 1], edges[:, 0]], 1):
            pa, pb = a @ (nx, ny), b @ (nx, ny)
            n = math.hypot(nx, ny)
            if pa.max() <= pb.min() + tol * n or pb.max() <= pa.min() + tol * n:
                return False
    return True


def _check_geometry(spec: SceneSpec):
    from .shapes.world import in_view
    objs = world_objects(spec)
    polys = [_polygon(o) for o in objs]
    for i in range(len(objs)):
        if polys[i][:, 1].min() < -1e-3:
            raise SceneError(f"objects[{i}].position: {spec.objects[i].name!r} starts below the floor (y < 0); raise y")
        for j in range(i):
            if _overlap(polys[i], polys[j]):
                new = spec.objects[i].new or spec.objects[j].new
                raise SceneError(f"objects[{j}] {spec.objects[j].name!r} and objects[{i}] {spec.objects[i].name!r} "
                                 + ("overlap: a new object may not start inside one already in the image; raise it"
                                    if new else "overlap at their initial positions; move one of them"))
        if not in_view(objs[i], margin=0.0):
            raise SceneError(f"objects[{i}].position: {spec.objects[i].name!r} starts outside the camera's view "
                             "(x within about +-3.2, y within 0..6); move it inside")


def simulate_scene(spec: SceneSpec, until: Optional[float] = None, observe=None):
    """Simulate the spec (to ``until`` seconds, default the full duration) and return the final shapes Scene.
    Objects that leave the view or do not settle are logged as warnings. ``observe(step, poses)`` sees the
    objects' (x, y, angle) at every time step (``shapes.world.simulate``)."""
    from .shapes.world import in_view, simulate

    duration = spec.physics.duration if until is None else min(until, spec.physics.duration)
    steps = max(0, round(duration / spec.physics.time_step))
    vel = [(o.velocity[0], o.velocity[1], math.radians(o.spin)) for o in spec.objects]
    editing = any(o.new for o in spec.objects)  # an edit: the objects already in the image stay put
    scene = simulate(world_objects(spec), steps=steps, dt=spec.physics.time_step, gravity=spec.physics.gravity,
                     velocities=vel, static=[not o.new for o in spec.objects] if editing else None, observe=observe)
    if until is None and not scene.settled:
        log.warning("scene did not settle within %.1f s of simulation; the last state is used", duration)
    for o, final in zip(spec.objects, scene.objects):
        if not in_view(final, margin=0.0):
            log.warning("object %r ends outside the camera's view", o.name)
    return scene


def refuse_new(spec, path):
    """A scene to generate (no image) may not mark objects ``new``: that keeps every other object where the spec
    puts it, floating or not, as an edit must (the objects already in its image stay put)."""
    new = [i for i, o in enumerate(spec.objects) if o.new]
    if new:
        raise ValueError(f"{path}: objects[{new[0]}].new: new: true marks an object to add to an image (poegen edit "
                         "IMAGE --scene ...); to simulate every object, leave new out")
