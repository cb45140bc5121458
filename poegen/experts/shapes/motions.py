"""Motion prompts of the shapes world: the scene a clip's simulation starts from.

One grammar rule per kind of motion, each with an example that works (``EXAMPLES``):

- off: "X rolls|slides|falls off Y": X on top of the box Y at its left edge, pushed to the right;
- drop: "X falls|drops onto Y": X let go above Y, which rests on the floor;
- push: "X rolls|slides along the floor" or "X is pushed": X on the floor, pushed to the right;
- hit: "X hits Y" or "X rolls|slides into Y": X pushed along the floor into Y, which rests on the floor;
- collide: "X and Y collide": both on the floor, pushed at each other;
- topple: "a tower of X, Y and Z topples|falls": the objects stacked bottom first, leaning, so it falls.

X, Y and Z are shapes-world phrases ("a red ball", "a small blue box"; the moving object is small and the one it
meets large unless the prompt says; two colliding ones small). A ``seed`` varies where the objects start (about
half a unit) and how fast they are pushed (+-20%), so seeds give different clips of the same motion; every
variation is simulated and kept only when every object stays in view for the whole clip (else the canonical scene,
seed None, is used).
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from .world import SIZES, WEDGE_SCALE

EXAMPLES = {
    "off": "a red ball rolls off a blue box",
    "drop": "a cyan ball falls onto a magenta box",
    "push": "a green box slides along the floor",
    "hit": "a yellow ball hits a red box",
    "collide": "a red ball and a blue ball collide",
    "topple": "a tower of a red box, a green box and a blue box topples",
}
PUSH = {"ball": 3.0, "box": 6.5, "wedge": 6.5}  # world units / s: carries X off a large box's top edge
FLOOR_PUSH = {"ball": 2.0, "box": 4.5, "wedge": 4.5}  # along the floor: moves about a unit in a default clip
VERBS = r"rolls|slides|falls|drops|moves|hits|collide|collides|topples|falls over|is pushed|pushes"
_RULES = [
    ("off", r"(?P<a>.+?)\s+(?:rolls|slides|falls)\s+off\s+(?:of\s+)?(?P<b>.+)"),
    ("drop", r"(?P<a>.+?)\s+(?:falls|drops|is dropped)\s+on(?:to|\s+to)?\s+(?P<b>.+)"),
    ("push", r"(?P<a>.+?)\s+(?:(?:rolls|slides|moves)\s+along\s+the\s+floor|is\s+pushed)"),
    ("hit", r"(?P<a>.+?)\s+(?:hits|(?:rolls|slides)\s+into)\s+(?P<b>.+)"),
    ("collide", r"(?P<a>.+?)\s+and\s+(?P<b>.+?)\s+collide"),
    ("topple", r"(?:a\s+)?(?:tower|stack)\s+of\s+(?P<list>.+?)\s+(?:topples|falls(?:\s+over)?|collapses)"),
]


def kind_of(text: str) -> Optional[str]:
    """The kind of motion a prompt asks for (a key of ``EXAMPLES``), or None when it names no motion."""
    return next((kind for kind, rule in _RULES if re.fullmatch(rf"\s*{rule}\s*", text, flags=re.IGNORECASE)), None)


def looks_like_motion(text: str) -> bool:
    """True when a prompt uses a motion verb, so that one the grammar cannot read is refused, not drawn still."""
    return re.search(rf"\b(?:{VERBS})\b", text, flags=re.IGNORECASE) is not None


def _refuse(text: str, why: str) -> ValueError:
    examples = "; ".join(f"'{e}'" for e in EXAMPLES.values())
    return ValueError(f"prompt {text[:60]!r}: {why}; motion prompts that work: {examples}")


def _one(text: str, part: str):
    from .prompt import parse_prompt

    p = parse_prompt(part)
    if len(p.objects) != 1 or p.relations or p.objects[0].shape is None or p.objects[0].colour is None:
        raise _refuse(text, f"{part.strip()!r} must be one object with a colour and a shape")
    return p.objects[0]


def _extent(o, default: str) -> float:
    return SIZES[o.size or default] * (WEDGE_SCALE if o.shape == "wedge" else 1.0)


def _entry(name, o, default, x, y, velocity=(0.0, 0.0), angle=0.0):
    return {"name": name, "shape": o.shape, "colour": o.colour, "size": o.size or default,
            "position": [round(x, 4), round(y, 4)], "velocity": [round(v, 4) for v in velocity],
            "angle": round(angle, 3)}


def _objects(kind: str, text: str, m: dict) -> list:
    """The prompt's objects, in the order the kind's layout takes them, checked for what the motion needs."""
    if kind == "topple":
        parts = [p for p in re.split(r"\s*,\s*|\s+and\s+", m["list"]) if p.strip()]
        if not 2 <= len(parts) <= 4:
            raise _refuse(text, "a tower names two to four objects, bottom first")
        objs = [_one(text, p) for p in parts]
        if any(o.shape == "ball" for o in objs[:-1]):
            raise _refuse(text, "only the top of a tower may be a ball")
        return objs
    objs = [_one(text, m["a"])] + ([_one(text, m["b"])] if "b" in m else [])
    if kind == "off" and objs[1].shape != "box":
        raise _refuse(text, f"{m['b'].strip()!r}: an object rolls off a box")
    if kind == "drop" and objs[1].shape == "ball":
        raise _refuse(text, f"{m['b'].strip()!r}: nothing comes to rest on a ball; drop it onto a box or wedge")
    return objs


def _layout(kind: str, objs: list, rng: Optional[np.random.Generator]):
    """The scene's objects for one kind; ``rng`` jitters places and pushes (None: the canonical scene)."""
    j = (lambda s: float(rng.uniform(-s, s))) if rng is not None else (lambda s: 0.0)  # noqa: E731
    speed = (lambda: float(rng.uniform(0.8, 1.2))) if rng is not None else (lambda: 1.0)  # noqa: E731
    if kind == "topple":
        x, y, out = -0.6 + j(0.4), 0.0, []
        lean = 0.4 + j(0.04)  # each object set this far right of the one below, times its size: it falls right
        for k, o in enumerate(objs):
            e = SIZES[o.size or "small"]
            out.append(_entry(f"object{k}", o, "small", x, y + e / 2 + 0.01))
            x, y = x + lean * e, y + e + 0.01
        return out
    a = objs[0]
    if kind == "push":
        return [_entry("mover", a, "small", -1.6 + j(0.4), _extent(a, "small") / 2 + 0.01,
                       (FLOOR_PUSH[a.shape] * speed(), 0.0))]
    b = objs[1]
    ea, eb = SIZES[a.size or "small"], SIZES[b.size or "large"]
    if kind == "off":
        x = -1.2 + j(0.3)
        return [_entry("support", b, "large", x, eb / 2),
                _entry("mover", a, "small", x - eb / 2 + ea / 2, eb + ea / 2 + 0.01, (PUSH[a.shape] * speed(), 0.0))]
    if kind == "drop":
        x, lift = 0.3 + j(0.4), 2.0 + j(0.3)
        return [_entry("support", b, "large", x, _extent(b, "large") / 2 * (0.9 if b.shape == "wedge" else 1.0)),
                _entry("mover", a, "small", x + j(0.15) * eb, eb + ea / 2 + lift)]
    if kind == "hit":
        return [_entry("target", b, "large", 1.2 + j(0.3), _extent(b, "large") / 2 + 0.01),
                _entry("mover", a, "small", -1.9 + j(0.3), _extent(a, "small") / 2 + 0.01,
                       (2.2 * FLOOR_PUSH[a.shape] * speed(), 0.0))]
    # collide: both default small, one from each side
    return [_entry("left", a, "small", -2.0 + j(0.3), _extent(a, "small") / 2 + 0.01,
                   (1.6 * FLOOR_PUSH[a.shape] * speed(), 0.0)),
            _entry("right", b, "small", 2.0 + j(0.3), _extent(b, "small") / 2 + 0.01,
                   (-1.6 * FLOOR_PUSH[b.shape] * speed(), 0.0))]


def motion_scene(text: str, seed: Optional[int] = None, duration: float = 4.0, tries: int = 8):
    """The scene spec (simulated ``duration`` s) of a shapes-world motion prompt, or None when the prompt names no
    motion; a prompt with a motion verb the grammar cannot read is refused with the examples that work. ``seed``
    varies the start (see the module's docstring)."""
    from ..scene import parse_scene

    kind = kind_of(text)
    if kind is None:
        if looks_like_motion(text):
            raise _refuse(text, "this motion is not one the shapes world can simulate")
        return None
    m = re.fullmatch(rf"\s*{dict(_RULES)[kind]}\s*", text, flags=re.IGNORECASE).groupdict()
    objs = _objects(kind, text, m)
    physics = {"duration": duration}
    if seed is not None:
        rng = np.random.default_rng([int(seed), 7])
        for _ in range(tries):
            spec = parse_scene({"objects": _layout(kind, objs, rng), "physics": physics})
            if stays_in_view(spec):
                return spec
    return parse_scene({"objects": _layout(kind, objs, None), "physics": physics})


def stays_in_view(spec, fps: float = 30.0) -> bool:
    """True when every object of the spec is wholly in view at every 1/fps s of its simulated duration."""
    from ..scene import simulate_scene, world_objects
    from .world import SceneObject, in_view

    base = world_objects(spec)
    ok = [True]
    step_every = max(1, round(1 / (fps * spec.physics.time_step)))
    last = round(spec.physics.duration / spec.physics.time_step)

    def observe(step, poses):
        if step % step_every == 0 or step == last:
            ok[0] = ok[0] and all(in_view(SceneObject(o.shape, o.colour, o.size, x, y, a), margin=0.0)
                                  for o, (x, y, a) in zip(base, poses))

    simulate_scene(spec, until=spec.physics.duration, observe=observe)
    return ok[0]


def benchmark_prompts(per_kind: int = 2, seed: int = 0) -> list:
    """``per_kind`` motion prompts of every kind, their colours and shapes drawn with ``seed`` (0: held out; tune
    on 1000+), each one the grammar reads and the simulation keeps in view: (kind, prompt) pairs."""
    from .world import COLOUR_NAMES

    rng = np.random.default_rng([int(seed), 41])
    out = []
    for kind in EXAMPLES:
        seen = set()
        while sum(k == kind for k, _ in out) < per_kind:
            colours = [str(c) for c in rng.choice(COLOUR_NAMES, size=3, replace=False)]
            pick = lambda shapes: str(rng.choice(shapes))  # noqa: E731
            a, b = f"a {colours[0]} {pick(['ball', 'box', 'wedge'])}", f"a {colours[1]} {pick(['ball', 'box'])}"
            text = {"off": f"{a} {pick(['rolls', 'slides', 'falls'])} off a {colours[1]} box",
                    "drop": f"{a} falls onto a {colours[1]} {pick(['box', 'wedge'])}",
                    "push": f"{a} {pick(['slides along the floor', 'is pushed'])}",
                    "hit": f"{a} hits {b}",
                    "collide": f"{a} and {b} collide",
                    "topple": f"a tower of a {colours[0]} box, a {colours[1]} box and a {colours[2]} "
                              f"{pick(['box', 'ball'])} topples"}[kind]
            if text not in seen:
                seen.add(text)
                out.append((kind, text))
    return out
