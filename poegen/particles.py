"""Particle state: positions, log-weights and per-particle auxiliaries that resample together."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import Tensor


@dataclass
class Particles:
    """N particles: ``x`` (N, *shape), unnormalised ``log_w`` (N,), running ``log_Z`` and ``aux``.

    ``aux`` holds every per-particle tensor (cached denoised estimate, scores, potentials...);
    ``take(idx)`` indexes all of them at once, so nothing per-particle can fall out of step.
    """

    x: Tensor
    log_w: Tensor
    log_Z: Tensor = field(default_factory=lambda: torch.zeros(()))
    aux: Dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx: Tensor) -> "Particles":
        """The particles at ancestor indices ``idx`` (x, log_w and every aux tensor)."""
        return Particles(self.x[idx], self.log_w[idx], self.log_Z, {k: v[idx] for k, v in self.aux.items()})

    def replace(self, **changes) -> "Particles":
        """A copy with some fields replaced; ``aux`` entries given by name are merged in."""
        aux = dict(self.aux)
        aux.update(changes.pop("aux", {}))
        return Particles(changes.pop("x", self.x), changes.pop("log_w", self.log_w),
                         changes.pop("log_Z", self.log_Z), aux)
