"""The shapes world in motion: an expert that tracks a phrase through a clip, the image prior applied to every
frame at the phrase's place in that frame (or, with ``temporal``, the video prior).

``TrackedExpert(net, phrase, track)`` denoises clips x (N, 3, F, H, W) by folding the frames into the batch and giving
frame f the phrase expert at ``track[f]`` (pixel (col, row) of the object's centre at that frame, e.g. a simulated
centroid from ``motion.trajectory``; NaN: anywhere); where ``visible[f]`` is False (out of view) frame f gets the
unconditional prior.
So a simulator drives the motion and the prior draws each frame. Experts of one network share one forward per
evaluation (``batch_key`` / ``denoise_batch``): E experts, N clips and F frames in one batch of E*N*F images (experts
with the same phrase and track computed once).

``TrackedExpert(net, None, track, temporal=video)`` is the video prior (``video.TemporalNet``): the unconditional
frames corrected by the learned space-time network, so frames are no longer independent.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ...hardware import autocast, check_dtype
from ...product import PerFrame
from .model import ShapesDenoiser, forward, phrase_ids, position_map
from .video import TemporalNet
from .vocab import Phrase, parse_phrase


class TrackedExpert:
    """Generative expert p(clip | phrase, track) = prod_f p_prior(frame_f | phrase, track[f]) (frames independent
    given the track), in the engine's VE convention on clips (3, F, H, W)."""

    def __init__(self, net: ShapesDenoiser, phrase: Phrase | str | None, track: Tensor,
                 visible: Optional[Tensor] = None, dtype: str = "auto", name: Optional[str] = None,
                 temporal: Optional[TemporalNet] = None):
        if isinstance(phrase, str):
            phrase = parse_phrase(phrase)
        track = torch.as_tensor(track, dtype=torch.float32)
        if track.dim() != 2 or track.shape[1] != 2 or len(track) < 1:
            raise ValueError(f"TrackedExpert: track must be (frames, 2) pixel positions, got shape {tuple(track.shape)}")
        self.net, self.phrase, self.track, self.temporal = net, phrase, track, temporal
        self.dtype = check_dtype(dtype)
        self.sigma_min, self.sigma_max = float(net.config["sigma_min"]), float(net.config["sigma_max"])
        size, F = net.config["image_size"], len(track)
        self.shape = (3, F, size, size)
        seen = torch.ones(F, dtype=torch.bool) if visible is None else torch.as_tensor(visible, dtype=torch.bool)
        if seen.shape != (F,):
            raise ValueError(f"TrackedExpert: visible has shape {tuple(seen.shape)} for a track of {F} frames")
        self.ids = torch.tensor([phrase_ids(phrase if v else None) for v in seen.tolist()], dtype=torch.long)
        # the pixel position per frame (None out of view or NaN); (F, 1, H, W) maps, zero where None
        self.places = [p if v and not any(math.isnan(c) for c in p) else None
                       for p, v in zip(track.tolist(), seen.tolist())]
        self.pos_map = position_map(self.places, size, net.config["blob_sigma_px"])
        kind = "shapes-tracked" if temporal is None else "shapes-video"
        self.name = name or f"{kind}[{phrase if phrase is not None else 'null'}]"

    @property
    def batch_key(self):
        return (TrackedExpert, id(self.net), self.dtype, self.shape)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise_batch([self], x, sigma)[0]

    @classmethod
    def denoise_batch(cls, experts, x: Tensor, sigma: Tensor):
        """x0_hat of several clip experts in one forward of the prior: clips (N, 3, F, H, W) folded to frames."""
        first = experts[0]
        n, F = x.shape[0], x.shape[2]
        if x.dim() != 5 or F != first.shape[1]:
            raise ValueError(f"{first.name}: expected clips (N, 3, {first.shape[1]}, H, W), got {tuple(x.shape)}")
        dev = next(first.net.parameters()).device
        xd = x.to(dev, torch.float32)
        frames = PerFrame.fold(xd)  # (N*F, 3, H, W), clip by clip
        unique, which = [], []  # experts with distinct (phrase ids, position maps): one forward each
        for e in experts:
            u = next((k for k, o in enumerate(unique) if e.ids.equal(o.ids) and e.pos_map.equal(o.pos_map)), None)
            if u is None:
                unique.append(e)
                u = len(unique) - 1
            which.append(u)
        E = len(unique)
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=dev).reshape(-1).expand(n)
        ids = torch.cat([e.ids.to(dev).repeat(n, 1) for e in unique])
        pos = torch.cat([e.pos_map.to(dev).repeat(n, 1, 1, 1) for e in unique])
        out = forward(first.net, first.dtype, frames.repeat(E, 1, 1, 1), sig.repeat_interleave(F).repeat(E), ids,
                      pos).clamp(-1, 1)
        out = out.reshape(E, n, F, *out.shape[1:]).transpose(2, 3)  # (E, N, 3, F, H, W)
        results = []
        for e, u in zip(experts, which):
            x0 = out[u]
            if e.temporal is not None:
                with autocast(e.dtype, dev):
                    x0 = e.temporal.correct(xd, x0, sig).float().clamp(-1, 1)
            results.append(x0.to(x.device, x.dtype))
        return results

    def __repr__(self) -> str:
        return f"TrackedExpert({self.name}, {self.shape[1]} frames)"

