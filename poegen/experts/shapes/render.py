"""The shapes world's own rasteriser: a fixed side-view camera, flat colours, optional anti-aliasing.

Pixel coordinates are (col, row) with the centre of pixel [row, col] at (col, row); row 0 is the top.
Images are float32 (3, H, W) in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .world import BACKGROUND, COLOURS, FLOOR, FLOOR_FRACTION, VIEW_WIDTH, Scene, SceneObject, world_outline


def to_unit(rgb) -> np.ndarray:
    """A 0..255 RGB triple as a float vector in [-1, 1]."""
    return np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0


def pixels_per_unit(width: int = 32) -> float:
    """Image pixels per world unit for an image `width` pixels wide."""
    return width / VIEW_WIDTH


def world_to_pixel(x, y, size: int = 32):
    """World (x, y) to continuous pixel (col, row) coordinates (pixel centres at integers)."""
    ppu = pixels_per_unit(size)
    col = (np.asarray(x) + VIEW_WIDTH / 2) * ppu - 0.5
    row = size * (1 - FLOOR_FRACTION) - np.asarray(y) * ppu - 0.5
    return col, row


def pixel_to_world(col, row, size: int = 32):
    """Inverse of `world_to_pixel`."""
    ppu = pixels_per_unit(size)
    x = (np.asarray(col) + 0.5) / ppu - VIEW_WIDTH / 2
    y = (size * (1 - FLOOR_FRACTION) - np.asarray(row) - 0.5) / ppu
    return x, y


def _inside_distance(o: SceneObject, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """A signed distance-like function of the object's outline: <= 0 inside (exact inside, a lower bound
    outside for the polygons: the largest signed distance to an edge's line)."""
    if o.shape == "ball":
        return np.sqrt((X - o.x) ** 2 + (Y - o.y) ** 2) - o.extent / 2
    poly = world_outline(o)
    d = np.full(np.broadcast(X, Y).shape, -np.inf)
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):  # convex CCW polygon: inside is left of every edge
        e = b - a
        d = np.maximum(d, ((b[1] - a[1]) * (X - a[0]) - (b[0] - a[0]) * (Y - a[1])) / np.hypot(*e))
    return d


def _object_mask(o: SceneObject, size: int, ss: int, morph: tuple | None = None) -> np.ndarray:
    """Binary coverage of one object on the supersampled (size*ss, size*ss) grid.

    ``morph = (other_shape, t, kind)`` draws a shape that is neither: "blend" mixes the two outlines'
    distance functions with weight t on the other shape; "split" draws the other shape on the object's
    upper half (its own frame) and the object's shape on the lower half. (The scorer's training uses
    these as distractors that match no phrase.)"""
    n = size * ss
    ppu = pixels_per_unit(size)
    if morph is None and o.shape != "ball":
        poly = world_outline(o)
        (lo_x, lo_y), (hi_x, hi_y) = poly.min(0), poly.max(0)
    else:  # a ball; a morph's box covers the ball, the box's diagonal and the wedge's corners
        r = o.extent / 2 if morph is None else o.extent * 1.2
        lo_x, hi_x, lo_y, hi_y = o.x - r, o.x + r, o.y - r, o.y + r
    # bounding box on the fine grid (sub-pixel centres at (k + 0.5) / ss in pixel-edge units)
    c0 = int(np.clip(np.floor((lo_x + VIEW_WIDTH / 2) * ppu * ss), 0, n))
    c1 = int(np.clip(np.ceil((hi_x + VIEW_WIDTH / 2) * ppu * ss) + 1, 0, n))
    top = size * (1 - FLOOR_FRACTION)
    r0 = int(np.clip(np.floor((top - hi_y * ppu) * ss), 0, n))
    r1 = int(np.clip(np.ceil((top - lo_y * ppu) * ss) + 1, 0, n))
    mask = np.zeros((n, n), dtype=bool)
    if c1 <= c0 or r1 <= r0:
        return mask
    u = (np.arange(c0, c1) + 0.5) / ss  # pixel-edge units
    v = (np.arange(r0, r1) + 0.5) / ss
    X = (u / ppu - VIEW_WIDTH / 2)[None, :]
    Y = ((top - v) / ppu)[:, None]
    if morph is None:
        inside = _inside_distance(o, X, Y) <= 0
    else:
        other, t, kind = morph
        d_own, d_other = _inside_distance(o, X, Y), _inside_distance(replace(o, shape=other), X, Y)
        if kind == "blend":
            inside = (1 - t) * d_own + t * d_other <= 0
        elif kind == "split":
            up = -math.sin(o.angle) * (X - o.x) + math.cos(o.angle) * (Y - o.y) > 0
            inside = np.where(up, d_other, d_own) <= 0
        else:
            raise ValueError(f"morph kind {kind!r} is not 'blend' or 'split'")
    mask[r0:r1, c0:c1] = inside
    return mask


def _downsample(a: np.ndarray, ss: int) -> np.ndarray:
    """Box-filter the last two axes by a factor ss."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // ss, ss, w // ss, ss).mean(axis=(-3, -1))


def render(scene: Scene, size: int = 32, antialias: bool = True, supersample: int = 4, morphs: dict | None = None):
    """Render a scene: returns (image (3, size, size) float32 in [-1, 1], masks (K, size, size) coverage).

    ``morphs`` maps object indices to ``(other_shape, t, kind)``: those objects are drawn as shapes
    between their own and the other (see ``_object_mask``)."""
    ss = supersample if antialias else 1
    n = size * ss
    img = np.empty((3, n, n), dtype=np.float32)
    img[:] = to_unit(BACKGROUND)[:, None, None]
    floor_row = int(round(size * (1 - FLOOR_FRACTION) * ss))
    img[:, floor_row:, :] = to_unit(FLOOR)[:, None, None]
    masks = np.zeros((len(scene.objects), n, n), dtype=np.float32)
    for k, o in enumerate(scene.objects):
        m = _object_mask(o, size, ss, (morphs or {}).get(k))
        img[:, m] = to_unit(COLOURS[o.colour])[:, None]
        masks[k] = m
    for k in range(len(masks)):  # later objects paint over earlier ones
        masks[k] *= ~np.any(masks[k + 1:] > 0, axis=0)
    if ss > 1:
        img, masks = _downsample(img, ss), _downsample(masks, ss)
    return img.astype(np.float32), masks.astype(np.float32)


def centroid(mask: np.ndarray):
    """Coverage-weighted centroid (col, row) of a (H, W) mask."""
    rows, cols = np.indices(mask.shape)
    w = mask.sum()
    return float((cols * mask).sum() / w), float((rows * mask).sum() / w)


def to_uint8(img) -> np.ndarray:
    """A (3, H, W) image in [-1, 1] (numpy or torch) as an (H, W, 3) uint8 array."""
    a = img.detach().float().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    return np.clip((a.transpose(1, 2, 0) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def grid(images, ncol: int = 8, pad: int = 2, scale: int = 4) -> np.ndarray:
    """Tile (N, 3, H, W) images in [-1, 1] into one (rows, cols, 3) uint8 array, upscaled by `scale`."""
    tiles = [to_uint8(im) for im in images]
    h, w = tiles[0].shape[:2]
    nrow = (len(tiles) + ncol - 1) // ncol
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = t
    return out.repeat(scale, axis=0).repeat(scale, axis=1)
