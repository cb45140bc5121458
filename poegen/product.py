"""A product of experts: weighted (optionally masked) generative experts and annealed potentials.

    pi_sigma(x)  ∝  prod_i p_i(x; sigma)^{beta_i m_i}  *  exp(sum_j lambda_j a(t) r_j(x0_hat(x)))

The product's score is sum_i beta_i m_i score_i; its denoised estimate normalises by the total
weight B = sum_i beta_i m_i, so with B = 1 it is the composable-diffusion combination of the
experts' denoisers and with B > 1 it is the mode of a sharper product (noise variance sigma^2 / B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor


Schedule = Union[str, Callable[[float], float]]


def lambda_schedule(name: Schedule, rate: float = 5.0) -> Callable[[float], float]:
    """Factor a(t) on potentials at progress t in [0, 1] (0 = highest noise, 1 = clean)."""
    if callable(name):
        return name
    if name == "constant":
        return lambda t: 1.0
    if name == "linear":
        return lambda t: t
    if name == "exponential":
        return lambda t: math.expm1(rate * t) / math.expm1(rate)
    raise ValueError(f"unknown lambda schedule {name!r}; known: constant, linear, exponential (or a callable)")



def expert_name(expert, index: int) -> str:
    """The expert's ``name`` attribute, else its class name with its position."""
    return getattr(expert, "name", None) or f"{type(expert).__name__}[{index}]"

@dataclass
class Evaluation:
    """The product evaluated at x and sigma: denoised estimate, score, log density and dead rows."""

    x0: Tensor
    score: Tensor
    log_gamma: Optional[Tensor]
    bad: Tensor            # (E, N) bool: expert e returned a non-finite value for particle n

    def where(self, mask: Tensor, other: "Evaluation") -> "Evaluation":
        """Rows of ``other`` where mask (N,) is true, else of self."""
        m = mask.reshape(-1, *[1] * (self.x0.dim() - 1))
        lg = None if self.log_gamma is None else torch.where(mask, other.log_gamma, self.log_gamma)
        return Evaluation(torch.where(m, other.x0, self.x0), torch.where(m, other.score, self.score), lg,
                          torch.where(mask[None], other.bad, self.bad))


class PerFrame:
    """An image potential r applied to every frame of a clip: clips (N, 3, F, H, W) are folded to (N*F, 3, H, W)
    and the frames' log-potentials summed, r(clip) = sum_f r(frame_f), the product of one expert per frame
    (``reduce="mean"``: their average, a per-frame lambda that does not grow with F). Potentials on one scorer keep
    sharing one batched call over all frames."""

    def __init__(self, potential, reduce: str = "sum"):
        if reduce not in ("sum", "mean"):
            raise ValueError(f"PerFrame: reduce {reduce!r} is not sum or mean")
        self.potential, self.reduce = potential, reduce
        self.name = f"{expert_name(potential, 0)}/frame"
        self.schedule = getattr(potential, "schedule", None)
        key = getattr(potential, "batch_key", None)
        self.batch_key = None if key is None else ("per-frame", reduce, key)

    @staticmethod
    def fold(clips: Tensor) -> Tensor:
        """(N, C, F, H, W) clips as (N*F, C, H, W) frames, clip by clip."""
        if clips.dim() != 5:
            raise ValueError(f"PerFrame: expected clips (N, C, F, H, W), got shape {tuple(clips.shape)}")
        return clips.transpose(1, 2).flatten(0, 1)

    def _reduce(self, value: Tensor, n: int) -> Tensor:
        per = value.reshape(n, -1)
        return per.sum(1) if self.reduce == "sum" else per.mean(1)

    @classmethod
    def log_potential_batch(cls, potentials, clips: Tensor) -> List[Tensor]:
        inner = [p.potential for p in potentials]
        frames = cls.fold(clips)
        values = type(inner[0]).log_potential_batch(inner, frames) if len(inner) > 1 else [inner[0].log_potential(frames)]
        return [p._reduce(v, clips.shape[0]) for p, v in zip(potentials, values)]

    def log_potential(self, clips: Tensor) -> Tensor:
        return self.log_potential_batch([self], clips)[0]


def _move(obj, device: torch.device, seen: set):
    """Move the modules and tensors ``obj`` holds in its attributes to ``device``, following poegen's own
    objects (a scorer inside a potential); shared modules move once."""
    if obj is None or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        obj.to(device)
        return
    for key, value in list(getattr(obj, "__dict__", {}).items()):
        if isinstance(value, Tensor):
            setattr(obj, key, value.to(device))
        elif isinstance(value, torch.nn.Module) or type(value).__module__.startswith("poegen"):
            _move(value, device, seen)


def batch_groups(items: Sequence, indices: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Indices of ``items`` (or of those in ``indices``) grouped by ``batch_key``: the members of a group share one
    batched call; an item without a key is a group of its own."""
    groups: Dict = {}
    for i in range(len(items)) if indices is None else indices:
        key = getattr(items[i], "batch_key", None)
        groups.setdefault(("solo", i) if key is None else key, []).append(i)
    return list(groups.values())


def merge_experts(experts: Sequence, weights: Sequence[float], masks: Sequence[Optional[Tensor]]):
    """(experts, weights, masks) with each expert object once: its weighted masks summed (beta_1 m_1 + beta_2 m_2 as
    one mask of weight 1; a plain sum of weights when none is masked), so a shared expert costs one evaluation."""
    groups: Dict[int, list] = {}
    for e, w, m in zip(experts, weights, masks):
        groups.setdefault(id(e), []).append((e, float(w), m))
    out = []
    for group in groups.values():
        e = group[0][0]
        if len(group) == 1:
            out.append(group[0])
        elif all(m is None for _, _, m in group):
            out.append((e, sum(w for _, w, _ in group), None))
        else:
            out.append((e, 1.0, sum(w * (1.0 if m is None else m) for _, w, m in group)))
    out = [o for o in out if o[2] is not None or o[1] != 0]  # an expert whose weights cancel costs nothing
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


class Product:
    """Generative experts with weights ``beta`` (negative allowed) and optional spatial masks,
    times discriminative experts with weights ``lambdas`` annealed by ``schedule`` (a potential with
    its own ``schedule`` attribute, a callable of t in [0, 1], follows that one instead)."""

    def __init__(self, experts: Sequence, weights: Optional[Sequence[float]] = None,
                 masks: Optional[Sequence[Optional[Tensor]]] = None, potentials: Sequence = (),
                 lambdas: Optional[Sequence[float]] = None, schedule: Schedule = "constant",
                 decode: Optional[Callable[[Tensor], Tensor]] = None, fps: Optional[float] = None):
        self.experts = list(experts)
        self.potentials = list(potentials)
        if not self.experts:
            raise ValueError("Product needs at least one generative expert")
        for i, e in enumerate(self.experts):
            if not callable(getattr(e, "denoise", None)):
                raise TypeError(f"generative expert {expert_name(e, i)} has no denoise(x, sigma) method")
        for j, r in enumerate(self.potentials):
            if not callable(getattr(r, "log_potential", None)):
                raise TypeError(f"potential {expert_name(r, j)} has no log_potential(x0) method")
        self.names = [expert_name(e, i) for i, e in enumerate(self.experts)]
        self.potential_names = [expert_name(r, j) for j, r in enumerate(self.potentials)]
        self.weights = [1.0] * len(self.experts) if weights is None else [float(w) for w in weights]
        self.masks = [None] * len(self.experts) if masks is None else list(masks)
        self.lambdas = [1.0] * len(self.potentials) if lambdas is None else [float(v) for v in lambdas]
        for field, values, n in (("weights", self.weights, len(self.experts)), ("masks", self.masks, len(self.experts)),
                                 ("lambdas", self.lambdas, len(self.potentials))):
            if len(values) != n:
                raise ValueError(f"Product: {field} has {len(values)} entries for {n} experts")
        for field, values, names in (("weights", self.weights, self.names), ("lambdas", self.lambdas, self.potential_names)):
            for name, v in zip(names, values):
                if not math.isfinite(v):  # NaN or inf would only surface later as dead particles or a wrong hint
                    raise ValueError(f"Product: {field} of {name} is {v}, not a finite number")
        self.schedule = lambda_schedule(schedule)
        # latents to pixels for the potentials: given, else the first expert's own (``poegen.from_pipeline``'s VAE)
        self.decode = decode if decode is not None else next(
            (e.decode for e in self.experts if callable(getattr(e, "decode", None))), None)
        self.shape = self._event_shape()
        self.nfe: Dict[str, int] = {n: 0 for n in self.names + self.potential_names}
        self.edit = None  # an edit's image and mask (poegen.edit.Edit), set by families.build_product
        self.fps = fps  # a clip's frames per second (a video product's), else None
        self.start = None  # (x, sigma): sample from x noised to sigma instead of from pure noise (a simulated clip's
        #                    render; the engine keeps its noise levels at or below sigma), else None

    def _event_shape(self):
        shapes = {n: tuple(e.shape) for n, e in zip(self.names, self.experts) if getattr(e, "shape", None) is not None}
        if len(set(shapes.values())) > 1:
            raise ValueError("generative experts disagree on the sample shape: "
                             + ", ".join(f"{n} {s}" for n, s in shapes.items()))
        shape = next(iter(shapes.values()), None)
        for n, m in zip(self.names, self.masks):
            if m is not None and shape is not None:
                # by hand: torch.broadcast_shapes imports sympy, half a second of every command's start-up
                if any(a != b and 1 not in (a, b) for a, b in zip(reversed(tuple(m.shape)), reversed(shape))):
                    raise ValueError(f"mask of expert {n} has shape {tuple(m.shape)}, not broadcastable to {shape}")
        return shape

    def to(self, device) -> "Product":
        """Move every expert's and potential's torch modules and tensors (and the decoder's) to ``device``."""
        seen: set = set()
        for obj in self.experts + self.potentials + [self.decode]:
            _move(obj, torch.device(device), seen)
        self.masks = [None if m is None else m.to(device) for m in self.masks]
        return self

    # ---- generative part ---------------------------------------------------------------------

    @property
    def has_density(self) -> bool:
        """True when every generative expert has log_density and none is masked (exact weights, MALA)."""
        return all(callable(getattr(e, "log_density", None)) for e in self.experts) and all(m is None for m in self.masks)

    def total_weight(self, shape, device, dtype) -> Tensor:
        """B = sum_i beta_i m_i broadcast to (1, *shape); must be positive everywhere."""
        B = torch.zeros((1, *shape), device=device, dtype=dtype)
        for beta, m in zip(self.weights, self.masks):
            B = B + beta * (1.0 if m is None else m.to(device, dtype))
        if not bool((B > 0).all()):
            raise ValueError(f"the generative weights {self.weights} (times masks) must sum to a positive value "
                             "at every position; add a prior expert or raise the positive weights")
        return B

    def sigma_range(self, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None):
        """The noise range every expert supports (user values take precedence)."""
        lo = max([getattr(e, "sigma_min", 0.0) or 0.0 for e in self.experts] + [0.0])
        hi = min([getattr(e, "sigma_max", math.inf) or math.inf for e in self.experts] + [math.inf])
        lo = sigma_min if sigma_min is not None else (lo if lo > 0 else 0.002)
        hi = sigma_max if sigma_max is not None else (hi if math.isfinite(hi) else 80.0)
        return float(lo), float(hi)

    def evaluate(self, x: Tensor, sigma: Tensor, B: Tensor, density: bool = False) -> Evaluation:
        """Product score, denoised estimate and (if ``density``) log density at x, sigma."""
        score = torch.zeros_like(x)
        log_gamma = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) if density else None
        bad = []
        for name, e, beta, m, x0 in zip(self.names, self.experts, self.weights, self.masks, self._denoise_all(x, sigma)):
            self.nfe[name] += x.shape[0]
            if x0.shape != x.shape:
                raise ValueError(f"expert {name} returned shape {tuple(x0.shape)} for input {tuple(x.shape)}")
            s = (x0 - x) / sigma ** 2
            score = score + beta * (s if m is None else m.to(x) * s)
            b = ~torch.isfinite(x0).flatten(1).all(1)
            if density:
                lg = e.log_density(x, sigma)
                log_gamma = log_gamma + beta * lg
                b = b | ~torch.isfinite(lg)
            bad.append(b)
        return Evaluation(x + sigma ** 2 * score / B, score, log_gamma, torch.stack(bad))

    def _denoise_all(self, x: Tensor, sigma: Tensor) -> List[Tensor]:
        """Every expert's x0_hat; experts with the same ``batch_key`` share one ``denoise_batch`` call."""
        out: List[Optional[Tensor]] = [None] * len(self.experts)
        for members in batch_groups(self.experts):
            experts = [self.experts[i] for i in members]
            x0s = type(experts[0]).denoise_batch(experts, x, sigma) if len(members) > 1 else [experts[0].denoise(x, sigma)]
            for i, x0 in zip(members, x0s):
                out[i] = x0
        return out

    # ---- discriminative part -----------------------------------------------------------------

    def log_potentials(self, x0: Tensor, t: float):
        """(total (N,), per-expert (J, N)) annealed log-potentials lambda_j a(t) r_j at progress t. Potentials with
        equal ``batch_key`` (questions on one scorer) are evaluated together by ``log_potential_batch``."""
        n = x0.shape[0]
        if not self.potentials:
            z = torch.zeros(n, device=x0.device, dtype=x0.dtype)
            return z, z[None, :0].reshape(0, n)
        image = self.decode(x0) if self.decode is not None else x0
        per: List[Tensor] = [torch.zeros(n, device=x0.device, dtype=x0.dtype)] * len(self.potentials)
        scale = {}  # lambda_j a(t) of the active potentials; a potential may carry its own schedule
        for j, (r, lam) in enumerate(zip(self.potentials, self.lambdas)):
            a = (getattr(r, "schedule", None) or self.schedule)(t)
            if lam * a != 0:  # not active yet: skip the call (and 0 * -inf)
                scale[j] = lam * a
        for members in batch_groups(self.potentials, list(scale)):
            rs = [self.potentials[j] for j in members]
            values = type(rs[0]).log_potential_batch(rs, image) if len(rs) > 1 else [rs[0].log_potential(image)]
            for j, v in zip(members, values):
                name = self.potential_names[j]
                self.nfe[name] += n
                if v.shape != (n,):
                    raise ValueError(f"potential {name} returned shape {tuple(v.shape)}; expected ({n},)")
                per[j] = scale[j] * v.to(x0.dtype)
        per_t = torch.stack(per)
        return per_t.sum(0), per_t
