"""Layouts: the one currency between what a user asks for and a Product (data only).

A prompt, a layout spec (phrases with boxes), a scene spec (objects placed by physics) and an edit spec all
become a ``Layout`` (the readers are in ``poegen.specs``): a background prompt and objects, each with a phrase and
optionally a box or a mask in image coordinates, relations between objects, and an optional depth map. A family
(the shapes world, Stable Diffusion, SDXL, FLUX, ...) turns a Layout into a Product (``poegen.families``).

Coordinates: boxes are (x0, y0, x1, y1) in [0, 1] of the image's width and height, y down; masks are
(H, W) tensors in [0, 1] at any resolution (resized to each family's latent grid).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from .images import resize

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
    """A background prompt, objects, relations (i, relation, j), an optional (H, W) depth map in [0, 1],
    optionally the questions to ask (default: one per object and one per relation, else the prompt), and where it
    came from: the typed prompt, a scene's simulation (its objects are then the simulated ones, with masks), or an
    edit (image and mask)."""

    prompt: str = ""
    objects: List[LayoutObject] = field(default_factory=list)
    relations: List[Tuple[int, str, int]] = field(default_factory=list)
    depth: Optional[Tensor] = None
    questions: Optional[List[str]] = None
    text: Optional[str] = None                         # the prompt as the user typed it (errors quote it)
    physics: Optional[Any] = None                      # a scene spec's simulation (experts.physics.PhysicsExpert)
    edit: Optional[Any] = None                         # an edit's image and mask to repaint (poegen.edit.Edit)
    absent: List[str] = field(default_factory=list)    # phrases that must not be in the image ("no ball")

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


# ---- prompts ---------------------------------------------------------------------------------------------


# ---- layout specs ----------------------------------------------------------------------------------------


# ---- scene specs -----------------------------------------------------------------------------------------


# ---- the one route to a Product --------------------------------------------------------------------------

