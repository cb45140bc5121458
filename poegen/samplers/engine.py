"""The one sampling loop: annealing along noise levels, proposal plus MCMC moves on the product's
generative score, SMC reweighting by the annealed potentials, adaptive resampling (Zhang et al.
2025, "Product of Experts for Visual Generation"; Del Moral et al. 2006 for the SMC sampler).

In Feynman-Kac terms (docs/ARCHITECTURE.md) the mutation is proposal + MCMC, and the potential at level
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
    """Run the annealed SMC loop described in the module docstring: level 0, then at each level a proposal,
    MCMC moves, the reweighting by the potentials' change and an adaptive resampling (``_Run``'s steps)."""
    r = _Run(product, cfg, num_particles, num_steps, generator, shape, device, dtype)
    nfe0 = dict(product.nfe)
    state = r.level_zero()
    diag = {k: [] for k in ("sigma", "ess", "resampled", "acceptance", "reward", "log_Z")}
    for k in tqdm(range(r.K), desc="sampling", disable=None if cfg.progress else True, leave=False):
        x, ev, g = r.propose(state, k)                         # 1. proposal to the next level
        x, ev, bad, accepted = r.move(x, ev, k)                # 2. MCMC moves on the generative product there
        f, per = r.rescore(state, ev, g, k)                    # 3. the potentials' change reweights
        state = r.settle(x, state, g + f - state.aux["f"], ev, bad, f, per, float(r.sigmas[k + 1]))
        log_w = state.log_w
        state, e, do = r.resample(state, k)                    # 4. resampling when the ESS is low
        r.record(diag, k, e, do, accepted, log_w, f, state.log_Z)
    r.monitor.flush()
    diagnostics = {k: torch.stack([v.to("cpu", torch.float64) if v.dtype != torch.bool else v.cpu() for v in vals]).tolist()
                   for k, vals in diag.items()}
    final = state.replace(x=state.aux["x0"])
    return SampleResult(*_select(final, cfg.select, generator), float(state.log_Z), diagnostics,
                        {k: v - nfe0[k] for k, v in product.nfe.items()}, final)


class _Run:
    """One run's fixed choices (noise levels, proposal, kernel, exact weights, resampling start) and the steps of
    ``run``'s loop, each a method, in the loop's order."""

    def __init__(self, product: Product, cfg: SamplerConfig, num_particles: int, num_steps: int,
                 generator: Optional[torch.Generator], shape: Optional[Sequence[int]], device, dtype: torch.dtype):
        for name, value in (("num_particles", num_particles), ("num_steps", num_steps)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
        if num_particles < 1 or num_steps < 1:
            raise ValueError(f"num_particles and num_steps must be >= 1, got {num_particles} and {num_steps}")
        self.shape = tuple(shape or product.shape or ())
        if not self.shape:
            raise ValueError("no expert declares a sample shape: pass shape=(...) to sample()")
        self.product, self.cfg, self.generator, self.dtype = product, cfg, generator, dtype
        self.device = torch.device(device or (generator.device if generator is not None else "cpu"))
        self.N = num_particles
        self.sigmas = self._noise_levels(num_steps)
        self.K = len(self.sigmas) - 1
        self.sig = [torch.tensor(float(s), device=self.device, dtype=dtype) for s in self.sigmas]
        self.B = product.total_weight(self.shape, self.device, dtype)
        self._choose_moves()
        self.resampler = resampling.get(cfg.resample)
        self.monitor = _Monitor([f"expert {n}" for n in product.names],
                                [f"potential {n}" for n in product.potential_names], eager=self.device.type == "cpu")
        self.pasters = [p for p in product.potentials if callable(getattr(p, "paste", None))] \
            if cfg.replace_known else []
        if cfg.replace_known and not self.pasters:
            raise ValueError("replace_known=True needs a known-pixels potential (an edit); none is in the product")
        self.zeros = torch.zeros(self.N, device=self.device, dtype=dtype)

    def _noise_levels(self, K: int) -> Tensor:
        """The K + 1 decreasing noise levels: the config's own, else Karras's over the product's range; a product
        with a ``start`` (x, sigma) keeps the levels at or below sigma, the last level above it becoming sigma (the
        levels a run from noise would pass there, so ``num_steps`` keeps its spacing)."""
        cfg = self.cfg
        if cfg.sigmas is None:
            sigmas = schedules.karras(K, *self.product.sigma_range(cfg.sigma_min, cfg.sigma_max), rho=cfg.rho)
            if self.product.start is not None:
                top = float(self.product.start[1])
                above = int((sigmas > top).sum())
                sigmas = torch.cat([sigmas.new_tensor([top]), sigmas[above:]]) if above else sigmas
            return sigmas
        sigmas = torch.as_tensor(cfg.sigmas, dtype=torch.float64)
        if sigmas.ndim != 1 or sigmas.shape[0] != K + 1 or not bool((sigmas[1:] < sigmas[:-1]).all()) or sigmas[-1] <= 0:
            raise ValueError(f"sigmas must be {K + 1} positive decreasing values (num_steps + 1)")
        return sigmas

    def _choose_moves(self):
        """Exact weights or not, the proposal, the MCMC kernel (MALA or ULA) and the level resampling starts at."""
        cfg, product = self.cfg, self.product
        exact = product.has_density if cfg.exact == "auto" else cfg.exact
        # With exact weights, a deterministic step weighted by its Jacobian (randomness from the MCMC moves)
        # has far lower weight variance than the DDPM posterior step, whose noise is mis-sized at low sigma.
        proposal = ("euler" if exact else "stochastic") if cfg.proposal == "auto" else cfg.proposal
        if exact and not product.has_density:
            raise ValueError("exact=True needs log_density on every generative expert and no masks")
        if exact and proposal == "euler" and math.prod(self.shape) > 256:
            raise ValueError("exact weights with proposal='euler' need the step's Jacobian: only for samples of "
                             "<= 256 dimensions; use proposal='stochastic' or exact=False")
        self.start = (0.0 if exact else RESAMPLE_START) if cfg.resample_start == "auto" else cfg.resample_start
        mala = cfg.mcmc_steps > 0 and (cfg.kernel == "mala" or (cfg.kernel == "auto" and product.has_density))
        if mala and not product.has_density:
            raise ValueError("kernel='mala' needs log_density on every generative expert and no masks")
        self.exact, self.proposal, self.mala, self.density = exact, proposal, mala, exact or mala

    def evaluate(self, x: Tensor, s: Tensor) -> Evaluation:
        return self.product.evaluate(x, s, self.B, self.density)

    def rewards(self, ev: Evaluation, t: float):
        if not self.cfg.potentials:
            z = torch.zeros(self.N, device=self.device, dtype=self.dtype)
            return z, z[None, :0].reshape(0, self.N)
        return self.product.log_potentials(ev.x0, t)

    def potential_grad(self, x: Tensor, s: Tensor, t: float) -> Tensor:
        """Gradient in x of the annealed potentials of x0_hat(x) (through the denoisers, as in DPS)."""
        product = self.product
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            total = torch.nan_to_num(product.log_potentials(product.evaluate(z, s, self.B).x0, t)[0], neginf=0.0)
            grad = torch.autograd.grad(total.sum(), z, allow_unused=True)[0] if total.requires_grad else None
        if grad is None:
            raise ValueError("grad_guidance needs potentials and denoisers that torch can differentiate, and "
                             f"{', '.join(product.names + product.potential_names)} give no gradient: set grad_guidance=0")
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def settle(self, x: Tensor, prev: Particles, g: Tensor, ev: Evaluation, bad: Tensor, f: Tensor, per: Tensor,
               sigma: float) -> Particles:
        """New particles after multiplying the weights by exp(g); dead rows get -inf; log Z accumulates."""
        g = torch.where(bad.any(0), -math.inf, g)
        log_w = _add(prev.log_w, g)
        self.monitor.record(sigma, torch.isfinite(prev.log_w), log_w,
                            torch.cat([bad, ~torch.isfinite(per), ~torch.isfinite(g)[None]]),
                            torch.cat([torch.zeros_like(bad), torch.isnan(per), torch.zeros_like(g, dtype=torch.bool)[None]]))
        log_Z = prev.log_Z + torch.logsumexp(log_w, 0) - torch.logsumexp(prev.log_w, 0)
        aux = {"x0": ev.x0, "score": ev.score, "f": f, "origin": prev.aux["origin"]}  # origin: level-0 ancestor
        if self.density:
            aux["log_gamma"] = ev.log_gamma
        return Particles(x, log_w, log_Z, aux)

    def level_zero(self) -> Particles:
        """x ~ N(0, sigma_0^2 / B), weighted by the potentials at t = 0 (and towards the level-0 target when
        weights are exact)."""
        cfg, N, sig = self.cfg, self.N, self.sig
        var0 = sig[0] ** 2 / self.B
        x = var0.sqrt() * torch.randn((N, *self.shape), generator=self.generator, device=self.device, dtype=self.dtype)
        mean = torch.zeros_like(x)
        if self.product.start is not None:  # the start noised to the first level (its own proposal density)
            mean = self.product.start[0].to(self.device, self.dtype).expand_as(x)
            var0 = sig[0] ** 2
            x = mean + x * self.B.sqrt()
        for p in self.pasters:
            x = p.paste(x, sig[0], self.generator)
        ev = self.evaluate(x, sig[0])
        f, per = self.rewards(ev, 0.0)
        self.per = per  # the shape of an unscored level's (zero) increments
        if cfg.tempering > 0:
            f = tempered(torch.zeros_like(f), f, cfg.tempering * N)
        g = f + (ev.log_gamma - kernels.gaussian_logpdf(x, mean, var0) if self.exact else 0.0)
        start = Particles(x, self.zeros, torch.zeros((), device=self.device, dtype=self.dtype),
                          {"origin": torch.arange(N, device=self.device)})
        return self.settle(x, start, g, ev, ev.bad, f, per, float(self.sigmas[0]))

    def propose(self, state: Particles, k: int):
        """(x, its evaluation, the log-weight increment so far) after the proposal from level k to k + 1 (and the
        known pixels pasted back, for an edit)."""
        s, s_next, a, x = self.sig[k], self.sig[k + 1], state.aux, state.x
        log_ratio = 0.0
        if self.proposal == "euler" and self.exact:  # change of variables: recompute x0 with a graph
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                y = kernels.euler_step(xg, self.product.evaluate(xg, s, self.B).x0, s, s_next)
                log_ratio = kernels.log_abs_det_jacobian(y, xg)
            x = y.detach()
        elif self.proposal == "euler":
            x = kernels.euler_step(x, a["x0"], s, s_next)
        elif self.proposal == "stochastic":
            guided = self.cfg.grad_guidance > 0 and self.cfg.potentials and self.product.potentials
            grad = self.cfg.grad_guidance * self.potential_grad(x, s, (k + 1) / self.K) if guided else None
            x, log_ratio, twist = kernels.ancestral_step(x, a["x0"], s, s_next, self.B, self.generator, grad)
            log_ratio = log_ratio + twist if self.exact else twist
        for p in self.pasters:
            x = p.paste(x, s_next, self.generator)
        ev = self.evaluate(x, s_next)
        g = ev.log_gamma - a["log_gamma"] + log_ratio if self.exact else \
            log_ratio + torch.zeros(self.N, device=self.device, dtype=self.dtype)
        return x, ev, g

    def move(self, x: Tensor, ev: Evaluation, k: int):
        """(x, evaluation, dead rows, acceptance rates) after the MCMC moves targeting the generative product at
        level k + 1."""
        s_next = self.sig[k + 1]
        eps = self.cfg.step_scale * s_next ** 2 / self.B
        bad, accepted = ev.bad, []
        for _ in range(self.cfg.mcmc_steps):
            x, ev, acc = kernels.langevin_move(x, ev, lambda z: self.evaluate(z, s_next), eps, self.mala,
                                               self.generator)
            accepted.append(acc.to(self.dtype).mean())
            bad = bad | ev.bad
        return x, ev, bad, accepted

    def rescore(self, state: Particles, ev: Evaluation, g: Tensor, k: int):
        """(annealed potentials, per potential) at level k + 1: evaluated at every reward_every-th level and the
        last (tempered when asked), else carried over, so the change enters at the next scored level."""
        cfg, a = self.cfg, state.aux
        if (k + 1) % cfg.reward_every == 0 or k + 1 == self.K:
            f, self.per = self.rewards(ev, (k + 1) / self.K)
            if cfg.tempering > 0 and k + 1 < self.K:
                f = a["f"] + tempered(state.log_w + g, f - a["f"], cfg.tempering * self.N)
            return f, self.per
        return a["f"], torch.zeros_like(self.per)

    def resample(self, state: Particles, k: int):
        """(particles, ESS, whether resampled) at level k + 1: resampled when the ESS is low, from the allowed
        level on (no host sync: a draw is always made and kept by torch.where)."""
        cfg, N = self.cfg, self.N
        log_w = state.log_w
        e = resampling.ess(log_w)
        allowed = cfg.ess_threshold > 0 and k + 1 > self.start * self.K
        do = (e < cfg.ess_threshold * N) & allowed
        if allowed:
            state = state.take(torch.where(do, self.resampler(log_w, self.generator, N),
                                           torch.arange(N, device=self.device)))
            state = state.replace(log_w=torch.where(do, self.zeros, state.log_w))
        return state, e, do

    def record(self, diag: Dict[str, List], k: int, e: Tensor, do: Tensor, accepted: List[Tensor], log_w: Tensor,
               f: Tensor, log_Z: Tensor):
        """Level k + 1's diagnostics: sigma, ESS, resampled, MCMC acceptance, the weighted mean reward, log Z."""
        diag["sigma"].append(self.sig[k + 1])
        diag["ess"].append(e)
        diag["resampled"].append(do)
        diag["acceptance"].append(torch.stack(accepted).mean() if self.mala else torch.tensor(float("nan")))
        diag["reward"].append((torch.softmax(log_w, 0) * torch.nan_to_num(f, neginf=0.0)).sum())
        diag["log_Z"].append(log_Z)


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
        i = ranked(p)[:1]
    else:
        i = torch.multinomial(torch.softmax(p.log_w.double(), 0), 1, generator=generator)
    return p.x[i], p.log_w[i]


def ranked(p: Particles) -> Tensor:
    """Indices of the particles, the highest final reward (the potentials at full strength, ``aux["f"]``) first;
    ties by the higher weight, then the lower index; dead particles (log_w = -inf) last."""
    alive = torch.isfinite(p.log_w)
    f = torch.where(alive, torch.nan_to_num(p.aux["f"], nan=-math.inf), -math.inf)
    by_weight = torch.sort(p.log_w, descending=True, stable=True).indices
    return by_weight[torch.sort(f[by_weight], descending=True, stable=True).indices]
