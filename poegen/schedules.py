"""Sigma grids and conversions between the VE, VP and rectified-flow parameterisations.

The engine works in the variance-exploding form ``x = x0 + sigma * eps``. A VP model sees
``x_t = a x0 + s eps`` with ``sigma = s / a`` and input ``x * a``; a rectified-flow model sees
``x_t = (1 - t) x0 + t eps`` with ``sigma = t / (1 - t)`` and input ``x / (1 + sigma)``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

ArrayLike = Union[Tensor, Sequence[float]]


def karras(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """``num_steps + 1`` decreasing sigmas from sigma_max to sigma_min (Karras et al. 2022, eq. 5)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def vp_sigmas(alphas_cumprod: ArrayLike) -> Tensor:
    """VE sigma of every VP timestep: sqrt((1 - alpha_bar) / alpha_bar)."""
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - ab) / ab).sqrt()


def from_alphas_cumprod(alphas_cumprod: ArrayLike, num_steps: int, spacing: str = "trailing") -> Tensor:
    """``num_steps + 1`` decreasing sigmas at evenly spaced VP timesteps (``trailing`` or ``leading``)."""
    sig = vp_sigmas(alphas_cumprod)
    T = sig.shape[0]
    if spacing == "trailing":
        t = torch.linspace(T - 1, 0, num_steps + 1).round().long()
    elif spacing == "leading":
        t = torch.arange(num_steps + 1).flip(0) * ((T - 1) // num_steps)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; known: trailing, leading")
    return sig[t]


def sigma_to_vp_t(sigma: Tensor, alphas_cumprod: ArrayLike) -> Tensor:
    """Fractional VP timestep whose sigma is ``sigma`` (linear interpolation in log sigma)."""
    log_sig = vp_sigmas(alphas_cumprod).log().to(sigma.device)
    s = sigma.double().clamp(log_sig[0].exp(), log_sig[-1].exp()).log()
    hi = torch.searchsorted(log_sig, s.reshape(-1)).clamp(1, log_sig.shape[0] - 1)
    lo = hi - 1
    frac = (s.reshape(-1) - log_sig[lo]) / (log_sig[hi] - log_sig[lo])
    return (lo + frac).reshape(sigma.shape).to(sigma.dtype)


def flow_to_sigma(t: ArrayLike) -> Tensor:
    """VE sigma of rectified-flow time t in [0, 1): t / (1 - t)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t / (1 - t)


def sigma_to_flow(sigma: Tensor) -> Tensor:
    """Rectified-flow time of a VE sigma: sigma / (1 + sigma)."""
    return sigma / (1 + sigma)


def from_flow_sigmas(flow_sigmas: ArrayLike, num_steps: int = 0) -> Tensor:
    """Decreasing VE sigmas from a flow scheduler's sigma table (1 to 0), dropping t = 1 and t = 0.

    With ``num_steps`` > 0, ``num_steps + 1`` levels are picked evenly from the table.
    """
    t = torch.as_tensor(flow_sigmas, dtype=torch.float64)
    t = t[(t > 0) & (t < 1)]
    if num_steps > 0:
        t = t[torch.linspace(0, t.shape[0] - 1, num_steps + 1).round().long()]
    return flow_to_sigma(t)


def vp_input(x: Tensor, sigma: Tensor) -> Tensor:
    """The VP model input ``a x`` for a VE state x at sigma (a = 1 / sqrt(1 + sigma^2))."""
    return x / (1 + sigma ** 2).sqrt()


def flow_input(x: Tensor, sigma: Tensor) -> Tensor:
    """The rectified-flow model input ``x / (1 + sigma)`` for a VE state x at sigma."""
    return x / (1 + sigma)
