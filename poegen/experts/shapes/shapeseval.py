"""ShapesEval: benchmark prompts of the shapes world, each drawn with a simulated scene that satisfies it.

Two tiers of categories. Tier A follows GenEval's six (one object, two objects, counting, colours, position,
colour attribution) in the shapes world's words; tier B asks what composition is for: four objects with a stack,
three objects of one shape told apart by colour, size binding beside a third object, three chained relations,
absences beside two or three objects, and a counted pair beside a stack. A category's prompt is built
from random words, then its objects are dropped where ``placement`` puts them and simulated with pybullet; the
prompt is kept only when the settled scene satisfies it by the simulation's own truth (every object in view,
exactly the asked objects, each relation and absence holding with a margin) and it is readable (no object
resting on two others, objects of one colour apart), so every prompt is physically possible and comes with a
witness scene. The witnesses also validate the checker (``near_miss``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .prompt import OPPOSITE, Prompt, parse_prompt, placement
from .render import pixel_to_world
from .truth import THRESHOLD, holds
from .vocab import NUMBERS, PLURAL_OF, Phrase
from .world import (COLOUR_NAMES, SHAPES, SIZE_NAMES, SIZES, WEDGE_SCALE, Scene, SceneObject, bounds, in_view,
                    simulate)

MARGIN = 0.5  # world units beyond a relation's threshold a witness keeps (the checker reads pixels, 5 per unit)
GAP = 0.4  # world units (2 pixels) between a witness's objects of one colour, so their pixels never merge


@dataclass(frozen=True)
class Item:
    """One benchmark prompt: its tier, category, text, parse and the simulated scene that satisfies it."""

    tier: str
    category: str
    prompt: str
    parsed: Prompt
    scene: Scene


def _pick(rng, values, k=1, exclude=()):
    """k distinct values not in ``exclude`` (none when fewer are left)."""
    pool = [v for v in values if v not in exclude]
    if len(pool) < k:
        return []
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def _rel(rng, rels=("left of", "right of", "on")) -> str:
    return rels[rng.integers(len(rels))]


def _sized(rng, shape: str) -> str:
    """The shape, with a size half of the time."""
    return f"{_pick(rng, SIZE_NAMES)[0]} {shape}" if rng.random() < 0.5 else shape


def _single(rng):
    return f"a {_sized(rng, _pick(rng, SHAPES)[0])}"


def _two(rng):
    a, b = _pick(rng, SHAPES, 2)
    return f"a {_sized(rng, a)} and a {_sized(rng, b)}"


def _counting(rng):
    n = int(rng.integers(2, 5))
    return f"{NUMBERS[n]} {PLURAL_OF[_pick(rng, SHAPES)[0]]}"


def _colours(rng):
    return f"a {_pick(rng, COLOUR_NAMES)[0]} {_pick(rng, SHAPES)[0]}"


def _position(rng):
    a, b = _pick(rng, SHAPES, 2)
    return f"a {a} {_rel(rng, ('left of', 'right of', 'above', 'below'))} a {b}"


def _binding(rng):
    (a, b), (c, d) = _pick(rng, SHAPES, 2), _pick(rng, COLOUR_NAMES, 2)
    return f"a {c} {a} and a {d} {b}"


def _objects(rng):
    """Four coloured objects, the first standing on the second; half of the time the other two are related too."""
    cs = _pick(rng, COLOUR_NAMES, 4)
    a, b, c, d = (f"a {col} {_pick(rng, SHAPES)[0]}" for col in cs)
    if rng.random() < 0.5:
        return f"{a} on {b}, {c} {_rel(rng, ('left of', 'right of'))} {d}"
    return f"{a} on {b}, {c} and {d}"


def _same_shape(rng):
    """Three objects of one shape told apart by colour alone, two of them related; half of the time a fourth of
    another shape."""
    shape, cs = _pick(rng, SHAPES)[0], _pick(rng, COLOUR_NAMES, 4)
    first = f"a {cs[0]} {shape} {_rel(rng)} a {cs[1]} {shape}"
    if rng.random() < 0.5:
        return f"{first} and a {cs[2]} {shape}"
    return f"{first}, a {cs[2]} {shape} and a {cs[3]} {_pick(rng, SHAPES, exclude=(shape,))[0]}"


def _size(rng):
    """Two sized, coloured objects related (half of the time of one shape), and a third sized object."""
    sizes = list(_pick(rng, SIZE_NAMES, 2))
    a, b = _pick(rng, SHAPES, 2) if rng.random() < 0.5 else [_pick(rng, SHAPES)[0]] * 2
    cs = _pick(rng, COLOUR_NAMES, 3)
    third = f"a {_pick(rng, SIZE_NAMES)[0]} {cs[2]} {_pick(rng, SHAPES)[0]}"
    return f"a {sizes[0]} {cs[0]} {a} {_rel(rng)} a {sizes[1]} {cs[1]} {b} and {third}"


def _chain(rng):
    """Three relations chained over four coloured objects."""
    cs = _pick(rng, COLOUR_NAMES, 4)
    names = [f"{c} {_pick(rng, SHAPES)[0]}" for c in cs]
    rels = [_rel(rng) for _ in range(3)]
    if rng.random() < 0.5:
        return f"a {names[0]} " + " ".join(f"{r} a {b}" for r, b in zip(rels, names[1:]))
    return f"a {names[0]} {rels[0]} a {names[1]}" + "".join(
        f" and the {a} {r} a {b}" for a, r, b in zip(names[1:-1], rels[1:], names[2:]))


def _negation(rng):
    """Two or three present objects and an absence: of a shape (the present ones coloured) or of a colour (the
    present ones named by shape only, so each must avoid it)."""
    n = int(rng.integers(2, 4))
    shapes = [_pick(rng, SHAPES)[0] for _ in range(n)]
    cs = _pick(rng, COLOUR_NAMES, n + 1)
    if rng.random() < 0.5:  # an absent shape
        gone = _pick(rng, SHAPES, exclude=shapes)
        present = [f"a {c} {s}" for c, s in zip(cs, shapes)]
        if not gone:  # every shape asked: absent is one shape in one colour
            return ", ".join(present[:-1]) + f" and {present[-1]}, no {cs[n]} {shapes[0]}"
        return ", ".join(present) + f" and no {PLURAL_OF[gone[0]] if rng.random() < 0.5 else gone[0]}"
    return ", ".join(f"a {s}" for s in _pick(rng, SHAPES, n)) + f", no {cs[n]} objects"


def _counts(rng):
    """Four objects: two of one shape and colour, and a stack of two others (on a 32-pixel canvas four objects
    fit only when two of them stack, and two of one colour only when they stand apart)."""
    shapes, cs = [_pick(rng, SHAPES)[0] for _ in range(3)], _pick(rng, COLOUR_NAMES, 3)
    pair, stack = f"two {cs[0]} {PLURAL_OF[shapes[0]]}", f"a {cs[1]} {shapes[1]} on a {cs[2]} {shapes[2]}"
    return f"{pair} and {stack}" if rng.random() < 0.5 else f"{stack} and {pair}"


TIERS: Dict[str, Dict[str, Callable]] = {
    "A": {"single": _single, "two": _two, "counting": _counting, "colours": _colours, "position": _position,
          "binding": _binding},
    "B": {"objects": _objects, "same_shape": _same_shape, "size": _size, "chain": _chain, "negation": _negation,
          "counts": _counts},
}


def _drop(p: Prompt, rng, small: bool = False) -> List[SceneObject]:
    """Objects for the prompt's phrases (unnamed attributes drawn at random, avoiding the absences and, for colours,
    the colours already drawn; an unnamed size is small where ``small``), placed over
    where ``placement`` puts them (a random floor spot when it gives none) and lifted to fall into place."""
    places = placement(p)
    objs, lift = [], []
    for k, ph in enumerate(p.objects):
        used = {o.colour for o in objs}  # an unnamed colour differs from the objects' so far where it can
        used = used if len(used) < len(COLOUR_NAMES) else ()
        for _ in range(20):
            o = SceneObject(ph.shape or _pick(rng, SHAPES)[0], ph.colour or _pick(rng, COLOUR_NAMES, exclude=used)[0],
                            ph.size or ("small" if small else _pick(rng, SIZE_NAMES)[0]))
            if not any(a.matches(o) for a in p.absent):
                break
        if places is None:
            x, y = float(rng.uniform(-2.0, 2.0)), 0.0
        else:
            x, y = (float(v) for v in pixel_to_world(*places[k]))
            x += float(rng.normal(0, 0.1))  # off centre: a stack kept must be stable, not balanced
        half = 0.75 * SIZES[o.size] * (WEDGE_SCALE if o.shape == "wedge" else 1.0)
        angle = float(rng.choice([0.0, math.pi / 2])) if o.shape == "wedge" else 0.0
        objs.append(replace(o, x=x, y=y, angle=angle))
        lift.append(half)
    # stack bottom-up: each object starts above the top of the one below it
    order = sorted(range(len(objs)), key=lambda k: objs[k].y)
    tops: List[Tuple[float, float]] = []  # (x, top) of the objects placed so far
    out = list(objs)
    for k in order:
        o = objs[k]
        below = max((t for x, t in tops if abs(x - o.x) < 1.5), default=0.0)
        out[k] = replace(o, y=below + lift[k] + 0.05)
        tops.append((o.x, below + 2 * lift[k] + 0.1))
    return out


def satisfied(p: Prompt, scene: Scene, margin: float = MARGIN) -> bool:
    """Whether a simulated scene is exactly the prompt's (its objects one to one, absences absent) with every
    relation holding by ``margin`` beyond its threshold (so no reading of pixels can call it either way)."""
    from .checker import one_to_one

    objs = scene.objects
    if not one_to_one(p.objects, list(objs)) or any(a.matches(o) for a in p.absent for o in objs):
        return False
    # readable: no object rests on two others (a tangle), and objects of one colour stand apart
    uppers = [i for i, _ in scene.supports]
    if len(set(uppers)) < len(uppers) or any(
            a.colour == b.colour and not _apart(a, b) for k, a in enumerate(objs) for b in objs[k + 1:]):
        return False
    index = {id(o): i for i, o in enumerate(objs)}

    def on(a, b):
        return scene.on(index[id(a)], index[id(b)])

    def holds_clearly(rel, a, b):
        if rel in ("left", "right"):
            return holds(rel, a, b, on) and abs(a.x - b.x) > THRESHOLD[rel] + margin
        if rel in ("above", "below"):
            return holds(rel, a, b, on) and abs(a.y - b.y) > THRESHOLD[rel] + margin
        return holds(rel, a, b, on) and abs(a.x - b.x) < 0.5  # 'on': resting squarely, not leaning
    for i, rel, j in p.relations:
        if not any(holds_clearly(rel, a, b) for a in objs for b in objs
                   if a is not b and p.objects[i].matches(a) and p.objects[j].matches(b)):
            return False
    return True


def _apart(a: SceneObject, b: SceneObject, gap: float = GAP) -> bool:
    """Whether the two objects' bounding boxes are ``gap`` apart along x or along y."""
    ax0, ax1, ay0, ay1 = bounds(a)
    bx0, bx1, by0, by1 = bounds(b)
    return max(bx0 - ax1, ax0 - bx1) >= gap or max(by0 - ay1, ay0 - by1) >= gap


def make(tier: str, category: str, rng: np.random.Generator, tries: int = 200) -> Item:
    """One item of a category: random prompts are drawn until one's simulated scene satisfies it."""
    build = TIERS[tier][category]
    for _ in range(tries):
        text = build(rng)
        p = parse_prompt(text)
        scene = simulate(_drop(p, rng, small=tier == "B" and len(p.objects) >= 4))
        if scene.settled and all(in_view(o) for o in scene.objects) and satisfied(p, scene):
            return Item(tier, category, text, p, scene)
    raise RuntimeError(f"ShapesEval {tier}/{category}: no satisfiable prompt in {tries} tries")


def items(tiers: str = "AB", per_category: int = 8, seed: int = 0,
          categories: Optional[List[str]] = None) -> List[Item]:
    """``per_category`` distinct items of every category of ``tiers`` (or only ``categories``), reproducible from
    ``seed``: each category draws from its own stream, so adding one changes no other."""
    out = []
    for tier in tiers:
        for c, name in enumerate(TIERS[tier]):
            if categories and name not in categories:
                continue
            rng, seen = np.random.default_rng([seed, ord(tier), c]), set()
            for _ in range(50 * per_category):
                if len(seen) == per_category:
                    break
                item = make(tier, name, rng)
                if item.prompt not in seen:
                    seen.add(item.prompt)
                    out.append(item)
            if len(seen) < per_category:
                raise ValueError(f"ShapesEval {tier}/{name} has fewer than {per_category} distinct prompts")
    return out


def near_miss(item: Item, rng: np.random.Generator) -> Prompt:
    """The item's prompt with exactly one atom made false of its witness scene: an object's colour, shape or size
    changed, a count moved by one, a relation reversed, or an absence turned into one of the scene's objects."""
    p = item.parsed
    kinds = ["object"] + (["relation"] if p.relations else []) + (["absence"] if p.absent else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "relation":
        k = int(rng.integers(len(p.relations)))
        i, rel, j = p.relations[k]
        new = (i, OPPOSITE[rel], j) if rel in OPPOSITE else (j, rel, i)  # a stack read upside down
        return Prompt(p.objects, p.relations[:k] + [new] + p.relations[k + 1:], p.absent)
    if kind == "absence":
        o = item.scene.objects[rng.integers(len(item.scene.objects))]
        return Prompt(p.objects, p.relations, [Phrase(o.colour, o.shape, None)])
    k = int(rng.integers(len(p.objects)))
    ph = p.objects[k]
    others = [o for m, o in enumerate(p.objects) if m != k]
    options = [replace(ph, colour=c) for c in COLOUR_NAMES if c != ph.colour] + \
              [replace(ph, shape=s) for s in SHAPES if s != ph.shape] + \
              ([replace(ph, size=s) for s in SIZE_NAMES if s != ph.size] if ph.size else [])
    options = [o for o in options if not any(o.matches(s) for s in item.scene.objects)]
    if rng.random() < 0.3 or not options:  # a count off by one: one object fewer, or one more
        if len(p.objects) > 1 and not any(i == k or j == k for i, _, j in p.relations) and rng.random() < 0.5:
            return Prompt(others, [(i - (i > k), r, j - (j > k)) for i, r, j in p.relations], p.absent)
        return Prompt(p.objects + [ph], p.relations, p.absent)
    objects = list(p.objects)
    objects[k] = options[rng.integers(len(options))]
    return Prompt(objects, p.relations, p.absent)
