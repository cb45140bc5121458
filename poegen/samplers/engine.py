"""The one sampling loop: annealing along noise levels, proposal plus MCMC moves on the product's
generative score, SMC reweighting by the annealed potentials, adaptive resampling (Zhang et al.
2025, "Product of Experts for Visual Generation"; Del Moral et al. 2006 for the SMC sampler).

In Feynman-Kac terms (see DESIGN.md) the mutation is proposal + MCMC, and the potential at level
k+1 is  f_{k+1}(x_{k+1}) - f_k(x_k)  (telescoping annealed rewards), plus, when every generative
expert has a normalised density and the proposal has one too, the exact SMC-sampler ratio
gamma_{k+1}(x') L(x|x') / (gamma_k(x) q(x'|x)), which makes means and log Z exact as N grows.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import resampling, schedules
from ..particles import Particles
from ..validation import check_keys
from ..product import Evaluation, Product
from . import kernels

log = logging.getLogger("poegen.engine")


# poe's resample_start="auto" without exact weights: on ShapesEval's tuning sets (prompt sets 1000-1002, seeds
# 1000-1003, tier B and A position) strict exact 0.896 resampling from the first level, 0.941 from 30% of them on
RESAMPLE_START = 0.3


class AllParticlesDead(RuntimeError):
    """Every particle has weight zero (log-weight -inf)."""


@dataclass
class SamplerConfig:
    """Every switch of the loop; the named samplers are presets of it."""

    proposal: str = "auto"             # "euler" (DDIM), "stochastic" (DDPM posterior), "none", or "auto":
    #                                    euler when weights are exact (see run), else stochastic
    mcmc_steps: int = 1                # Langevin moves per level (every preset names its own; 1 is poe's)
    step_scale: float = 0.1            # Langevin step = step_scale * sigma^2 / B
    kernel: str = "auto"               # "ula", "mala", or "auto" (MALA when every expert has log_density)
    potentials: bool = True            # weight by the discriminative experts
    exact: Union[str, bool] = "auto"   # generative density-ratio weights: True, False, "auto" (when possible)
    resample: str = "systematic"       # scheme name in poegen.resampling.RESAMPLERS
    ess_threshold: float = 0.5         # resample when ESS < threshold * N (0 never, 1 always)
    resample_start: Union[str, float] = 0.0  # resample only from this fraction of the levels on, or "auto":
    #                                    RESAMPLE_START when the weights are not exact (potentials then judge x0_hat,
    #                                    which is blurry early), else 0 (exact weights are right at every level)
    select: str = "all"                # "all" particles with weights, the "best" (highest final reward among the
    #                                    live particles, weight breaking ties), or a weighted "draw"
    tempering: float = 0.0             # > 0: adaptive tempering; a level's potentials increment is cut to the largest
    #                                    fraction that keeps the ESS >= tempering * N (the cut part carries over;
    #                                    the last level always reaches full strength, so the target is unchanged)
    grad_guidance: float = 0.0         # > 0: the stochastic proposal follows this times the potentials' gradient
    #                                    (a twisted proposal; its ratio enters the weights, the target stays)
    reward_every: int = 1              # evaluate the potentials at every k-th level (and always at the last); the
    #                                    increment is the change since the last evaluation, so weights stay valid
    replace_known: bool = False        # editing: after each proposal, known pixels (a potential with ``paste``)
    #                                    are replaced by the given image noised to the level (RePaint-style)
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    rho: float = 7.0
    sigmas: Optional[Sequence[float]] = None  # explicit decreasing grid, overrides the Karras one
    progress: bool = False

    @classmethod
    def build(cls, preset: Dict, options: Dict) -> "SamplerConfig":
        check_keys(options, "sampler options", sorted(f.name for f in fields(cls)))
        cfg = cls(**{**preset, **options})
        choices = {"proposal": ("auto", "euler", "stochastic", "none"), "kernel": ("auto", "ula", "mala"),
                   "select": ("all", "best", "draw"), "exact": ("auto", True, False)}
        for name, allowed in choices.items():
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"{name}={getattr(cfg, name)!r} is not one of {allowed}")
        resampling.get(cfg.resample)
        if cfg.mcmc_steps < 0 or cfg.step_scale <= 0 or not 0 <= cfg.ess_threshold <= 1 or cfg.grad_guidance < 0 \
                or not 0 <= cfg.tempering <= 1 \
                or not (cfg.resample_start == "auto" or isinstance(cfg.resample_start, numbers.Real)
                        and 0 <= cfg.resample_start <= 1):
            raise ValueError("need mcmc_steps >= 0, step_scale > 0, 0 <= ess_threshold <= 1, 0 <= tempering <= 1, "
                             "resample_start 'auto' or in [0, 1], and grad_guidance >= 0")
        if isinstance(cfg.reward_every, bool) or not isinstance(cfg.reward_every, int) or cfg.reward_every < 1:
            raise ValueError(f"reward_every={cfg.reward_every!r}: expected a whole number of levels >= 1")
        if not cfg.rho > 0 or cfg.rho == float("inf"):
            raise ValueError(f"rho={cfg.rho!r}: the Karras schedule's exponent must be a finite number > 0 (default 7)")
        return cfg


@dataclass
class SampleResult:
    """Selected samples ``x`` with ``log_w``; ``log_Z`` estimate; per-level ``diagnostics``; NFE per expert."""

    x: Tensor
    log_w: Tensor
    log_Z: float
    diagnostics: Dict[str, List]
    nfe: Dict[str, int]
    particles: Particles = field(repr=False)


def _add(log_w: Tensor, g: Tensor) -> Tensor:
    """log_w + g where a dead particle stays dead and a NaN increment kills (never zeroes)."""
    out = log_w + g
    return torch.where(torch.isnan(out) | torch.isneginf(log_w), torch.full_like(out, -math.inf), out)


class _Monitor:
    """Attributes particle deaths to experts; checks on the host only where that costs nothing (CPU).

    Rows of ``culprits``: generative experts (NaN: a warning), potentials (-inf is a legal hard
    constraint: info), then the weights themselves (NaN or -inf from an exact density ratio)."""

    def __init__(self, generative: List[str], potentials: List[str], eager: bool):
        self.names = generative + potentials + ["the weights"]
        self.levels = [logging.WARNING] * len(generative) + [logging.INFO] * len(potentials) + [logging.WARNING]
        self.eager, self.pending = eager, []

    def record(self, sigma: float, alive_before: Tensor, log_w: Tensor, culprits: Tensor, nan: Optional[Tensor] = None):
        newly = alive_before & ~torch.isfinite(log_w)
        self.pending.append((sigma, (culprits & newly[None]).sum(1), torch.isfinite(log_w).any(),
                             None if nan is None else (nan & newly[None]).sum(1)))
        if self.eager:
            self.flush()

    def flush(self):
        for sigma, counts, any_alive, nans in self.pending:
            counts = counts.tolist()
            nans = [0] * len(counts) if nans is None else nans.tolist()
            if any(counts[:-1]):
                counts[-1] = 0  # an expert explains the deaths
            for name, level, c, nan in zip(self.names, self.levels, counts, nans):
                if c:  # a NaN is always a warning; -inf from a potential is a legal hard constraint
                    log.log(logging.WARNING if nan else level, "%s gave %s for %d particle(s) at sigma=%.4g; they "
                            "are dropped (log_w = -inf)", name, "NaN" if nan else "NaN or -inf", c, sigma)
            if not bool(any_alive):
                worst = self.names[max(range(len(counts)), key=counts.__getitem__)]
                raise AllParticlesDead(f"all particles died at sigma={sigma:.4g}, killed by {worst}. Check that "
                                       "expert's inputs, anneal its lambda in later (schedule=...) or raise num_particles.")
        self.pending.clear()


@torch.no_grad()  # no graphs here; the exact-Euler Jacobian and gradient guidance enable their own
def run(product: Product, cfg: SamplerConfig, num_particles: int, num_steps: int,
        generator: Optional[torch.Generator] = None, shape: Optional[Sequence[int]] = None,
        device=None, dtype: torch.dtype = torch.float32) -> SampleResult:
    """Run the annealed SMC loop described in the module docstring."""
    for name, value in (("num_particles", num_particles), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
    if num_particles < 1 or num_steps < 1:
        raise ValueError(f"num_particles and num_steps must be >= 1, got {num_particles} and {num_steps}")
    shape = tuple(shape or product.shape or ())
    if not shape:
        raise ValueError("no expert declares a sample shape: pass shape=(...) to sample()")
    device = torch.device(device or (generator.device if generator is not None else "cpu"))
    N, K = num_particles, num_steps
    if cfg.sigmas is not None:
        sigmas = torch.as_tensor(cfg.sigmas, dtype=torch.float64)
        if sigmas.ndim != 1 or sigmas.shape[0] != K + 1 or not bool((sigmas[1:] < sigmas[:-1]).all()) or sigmas[-1] <= 0:
            raise ValueError(f"sigmas must be {K + 1} positive decreasing values (num_steps + 1)")
    else:
        sigmas = schedules.karras(K, *product.sigma_range(cfg.sigma_min, cfg.sigma_max), rho=cfg.rho)
    sig = [torch.tensor(float(s), device=device, dtype=dtype) for s in sigmas]
    B = product.total_weight(shape, device, dtype)
    exact = product.has_density if cfg.exact == "auto" else cfg.exact
    # With exact weights, a deterministic step weighted by its Jacobian (randomness from the MCMC moves)
    # has far lower weight variance than the DDPM posterior step, whose noise is mis-sized at low sigma.
    proposal = ("euler" if exact else "stochastic") if cfg.proposal == "auto" else cfg.proposal
    if exact and not product.has_density:
        raise ValueError("exact=True needs log_density on every generative expert and no masks")
    if exact and proposal == "euler" and math.prod(shape) > 256:
        raise ValueError("exact weights with proposal='euler' need the step's Jacobian: only for samples of "
                         "<= 256 dimensions; use proposal='stochastic' or exact=False")
    start = (0.0 if exact else RESAMPLE_START) if cfg.resample_start == "auto" else cfg.resample_start
    mala = cfg.mcmc_steps > 0 and (cfg.kernel == "mala" or (cfg.kernel == "auto" and product.has_density))
    if mala and not product.has_density:
        raise ValueError("kernel='mala' needs log_density on every generative expert and no masks")
    density = exact or mala
    resampler = resampling.get(cfg.resample)
    monitor = _Monitor([f"expert {n}" for n in product.names], [f"potential {n}" for n in product.potential_names],
                       eager=device.type == "cpu")

    def evaluate(x: Tensor, s: Tensor) -> Evaluation:
        return product.evaluate(x, s, B, density)

    def rewards(ev: Evaluation, t: float):
        if not cfg.potentials:
            z = torch.zeros(N, device=device, dtype=dtype)
            return z, z[None, :0].reshape(0, N)
        return product.log_potentials(ev.x0, t)

    def potential_grad(x: Tensor, s: Tensor, t: float) -> Tensor:
        """Gradient in x of the annealed potentials of x0_hat(x) (through the denoisers, as in DPS)."""
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            total = torch.nan_to_num(product.log_potentials(product.evaluate(z, s, B).x0, t)[0], neginf=0.0)
            grad = torch.autograd.grad(total.sum(), z, allow_unused=True)[0] if total.requires_grad else None
        if grad is None:
            raise ValueError("grad_guidance needs potentials and denoisers that torch can differentiate, and "
                             f"{', '.join(product.names + product.potential_names)} give no gradient: set grad_guidance=0")
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def settle(x: Tensor, prev: Particles, g: Tensor, ev: Evaluation, bad: Tensor, f: Tensor, per: Tensor,
               sigma: float) -> Particles:
        """New particles after multiplying the weights by exp(g); dead rows get -inf; log Z accumulates."""
        g = torch.where(bad.any(0), -math.inf, g)
        log_w = _add(prev.log_w, g)
        monitor.record(sigma, torch.isfinite(prev.log_w), log_w, torch.cat([bad, ~torch.isfinite(per), ~torch.isfinite(g)[None]]),
                       torch.cat([torch.zeros_like(bad), torch.isnan(per), torch.zeros_like(g, dtype=torch.bool)[None]]))
        log_Z = prev.log_Z + torch.logsumexp(log_w, 0) - torch.logsumexp(prev.log_w, 0)
        aux = {"x0": ev.x0, "score": ev.score, "f": f}
        if density:
            aux["log_gamma"] = ev.log_gamma
        return Particles(x, log_w, log_Z, aux)

    nfe0 = dict(product.nfe)
    # level 0: x ~ N(0, sigma_0^2 / B), weighted towards the level-0 target when weights are exact
    var0 = sig[0] ** 2 / B
    x = var0.sqrt() * torch.randn((N, *shape), generator=generator, device=device, dtype=dtype)
    pasters = [r for r in product.potentials if callable(getattr(r, "paste", None))] if cfg.replace_known else []
    if cfg.replace_known and not pasters:
        raise ValueError("replace_known=True needs a known-pixels potential (an edit); none is in the product")
    for r in pasters:
        x = r.paste(x, sig[0], generator)
    ev = evaluate(x, sig[0])
    f, per = rewards(ev, 0.0)
    if cfg.tempering > 0:
        f = tempered(torch.zeros_like(f), f, cfg.tempering * N)
    g = f + (ev.log_gamma - kernels.gaussian_logpdf(x, torch.zeros_like(x), var0) if exact else 0.0)
    zeros = torch.zeros(N, device=device, dtype=dtype)
    state = settle(x, Particles(x, zeros, torch.zeros((), device=device, dtype=dtype)), g, ev, ev.bad, f, per,
                   float(sigmas[0]))
    diag = {k: [] for k in ("sigma", "ess", "resampled", "acceptance", "reward", "log_Z")}

    for k in tqdm(range(K), desc="sampling", disable=None if cfg.progress else True, leave=False):
        s, s_next = sig[k], sig[k + 1]
        x, a = state.x, state.aux
        # 1. proposal to the next level
        log_ratio = 0.0
        if proposal == "euler" and exact:  # change of variables: recompute x0 with a graph
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                y = kernels.euler_step(xg, product.evaluate(xg, s, B).x0, s, s_next)
                log_ratio = kernels.log_abs_det_jacobian(y, xg)
            x = y.detach()
        elif proposal == "euler":
            x = kernels.euler_step(x, a["x0"], s, s_next)
        elif proposal == "stochastic":
            guided = cfg.grad_guidance > 0 and cfg.potentials and product.potentials
            grad = cfg.grad_guidance * potential_grad(x, s, (k + 1) / K) if guided else None
            x, log_ratio, twist = kernels.ancestral_step(x, a["x0"], s, s_next, B, generator, grad)
            log_ratio = log_ratio + twist if exact else twist
        for r in pasters:
            x = r.paste(x, s_next, generator)
        ev = evaluate(x, s_next)
        g = ev.log_gamma - a["log_gamma"] + log_ratio if exact else log_ratio + torch.zeros(N, device=device, dtype=dtype)
        bad = ev.bad
        # 2. MCMC moves targeting the generative product at s_next
        eps = cfg.step_scale * s_next ** 2 / B
        accepted = []
        for _ in range(cfg.mcmc_steps):
            x, ev, acc = kernels.langevin_move(x, ev, lambda z: evaluate(z, s_next), eps, mala, generator)
            accepted.append(acc.to(dtype).mean())
            bad = bad | ev.bad
        # 3. reweight by the change in annealed potentials (at every reward_every-th level and the last)
        if (k + 1) % cfg.reward_every == 0 or k + 1 == K:
            f, per = rewards(ev, (k + 1) / K)
            if cfg.tempering > 0 and k + 1 < K:
                f = a["f"] + tempered(state.log_w + g, f - a["f"], cfg.tempering * N)
        else:  # not scored here: the potentials' change enters at the next scored level
            f, per = a["f"], torch.zeros_like(per)
        state = settle(x, state, g + f - a["f"], ev, bad, f, per, float(sigmas[k + 1]))
        log_w = state.log_w
        # 4. resample when the ESS is low (no host sync: always draw, keep by torch.where)
        e = resampling.ess(log_w)
        allowed = cfg.ess_threshold > 0 and k + 1 > start * K
        do = (e < cfg.ess_threshold * N) & allowed
        if allowed:
            state = state.take(torch.where(do, resampler(log_w, generator, N), torch.arange(N, device=device)))
            state = state.replace(log_w=torch.where(do, zeros, state.log_w))
        diag["sigma"].append(s_next)
        diag["ess"].append(e)
        diag["resampled"].append(do)
        diag["acceptance"].append(torch.stack(accepted).mean() if mala else torch.tensor(float("nan")))
        diag["reward"].append((torch.softmax(log_w, 0) * torch.nan_to_num(f, neginf=0.0)).sum())
        diag["log_Z"].append(state.log_Z)

    monitor.flush()
    diagnostics = {k: torch.stack([v.to("cpu", torch.float64) if v.dtype != torch.bool else v.cpu() for v in vals]).tolist()
                   for k, vals in diag.items()}
    final = state.replace(x=state.aux["x0"])
    return SampleResult(*_select(final, cfg.select, generator), float(state.log_Z), diagnostics,
                        {k: v - nfe0[k] for k, v in product.nfe.items()}, final)


def tempered(log_w: Tensor, delta: Tensor, need: float, grid: int = 33) -> Tensor:
    """tau * delta for the largest tau in [0, 1] (on a grid) whose weights log_w + tau * delta keep the ESS >= need,
    or as high as it is without the increment when that is lower (adaptive tempering, Jasra et al. 2011). A particle
    whose increment is -inf or NaN keeps it whole (a hard constraint is never softened)."""
    taus = torch.linspace(0.0, 1.0, grid, device=delta.device, dtype=delta.dtype)[:, None]
    finite = torch.isfinite(delta)
    step = torch.where(finite, taus * torch.where(finite, delta, 0.0), delta)  # (grid, N)
    e = resampling.ess(log_w + step)
    ok = e >= torch.minimum(e[0], torch.as_tensor(need, dtype=e.dtype, device=e.device)) * (1 - 1e-6)
    tau = (taus[:, 0] * ok).max()  # tau = 0 always qualifies; no host sync
    return torch.where(finite, tau * torch.where(finite, delta, 0.0), delta)


def _select(p: Particles, how: str, generator):
    """The returned samples: all particles, the best one, or one weighted draw.

    "best" ranks live particles by their final reward (the potentials at full strength), then by weight:
    after a resampling step all weights are equal, and the weight alone would pick an arbitrary particle."""
    if how == "all":
        return p.x, p.log_w
    if how == "best":
        alive = torch.isfinite(p.log_w)
        f = torch.where(alive, torch.nan_to_num(p.aux["f"], nan=-math.inf), -math.inf)
        i = torch.where(f == f.max(), p.log_w, -math.inf).argmax().reshape(1)
    else:
        i = torch.multinomial(torch.softmax(p.log_w.double(), 0), 1, generator=generator)
    return p.x[i], p.log_w[i]
