"""The physics expert: pybullet decides where the objects of a scene spec end up.

It simulates the spec (DIRECT mode, a bounded number of steps), renders the final layout through
the spec's camera with the shapes world's rasteriser, and supplies (a) per-object pixel positions
and masks that condition position experts, (b) a layout potential comparing a generated image with
the simulated layout (pluggable comparator; default: soft colour-mask agreement) and (c) an optional
hard constraint that is -inf when an object's colour centroid is beyond a tolerance.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .scene import SceneSpec, simulate_scene
from .shapes.world import FLOOR_FRACTION, VIEW_WIDTH

Comparator = Callable[[Tensor, Tensor, Tensor], Tensor]  # (images, masks, colours) -> (N, K) agreement in [0, 1]


def at_size(images: Tensor, size) -> Tensor:
    """Images in [-1, 1] resized (bilinear) to the simulation camera's (H, W), where they differ."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.nn.functional.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)


def colour_membership(images: Tensor, colours: Tensor, temperature: float = 0.3) -> Tensor:
    """(N, K, H, W) soft membership of each pixel in each object's colour (images in [-1, 1])."""
    d2 = ((images[:, None] - colours[None, :, :, None, None]) ** 2).sum(2)
    return torch.exp(-d2 / (2 * temperature ** 2))


def dice_agreement(images: Tensor, masks: Tensor, colours: Tensor) -> Tensor:
    """Soft Dice overlap (N, K) between each simulated mask and the pixels of that object's colour; masks are
    (K, H, W), or (N, K, H, W) for one set per image (a clip's frames)."""
    m = colour_membership(images, colours)
    inter = (m * masks).flatten(-2).sum(-1)
    return 2 * inter / (m.flatten(-2).sum(-1) + masks.flatten(-2).sum(-1) + 1e-6)


def colour_centroids(images: Tensor, colours: Tensor):
    """Each object's colour-segmented centroid (N, K, 2) in pixel (col, row) and its soft pixel mass (N, K)."""
    m = colour_membership(images, colours)
    H, W = m.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(H, device=images.device), torch.arange(W, device=images.device),
                                indexing="ij")
    mass = m.flatten(2).sum(-1)
    c = torch.stack([(m * cols).flatten(2).sum(-1), (m * rows).flatten(2).sum(-1)], -1) / (mass[..., None] + 1e-6)
    return c, mass


class LayoutPotential:
    """sum_k log(floor + agreement_k): high when every object's colour fills its simulated mask."""

    def __init__(self, masks: Tensor, colours: Tensor, comparator: Comparator = dice_agreement,
                 floor: float = 0.05, name: str = "physics-layout"):
        self.masks, self.colours, self.comparator, self.floor, self.name = masks, colours, comparator, floor, name

    def log_potential(self, x0: Tensor) -> Tensor:
        images = at_size(x0.float().clamp(-1, 1), self.masks.shape[-2:])  # the camera may differ from the model
        agree = self.comparator(images, self.masks.to(x0.device), self.colours.to(x0.device))
        return torch.log(self.floor + agree).sum(1).to(x0.dtype)


class CentroidConstraint:
    """Hard constraint: -inf unless every object's colour centroid lies within ``tolerance`` px of the
    simulated one. It acts at the last noise level only (an earlier one would prune whole paths)."""

    def __init__(self, positions: List[Tuple[float, float]], colours: Tensor, tolerance: float = 2.0,
                 name: str = "physics-hard", size=None):
        self.positions, self.size = torch.tensor(positions, dtype=torch.float32), size
        self.colours, self.tolerance, self.name = colours, tolerance, name
        self.schedule = lambda t: float(t >= 1.0)

    def log_potential(self, x0: Tensor) -> Tensor:
        images = x0.float().clamp(-1, 1)
        c, mass = colour_centroids(images if self.size is None else at_size(images, self.size), self.colours.to(x0.device))
        ok = ((c - self.positions.to(x0.device)).norm(dim=-1) <= self.tolerance) & (mass >= 2.0)
        return torch.where(ok.all(1), 0.0, -math.inf).to(x0.dtype)


def depth_map(scene, masks: Tensor, size: int) -> Tensor:
    """(H, W) nearness map in [0, 1] of the orthographic side view (1 = nearest) of a shapes Scene with its rendered
    masks, the control image for a depth ControlNet: prisms show their flat front face, balls their spherical bulge."""
    from .shapes.render import world_to_pixel

    H = W = size
    near = torch.zeros(H, W)
    near[round(H * (1 - FLOOR_FRACTION)):] = 0.2  # the floor strip
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    for o, m in zip(scene.objects, masks):
        if o.shape == "ball":
            c, r = world_to_pixel(o.x, o.y, H)
            radius = o.extent / 2 * W / VIEW_WIDTH
            bulge = (1 - ((cols - float(c)) ** 2 + (rows - float(r)) ** 2) / radius ** 2).clamp(min=0).sqrt()
            value = 0.8 + 0.2 * bulge
        else:
            value = torch.full((H, W), 0.8)
        near = torch.where(m > 0.5, value, near)
    return near


class PhysicsExpert:
    """A simulated scene spec: final poses, rendered masks, positions, and the potentials built on them."""

    def __init__(self, spec: SceneSpec, until: Optional[float] = None):
        from .shapes.render import centroid, render, to_unit
        from .shapes.world import COLOURS

        self.spec = spec
        self.scene = simulate_scene(spec, until)
        image, masks = render(self.scene, spec.camera.resolution)
        self.image, self.masks = torch.from_numpy(image), torch.from_numpy(masks)
        self.positions = [centroid(m) if m.sum() > 0.5 else None for m in masks]
        self.visible = [k for k, p in enumerate(self.positions) if p is not None]  # objects in view
        self.colours = torch.from_numpy(np.stack([to_unit(COLOURS[o.colour]) for o in self.scene.objects]))

    def depth(self) -> Tensor:
        """(H, W) nearness map in [0, 1] of the simulated scene (``depth_map``)."""
        return depth_map(self.scene, self.masks, self.spec.camera.resolution)

    def layout_potential(self, comparator: Comparator = dice_agreement) -> LayoutPotential:
        return LayoutPotential(self.masks, self.colours, comparator)

    def hard_constraint(self, tolerance: float = 2.0) -> CentroidConstraint:
        return CentroidConstraint([self.positions[k] for k in self.visible], self.colours[self.visible], tolerance,
                                  size=tuple(self.masks.shape[-2:]))
