"""Log-space weights, effective sample size and resampling schemes registered by name.

Every scheme maps unnormalised log-weights ``(N,)`` to ancestor indices ``(n,)`` without a
host synchronisation, so the engine can resample conditionally on a GPU with ``torch.where``.
Cumulative sums are taken in float64 and renormalised so the last entry is exactly 1: a float32
sum that stops short of 1 can neither run off the end nor pick a zero-weight particle.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

Resampler = Callable[[Tensor, Optional[torch.Generator], Optional[int]], Tensor]
RESAMPLERS: Dict[str, Resampler] = {}


def normalize(log_w: Tensor) -> Tensor:
    """Normalised weights ``w`` from unnormalised log-weights (all -inf gives NaN: check first)."""
    return torch.softmax(log_w, dim=-1)


def ess(log_w: Tensor) -> Tensor:
    """Effective sample size (sum w)^2 / sum w^2, computed in log space; 0 when all are -inf."""
    out = torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))
    return torch.nan_to_num(out, nan=0.0)


def register(name: str):
    """Decorator adding a resampling scheme to ``RESAMPLERS`` under ``name``."""
    def deco(fn: Resampler) -> Resampler:
        RESAMPLERS[name] = fn
        return fn
    return deco


def get(name: str) -> Resampler:
    """The resampling scheme called ``name``; an unknown name lists the known ones."""
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown resampling scheme {name!r}; known: {', '.join(sorted(RESAMPLERS))}") from None


def _cdf(log_w: Tensor) -> Tensor:
    """Float64 cumulative distribution of the weights whose last entry is exactly 1."""
    w = torch.exp(log_w.double() - log_w.double().max())
    c = torch.cumsum(w, 0)
    return c / c[-1]


def _invert(log_w: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF lookup of sorted uniforms ``u`` in [0, 1); zero weights are never returned."""
    idx = torch.searchsorted(_cdf(log_w), u.double(), right=True)
    return idx.clamp_(max=log_w.shape[0] - 1)


def _uniform(n: int, generator, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


@register("systematic")
def systematic(log_w: Tensor, generator: Optional[torch.Generator] = None, n: Optional[int] = None) -> Tensor:
    """Systematic resampling: one uniform shared by n evenly spaced points (Carpenter et al., 1999)."""
    n = n or log_w.shape[0]
    u = (_uniform(1, generator, log_w.device) + torch.arange(n, device=log_w.device)) / n
    return _invert(log_w, u)


@register("stratified")
def stratified(log_w: Tensor, generator: Optional[torch.Generator] = None, n: Optional[int] = None) -> Tensor:
    """Stratified resampling: one independent uniform in each of n equal strata (Kitagawa, 1996)."""
    n = n or log_w.shape[0]
    u = (_uniform(n, generator, log_w.device) + torch.arange(n, device=log_w.device)) / n
    return _invert(log_w, u)


@register("multinomial")
def multinomial(log_w: Tensor, generator: Optional[torch.Generator] = None, n: Optional[int] = None) -> Tensor:
    """Multinomial resampling: n i.i.d. draws from the weights."""
    n = n or log_w.shape[0]
    w = torch.exp(log_w.double() - log_w.double().max())
    return torch.multinomial(w, n, replacement=True, generator=generator)


@register("residual")
def residual(log_w: Tensor, generator: Optional[torch.Generator] = None, n: Optional[int] = None) -> Tensor:
    """Residual resampling: floor(n w_i) copies of each particle, the rest drawn multinomially (Liu & Chen, 1998)."""
    n = n or log_w.shape[0]
    w = torch.exp(log_w.double() - torch.logsumexp(log_w.double(), 0))
    counts = torch.floor(n * w)
    rest = n * w - counts
    rest = torch.where(rest.sum() > 0, rest, torch.ones_like(rest))  # all copies deterministic: draws unused
    drawn = torch.multinomial(rest, n, replacement=True, generator=generator)
    total = torch.cumsum(counts, 0)
    j = torch.arange(n, device=log_w.device, dtype=torch.float64)
    fixed = torch.searchsorted(total, j, right=True).clamp_(max=log_w.shape[0] - 1)
    n_fixed = total[-1]
    return torch.where(j < n_fixed, fixed, drawn[(j - n_fixed).clamp(min=0).long()])
