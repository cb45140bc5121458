"""Deterministic ground-truth reader of shapes-world images.

Every pixel is unmixed against the palette: c = b + alpha (p - b) for a background colour b (sky or
floor) and a palette colour p, keeping the best (p, b) and its coverage alpha. Pixels with alpha > 0.5
form per-colour 4-connected components; each component's shape is the best of the ball / box / wedge
templates fitted to its coverage map (centroid and area from the map, angle by grid search), and its
size is the nearest nominal size. A component that no template fits well is tried as two touching
objects of one colour, cut along a row or a column; the cut is kept only when both parts fit well.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ...images import dilate
from .render import pixels_per_unit, pixel_to_world, to_uint8
from .world import BACKGROUND, COLOURS, COLOUR_NAMES, FLOOR, SIZES, WEDGE_SCALE, wedge_vertices

PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
BACKGROUNDS = np.array([BACKGROUND, FLOOR], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    """One object read from an image (pixel units; centroid is (col, row))."""

    colour: str
    shape: str
    size: str
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]  # (row0, col0, row1, col1), inclusive-exclusive
    area: float  # coverage-weighted, in pixels
    angle: float  # fitted CCW angle (radians)
    fit_error: float  # mean absolute coverage error of the best template (0 = perfect)

    @property
    def x(self) -> float:
        """World x of the centroid."""
        return float(pixel_to_world(*self.centroid, size=self._size)[0])

    @property
    def y(self) -> float:
        """World y of the centroid."""
        return float(pixel_to_world(*self.centroid, size=self._size)[1])

    _size: int = 32
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # (H, W) bool component

    def rests_on(self, other: "Detection") -> bool:
        """True when this object's pixels touch `other` from above more than from the side."""
        if self.mask is None or other.mask is None or self.centroid[1] >= other.centroid[1]:
            return False
        a, b = self.mask, other.mask
        below = (a[:-1] & b[1:]).sum() + (a[:-1, :-1] & b[1:, 1:]).sum() + (a[:-1, 1:] & b[1:, :-1]).sum()
        side = (a[:, :-1] & b[:, 1:]).sum() + (a[:, 1:] & b[:, :-1]).sum()
        return bool(below > 0 and below >= side)


def unmix(image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel (colour index (H,W), coverage alpha (H,W), residual (H,W)) of a (3,H,W) image in [-1,1]."""
    c = to_uint8(image).astype(np.float32)  # (H, W, 3)
    b = BACKGROUNDS[None, None, None, :, :]  # (1,1,1,M,3)
    d = PALETTE[None, None, :, None, :] - b  # (1,1,K,M,3)
    rel = c[:, :, None, None, :] - b
    alpha = np.clip((rel * d).sum(-1) / (d * d).sum(-1), 0.0, 1.0)  # (H,W,K,M)
    resid = np.linalg.norm(rel - alpha[..., None] * d, axis=-1)
    h, w, k, m = resid.shape
    flat = resid.reshape(h, w, k * m)
    best = flat.argmin(-1)
    res = np.take_along_axis(flat, best[..., None], -1)[..., 0]
    a = np.take_along_axis(alpha.reshape(h, w, k * m), best[..., None], -1)[..., 0]
    return best // m, a, res


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean (H,W) mask, each as an (n, 2) array of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    h, w = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, comp = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            comp.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(np.array(comp))
    return out


def _polygon_coverage(verts: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Inside test of convex CCW polygons verts (A, K, 2) at points pts (P, 2) -> (A, P) bool."""
    inside = np.ones((verts.shape[0], pts.shape[0]), dtype=bool)
    nxt = np.roll(verts, -1, axis=1)
    for k in range(verts.shape[1]):
        a, b = verts[:, k, None, :], nxt[:, k, None, :]
        inside &= (b[..., 0] - a[..., 0]) * (pts[None, :, 1] - a[..., 1]) - \
                  (b[..., 1] - a[..., 1]) * (pts[None, :, 0] - a[..., 0]) >= 0
    return inside


def _fit_shape(cov: np.ndarray, r0: int, c0: int, cx: float, cy: float, area: float, ss: int = 4):
    """Best (shape, angle, extent_px, error) template for the coverage patch `cov` at offset (r0, c0)."""
    h, w = cov.shape
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    rows = (np.arange(h)[:, None] + sub[None, :]).reshape(-1) + r0
    cols = (np.arange(w)[:, None] + sub[None, :]).reshape(-1) + c0
    # points in a y-up frame centred on the centroid (pixel units)
    X = (cols[None, :] - cx).repeat(len(rows), 0).reshape(-1)
    Y = (cy - rows[:, None]).repeat(len(cols), 1).reshape(-1)
    pts = np.stack([X, Y], -1)

    def coverage(inside: np.ndarray) -> np.ndarray:
        """(A, P) inside flags -> (A, h, w) pixel coverage."""
        return inside.reshape(-1, h, ss, w, ss).mean(axis=(2, 4))

    results = []
    r = np.sqrt(area / np.pi)  # ball
    ball = coverage((X**2 + Y**2 <= r * r)[None])
    results.append(("ball", 0.0, 2 * r, np.abs(ball[0] - cov).mean()))
    side = np.sqrt(area)  # box
    angs = np.deg2rad(np.arange(0, 90, 3.0))
    sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * side / 2
    for name, base, angs, ext in (("box", sq, angs, side),
                                  ("wedge", wedge_vertices(np.sqrt(2 * area)), np.deg2rad(np.arange(0, 360, 5.0)),
                                   np.sqrt(2 * area) / WEDGE_SCALE)):
        cs, sn = np.cos(angs), np.sin(angs)
        rot = np.stack([np.stack([cs, -sn], -1), np.stack([sn, cs], -1)], -2)  # (A, 2, 2)
        verts = np.einsum("aij,kj->aki", rot, base)
        err = np.abs(coverage(_polygon_coverage(verts, pts)) - cov[None]).mean(axis=(1, 2))
        i = int(err.argmin())
        results.append((name, float(angs[i]), ext, float(err[i])))
    return min(results, key=lambda t: t[3])


SPLIT_ERROR = 0.06  # a component fitted worse than this may be two touching objects of one colour


def _fit_patch(cov: np.ndarray, r0: int, c0: int):
    """(cx, cy, area, shape, angle, extent_px, error) of the best template for a coverage patch."""
    area = float(cov.sum())
    rr, cc = np.indices(cov.shape)
    cy, cx = float((rr * cov).sum() / area) + r0, float((cc * cov).sum() / area) + c0
    return (cx, cy, area, *_fit_shape(cov, r0, c0, cx, cy, area))


def _read(cov: np.ndarray, r0: int, c0: int, min_area: float, depth: int = 2) -> list:
    """Objects of one same-colour component as [(fit, part)]: one template, or, when that fits badly, the
    straight cut (a row or a column boundary) into two parts that each fit a template well (touching
    objects of one colour: a stack, or neighbours), applied again to each part up to ``depth`` times."""
    single = _fit_patch(cov, r0, c0)
    if single[-1] <= SPLIT_ERROR or depth == 0:
        return [(single, cov > 0)]
    best = None
    for axis in (0, 1):
        index = np.indices(cov.shape)[axis]  # row or column of every pixel
        for cut in range(1, cov.shape[axis]):
            a, b = np.where(index < cut, cov, 0.0), np.where(index < cut, 0.0, cov)
            if a.sum() < min_area or b.sum() < min_area:
                continue
            err = _fit_patch(a, r0, c0)[-1] + _fit_patch(b, r0, c0)[-1]
            if best is None or err < best[0]:
                best = (err, a, b)
    if best is None or best[0] > 0.5 * single[-1]:
        return [(single, cov > 0)]
    parts = _read(best[1], r0, c0, min_area, depth - 1) + _read(best[2], r0, c0, min_area, depth - 1)
    return parts if all(fit[-1] <= SPLIT_ERROR for fit, _ in parts) else [(single, cov > 0)]


def detect(image, min_area: float = 6.0, min_alpha: float = 0.5, max_resid: float = 60.0,
           split: bool = True) -> list[Detection]:
    """Read every object of a (3,H,W) image in [-1,1] (numpy or torch); sorted left to right. With
    ``split=False`` touching objects of one colour are read as one (the reading before cuts were tried)."""
    label, alpha, resid = unmix(image)
    size = alpha.shape[1]
    ppu = pixels_per_unit(size)
    fg = (alpha > min_alpha) & (resid < max_resid)
    dets = []
    for k, name in enumerate(COLOUR_NAMES):
        for comp in components(fg & (label == k)):
            rmin, cmin = comp.min(0)
            rmax, cmax = comp.max(0) + 1
            # coverage patch with a 1-pixel rim of same-colour anti-aliased pixels
            r0, c0 = max(rmin - 1, 0), max(cmin - 1, 0)
            r1, c1 = min(rmax + 1, size), min(cmax + 1, size)
            cov = np.where((label[r0:r1, c0:c1] == k) & (resid[r0:r1, c0:c1] < max_resid), alpha[r0:r1, c0:c1], 0.0)
            inner = np.zeros_like(cov, dtype=bool)  # keep only the rim next to this component
            inner[comp[:, 0] - r0, comp[:, 1] - c0] = True
            grown = inner.copy()
            grown[1:] |= inner[:-1]; grown[:-1] |= inner[1:]; grown[:, 1:] |= inner[:, :-1]; grown[:, :-1] |= inner[:, 1:]
            cov = np.where(grown, cov, 0.0)
            if float(cov.sum()) < min_area:
                continue
            for (cx, cy, area, shape, angle, ext_px, err), part in _read(cov, r0, c0, min_area, depth=2 if split else 0):
                mask = np.zeros(alpha.shape, dtype=bool)
                mask[r0:r1, c0:c1] = part & inner
                rows, cols = np.nonzero(mask)
                ext = ext_px / ppu
                size_name = min(SIZES, key=lambda s: abs(np.log(SIZES[s] / ext)))
                bbox = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1) if len(rows) else \
                    (int(rmin), int(cmin), int(rmax), int(cmax))
                dets.append(Detection(name, shape, size_name, (cx, cy), bbox, area, angle, float(err), size, mask))
    return sorted(dets, key=lambda d: d.centroid[0])


MISFIT = 0.1  # a detection whose best template errs more than this is a blend or a fragment, not an object
FOREGROUND = 40.0  # RGB distance (0..255) from both backgrounds beyond which a pixel shows something


def unexplained(image, dets: list[Detection], misfit: float = MISFIT, foreground: float = FOREGROUND) -> int:
    """Pixels that show something (farther than ``foreground`` from the sky and the floor colours) but lie more
    than one pixel away from every detection that fits its template within ``misfit``: blends, slivers too small
    to detect, colours off the palette, and misfit components."""
    c = to_uint8(image).astype(np.float32)
    shows = np.linalg.norm(c[:, :, None, :] - BACKGROUNDS[None, None], axis=-1).min(-1) > foreground
    covered = np.zeros(shows.shape, dtype=bool)
    for d in dets:
        if d.mask is not None and d.fit_error <= misfit:
            covered |= d.mask
    grown = dilate(torch.from_numpy(covered).float(), 1).numpy() > 0  # anti-aliased rims, seams between objects
    return int((shows & ~grown).sum())


def one_to_one(phrases, dets: list[Detection]) -> bool:
    """Whether the detections are exactly the phrases' objects: as many, and each phrase (a vocab.Phrase or
    anything with colour, shape and size, None meaning any) matched to its own detection."""
    if len(phrases) != len(dets):
        return False

    def assign(i: int, free: frozenset) -> bool:
        if i == len(phrases):
            return True
        p = phrases[i]
        return any(all(v is None or getattr(dets[j], k) == v for k, v in
                       (("colour", p.colour), ("shape", p.shape), ("size", p.size))) and assign(i + 1, free - {j})
                   for j in free)
    return assign(0, frozenset(range(len(dets))))


def exactly(image, phrases, dets: list[Detection] | None = None) -> bool:
    """The image shows the phrases' objects and nothing else: one detection per phrase (``one_to_one``; skipped
    when ``phrases`` is None), every detection fitting its template, and no pixel left unexplained."""
    dets = detect(image) if dets is None else dets
    return (phrases is None or one_to_one(phrases, dets)) and all(d.fit_error <= MISFIT for d in dets) and unexplained(image, dets) == 0


def describe(dets: list[Detection]) -> str:
    """One line per detection, for logs and reports."""
    return "; ".join(f"{d.size} {d.colour} {d.shape} at ({d.centroid[0]:.1f}, {d.centroid[1]:.1f})" for d in dets)
