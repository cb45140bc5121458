"""The truth of a shapes-world question: positional relations with their margins (``THRESHOLD``), and the answer
for objects with world coordinates, for a simulated ``Scene`` (support from the physics contacts) or for the
checker's detections. The benchmark (``shapeseval``), the scorer's training data and the checker's verdicts all
answer by these rules.

A relation holds when some object matching the first phrase stands in it to a different object matching the second.
"""

from __future__ import annotations

from .questions import RELATION_WORDS, Query, parse_question

THRESHOLD = {"left": 0.3, "right": 0.3, "above": 0.5, "below": 0.5}  # world units a positional relation needs


def holds(rel: str, a, b, on) -> bool:
    """Spatial relation between two objects with world x, y (on: callable on the pair)."""
    if rel == "left":
        return a.x < b.x - THRESHOLD[rel]
    if rel == "right":
        return a.x > b.x + THRESHOLD[rel]
    if rel == "on":
        return bool(on(a, b))
    if rel == "above":
        return a.y > b.y + THRESHOLD[rel]
    if rel == "below":
        return a.y < b.y - THRESHOLD[rel]
    raise ValueError(f"unknown relation {rel!r}; relations: {RELATION_WORDS}")


def answer(query: Query | str, objects, on) -> bool:
    """Ground-truth answer for objects (colour, shape, size, x, y) and an `on(a, b)` predicate."""
    q = parse_question(query) if isinstance(query, str) else query
    if q.kind == "exists":
        return any(q.a.matches(o) for o in objects)
    if q.kind == "count":
        return sum(q.a.matches(o) for o in objects) == q.n
    return any(holds(q.rel, a, b, on) for a in objects for b in objects
               if a is not b and q.a.matches(a) and q.b.matches(b))


def answer_scene(query: Query | str, scene) -> bool:
    """Ground-truth answer for a simulated Scene (support relation from the physics contacts)."""
    objs = list(scene.objects)
    index = {id(o): i for i, o in enumerate(objs)}
    return answer(query, objs, lambda a, b: scene.on(index[id(a)], index[id(b)]))


def answer_detections(query: Query | str, dets) -> bool:
    """Answer from checker detections ('on' = touching from above, see Detection.rests_on)."""
    return answer(query, list(dets), lambda a, b: a.rests_on(b))
