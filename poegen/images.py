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


def mp4_writer():
    """``encode(frames, fps, comment) -> bytes``: (H, W, 3) uint8 frames as an H.264 MP4 through imageio's ffmpeg
    plugin (the ``video`` extra); a short error naming the extra when it is not installed."""
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin needs it; it brings the ffmpeg binary)
    except ImportError as e:
        raise ValueError(f"writing .mp4 needs imageio with ffmpeg ({e.name} is not installed): pip install "
                         "'poegen[video]' (imageio, imageio-ffmpeg), or write a .gif") from None

    def encode(frames, fps: float, comment: str = "") -> bytes:
        import numpy as np
        return iio.imwrite("<bytes>", np.stack(frames), extension=".mp4", plugin="FFMPEG", fps=fps,
                           output_params=["-metadata", f"comment={comment}"] if comment else None)
    return encode
