"""Image and mask helpers shared by the core, the experts and the editing route (torch only)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dilate(mask: Tensor, pixels: int) -> Tensor:
    """The (H, W) mask grown by ``pixels`` in every direction (a square structuring element)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask[None, None], 2 * pixels + 1, stride=1, padding=pixels)[0, 0]


def resize(image: Tensor, h: int, w: int) -> Tensor:
    """An (H, W) map resized to (h, w): area-averaged when shrinking, bilinear when growing."""
    x = image.float()[None, None]
    if h <= x.shape[-2] and w <= x.shape[-1]:
        return F.adaptive_avg_pool2d(x, (h, w))[0, 0]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
