"""The two expert protocols the engine relies on, and nothing more."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from ..product import expert_name  # noqa: F401  (core: the product names its experts)


@runtime_checkable
class GenerativeExpert(Protocol):
    """A denoiser in the VE convention ``x = x0 + sigma * eps``.

    Optional attributes the engine reads when present: ``name``, ``shape`` (event shape),
    ``sigma_min`` / ``sigma_max`` (the noise range it was trained on), and
    ``log_density(x, sigma) -> (N,)`` (normalised, enables MALA and exact weights), ``decode(latents)`` (a latent
    model's decoder to images in [-1, 1]; a Product given no ``decode`` takes the first one). Experts on one backbone
    share a ``batch_key``; the product then calls ``type(e).denoise_batch(experts, x, sigma)`` once for all.
    """

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x0_hat, same shape as x; sigma is 0-d or (N,)."""
        ...


@runtime_checkable
class DiscriminativeExpert(Protocol):
    """A black-box log-potential on a clean image; -inf marks a violated hard constraint.

    Questions on one scorer share a ``batch_key``; the product then calls
    ``type(r).log_potential_batch(potentials, images) -> list of (N,)`` once for all of them."""

    def log_potential(self, x0: Tensor) -> Tensor:
        """(N,) log-potential of each clean sample."""
        ...
