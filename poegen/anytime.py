"""Anytime sampling: rounds of a sampler until the product's potentials certify an image, within a budget of NFE.

``poegen.sample`` runs a sampler once and returns weighted particles; this module sits above it, where a job
becomes an image. With ``budget="anytime"`` (a job's default) it runs a small first round, certifies every live
final particle (``certificate.certify``) and stops as soon as one is certified; otherwise it runs further rounds of
``particles`` fresh particles (the generator runs on, so every round draws new noise) until one is, or until the
next round would spend more than ``max_nfe`` evaluations per generative expert (default:
``defaults.MAX_NFE_FACTOR`` times one fixed run of ``particles``). The small round is a search: it spends what
``first`` particles of the sampler would, as (1 + mcmc_steps) times as many particles without MCMC moves (with few
particles, more starting points find a right image sooner than moves do). A product none of whose potentials
certifies cannot say when to stop: it runs one round of ``particles``, as a fixed budget does.

``budget="fixed"`` is one round of ``particles`` whose pick is made by ``select`` as before; the pick is
certified all the same. ``images`` > 1 asks for that many certified images of different level-0 ancestors
(``aux["origin"]`` of the engine's particles; particles of different rounds always differ): after a round that
certified some, the next round is a small one again, so K images of an easy prompt cost about K first rounds.
Among them, those visibly different from each other (``distinct``) are picked first; where the product fixes every
object's place (a shapes-world prompt), different ancestors may still look alike.

The pick among certified particles is the one with the highest final reward (the potentials at full strength);
when none is certified within the budget, the best live particle of every round (``select="draw"``: a weighted
draw from the last round)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from . import defaults, samplers
from .certificate import certify

log = logging.getLogger("poegen.anytime")



@dataclass
class Outcome:
    """The picked samples and how they were found.

    ``x`` (K, ...) the picked final samples, ``images`` (K, ...) the same decoded (the product's ``decode``, else
    ``x``); ``certified`` per pick True, False, or None (no potential of the product certifies) and ``unmet`` the
    names of the potentials each one misses; ``nfe`` per expert over every round; ``rounds`` the particles of each
    round; ``first_certified`` the NFE per expert (as ``nfe``) spent when the first certified particle appeared
    (None: none did); ``log_Z``, ``diagnostics`` and ``particles`` (its final weighted particles) of the round the
    first pick came from; ``fixed_nfe`` what one fixed run of ``particles`` spends, the rounds' yardstick (from the
    first round by the engine's count)."""

    x: torch.Tensor
    images: torch.Tensor
    certified: List[Optional[bool]]
    unmet: List[List[str]]
    nfe: Dict[str, int]
    rounds: List[int]
    first_certified: Optional[Dict[str, int]]
    log_Z: float
    diagnostics: Dict[str, list] = field(repr=False, default_factory=dict)
    particles: object = field(repr=False, default=None)
    fixed_nfe: Dict[str, int] = field(default_factory=dict)


def distinct(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two decoded images (C, H, W) in [-1, 1] look different: at least ``defaults.DISTINCT_SHARE`` of their
    pixels differ by more than a tenth of the range in some channel."""
    changed = ((a.float() - b.float()).abs().amax(0) > 0.2).float().mean()
    return bool(changed >= defaults.DISTINCT_SHARE)


def sample(product, sampler: str = defaults.SAMPLER, particles: int = defaults.PARTICLES,
           steps: int = defaults.STEPS, generator: Optional[torch.Generator] = None, *,
           budget: str = defaults.BUDGET, max_nfe: Optional[int] = None, first: int = defaults.FIRST_ROUND,
           images: int = 1, select: str = defaults.SELECT, **options) -> Outcome:
    """Sample ``product`` by ``budget`` ("anytime" rounds, one "fixed" run, or "auto": anytime for an image, fixed
    for a clip; see the module), pick ``images``
    samples and certify them. ``options`` are further SamplerConfig fields, as ``samplers.sample`` takes."""
    if budget not in defaults.BUDGETS:
        raise ValueError(f"budget {budget!r}: expected one of {', '.join(defaults.BUDGETS)}")
    for name, value in (("images", images), ("first", first), ("particles", particles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
    if max_nfe is not None and (isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < 1):
        raise ValueError(f"max_nfe={max_nfe!r}: expected a whole number of evaluations >= 1")
    if budget == "auto":  # a clip (C, F, H, W) runs fixed: its certificate is not yet a judge of right and wrong
        budget = "fixed" if len(product.shape or ()) == 4 else "anytime"
    checked = _checks(product)
    if budget == "fixed" or not checked:
        if budget == "anytime":
            log.info("no potential of this product certifies: one round of %d particles", particles)
        return _fixed(product, sampler, particles, steps, generator, images, select, options)
    return _rounds(product, sampler, particles, steps, generator, max_nfe, first, images, select, options)


def _checks(product) -> bool:
    """Whether some potential of the product can certify (declares a threshold, at a weight > 0)."""
    from .certificate import threshold

    return any(lam > 0 and threshold(r) is not None for r, lam in zip(product.potentials, product.lambdas))


def _decode(product, x: torch.Tensor) -> torch.Tensor:
    """Decoded final samples, a few at a time (a latent model's decoder holds one batch's activations)."""
    if product.decode is None:
        return x
    with torch.no_grad():
        return torch.cat([product.decode(chunk) for chunk in x.split(4)])


def _spent(nfe: Dict[str, int], names) -> int:
    """NFE per generative expert: the most any one of ``names`` made."""
    return max((nfe.get(n, 0) for n in names), default=0)


def _add(total: Dict[str, int], more: Dict[str, int]) -> Dict[str, int]:
    return {k: total.get(k, 0) + more.get(k, 0) for k in {*total, *more}}


def _fixed(product, sampler, particles, steps, generator, images, select, options) -> Outcome:
    """One run of ``particles``; ``images`` picks by ``select`` (best: the highest rewards), then certified."""
    r = samplers.sample(product, sampler=sampler, num_particles=particles, num_steps=steps, generator=generator,
                        **{**options, "select": "all"})
    final = r.particles
    if images == 1:
        from .samplers.engine import _select
        picks, _ = _select(final, select, generator)
        decoded = _decode(product, picks)
    else:
        order = _ranked(final)
        chosen = _choose(list(zip(_decode(product, final.x[order]), final.x[order])), images)
        decoded, picks = (torch.stack([c[j] for c in chosen]) for j in (0, 1))
    cert = certify(product, decoded, decoded=True)
    status = [cert.status(i) for i in range(len(picks))]
    first = dict(r.nfe) if any(status) else None
    return Outcome(picks, decoded, status, cert.unmet if cert.is_checked else [[] for _ in status], dict(r.nfe),
                   [particles], first, r.log_Z, r.diagnostics, final, dict(r.nfe))


def _ranked(final) -> torch.Tensor:
    """Indices of the live final particles, the highest final reward first (``engine.ranked``)."""
    from .samplers.engine import ranked

    order = ranked(final)
    return order[torch.isfinite(final.log_w[order])]


def _rounds(product, sampler, particles, steps, generator, max_nfe, first, images, select, options) -> Outcome:
    """The anytime loop: a round of ``first`` particles, then rounds of ``particles`` (of ``first`` again after a
    round that certified some, while more images are wanted), each certified, until ``images`` certified
    particles of different ancestors are found or the budget is spent."""
    names = product.names
    nfe: Dict[str, int] = {}
    sizes: List[int] = []
    found: List[tuple] = []     # (image, x, round, origin) of every certified particle, one per ancestor
    fallback: List[tuple] = []  # (reward, image, x, unmet, round) of the best live particle of each round
    runs: List = []             # each round's SampleResult
    moves = samplers.config(sampler, **options).mcmc_steps
    first_certified, size = None, first
    per: Optional[Dict[str, float]] = None  # NFE per particle and expert of a full round (moves made)
    while len(found) < images:
        small = size < particles  # a search: (1 + moves) times the particles, none of them moved
        n = size * (1 + moves) if small else size
        if per is not None:
            full = _spent(per, names)
            limit = max_nfe if max_nfe is not None else defaults.MAX_NFE_FACTOR * particles * full
            n = min(n, int((limit - _spent(nfe, names)) // (full - steps * moves if small else full)))
            if n < 1:
                break
        r = samplers.sample(product, sampler=sampler, num_particles=n, num_steps=steps, generator=generator,
                            **{**options, **({"mcmc_steps": 0} if small else {}), "select": "all"})
        nfe, round_no = _add(nfe, r.nfe), len(sizes)
        sizes.append(n)
        runs.append(r)
        if per is None:  # the engine's count: each move is one evaluation of every generative expert a level
            per = {k: v / n + (steps * moves if small and k in names else 0) for k, v in r.nfe.items()}
        final = r.particles
        order = _ranked(final)
        size, before = particles, len(found)
        if not len(order):
            log.info("round %d: every particle died", round_no + 1)
            continue
        decoded = _decode(product, final.x[order])
        cert = certify(product, decoded, decoded=True)
        fallback.append((float(final.aux["f"][order[0]]), decoded[0], final.x[order[0]], cert.unmet[0], round_no))
        seen = set()
        for k, i in enumerate(order.tolist()):  # the best certified particle of each ancestor
            origin = int(final.aux["origin"][i])
            if bool(cert.certified[k]) and origin not in seen:
                seen.add(origin)
                found.append((decoded[k], final.x[i], round_no))
        if len(found) > before:
            first_certified = first_certified or dict(nfe)
            size = first  # more images wanted: another small round
        log.info("round %d: %d particles, %d certified, NFE %d so far", round_no + 1, n,
                 int(cert.certified.sum()), _spent(nfe, names))
    if not (found or fallback):
        from .samplers.engine import AllParticlesDead
        raise AllParticlesDead(f"every particle of {len(sizes)} round(s) died; raise the particles or lower the "
                               "potential weight")
    picks = _choose([(im, x, True, [], rnd) for im, x, rnd in found], images)
    if len(picks) < images:
        if select == "draw" and not picks:
            from .samplers.engine import _select
            x, _ = _select(runs[-1].particles, "draw", generator)
            im = _decode(product, x)
            picks.append((im[0], x[0], False, certify(product, im, decoded=True).unmet[0], len(runs) - 1))
        rest = [(im, x, False, unmet, rnd) for _, im, x, unmet, rnd in sorted(fallback, key=lambda t: -t[0])]
        picks += _choose(rest, images - len(picks), picks)
    src = runs[picks[0][4]]  # the round of the first pick
    return Outcome(torch.stack([p[1] for p in picks]), torch.stack([p[0] for p in picks]), [p[2] for p in picks],
                   [p[3] for p in picks], nfe, sizes, first_certified, src.log_Z, src.diagnostics, src.particles,
                   {k: round(v * particles) for k, v in per.items()})


def _choose(candidates: List[tuple], k: int, taken: List[tuple] = ()) -> List[tuple]:
    """Up to ``k`` of ``candidates`` (in order; each a tuple whose first entry is its decoded image): first those
    visibly different from every one taken before them (``distinct``), then, when too few are, the rest in order."""
    out: List[tuple] = []
    for c in candidates:
        if len(out) < k and all(distinct(c[0], t[0]) for t in [*taken, *out]):
            out.append(c)
    return out + [c for c in candidates if all(c is not o for o in out)][:k - len(out)]
