"""A potential of the shapes world's placement: nothing is drawn away from where the asked objects were placed.

The scorer (``vlm``) was trained on simulated scenes, where nothing floats, and does not see an object drawn in
mid-air: on the tuning seeds of ShapesEval tier B, half of the PoE sampler's misses were such an extra object,
answered "zero balls" with P > 0.999. This potential reads the pixels instead: the foreground (a pixel's colour
distance from the sky, the floor and their blends, as a soft 0..1 indicator) outside discs around the placed centres,
each wide enough for a large object of the asked shape plus the prior's placement error, costs ``per_pixel``
per pixel in log-potential.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ... import defaults
from .render import pixels_per_unit, to_unit
from .world import BACKGROUND, FLOOR, SIZES, WEDGE_SCALE

SLACK = 2.0  # px beyond an object's own reach from its centre: the prior's placement error
# a pixel's colour distance from the sky-floor segment (in [-1, 1] units; 0.1 is about 13 of 255) counts as
# foreground from QUIET (below: the sampler's noise) up to fully at EDGE
QUIET, EDGE = 0.1, 0.3


def reach(shape: Optional[str], size: Optional[str], image_size: int = 32) -> float:
    """Pixels from an object's centre to its farthest point (the large one's when the size is not asked)."""
    ext = SIZES[size or "large"] * pixels_per_unit(image_size)
    if shape == "ball":
        return ext / 2
    if shape == "wedge":  # a right triangle's vertex is 2/3 of a leg times sqrt 2 from its centroid
        return WEDGE_SCALE * ext * 2 / 3 * math.sqrt(2)
    return ext / math.sqrt(2)  # a box's half diagonal (and the widest of the three when the shape is not asked)


class Footprint:
    """log potential = -per_pixel * (foreground outside the discs around ``centres``); met (``poegen.certify``) below
    ``defaults.CERTIFY_STRAY_PX`` such pixels."""

    def __init__(self, centres: Sequence[Tuple[float, float]], radii: Sequence[float], size: int = 32,
                 per_pixel: float = 0.5, name: str = "footprint"):
        rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                    indexing="ij")
        inside = torch.zeros(size, size, dtype=torch.bool)
        for (c, r), rad in zip(centres, radii):
            inside |= (cols - c) ** 2 + (rows - r) ** 2 <= (rad + SLACK) ** 2
        self.outside = (~inside).float()
        self.backgrounds = torch.tensor(to_unit([BACKGROUND, FLOOR]))  # (2, 3)
        self.per_pixel, self.name = per_pixel, name
        self.certify_threshold = -per_pixel * defaults.CERTIFY_STRAY_PX

    def log_potential(self, x0: Tensor) -> Tensor:
        x = x0.float().clamp(-1, 1)
        sky, floor = (b.to(x.device)[None, :, None, None] for b in self.backgrounds)
        t = ((x - sky) * (floor - sky)).sum(1, keepdim=True).div((floor - sky).square().sum()).clamp(0, 1)
        dist = (x - sky - t * (floor - sky)).norm(dim=1)  # (N, H, W) from the nearest sky-floor blend
        foreground = ((dist - QUIET) / (EDGE - QUIET)).clamp(0, 1)
        return (-self.per_pixel * (foreground * self.outside.to(x.device)).sum((1, 2))).to(x0.dtype)


def footprint(centres: List[Tuple[float, float]], phrases, size: int = 32, per_pixel: float = 0.5) -> Footprint:
    """The Footprint of objects (vocab.Phrase) placed at pixel ``centres``."""
    return Footprint(centres, [reach(p.shape, p.size, size) for p in phrases], size, per_pixel)
