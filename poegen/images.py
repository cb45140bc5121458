"""Image and mask helpers shared by the core, the experts and the editing route (torch only)."""
from __future__ import annotations

from pathlib import Path

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


def _missing(e: ImportError) -> str:
    """The package an ImportError lacks ("imageio" for a missing imageio.v3 too)."""
    return (e.name or "imageio").split(".")[0]


def mp4_writer():
    """``encode(frames, fps, comment) -> bytes``: (H, W, 3) uint8 frames as an H.264 MP4 through imageio's ffmpeg
    plugin (the ``video`` extra); a short error naming the extra when it is not installed."""
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin needs it; it brings the ffmpeg binary)
    except ImportError as e:
        raise ValueError(f"writing .mp4 needs imageio with ffmpeg ({_missing(e)} is not installed): pip install "
                         "'poegen[video]' (imageio, imageio-ffmpeg), or write a .gif") from None

    def encode(frames, fps: float, comment: str = "") -> bytes:
        import numpy as np
        return iio.imwrite("<bytes>", np.stack(frames), extension=".mp4", plugin="FFMPEG", fps=fps,
                           output_params=["-metadata", f"comment={comment}"] if comment else None)
    return encode


def _looked(path, what: str):
    """FileNotFoundError naming what was asked for and the absolute path looked at."""
    return FileNotFoundError(f"{what} {path}: no such file (looked for {Path(path).absolute()})")


def _pixels(array) -> Tensor:
    """(H, W, 3) or (F, H, W, 3) uint8 as channels-first floats in [-1, 1]."""
    import torch
    x = torch.tensor(array).float() / 127.5 - 1  # a copy: PIL's arrays are read-only
    return x.permute(2, 0, 1) if x.dim() == 3 else x.permute(3, 0, 1, 2)


def read_image(path, what: str = "image") -> Tensor:
    """An RGB image file as (3, H, W) in [-1, 1]; errors name ``what`` and the file."""
    import numpy as np
    from PIL import Image

    if not Path(path).is_file():
        raise _looked(path, what)
    try:
        with Image.open(path) as im:
            return _pixels(np.asarray(im.convert("RGB")))
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot read it as an image ({type(e).__name__})") from None


def read_video(path, what: str = "video") -> Tensor:
    """A clip as (3, F, H, W) in [-1, 1]: a GIF, an MP4 (imageio with ffmpeg, the ``video`` extra) or a folder of
    PNG frames in name order; errors name ``what`` and the file."""
    import numpy as np
    from PIL import Image, ImageSequence

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"{what} {path}: the folder has no .png frames; give a folder of PNG frames (name order), "
                             "a .gif or an .mp4")
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        sizes = sorted({f.shape[1::-1] for f in frames})
        if len(sizes) > 1:
            raise ValueError(f"{what} {path}: frames of different sizes ({', '.join(f'{w}x{h}' for w, h in sizes)}); "
                             "give frames of one size")
        return _pixels(np.stack(frames))
    if not p.is_file():
        raise _looked(path, what)
    suffix = p.suffix.lower()
    if suffix == ".gif":
        with Image.open(p) as im:
            return _pixels(np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]))
    if suffix == ".mp4":
        try:
            import imageio.v3 as iio
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise ValueError(f"{what} {path}: reading .mp4 needs imageio with ffmpeg ({_missing(e)} is not "
                             "installed): pip install 'poegen[video]', or give a .gif or a folder of PNG frames") from None
        return _pixels(np.ascontiguousarray(iio.imread(p, plugin="FFMPEG")[..., :3]))
    raise ValueError(f"{what} {path}: expected a .gif, an .mp4 or a folder of PNG frames")
