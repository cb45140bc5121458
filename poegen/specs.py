"""Readers of what a user asks for, each giving a ``Layout`` (``poegen.layout``): prompts (whole, or split into
objects and relations), layout specs (phrases with boxes), scene specs (objects placed by physics) and edit specs
(an image plus a mask or a scene). A family then turns the Layout into a Product (``poegen.families``)."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from torch import Tensor

from .edit import Edit, load_image, load_mask
from .images import dilate
from .layout import RELATIONS, Layout, LayoutObject, check_relations
from .validation import check_keys, read_file

log = logging.getLogger("poegen.specs")


# ---- prompts ---------------------------------------------------------------------------------------------

def split_prompt(text: str) -> Layout:
    """A prompt split into object phrases at "and" and commas, with "X on Y", "X left of Y", ... as relations
    and "no X" as an absence (the conjunctions, relation words and absences the shapes world parses); the
    background prompt stays empty."""
    objects: List[str] = []
    relations, absent = [], []

    def index(phrase: str) -> int:
        phrase = " ".join(phrase.split())
        if not phrase:
            raise ValueError(f"prompt {text!r}: an empty part between 'and', commas or relation words")
        if phrase not in objects:
            objects.append(phrase)
        return objects.index(phrase)

    pattern = r"\s+(" + "|".join(re.escape(r) for r in RELATIONS) + r")\s+"
    for clause in re.split(r"\s*,\s*|\s+and\s+", text.strip()):
        parts = re.split(pattern, f" {clause} ", maxsplit=1)
        if re.match(r"no\s+\S", clause, flags=re.IGNORECASE) and len(parts) != 3:
            absent.append(" ".join(clause.split()[1:]))
        elif len(parts) == 3:
            relations.append((index(parts[0]), parts[1], index(parts[2])))
        else:
            index(clause)
    if not objects:
        raise ValueError(f"prompt {text!r} names no object to draw, only absent ones; e.g. 'a red ball and no box'")
    return Layout("", [LayoutObject(p) for p in objects], relations, absent=absent)


def from_prompt(text: str, compose: bool = False, parts: Optional[Sequence[str]] = None,
                questions: Optional[Sequence[str]] = None) -> Layout:
    """The layout of a prompt: the whole prompt as background, or (``compose``) its parts as objects; ``parts``
    lists object phrases explicitly; ``questions`` overrides what the scorers are asked."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("prompt: empty; describe the image, e.g. 'a red ball on a blue box'")
    if parts:
        layout = Layout("", [LayoutObject(p) for p in parts])
        if text.strip() not in parts and text.strip() != " and ".join(parts):
            log.warning(
                "the prompt %r is not used: --part (parts) lists the objects; name every object as a part", text[:60])
    elif compose:
        layout = split_prompt(text)
    else:
        layout = Layout(text)
    layout.text = text
    if questions is not None:
        layout.questions = list(questions)
    return layout


def shapes_layout(prompt, place: bool = True) -> Layout:
    """The Layout of a shapes-world prompt (its text or a parsed ``shapes.prompt.Prompt``): its objects, relations
    and absences, each object of a prompt with several in a box around the place ``placement`` gives it
    (``place=False``: unplaced, an ablation)."""
    from .experts.shapes.prompt import parse_prompt, placement

    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    places = placement(p) if place else None
    half = 0.1  # the boxes' half-width (of the image): the prior is told their centres
    boxes = [None] * len(p.objects) if places is None else \
        [((c + 0.5) / 32 - half, (r + 0.5) / 32 - half, (c + 0.5) / 32 + half, (r + 0.5) / 32 + half) for c, r in places]
    return Layout("", [LayoutObject(str(o), box=b) for o, b in zip(p.objects, boxes)],
                  [(i, f"{rel} of" if rel in ("left", "right") else rel, j) for i, rel, j in p.relations],
                  absent=p.absent_phrases())


def for_shapes(layout: Layout, video: bool = False, place: bool = True, seed: Optional[int] = None,
               seconds: Optional[float] = None) -> Layout:
    """The Layout the shapes world draws: one with objects or a scene as it is; a bare prompt's (``from_prompt``)
    read in the shapes world's grammar: with ``video`` a motion prompt ("a red ball rolls off a blue box",
    ``motion_scene``, its start varied by ``seed``, simulated ``seconds``) as its simulated scene, else its
    objects, relations and absences (``shapes_layout``; ``place`` as there). The questions, the typed text and an
    edit stay. A layout spec's boxes (objects with no typed prompt, ``text`` None) are read with gravity
    (``settle``); a prompt's placed objects are the world's own placement and stay, so reading a Layout twice
    changes nothing."""
    if layout.objects and layout.text is None and layout.physics is None:
        return settle(layout)
    if layout.objects or layout.physics is not None:
        return layout
    spec = motion_scene(layout.prompt, seed, seconds) if video else None
    if spec is not None:
        from .experts.physics import PhysicsExpert
        read = from_physics(PhysicsExpert(spec, until=spec.physics.duration))  # a clip need not settle
    else:
        read = shapes_layout(layout.prompt, place)
    read.questions, read.text, read.edit = layout.questions, layout.text, layout.edit
    return read


REST_TOLERANCE_PX = 1.0  # an object within this many pixels of where it rests keeps its box


def settle(layout: Layout) -> Layout:
    """A layout spec's boxes in the shapes world, which has gravity: each boxed object takes its box's horizontal
    place and its size (the phrase's, else the size nearest the box's smaller side), and rests where a simulation
    puts it under that span: on the floor, or on an object below it whose span it overlaps (a ball may roll off).
    Each object is dropped from just above what lies under it, lowest box first, and simulated until it settles;
    one that rests within ``REST_TOLERANCE_PX`` of its box's centre keeps its box, any other's box moves with it
    (logged). A new Layout; an edit's, a scene's and one without boxes are returned as they are."""
    from dataclasses import replace

    from .experts.shapes.render import pixel_to_world, pixels_per_unit, world_to_pixel
    from .experts.shapes.vocab import parse_phrase
    from .experts.shapes.world import COLOUR_NAMES, SIZES, WEDGE_SCALE, SceneObject, bounds, simulate

    boxed = [k for k, o in enumerate(layout.objects) if o.box is not None and o.mask is None and not o.known]
    if layout.edit is not None or layout.physics is not None or not boxed:
        return layout
    try:
        phrases = {k: parse_phrase(layout.objects[k].phrase) for k in boxed}
    except ValueError:
        return layout  # not a shapes-world phrase: the product names it (``families.shapes_product``)
    size = 32
    ppu = pixels_per_unit(size)
    bodies = {}
    for k in boxed:  # each object at its box's centre, sized by its phrase or its box
        x0, y0, x1, y1 = layout.objects[k].box
        p = phrases[k]
        side = min(x1 - x0, y1 - y0) * size / ppu / (WEDGE_SCALE if p.shape == "wedge" else 1.0)
        extent = p.size or min(SIZES, key=lambda s: abs(SIZES[s] - side))
        x = float(pixel_to_world(*layout.objects[k].centre(size), size)[0])
        bodies[k] = SceneObject(p.shape, p.colour or COLOUR_NAMES[0], extent, x, 0.0)
    placed = []  # drop each just above what lies under its span, lowest box first
    for k in sorted(boxed, key=lambda k: -layout.objects[k].box[3]):
        lo, hi, bottom, _ = bounds(bodies[k])
        under = [bounds(bodies[j])[3] for j in placed if bounds(bodies[j])[0] < hi and bounds(bodies[j])[1] > lo]
        bodies[k] = replace(bodies[k], y=max([0.0] + under) - bottom + 0.01)
        placed.append(k)
    scene = simulate([bodies[k] for k in boxed])
    objects = list(layout.objects)
    for i, (k, rest) in enumerate(zip(boxed, scene.objects)):
        half = (bounds(rest)[1] - bounds(rest)[0]) / 2
        x = min(max(rest.x, -size / ppu / 2 + half), size / ppu / 2 - half)  # one that rolled away stays in view
        col, row = (float(v) for v in world_to_pixel(x, rest.y, size))
        c0, r0 = layout.objects[k].centre(size)
        if abs(col - c0) <= REST_TOLERANCE_PX and abs(row - r0) <= REST_TOLERANCE_PX:
            continue
        under = [layout.objects[boxed[j]].phrase for a, j in scene.supports if a == i]
        log.info("layout: %r %s by %.1f px to rest on %s (a box in the shapes world gives the object's horizontal "
                 "place; gravity gives its height)", objects[k].phrase, "moved down" if row > r0 else "moved up",
                 abs(row - r0), repr(under[0]) if under else "the floor")
        dx, dy = (col - c0) / size, (row - r0) / size
        x0, y0, x1, y1 = objects[k].box
        objects[k] = replace(objects[k], box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    return replace(layout, objects=objects)


# ---- layout specs ----------------------------------------------------------------------------------------

def _box(value, where: str) -> Tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{where}: expected [x0, y0, x1, y1] in [0, 1], got {value!r}")
    for k, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"{where}[{k}]: {v!r} is outside [0, 1]; boxes are fractions of the image's width "
                             "and height")
    x0, y0, x1, y1 = map(float, value)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{where}: {list(value)} is empty; need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def parse_layout(data, where: str = "layout") -> Layout:
    """A validated Layout from a parsed YAML/JSON mapping: ``prompt``, ``objects: [{phrase, box}]``, optional
    ``relations: [[i, relation, j]]`` and ``questions``."""
    check_keys(data, where, ("prompt", "objects", "relations", "questions"), ("objects",))
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}.prompt: expected text, got {prompt!r}")
    raw = data["objects"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}.objects: expected a non-empty list of {{phrase, box}}")
    objects = []
    for i, o in enumerate(raw):
        w = f"{where}.objects[{i}]"
        check_keys(o, w, ("phrase", "box"), ())
        phrase = o.get("phrase")
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(f"{w}.phrase: missing; every object needs a phrase such as 'a red ball'")
        objects.append(LayoutObject(phrase.strip(), _box(o["box"], f"{w}.box") if "box" in o else None))
    relations = []
    raw_relations = data.get("relations", [])
    if not isinstance(raw_relations, list):  # a string or mapping would be read item by item
        raise ValueError(f"{where}.relations: expected a list of [i, relation, j], e.g. [[0, on, 1]], got "
                         f"{type(raw_relations).__name__}")
    for i, r in enumerate(raw_relations):
        w = f"{where}.relations[{i}]"
        if (not isinstance(r, (list, tuple)) or len(r) != 3 or r[1] not in RELATIONS
                or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(objects)
                           for k in (r[0], r[2]))):
            raise ValueError(f"{w}: expected [i, relation, j] with object indices below {len(objects)} and a "
                             f"relation among {', '.join(RELATIONS)}, got {str(r)[:80]}")
        a, rel, b = r
        if objects[a].box is not None and objects[b].box is not None and a != b:  # the boxes must not say otherwise
            (ax, ay), (bx, by) = [((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in (objects[a], objects[b])]
            against = {"left of": ax > bx, "right of": ax < bx, "on": ay > by, "above": ay > by, "below": ay < by}[rel]
            if against:
                raise ValueError(f"{w}: {objects[a].phrase!r} {rel} {objects[b].phrase!r} contradicts their boxes "
                                 "(box centres, y down); move a box or fix the relation")
        relations.append((a, rel, b))
    questions = data.get("questions")
    if questions is not None and (not isinstance(questions, list) or not all(isinstance(q, str) for q in questions)):
        raise ValueError(f"{where}.questions: expected a list of texts")
    layout = Layout(prompt, objects, relations, questions=questions)
    check_relations(layout, f"{where}.relations")
    return layout


def load_layout(path) -> Layout:
    """Load and validate a layout spec from a .yaml/.yml or .json file."""
    data = read_file(path, "layout")
    try:
        return parse_layout(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---- scene specs -----------------------------------------------------------------------------------------

def scene_layouts(path, frames: int = 1) -> List[Tuple[str, Layout]]:
    """A scene spec file read once, simulated to ``frames`` times spread over its duration: (file label, Layout)
    pairs (one frame: the end, label ""; several: _f00, _f01, ...). A spec that marks objects new (an edit's) is
    refused."""
    from .experts.physics import PhysicsExpert
    from .experts.scene import load_scene, refuse_new

    spec = load_scene(path)
    refuse_new(spec, path)
    times = [spec.physics.duration * i / (frames - 1) for i in range(frames)] if frames > 1 else [None]
    return [(f"_f{i:02d}" if frames > 1 else "", from_physics(PhysicsExpert(spec, until=t)))
            for i, t in enumerate(times)]


def from_physics(physics) -> Layout:
    """The layout of a simulated scene (a ``PhysicsExpert``): each object in view with its simulated mask, "on"
    relations from the simulated contacts, the depth map, and the spec's prompt as background."""
    keep = physics.visible
    objects = [LayoutObject(f"a {o.size} {o.colour} {o.shape}", mask=physics.masks[k].float())
               for k, o in ((k, physics.scene.objects[k]) for k in keep)]
    index = {k: i for i, k in enumerate(keep)}
    relations = [(index[i], "on", index[j]) for i, j in physics.scene.supports if i in index and j in index]
    return Layout(physics.spec.prompt, objects, relations, depth=physics.depth(), physics=physics)


def clip_seconds(frames: Optional[int] = None, fps: Optional[float] = None) -> float:
    """The simulated time a shapes-world clip shows: (frames - 1) / fps, at the defaults where not given."""
    from .defaults import SHAPES_CLIP_FPS, SHAPES_CLIP_FRAMES

    return max(1, (frames or SHAPES_CLIP_FRAMES) - 1) / (fps or SHAPES_CLIP_FPS)


def motion_scene(text: str, seed: Optional[int] = None, seconds: Optional[float] = None):
    """The scene spec of a shapes-world motion prompt ("a red ball rolls off a blue box", "a cyan ball falls onto a
    magenta box", ...; ``experts.shapes.motions``) simulated ``seconds`` (default: a default clip's), its start
    varied by ``seed``; None when the prompt names no motion."""
    from .experts.shapes.motions import motion_scene as scene

    return scene(text, seed, clip_seconds() if seconds is None else seconds)


# ---- edit specs ------------------------------------------------------------------------------------------

def edit_layout(image: Tensor, prompt: str = "", mask: Optional[Tensor] = None, scene=None, margin: int = 2,
                noise: float = 0.05) -> Layout:
    """The Layout of an edit. With ``mask``: the prompt's objects ("and", commas) inside it. With ``scene`` (a
    SceneSpec whose objects to add say ``new: true``): pybullet drops the new objects onto the others, which stay
    where the spec puts them; the mask is the new objects' simulated footprint grown by ``margin`` pixels."""
    if (mask is None) == (scene is None):
        raise ValueError("an edit needs exactly one of --mask or --scene")
    if scene is None:
        layout = split_prompt(prompt) if prompt.strip() else Layout()
        if not layout.objects:
            raise ValueError("edit: name what to add, e.g. 'a red ball'")
        for o in layout.objects:
            o.mask = mask
        layout.prompt = ""
        layout.edit = Edit(image, mask, noise)
        return layout
    from .experts.physics import PhysicsExpert

    new = [k for k, o in enumerate(scene.objects) if o.new]
    if not new:
        raise ValueError("--scene: no object says new: true; mark the objects to add")
    physics = PhysicsExpert(scene)
    lost = [scene.objects[k].name for k in new if k not in physics.visible]
    if lost:
        raise ValueError(f"--scene: new object(s) {', '.join(lost)} end outside the camera's view; move them")
    size = scene.camera.resolution
    if tuple(image.shape[-2:]) != (size, size):
        raise ValueError(f"the image is {image.shape[-1]}x{image.shape[-2]}, the scene's camera {size}x{size}; "
                         "set camera.resolution to the image's size")
    layout = from_physics(physics)
    keep = [k for k in physics.visible]
    for obj, k in zip(layout.objects, keep):
        obj.known = k not in new
    footprint = sum(physics.masks[k] for k in new).clamp(max=1) > 0.05
    region = dilate(footprint.float(), margin)
    if prompt:
        layout.prompt = prompt
    layout.edit = Edit(image, region, noise)
    return layout


def load_edit(path) -> Layout:
    """An edit spec file (YAML/JSON): ``image``, ``prompt`` (optional with a scene), and ``mask`` or ``scene`` (a
    path or an inline scene mapping); paths are relative to the spec's folder."""
    from .experts.scene import parse_scene, load_scene
    from .validation import check_keys, read_file

    path = Path(path)
    data = check_keys(read_file(path, "edit spec"), str(path), ("image", "prompt", "mask", "scene", "margin"),
                      ("image",))
    here = path.parent
    image = load_image(here / data["image"])
    mask = load_mask(here / data["mask"], tuple(image.shape[-2:])) if "mask" in data else None
    scene = data.get("scene")
    if isinstance(scene, str):
        scene = load_scene(here / scene)
    elif scene is not None:
        scene = parse_scene(scene)
    margin = data.get("margin", 2)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"{path}: margin {str(margin)[:20]!r}: expected whole pixels >= 0 around the new objects")
    return edit_layout(image, data.get("prompt", ""), mask, scene, margin)


# ---- any spec file ---------------------------------------------------------------------------------------

def load_target(target: str, shapes: bool = False, video: bool = False, place: bool = True,
                seed: Optional[int] = None, seconds: Optional[float] = None) -> Layout:
    """A layout from a comparison target: an edit, scene or layout spec file (``spec_kind``), or else a prompt,
    read for the shapes world when ``shapes`` (``for_shapes``, with ``video``, ``place``, ``seed`` and ``seconds``;
    a layout spec's boxes with gravity, ``settle``, so its objects are judged where they rest), as a job's is."""
    if Path(target).suffix.lower() not in (".yaml", ".yml", ".json"):
        layout = from_prompt(target)
        return for_shapes(layout, video, place, seed, seconds) if shapes else layout
    kind = spec_kind(target)
    if kind == "edit":
        return load_edit(target)
    if kind == "scene":
        return scene_layouts(target)[0][1]
    layout = load_layout(target)
    return settle(layout) if shapes else layout


def read_job(job, cfg: dict) -> List[Tuple[str, Layout]]:
    """(file label, Layout) of each product a job (``poegen.job.Job``; an edit's is ``edit_layout``) makes, its
    inputs read once: a scene spec (``scene_layouts``: one Layout per frame time; for a video one, the whole
    simulation), a layout spec, or the prompt (the job's, else its config's; ``cfg`` as ``registry.load_config``
    gives it), read in the shapes world's grammar when the job names no models (``for_shapes``). The job's
    questions, else the config's, go on every Layout."""
    questions = job.questions if job.questions is not None else cfg["questions"]
    if job.scene is not None:
        layouts = scene_layouts(job.scene, 1 if job.video is not None else job.frames or 1)
    elif job.layout is not None:
        layouts = [("", load_layout(job.layout))]
    else:
        prompt = job.prompt if job.prompt is not None else cfg["prompt"]
        if prompt is None:
            raise ValueError("no prompt: give one on the command line or as prompt: in the config")
        layout = from_prompt(prompt, job.compose or cfg["compose"], job.parts or cfg["parts"], questions)
        shapes = not (job.experts or cfg["experts"] or job.potentials or cfg["potentials"])
        video = job.video is not None
        layouts = [("", for_shapes(layout, video, seed=job.seed, seconds=clip_seconds(job.frames, job.fps))
                     if shapes else layout)]
    for _, layout in layouts:
        if questions is not None:
            layout.questions = list(questions)
    return layouts


def spec_kind(path) -> str:
    """"edit" for a spec naming an ``image``, "scene" when its objects carry a ``shape``, else "layout"."""
    data = read_file(path, "spec")
    if isinstance(data, dict) and "image" in data:
        return "edit"
    objects = data.get("objects") if isinstance(data, dict) else None
    return "scene" if objects and isinstance(objects[0], dict) and "shape" in objects[0] else "layout"
