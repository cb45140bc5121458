"""Random questions about a simulated scene with a wanted answer (yes or no), for training the scorer
(``scripts/train_shapes_vlm.py``): balanced over kinds, phrased at random, positional ones away from the
relation's margin band."""

from __future__ import annotations

import numpy as np

from .questions import RELATION_WORDS, parse_question
from .truth import THRESHOLD, answer_scene, holds
from .vocab import NUMBERS, PLURAL_OF
from .world import COLOUR_NAMES, SHAPES, SIZE_NAMES


def _describe(o, rng, p_size=0.25, p_shape_only=0.2) -> str:
    """A random referring phrase for object o (sometimes with size, sometimes shape only)."""
    if rng.random() < p_shape_only:
        return o.shape
    return f"{o.size} {o.colour} {o.shape}" if rng.random() < p_size else f"{o.colour} {o.shape}"


def _random_phrase(rng) -> str:
    """A random phrase of the vocabulary, usually colour + shape."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    r = rng.random()
    if r < 0.15:
        return shape
    if r < 0.35:
        return f"{SIZE_NAMES[rng.integers(len(SIZE_NAMES))]} {colour} {shape}"
    return f"{colour} {shape}"


def random_question(scene, rng: np.random.Generator, want: bool, tries: int = 60) -> str | None:
    """A random question about `scene` whose ground-truth answer is `want` (None if none found)."""
    objs = scene.objects
    for _ in range(tries):
        kind = rng.choice(["exists", "relation", "relation", "relation", "count"])
        if kind == "exists":
            desc = _describe(objs[rng.integers(len(objs))], rng) if want or rng.random() < 0.3 else _random_phrase(rng)
            q = f"is there a {desc}"
        elif kind == "count":
            shape = SHAPES[rng.integers(len(SHAPES))]
            true_n = sum(o.shape == shape for o in objs)
            if want and true_n >= len(NUMBERS):  # five or more: only 'no' questions can be asked
                continue
            n = true_n if want else int(np.clip(true_n + rng.choice([-2, -1, 1, 1, 2]), 0, len(NUMBERS) - 1))
            if not want and n == true_n:  # clipped onto the truth: draw again
                continue
            q = f"are there {NUMBERS[n]} {PLURAL_OF[shape]}"
        else:
            if len(objs) >= 2 and rng.random() < 0.85:
                i, j = (int(v) for v in rng.choice(len(objs), size=2, replace=False))
                if scene.supports and rng.random() < 0.4:
                    i, j = scene.supports[rng.integers(len(scene.supports))]
                    if rng.random() < 0.3:
                        i, j = j, i
                on = lambda a, b: scene.on(objs.index(a), objs.index(b))  # noqa: E731
                rels = [r for r in RELATION_WORDS if holds(r, objs[i], objs[j], on) == want]
                if not rels:
                    continue
                rel = "on" if "on" in rels and rng.random() < 0.6 else str(rng.choice(rels))
                da, db = _describe(objs[i], rng), _describe(objs[j], rng)
            else:
                rel = str(rng.choice(RELATION_WORDS))
                da, db = _random_phrase(rng), _random_phrase(rng)
            q = f"is the {da} {rel} of the {db}" if rel in ("left", "right") else f"is the {da} {rel} the {db}"
            if rel != "on" and not _unambiguous(q, scene):
                continue
        if answer_scene(q, scene) == want:
            return q
    return None


def _unambiguous(q: str, scene) -> bool:
    """False when a positional question has a pair within the relation's margin band (hard to call)."""
    qq = parse_question(q)
    for a in scene.objects:
        for b in scene.objects:
            if a is not b and qq.a.matches(a) and qq.b.matches(b):
                d = a.x - b.x if qq.rel in ("left", "right") else a.y - b.y
                margin = THRESHOLD.get(qq.rel, 0.5)  # 'on' (never asked here) as the vertical ones
                if margin - 0.25 < abs(d) < margin + 0.25:
                    return False
    return True
