"""Named samplers: presets of the one engine loop (see ``engine.py``)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..product import Product
from .engine import AllParticlesDead, SampleResult, SamplerConfig, run

PRESETS: Dict[str, Dict] = {
    # composable diffusion: the product denoiser, no weights, no MCMC
    "ancestral": dict(proposal="stochastic", mcmc_steps=0, potentials=False, exact=False, ess_threshold=0.0),
    # independent chains, keep the one with the highest final reward
    "best-of-n": dict(proposal="stochastic", mcmc_steps=0, potentials=True, exact=False, ess_threshold=0.0,
                      select="best"),
    # FK steering: stochastic proposal, potentials, adaptive resampling, no MCMC
    "smc": dict(mcmc_steps=0, potentials=True, ess_threshold=0.5),
    # annealed importance sampling: MCMC moves and weights, never resample
    "ais": dict(mcmc_steps=2, potentials=True, ess_threshold=0.0),
    # the PoE sampler: MCMC moves plus SMC resampling
    "poe": dict(mcmc_steps=2, potentials=True, ess_threshold=0.5),
}


def available() -> List[str]:
    """Names of the registered samplers."""
    return list(PRESETS)


def config(sampler: str = "poe", **options) -> SamplerConfig:
    """The full configuration of a named sampler with ``options`` overriding its preset."""
    if sampler not in PRESETS:
        raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(available())}")
    return SamplerConfig.build(PRESETS[sampler], options)


def sample(product: Product, sampler: str = "poe", num_particles: int = 64, num_steps: int = 50,
           generator: Optional[torch.Generator] = None, shape: Optional[Sequence[int]] = None,
           device=None, dtype: torch.dtype = torch.float32, **options) -> SampleResult:
    """Sample ``product`` with a named sampler; ``options`` are SamplerConfig fields."""
    cfg = config(sampler, **options)
    return run(product, cfg, num_particles, num_steps, generator=generator, shape=shape, device=device, dtype=dtype)


__all__ = ["PRESETS", "available", "config", "sample", "SampleResult", "SamplerConfig", "AllParticlesDead"]
