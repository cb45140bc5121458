"""Named samplers: presets of the one engine loop (see ``engine.py``).

The presets and their names load without torch (the CLI lists them in ``--help``); the engine loads on first use.
"""
from __future__ import annotations

from typing import Dict, List

from .. import defaults

PRESETS: Dict[str, Dict] = {
    # composable diffusion: the product denoiser, no weights, no MCMC
    "ancestral": dict(proposal="stochastic", mcmc_steps=0, potentials=False, exact=False, ess_threshold=0.0),
    # independent chains, keep the one with the highest final reward
    "best-of-n": dict(proposal="stochastic", mcmc_steps=0, potentials=True, exact=False, ess_threshold=0.0,
                      select="best"),
    # FK steering: stochastic proposal, potentials, adaptive resampling, no MCMC
    "smc": dict(mcmc_steps=0, potentials=True, ess_threshold=0.5),
    # annealed importance sampling: MCMC moves and weights, never resample
    "ais": dict(mcmc_steps=1, potentials=True, ess_threshold=0.0),
    # the PoE sampler: MCMC moves plus SMC resampling (one move a level: 8 particles x 1 move were as exact as
    # 16 x 2 on the shapes world's tuning seeds, at a third of the cost); without exact weights it
    # resamples from 30% of the levels on (engine.RESAMPLE_START): earlier the potentials judge a blurry x0_hat,
    # and resampling on it put every particle on one early guess
    "poe": dict(mcmc_steps=1, potentials=True, ess_threshold=0.5, resample_start="auto"),
}
_ENGINE = ("AllParticlesDead", "SampleResult", "SamplerConfig", "run")


def available() -> List[str]:
    """Names of the registered samplers."""
    return list(PRESETS)


def config(sampler: str = defaults.SAMPLER, **options):
    """The full configuration (``SamplerConfig``) of a named sampler with ``options`` overriding its preset."""
    from .engine import SamplerConfig

    if sampler not in PRESETS:
        raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(available())}")
    return SamplerConfig.build(PRESETS[sampler], options)


def sample(product, sampler: str = defaults.SAMPLER, num_particles: int = defaults.PARTICLES,
           num_steps: int = defaults.STEPS, generator=None, shape=None, device=None, dtype=None, **options):
    """Sample ``product`` (a Product) with a named sampler; ``options`` are SamplerConfig fields; ``dtype`` of the
    particles (default float32); returns a SampleResult. The sampler, particles and steps default to a job's
    (``poegen.defaults``, as ``poegen generate``); torch's intra-op threads are picked as the CLI picks them
    (``hardware.configure_threads``) unless the caller set them."""
    import torch

    from ..hardware import configure_threads
    from .engine import run

    cfg = config(sampler, **options)
    configure_threads()
    return run(product, cfg, num_particles, num_steps, generator=generator, shape=shape, device=device,
               dtype=dtype or torch.float32)


def __getattr__(name):
    if name in _ENGINE:
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "available", "config", "sample", *_ENGINE]
