"""Pure transition kernels in the VE convention; B is the product's total expert weight, so the
product at sigma behaves like data blurred by noise of variance sigma^2 / B."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def _sum(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


def gaussian_logpdf(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Row-wise log N(x; mean, diag(var)) with var broadcastable to x."""
    var = var.expand_as(x)
    return -0.5 * _sum((x - mean) ** 2 / var + var.log() + math.log(2 * math.pi))


def euler_step(x: Tensor, x0: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """Deterministic DDIM / probability-flow Euler step from sigma to sigma_next (Song et al. 2021)."""
    return x0 + (sigma_next / sigma) * (x - x0)


def log_abs_det_jacobian(y: Tensor, x: Tensor) -> Tensor:
    """Row-wise log|det dy/dx| of a map applied to each particle independently (small dimensions only)."""
    D = x[0].numel()
    rows = [torch.autograd.grad(y.flatten(1)[:, j].sum(), x, retain_graph=j < D - 1)[0].flatten(1) for j in range(D)]
    return torch.linalg.slogdet(torch.stack(rows, 1))[1]


def ancestral_step(x: Tensor, x0: Tensor, sigma: Tensor, sigma_next: Tensor, B: Tensor,
                   generator: Optional[torch.Generator], grad: Optional[Tensor] = None):
    """Stochastic DDPM-posterior step q(x'|x) (Ho et al. 2020); returns x', the log ratio
    log L(x|x') - log q(x'|x) with L the forward noising kernel from sigma_next to sigma (which makes
    the SMC weight exact), and the twist correction. With ``grad`` (the gradient of a log twist, e.g. of
    the potentials) the mean moves by var * grad, a first-order twisted proposal q_t; the correction
    log q(x'|x) - log q_t(x'|x) is the weight that keeps the target unchanged (0 without ``grad``)."""
    ratio = (sigma_next / sigma) ** 2
    mean = x0 + ratio * (x - x0)
    var = (sigma_next ** 2 * (1 - ratio)) / B
    moved = mean if grad is None else mean + var * grad
    x_next = moved + var.sqrt() * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    log_q = gaussian_logpdf(x_next, mean, var)
    log_ratio = gaussian_logpdf(x, x_next, (sigma ** 2 - sigma_next ** 2) / B) - log_q
    twist = torch.zeros_like(log_q) if grad is None else log_q - gaussian_logpdf(x_next, moved, var)
    return x_next, log_ratio, twist


def langevin_proposal(x: Tensor, score: Tensor, eps: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One Langevin step x + eps * score + sqrt(2 eps) z (eps may be elementwise)."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + eps * score + (2 * eps).sqrt() * z


def langevin_log_q(x_to: Tensor, x_from: Tensor, score_from: Tensor, eps: Tensor) -> Tensor:
    """log density of the Langevin proposal from x_from landing at x_to."""
    return gaussian_logpdf(x_to, x_from + eps * score_from, 2 * eps)


def langevin_move(x: Tensor, ev, evaluate, eps: Tensor, mala: bool, generator: Optional[torch.Generator]):
    """One Langevin move on the product evaluated by ``evaluate``: unadjusted, or Metropolis-adjusted
    (MALA) when ``mala``; returns the new state, its evaluation and the (N,) acceptance mask."""
    xp = langevin_proposal(x, ev.score, eps, generator)
    evp = evaluate(xp)
    if not mala:
        return xp, evp, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    log_alpha = (evp.log_gamma - ev.log_gamma + langevin_log_q(x, xp, evp.score, eps)
                 - langevin_log_q(xp, x, ev.score, eps))
    acc = mala_accept(log_alpha, generator)
    return torch.where(acc.reshape(-1, *[1] * (x.dim() - 1)), xp, x), ev.where(acc, evp), acc


def mala_accept(log_alpha: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Metropolis-Hastings acceptance (NaN rejects) for MALA (Roberts & Tweedie 1996)."""
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    return u.log() < log_alpha
