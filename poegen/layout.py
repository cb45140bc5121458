"""Layouts: the one currency between what a user asks for and a Product.

A prompt, a layout spec (phrases with boxes) and a scene spec (objects placed by physics) all become a
``Layout``: a background prompt and objects, each with a phrase and optionally a box or a mask in image
coordinates, relations between objects, and an optional depth map. A family (the shapes world, Stable
Diffusion, SDXL, FLUX, ...) turns a Layout into a Product (``poegen.compose.build``).

Coordinates: boxes are (x0, y0, x1, y1) in [0, 1] of the image's width and height, y down; masks are
(H, W) tensors in [0, 1] at any resolution (resized to each family's latent grid).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import check_keys, read_file

log = logging.getLogger("poegen.layout")

RELATIONS = ("left of", "right of", "on", "above", "below")  # the shapes world's relation words, as phrases


@dataclass
class LayoutObject:
    phrase: str
    box: Optional[Tuple[float, float, float, float]] = None
    mask: Optional[Tensor] = None                      # (H, W) in [0, 1]
    known: bool = False                                # editing: already in the given image (asked about, not drawn)

    def region(self, h: int, w: int) -> Optional[Tensor]:
        """(h, w) coverage of this object on a grid: its mask resized by area, or the fraction of each cell its
        box covers; None when it has neither."""
        if self.mask is not None:
            return resize(self.mask, h, w)
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        cols = (torch.clamp(torch.minimum(torch.arange(1, w + 1) / w, torch.tensor(x1))
                            - torch.maximum(torch.arange(w) / w, torch.tensor(x0)), min=0) * w)
        rows = (torch.clamp(torch.minimum(torch.arange(1, h + 1) / h, torch.tensor(y1))
                            - torch.maximum(torch.arange(h) / h, torch.tensor(y0)), min=0) * h)
        return rows[:, None] * cols[None, :]

    def bounding_box(self) -> Optional[Tuple[float, float, float, float]]:
        """The box, or the mask's bounding box in [0, 1] coordinates."""
        if self.box is not None or self.mask is None:
            return self.box
        rows, cols = torch.nonzero(self.mask > 0.5, as_tuple=True)
        if len(rows) == 0:
            return None
        h, w = self.mask.shape
        return (float(cols.min()) / w, float(rows.min()) / h, float(cols.max() + 1) / w, float(rows.max() + 1) / h)

    def centre(self, size: int) -> Optional[Tuple[float, float]]:
        """(col, row) pixel position of the object's centre on a size x size image (mask centroid or box centre)."""
        if self.mask is not None:
            m = resize(self.mask, size, size)
            if float(m.sum()) < 1e-6:
                return None
            rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                        indexing="ij")
            return float((m * cols).sum() / m.sum()), float((m * rows).sum() / m.sum())
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2 * size - 0.5, (y0 + y1) / 2 * size - 0.5


@dataclass
class Layout:
    """A background prompt, objects, relations (i, relation, j), an optional (H, W) depth map in [0, 1], and
    optionally the questions to ask (default: one per object and one per relation, else the prompt)."""

    prompt: str = ""
    objects: List[LayoutObject] = field(default_factory=list)
    relations: List[Tuple[int, str, int]] = field(default_factory=list)
    depth: Optional[Tensor] = None
    questions: Optional[List[str]] = None
    extra: dict = field(default_factory=dict)          # what a source knows beyond this (e.g. "physics")

    def relation_text(self, i: int, rel: str, j: int) -> str:
        return f"{self.objects[i].phrase} {rel} {self.objects[j].phrase}"

    def texts(self) -> List[str]:
        """What the scorers are asked: the explicit questions, else each object's phrase and each relation, else
        the prompt."""
        if self.questions is not None:
            return list(self.questions)
        out = [o.phrase for o in self.objects] + [self.relation_text(*r) for r in self.relations]
        return out or ([self.prompt] if self.prompt else [])

    def regions(self, h: int, w: int) -> Tuple[Tensor, List[Optional[Tensor]]]:
        """(background (h, w), per object (h, w) or None) weights that tile the image: each located object's
        coverage, shared where objects overlap, and the rest for the background."""
        per = [None if o.known else o.region(h, w) for o in self.objects]
        located = [m for m in per if m is not None]
        if not located:
            return torch.ones(h, w), per
        total = torch.stack(located).sum(0)
        scale = torch.where(total > 1, total, torch.ones_like(total))
        per = [None if m is None else m / scale for m in per]
        return (1 - total / scale).clamp(min=0), per


_AXIS = {"left of": ("across", False), "right of": ("across", True), "on": ("up", False), "above": ("up", False),
         "below": ("up", True)}  # relation -> (axis, reversed): "i left of j" orders i before j across


def check_relations(layout: "Layout", where: str = "relations"):
    """Refuse relations that no image can satisfy: an object related to itself, or relations that go round in a
    circle on one axis ("A on B and A below B", "A left of B, B left of C and C left of A"); their questions could
    never all be answered yes."""
    edges = {"across": {}, "up": {}}
    for i, rel, j in layout.relations:
        if rel not in _AXIS:
            continue
        if i == j:
            raise ValueError(f"{where}: {layout.relation_text(i, rel, j)!r} relates an object to itself; a relation "
                             "needs two objects")
        axis, flip = _AXIS[rel]
        a, b = (j, i) if flip else (i, j)
        edges[axis].setdefault(a, []).append((b, (i, rel, j)))
    for graph in edges.values():
        state = {}

        def visit(node, path):
            state[node] = 1
            for nxt, r in graph.get(node, ()):
                if state.get(nxt) == 1:  # back to an object on the current path: a circle
                    start = next(k for k, (n, _) in enumerate(path) if n == nxt) if any(n == nxt for n, _ in path) else 0
                    cycle = [rr for _, rr in path[start:]] + [r]
                    texts = ", ".join(repr(layout.relation_text(*c)) for c in cycle if c is not None)
                    raise ValueError(f"{where}: {texts} contradict each other (no image has them all); drop one")
                if state.get(nxt) is None:
                    visit(nxt, path + [(nxt, r)])
            state[node] = 2

        for node in list(graph):
            if state.get(node) is None:
                visit(node, [(node, None)])


def resize(image: Tensor, h: int, w: int) -> Tensor:
    """An (H, W) map resized to (h, w): area-averaged when shrinking, bilinear when growing."""
    x = image.float()[None, None]
    if h <= x.shape[-2] and w <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, (h, w))[0, 0]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0, 0]


# ---- prompts ---------------------------------------------------------------------------------------------

def split_prompt(text: str) -> Layout:
    """A prompt split into object phrases at "and" and commas, with "X on Y", "X left of Y", ... as relations
    (the conjunctions and relation words the shapes world parses); the background prompt stays empty."""
    objects: List[str] = []
    relations = []

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
        if len(parts) == 3:
            relations.append((index(parts[0]), parts[1], index(parts[2])))
        else:
            index(clause)
    return Layout("", [LayoutObject(p) for p in objects], relations)


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
    layout.extra["text"] = text
    if questions is not None:
        layout.questions = list(questions)
    return layout


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

def from_physics(physics) -> Layout:
    """The layout of a simulated scene (a ``PhysicsExpert``): each object in view with its simulated mask, "on"
    relations from the simulated contacts, the depth map, and the spec's prompt as background."""
    keep = physics.visible
    objects = [LayoutObject(f"a {o.size} {o.colour} {o.shape}", mask=physics.masks[k].float())
               for k, o in ((k, physics.scene.objects[k]) for k in keep)]
    index = {k: i for i, k in enumerate(keep)}
    relations = [(index[i], "on", index[j]) for i, j in physics.scene.supports if i in index and j in index]
    return Layout(physics.spec.prompt, objects, relations, depth=physics.depth(), extra={"physics": physics})


def load_target(target: str) -> Layout:
    """A layout from a comparison target: an edit, scene or layout spec file (``spec_kind``), or else a prompt."""
    if Path(target).suffix.lower() not in (".yaml", ".yml", ".json"):
        return from_prompt(target)
    kind = spec_kind(target)
    if kind == "edit":
        from .edit import load_edit
        return load_edit(target)
    if kind == "scene":
        from .experts.physics import PhysicsExpert
        from .scene import load_scene
        from .generate import refuse_new
        spec = load_scene(target)
        refuse_new(spec, target)
        return from_physics(PhysicsExpert(spec))
    return load_layout(target)


def spec_kind(path) -> str:
    """"edit" for a spec naming an ``image``, "scene" when its objects carry a ``shape``, else "layout"."""
    data = read_file(path, "spec")
    if isinstance(data, dict) and "image" in data:
        return "edit"
    objects = data.get("objects") if isinstance(data, dict) else None
    return "scene" if objects and isinstance(objects[0], dict) and "shape" in objects[0] else "layout"


# ---- the one route to a Product --------------------------------------------------------------------------

def build_product(layout: Layout, experts=(), potentials=(), guidance: Optional[float] = None,
                  vlm_weight: Optional[float] = None, dtype: str = "auto", **shapes_options):
    """The Product of a Layout in its family: the named models in ``experts`` and ``potentials`` (registry
    entries; guidance and lambdas default to 1), or the embedded shapes world when none is named (its tuned
    defaults; ``shapes_options``: prior, vlm, schedule). ``dtype`` (auto, float32, bfloat16): the shapes prior's
    compute dtype (auto: bf16 only where the hardware has it natively, ``hardware.pick_dtype``), or the named
    models' torch_dtype where an entry gives none (auto: as loaded). An edit's ``Edit`` is kept as
    ``product.edit``."""
    if experts:
        from .experts.registry import build
        check_relations(layout)
        product = build(layout, experts, potentials, 1.0 if guidance is None else guidance,
                        1.0 if vlm_weight is None else vlm_weight, dtype)
    elif potentials:
        raise ValueError("--potential needs --expert or --config: the shapes world asks its own scorer "
                         "(weight it with --vlm-weight)")
    else:
        from .experts.shapes.prompt import layout_product, shapes_layout
        if not layout.objects and "physics" not in layout.extra:  # a prompt: the shapes world always composes (a
            #                                  scene whose objects all left the view has none: the prior and its layout)
            layout = Layout(**{**vars(shapes_layout(layout.prompt)), "questions": layout.questions,
                               "extra": layout.extra})
        elif layout.prompt.strip() and "physics" not in layout.extra and "edit" not in layout.extra:
            log.warning(
                "the shapes world draws the layout's objects and has no background: its prompt %r is not used",
                layout.prompt[:60])
        check_relations(layout, f"prompt {layout.extra['text'][:60]!r}" if "text" in layout.extra else "relations")
        product = layout_product(layout, guidance=guidance, vlm_weight=vlm_weight, dtype=dtype, **shapes_options)
    product.edit = layout.extra.get("edit")  # an edit's image and mask ride along (metrics, replace_known)
    return product
