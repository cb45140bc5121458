"""Certified samples: a sample is certified when the product's own potentials say it is right, each one at or above
the value its potential declares as met. No checker, no other model: only what the sampler already weighed.

The protocol is one optional attribute of a potential, ``certify_threshold``: a log-potential value at or above
which the potential is satisfied (``None`` or absent: the potential says nothing about right or wrong and takes no
part). The shapes world's scorer questions declare ``log(defaults.CERTIFY_P)`` (each question answered as wanted
with probability >= CERTIFY_P), its footprint a few stray foreground pixels; a named model's VQAScore
``log(CERTIFY_P)`` and a CLIP-like score whatever its config entry's ``certify`` option says. A clip's per-frame
potential (``PerFrame``) is met when every frame's is. A potential with a weight <= 0 takes no part either.

A product none of whose potentials declares a threshold is "not checked": ``Certificate.checked`` is False and no
sample is certified. Importing this module loads no torch (the command line reads ``NotCertified`` from it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


class NotCertified(Exception):
    """A job asked for a certified image (``require_certified``) and its sample is not: nothing was written."""


@dataclass
class Certificate:
    """Per sample: ``certified`` (N,) bool, ``unmet`` the names of the potentials each one misses; ``checked``: the
    names of the potentials that certify (empty: "not checked", nothing certified); ``values`` (J, N) each
    checked potential's value (a clip's: its worst frame) and ``thresholds`` (J,) what it had to reach."""

    certified: "object"                      # torch.BoolTensor (N,)
    unmet: List[List[str]]
    checked: List[str] = field(default_factory=list)
    values: Optional["object"] = None        # torch.Tensor (J, N)
    thresholds: List[float] = field(default_factory=list)

    @property
    def is_checked(self) -> bool:
        return bool(self.checked)

    def status(self, i: int = 0) -> Optional[bool]:
        """Sample i: True certified, False not, None not checked (no potential certifies this product)."""
        return bool(self.certified[i]) if self.checked else None

    def describe(self, i: int = 0) -> str:
        """What sample i misses, for a message: the unmet potentials' names, or why nothing was checked."""
        if not self.checked:
            return "no potential of this product certifies (give one a certify threshold)"
        return ", ".join(self.unmet[i]) or "certified"


def threshold(potential) -> Optional[float]:
    """The potential's ``certify_threshold`` (a clip's per-frame potential: its image potential's), or None."""
    inner = getattr(potential, "potential", None) if getattr(potential, "fold", None) is not None else None
    value = getattr(inner if inner is not None else potential, "certify_threshold", None)
    return None if value is None else float(value)


def certify(product, samples, decoded: bool = False) -> Certificate:
    """The Certificate of ``samples`` (a SampleResult, whose ``x`` it reads, or an (N, ...) tensor of final
    samples) under ``product``'s potentials: decoded by the product's ``decode`` unless ``decoded``. It evaluates
    only the potentials that declare a threshold, outside the sampler's NFE count, and changes nothing."""
    import torch

    from .product import PerFrame, batch_groups

    x = getattr(samples, "x", samples)
    n = x.shape[0]
    with torch.no_grad():
        image = x if decoded or product.decode is None else product.decode(x)
        jobs = [(j, threshold(r)) for j, (r, lam) in enumerate(zip(product.potentials, product.lambdas))
                if lam > 0 and threshold(r) is not None]
        per_frame = [isinstance(product.potentials[j], PerFrame) for j, _ in jobs]
        values = []
        if jobs:
            # a clip's per-frame potentials are scored on its frames, each frame on its own (not their mean)
            inner = [product.potentials[j].potential if f else product.potentials[j] for (j, _), f in zip(jobs, per_frame)]
            frames = PerFrame.fold(image) if any(per_frame) else None
            values = [None] * len(jobs)
            for clip in (False, True):
                members = [k for k, f in enumerate(per_frame) if f == clip]
                for group in batch_groups(inner, members):
                    rs = [inner[k] for k in group]
                    data = frames if clip else image
                    got = type(rs[0]).log_potential_batch(rs, data) if len(rs) > 1 else [rs[0].log_potential(data)]
                    for k, v in zip(group, got):
                        v = v.float().reshape(n, -1).amin(1) if clip else v.float().reshape(n)
                        values[k] = torch.nan_to_num(v, nan=-float("inf"))
    names = [product.potential_names[j] for j, _ in jobs]
    limits = [t for _, t in jobs]
    if not jobs:
        return Certificate(torch.zeros(n, dtype=torch.bool), [[] for _ in range(n)], [], None, [])
    table = torch.stack(values).cpu()  # (J, N)
    met = table >= torch.tensor(limits, dtype=table.dtype)[:, None]
    unmet = [[names[k] for k in range(len(names)) if not bool(met[k, i])] for i in range(n)]
    return Certificate(met.all(0), unmet, names, table, limits)
