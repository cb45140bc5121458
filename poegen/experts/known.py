"""The given image outside a mask, as a discriminative expert (editing): a Gaussian likelihood of the clean image
on the kept pixels, and the replacement variant that re-noises the kept pixels to the current level instead."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


class KnownPixels:
    """log N(y_kept; x0_kept, noise^2 I): the image ``y`` (C, H, W) on the pixels where ``keep`` (H, W) is 1.

    Normalised, so log Z of a product with it is the evidence of the kept pixels. ``paste`` is the replacement
    variant (RePaint-style, Lugmayr et al. 2022): the kept pixels of a state at noise sigma become y + sigma * eps."""

    def __init__(self, image: Tensor, keep: Tensor, noise: float = 0.05, name: str = "known-pixels"):
        if noise <= 0:
            raise ValueError(f"known pixels: noise {noise} must be > 0")
        self.image, self.keep = image.float(), keep.float().expand(image.shape)
        self.noise, self.name = float(noise), name
        self.count = float(self.keep.sum())

    def log_potential(self, x0: Tensor) -> Tensor:
        y, keep = self.image.to(x0.device), self.keep.to(x0.device)
        sq = (((x0.float() - y) ** 2) * keep).flatten(1).sum(1)
        return (-0.5 * sq / self.noise ** 2 - 0.5 * self.count * math.log(2 * math.pi * self.noise ** 2)).to(x0.dtype)

    def paste(self, x: Tensor, sigma: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """x with its kept pixels replaced by the image noised to ``sigma`` (VE: y + sigma * eps)."""
        if x.shape[1:] != self.image.shape:
            raise ValueError(f"replace_known works on the image itself: the samples are {tuple(x.shape[1:])}, the "
                             f"image {tuple(self.image.shape)}; use the KnownPixels potential instead (latent models)")
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        keep = self.keep.to(x.device, x.dtype)
        return keep * (self.image.to(x.device, x.dtype) + sigma * eps) + (1 - keep) * x
