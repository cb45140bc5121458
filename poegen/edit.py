"""Editing: objects inserted into a given image, placed by a user's mask or by physics, with the background kept.

An edit is a Layout like any other (``poegen.specs.edit_layout`` reads one): the new objects, located by the mask
or by their simulated footprints, plus, for a scene, the objects already in the image marked ``known`` (asked
about, not drawn), and ``Layout.edit``: this module's ``Edit``, the image and the mask of pixels to repaint. Every family adds the ``KnownPixels``
potential of the image outside the mask; inpainting kinds (``sd-inpaint``, ``flux-fill``) also take both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .images import dilate  # noqa: F401  (the edit route's mask growing, kept importable here)


@dataclass
class Edit:
    image: Tensor              # (3, H, W) in [-1, 1]
    mask: Tensor               # (H, W) in {0, 1}: 1 where the image may change
    noise: float = 0.05        # the KnownPixels likelihood's noise scale

    def known_pixels(self):
        from .experts.known import KnownPixels
        return KnownPixels(self.image, 1 - self.mask, self.noise)

    def resized(self, h: int, w: int) -> "Edit":
        """The image (bilinear) and the mask (nearest) at h x w."""
        image = F.interpolate(self.image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(self.mask[None, None], size=(h, w), mode="nearest")[0, 0]
        return Edit(image, mask, self.noise)


def load_image(path) -> Tensor:
    """An RGB image file as (3, H, W) in [-1, 1]."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    except Exception as e:
        raise ValueError(f"{path}: cannot read it as an image ({type(e).__name__})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1) / 127.5 - 1


def load_mask(path, size: Tuple[int, int]) -> Tensor:
    """A mask file (white = repaint) as (H, W) in {0, 1}; it must match the image's size and mark something."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file {path} does not exist")
    grey = np.asarray(Image.open(path).convert("L"))
    if grey.shape != tuple(size):
        raise ValueError(f"--mask {path} is {grey.shape[1]}x{grey.shape[0]}, the image {size[1]}x{size[0]}; give a "
                         "mask of the image's size")
    mask = torch.from_numpy((grey > 127).astype(np.float32))
    if not mask.any():
        raise ValueError(f"--mask {path} is empty: paint the region to change white")
    return mask


def replaces_known(product) -> bool:
    """Whether an edit replaces the kept pixels by default: where its samples are pixels (it measured better than
    the KnownPixels weights alone, see README); latent models inpaint with their own experts."""
    return product.edit is not None and product.decode is None


def background_mse(edited: Tensor, edit: Edit) -> float:
    """Mean squared difference to the given image outside the mask ([-1, 1] scale)."""
    keep = (1 - edit.mask).to(edited.device)
    return float((((edited - edit.image.to(edited.device)) ** 2) * keep).sum() / (keep.sum() * edited.shape[0]))


__all__ = ["Edit", "load_image", "load_mask", "dilate", "background_mse", "replaces_known"]


