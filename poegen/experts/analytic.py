"""Analytic experts with closed forms: Gaussian mixtures (exact denoiser and density at every
sigma) and simple potentials, plus the closed-form products the tests and the demo check against."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor


def _as(t, dtype=torch.float64) -> Tensor:
    return torch.as_tensor(t, dtype=dtype)


def _sigma_col(sigma: Tensor, n: int, device) -> Tensor:
    s = torch.as_tensor(sigma).to(device, torch.float64)
    return s.reshape(-1).expand(n) if s.numel() == 1 else s.reshape(n)


class GaussianMixture:
    """Mixture of full-covariance Gaussians in R^d; at noise sigma each covariance grows by sigma^2 I."""

    def __init__(self, weights: Sequence[float], means, covs, name: Optional[str] = None):
        self.weights = _as(weights)
        self.means = _as(means)
        covs = _as(covs)
        K, d = self.means.shape
        if self.weights.shape != (K,) or covs.shape != (K, d, d):
            raise ValueError(f"GaussianMixture: weights (K,), means (K, d), covs (K, d, d) must agree; got "
                             f"{tuple(self.weights.shape)}, {tuple(self.means.shape)}, {tuple(covs.shape)}")
        if (self.weights < 0).any() or not math.isclose(float(self.weights.sum()), 1.0, rel_tol=1e-6):
            raise ValueError("GaussianMixture: weights must be non-negative and sum to 1")
        self.covs = covs
        self.evals, self.evecs = torch.linalg.eigh(covs)
        if (self.evals <= 0).any():
            raise ValueError("GaussianMixture: covariances must be positive definite")
        self.shape = (d,)
        self.name = name

    def _terms(self, x: Tensor, sigma: Tensor):
        """Per-component log densities (N, K) and scores (N, K, d) at noise level sigma."""
        x64 = x.double()
        if self.means.device != x.device:  # follow the particles to their device once
            self.weights, self.means, self.evals, self.evecs = (t.to(x.device) for t in
                                                                (self.weights, self.means, self.evals, self.evecs))
        var = self.evals[None] + _sigma_col(sigma, x.shape[0], x.device)[:, None, None] ** 2          # (N, K, d)
        z = torch.einsum("nkd,kde->nke", x64[:, None, :] - self.means[None], self.evecs)     # eigenbasis
        logp = self.weights.log() - 0.5 * ((z ** 2 / var).sum(-1) + var.log().sum(-1) + self.shape[0] * math.log(2 * math.pi))
        score = -torch.einsum("nke,kde->nkd", z / var, self.evecs)
        return logp, score

    def log_density(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Exact log density of the noised mixture at x."""
        return torch.logsumexp(self._terms(x, sigma)[0], -1).to(x.dtype)

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Exact score of the noised mixture at x."""
        logp, score = self._terms(x, sigma)
        return (torch.softmax(logp, -1)[..., None] * score).sum(1).to(x.dtype)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Tweedie's estimate E[x0 | x] = x + sigma^2 * score."""
        s2 = _sigma_col(sigma, x.shape[0], x.device).to(x.dtype)[:, None] ** 2
        return x + s2 * self.score(x, sigma)


class Gaussian(GaussianMixture):
    """A single Gaussian N(mean, cov)."""

    def __init__(self, mean, cov, name: Optional[str] = None):
        super().__init__([1.0], _as(mean)[None], _as(cov)[None], name=name)
        self.mean, self.cov = self.means[0], self.covs[0]


class GaussianLikelihood:
    """log N(y; A x, R): the log-likelihood of an observation y of a linear map of x."""

    def __init__(self, y, noise_cov, A=None, name: Optional[str] = None):
        self.y, self.R = _as(y), _as(noise_cov)
        self.A = _as(A) if A is not None else torch.eye(self.y.shape[0], dtype=torch.float64)
        self._obs = Gaussian(self.y, self.R)
        self.name = name

    def log_potential(self, x0: Tensor) -> Tensor:
        return self._obs.log_density(x0.double() @ self.A.T.to(x0.device), torch.zeros(())).to(x0.dtype)


class LinearPotential:
    """a . x + b."""

    def __init__(self, a, b: float = 0.0, name: Optional[str] = None):
        self.a, self.b, self.name = _as(a), float(b), name

    def log_potential(self, x0: Tensor) -> Tensor:
        return (x0.double() @ self.a.to(x0.device) + self.b).to(x0.dtype)


class HalfSpace:
    """Hard constraint a . x + b >= 0: log-potential 0 inside, -inf outside.

    Switched on before the last level it prunes every path whose x0_hat violates it on the way,
    which biases the result; give it a schedule that is 0 until t = 1 for the exact constrained target."""

    def __init__(self, a, b: float = 0.0, name: Optional[str] = None):
        self.a, self.b, self.name = _as(a), float(b), name

    def log_potential(self, x0: Tensor) -> Tensor:
        inside = (x0.double() @ self.a.to(x0.device) + self.b) >= 0
        return torch.where(inside, 0.0, -math.inf).to(x0.dtype)


# ---- closed forms -------------------------------------------------------------------------------

def gaussian_product(m1, C1, m2, C2):
    """Mean, covariance and log normaliser of N(m1, C1) * N(m2, C2)."""
    m1, C1, m2, C2 = map(_as, (m1, C1, m2, C2))
    P = torch.linalg.inv(C1) + torch.linalg.inv(C2)
    C = torch.linalg.inv(P)
    m = C @ (torch.linalg.solve(C1, m1) + torch.linalg.solve(C2, m2))
    log_Z = Gaussian(m2, C1 + C2).log_density(m1[None], torch.zeros(()))[0]
    return m, (C + C.T) / 2, log_Z


def gaussian_posterior(m, C, y, R, A=None):
    """Mean, covariance and log evidence of N(m, C) times the likelihood N(y; A x, R)."""
    m, C, y, R = map(_as, (m, C, y, R))
    A = _as(A) if A is not None else torch.eye(y.shape[0], dtype=torch.float64)
    S = A @ C @ A.T + R
    K = C @ A.T @ torch.linalg.inv(S)
    post_C = C - K @ A @ C
    log_Z = Gaussian(A @ m, S).log_density(y[None], torch.zeros(()))[0]
    return m + K @ (y - A @ m), (post_C + post_C.T) / 2, log_Z


def mixture_product(p: GaussianMixture, q: GaussianMixture):
    """The product of two Gaussian mixtures as a normalised mixture, and its log normaliser."""
    weights, means, covs = [], [], []
    for i in range(len(p.weights)):
        for j in range(len(q.weights)):
            m, C, lz = gaussian_product(p.means[i], p.covs[i], q.means[j], q.covs[j])
            weights.append(p.weights[i].log() + q.weights[j].log() + lz)
            means.append(m)
            covs.append(C)
    logw = torch.stack(weights)
    log_Z = torch.logsumexp(logw, 0)
    return GaussianMixture(torch.softmax(logw, 0), torch.stack(means), torch.stack(covs)), log_Z
