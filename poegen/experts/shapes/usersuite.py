"""The user suite: inputs written by hand the way a new user would try the shapes world, on every route, judged by
the checker with ``poegen eval user``.

NEVER TUNE ON THESE INPUTS. The suite measures what a user gets; a default, threshold or schedule chosen by looking
at its results would make its figures meaningless. Tune on ShapesEval's tuning seeds (``--prompt-seed 1000``) and
other sets of your own; run this suite only to report.

None of these inputs comes from ShapesEval's generator (``shapeseval.py``). Each is a dict:

- ``id``: unique, ``route/name``;
- ``route``: ``prompt`` (objects, counts, sizes, colours, absences), ``relation`` ("left of", "right of", "on",
  "above", "below", chains), ``layout`` (a layout spec: phrases with boxes), ``scene`` (a scene spec simulated by
  pybullet), ``clip`` (a motion prompt sampled as a clip), ``edit`` (an object added to a rendered image, by a
  scene that pybullet drops it into, or by a mask);
- ``target``: the prompt (prompt, relation, clip), or the spec as a mapping (layout, scene); an edit's ``scene``
  lists the objects already in the image and the new ones (``new: true``), the image being rendered from the old
  ones; a mask edit gives ``objects`` (the image's), ``prompt`` and ``mask`` (a rectangle [col0, row0, col1, row1]
  in pixels of the 32x32 image, inclusive, that may change);
- ``expect``: what the checker should see, in words (a layout box floating above the floor is read with the shapes
  world's gravity, ``specs.settle``: the object rests under the box's horizontal span) (the checker itself reads the target: the prompt's objects,
  relations and absences and nothing else; a layout's objects inside their boxes; a scene's visible objects within
  2 px of their simulated places; a clip's objects in view at every frame; an edit's old objects kept and the new
  one placed);
- ``source`` (optional): the repository file the target copies (the copy is kept equal to it by the tests);
- ``check`` (optional): a different prompt for the checker to judge the image against (none in the suite; tests
  use it to make a miss on purpose).

This module holds data only."""
from __future__ import annotations

from typing import Dict, List

ROUTES = ("prompt", "relation", "layout", "scene", "clip", "edit")

FLOOR = 0.9375  # the floor line, as a fraction of the image height (y down): an object resting on the floor ends here


def _p(name: str, text: str, expect: str) -> dict:
    return {"id": f"prompt/{name}", "route": "prompt", "target": text, "expect": expect}


def _r(name: str, text: str, expect: str) -> dict:
    return {"id": f"relation/{name}", "route": "relation", "target": text, "expect": expect}


def _layout(name: str, prompt: str, boxes, expect: str, source: str = None, relations=None) -> dict:
    spec = {"prompt": prompt, "objects": [{"phrase": p, "box": list(b)} for p, b in boxes]}
    if relations:
        spec["relations"] = [list(r) for r in relations]
    out = {"id": f"layout/{name}", "route": "layout", "target": spec, "expect": expect}
    return {**out, "source": source} if source else out


def _obj(name, shape, colour, size, x, y, **more) -> dict:
    return {"name": name, "shape": shape, "colour": colour, "size": size, "position": [x, y], **more}


def _scene(name: str, prompt: str, objects, duration: float, expect: str, source: str = None) -> dict:
    spec = {"prompt": prompt, "objects": list(objects), "physics": {"duration": duration}}
    out = {"id": f"scene/{name}", "route": "scene", "target": spec, "expect": expect}
    return {**out, "source": source} if source else out


def _clip(name: str, text: str, expect: str) -> dict:
    return {"id": f"clip/{name}", "route": "clip", "target": text, "expect": expect}


def _edit(name: str, objects, expect: str, duration: float = 3.0, source: str = None) -> dict:
    out = {"id": f"edit/{name}", "route": "edit", "target": {"scene": {"objects": list(objects),
                                                                       "physics": {"duration": duration}}},
           "expect": expect}
    return {**out, "source": source} if source else out


def _mask_edit(name: str, objects, prompt: str, mask, expect: str) -> dict:
    return {"id": f"edit/{name}", "route": "edit",
            "target": {"objects": list(objects), "prompt": prompt, "mask": list(mask)}, "expect": expect}


PROMPTS = [
    # one object
    _p("red_ball", "a red ball", "one red ball, nothing else"),
    _p("blue_box", "a blue box", "one blue box"),
    _p("green_wedge", "a green wedge", "one green wedge"),
    _p("yellow_box", "a yellow box", "one yellow box"),
    _p("magenta_ball", "a magenta ball", "one magenta ball"),
    _p("cyan_wedge", "a cyan wedge", "one cyan wedge"),
    # sizes
    _p("large_red_box", "a large red box", "one large red box"),
    _p("small_blue_ball", "a small blue ball", "one small blue ball"),
    _p("large_and_small_yellow", "a large yellow box and a small yellow ball", "a large yellow box, a small yellow ball"),
    # pairs and colours
    _p("red_ball_blue_box", "a red ball and a blue box", "a red ball and a blue box"),
    _p("green_wedge_magenta_ball", "a green wedge and a magenta ball", "a green wedge and a magenta ball"),
    _p("cyan_box_yellow_wedge", "a cyan box and a yellow wedge", "a cyan box and a yellow wedge"),
    _p("red_box_green_box", "a red box and a green box", "two boxes, one red and one green"),
    _p("three_colours", "a blue ball, a yellow box and a red wedge", "three objects, one of each colour and shape"),
    # counts
    _p("two_red_balls", "two red balls", "exactly two balls, both red"),
    _p("three_boxes", "three boxes", "three boxes of any colours, nothing else"),
    _p("two_wedges_one_ball", "two green wedges and a blue ball", "two green wedges and a blue ball"),
    _p("four_balls", "four balls", "four balls"),
    # absences
    _p("wedge_no_ball", "a yellow wedge and no ball", "a yellow wedge and no ball at all"),
    _p("box_no_red", "a box, no red objects", "a box that is not red, nothing red"),
    _p("two_balls_no_box", "two balls and no box", "two balls, no box"),
]

RELATIONS = [
    _r("ball_left_of_box", "a red ball left of a blue box", "the red ball's centre left of the blue box's"),
    _r("wedge_right_of_ball", "a green wedge right of a yellow ball", "the wedge right of the ball"),
    _r("ball_on_box", "a red ball on a blue box", "the ball resting on top of the box"),
    _r("small_box_on_large_box", "a small cyan box on a large magenta box", "a small box on a large box"),
    _r("box_above_wedge", "a cyan box above a green wedge", "the cyan box higher than the green wedge"),
    _r("ball_above_box", "a yellow ball above a magenta box", "the ball higher than the box"),
    _r("ball_below_box", "a blue ball below a red box", "the blue ball lower than the red box"),
    _r("box_below_wedge", "a green box below a yellow wedge", "the box lower than the wedge"),
    _r("chain_on_on", "a green ball on a red box on a blue box", "a stack of three: blue box, red box, green ball"),
    _r("chain_left_left", "a red ball left of a blue ball left of a yellow ball", "three balls red, blue, yellow "
                                                                                  "from left to right"),
    _r("chain_named_again", "a magenta wedge left of a green box and the green box left of a blue ball",
       "wedge, box, ball from left to right"),
    _r("on_and_right_of", "a yellow ball on a red box and the red box right of a blue wedge",
       "a blue wedge, right of it a red box with a yellow ball on top"),
]

LAYOUTS = [
    _layout("readme_two_objects", "a red ball and a blue box on a table",
            [("a red ball", (0.1, 0.45, 0.4, 0.8)), ("a blue box", (0.55, 0.35, 0.95, 0.85))],
            "a red ball at the left and a blue box at the right, under their boxes, nothing beneath them",
            source="examples/layout_two_objects.yaml"),
    _layout("stack_json", "a red ball resting on a blue box",
            [("a blue box", (0.3, 0.55, 0.7, 0.95)), ("a red ball", (0.35, 0.2, 0.65, 0.55))],
            "a red ball on a blue box", source="examples/layout_stack.json", relations=[(1, "on", 0)]),
    _layout("floating_cyan_ball", "a cyan ball", [("a cyan ball", (0.4, 0.1, 0.6, 0.3))],
            "one cyan ball under its box (resting where gravity puts it), nothing invented beneath it"),
    _layout("floating_red_box_corner", "a red box", [("a red box", (0.05, 0.05, 0.3, 0.3))],
            "one red box under its box at the top left, nothing beneath it"),
    _layout("ball_high_box_low", "a yellow ball and a blue box",
            [("a yellow ball", (0.4, 0.05, 0.6, 0.3)), ("a blue box", (0.3, 0.6, 0.7, FLOOR))],
            "a yellow ball over a blue box (resting on it), nothing between them"),
    _layout("left_edge", "a green box", [("a green box", (0.0, 0.6, 0.3, FLOOR))],
            "a green box touching the left edge, on the floor"),
    _layout("right_edge", "a yellow ball", [("a yellow ball", (0.75, 0.65, 1.0, FLOOR))],
            "a yellow ball touching the right edge"),
    _layout("top_edge", "a magenta wedge", [("a magenta wedge", (0.35, 0.0, 0.65, 0.25))],
            "a magenta wedge under its box at the top edge, nothing beneath it"),
    _layout("overlapping", "a red ball and a blue box",
            [("a red ball", (0.2, 0.5, 0.6, FLOOR)), ("a blue box", (0.4, 0.5, 0.8, FLOOR))],
            "a red ball and a blue box whose boxes overlap, both on the floor"),
    _layout("row_of_three", "a green wedge, a magenta box and a cyan ball",
            [("a green wedge", (0.02, 0.7, 0.3, FLOOR)), ("a magenta box", (0.36, 0.7, 0.64, FLOOR)),
             ("a cyan ball", (0.7, 0.7, 0.98, FLOOR))],
            "a row of three on the floor: wedge, box, ball"),
    _layout("large_and_small", "a large red box and a small green ball",
            [("a large red box", (0.05, 0.4, 0.45, FLOOR)), ("a small green ball", (0.6, 0.75, 0.8, FLOOR))],
            "a large red box at the left, a small green ball at the right"),
    _layout("whole_frame", "a blue ball", [("a blue ball", (0.0, 0.0, 1.0, 1.0))],
            "one blue ball anywhere"),
]

SCENES = [
    _scene("stacking", "a red ball on a blue box",
           [_obj("box", "box", "blue", "large", 0.0, 1.0), _obj("ball", "ball", "red", "small", 0.05, 3.5)], 3.0,
           "the red ball at rest on the blue box", source="examples/stacking.yaml"),
    _scene("roll_off", "a yellow ball and a green box",
           [_obj("box", "box", "green", "large", -1.2, 1.0),
            _obj("ball", "ball", "yellow", "small", -1.6, 2.61, velocity=[2.5, 0.0])], 4.0,
           "the yellow ball on the floor right of the green box", source="examples/roll_off.yaml"),
    _scene("collision", "a magenta ball and a cyan ball",
           [_obj("left", "ball", "magenta", "large", -2.0, 1.0, velocity=[2.0, 0.0]),
            _obj("right", "ball", "cyan", "small", 2.2, 0.6, velocity=[-2.0, 0.0])], 3.0,
           "two balls where the collision left them", source="examples/collision.yaml"),
    _scene("falling_tower", "a red box, a blue box and a yellow box",
           [_obj("bottom", "box", "red", "large", -1.4, 1.0), _obj("middle", "box", "blue", "small", -0.6, 2.62),
            _obj("top", "box", "yellow", "small", 0.0, 3.84)], 4.0,
           "three boxes where the toppled tower left them", source="examples/falling_tower.yaml"),
    _scene("pushed", "a cyan box and a red wedge",
           [_obj("box", "box", "cyan", "small", -2.2, 0.6, velocity=[3.0, 0.0]),
            _obj("wedge", "wedge", "red", "small", 1.8, 0.5, velocity=[-1.5, 0.0])], 3.0,
           "a box and a wedge where friction stopped them", source="examples/pushed.yaml"),
    _scene("still_life", "a green wedge on a magenta box and a blue ball",
           [_obj("box", "box", "magenta", "large", -0.8, 1.0), _obj("wedge", "wedge", "green", "small", -0.8, 2.6),
            _obj("ball", "ball", "blue", "small", 1.8, 0.6)], 2.0,
           "a wedge on a box, a ball beside them", source="examples/still_life.yaml"),
    _scene("two_balls_apart", "a small red ball and a large blue ball",
           [_obj("a", "ball", "red", "small", -1.6, 0.6), _obj("b", "ball", "blue", "large", 1.5, 1.0)], 1.0,
           "two balls resting apart"),
    _scene("dropped_from_high", "a green ball",
           [_obj("ball", "ball", "green", "small", 0.3, 5.0)], 3.0, "the green ball on the floor after its fall"),
    _scene("wedge_on_box", "a yellow wedge on a cyan box",
           [_obj("box", "box", "cyan", "large", 0.8, 1.0), _obj("wedge", "wedge", "yellow", "small", 0.8, 2.65)],
           2.0, "the wedge at rest on the box"),
    _scene("two_box_tower", "a small green box on a large red box",
           [_obj("bottom", "box", "red", "large", -0.5, 1.0), _obj("top", "box", "green", "small", -0.5, 2.62)],
           2.0, "a stable tower of two boxes"),
]

CLIPS = [
    _clip("ball_rolls_off", "a red ball rolls off a blue box", "at every frame a red ball and a blue box, no more"),
    _clip("small_ball_rolls_off_large", "a small green ball rolls off a large yellow box", "a ball and a box per frame"),
    _clip("box_slides_off", "a small blue box slides off a large red box", "two boxes per frame"),
    _clip("ball_falls_off", "a cyan ball falls off a magenta box", "a ball and a box per frame"),
    _clip("wedge_slides_off", "a yellow wedge slides off a green box", "a wedge and a box per frame"),
]

EDITS = [
    _edit("drop_ball_example", [_obj("box", "box", "blue", "large", 0.0, 1.0),
                                _obj("ball", "ball", "red", "small", 0.05, 3.5, new=True)],
          "the blue box kept, a red ball on top of it", source="examples/edits/drop_ball.yaml"),
    _edit("box_onto_large_box", [_obj("base", "box", "yellow", "large", 0.5, 1.0),
                                 _obj("new", "box", "magenta", "small", 0.5, 3.6, new=True)],
          "a small magenta box on the yellow box"),
    _edit("ball_beside_box", [_obj("box", "box", "red", "small", -1.5, 0.6),
                              _obj("new", "ball", "cyan", "small", 1.5, 2.0, new=True)],
          "a cyan ball on the floor right of the red box"),
    _edit("wedge_beside_ball", [_obj("ball", "ball", "green", "large", -1.2, 1.0),
                                _obj("new", "wedge", "red", "small", 1.4, 1.5, new=True)],
          "a red wedge on the floor right of the green ball"),
    _edit("ball_between_boxes", [_obj("l", "box", "magenta", "small", -2.0, 0.6),
                                 _obj("r", "box", "cyan", "small", 2.0, 0.6),
                                 _obj("new", "ball", "yellow", "small", 0.0, 3.0, new=True)],
          "a yellow ball on the floor between the two boxes"),
    _edit("ball_onto_tower", [_obj("bottom", "box", "blue", "large", 1.0, 1.0),
                              _obj("top", "box", "green", "small", 1.0, 2.62),
                              _obj("new", "ball", "red", "small", 1.0, 4.5, new=True)],
          "a red ball on top of the two-box tower"),
    _mask_edit("mask_left_floor", [_obj("box", "box", "blue", "large", 0.0, 1.0)], "a green ball", (2, 14, 12, 30),
               "the blue box kept, a green ball in the left part of the floor"),
    _mask_edit("mask_right_floor", [_obj("ball", "ball", "red", "large", -1.0, 1.0)], "a yellow box",
               (20, 14, 30, 30), "the red ball kept, a yellow box at the right"),
]

INPUTS: List[Dict] = PROMPTS + RELATIONS + LAYOUTS + SCENES + CLIPS + EDITS


def select(routes=None, ids=None) -> List[Dict]:
    """The suite's inputs on ``routes`` (default all), or only those whose id is in ``ids`` (or starts with one
    followed by "/", so "edit" names the whole route); an unknown route or an id matching nothing is refused."""
    routes = list(routes or ROUTES)
    unknown = [r for r in routes if r not in ROUTES]
    if unknown:
        raise ValueError(f"--routes: unknown route {unknown[0]!r}; the routes are {', '.join(ROUTES)}")
    chosen = [i for i in INPUTS if i["route"] in routes]
    if ids:
        for name in ids:
            if not any(i["id"] == name or i["id"].startswith(name + "/") for i in chosen):
                raise ValueError(f"--ids: no input {name!r} on routes {','.join(routes)}; ids look like "
                                 f"{INPUTS[0]['id']!r}")
        chosen = [i for i in chosen if any(i["id"] == n or i["id"].startswith(n + "/") for n in ids)]
    return chosen
