"""The ``AutoencoderKL`` of a latent-diffusion folder: its config (latent scale factor), the shared loader, and the
``decode`` callable that lets potentials score pixels."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cache import cached
from .common import load_pretrained, read_config, resolve


def _vae_config(root: str) -> dict:
    return read_config(Path(root) / "vae" / "config.json", required=False)


def _vae_scale(root: str) -> int:
    """Pixels per latent of the folder's VAE (2^(blocks - 1)); 8 when it has no vae/ folder."""
    blocks = _vae_config(root).get("block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else 8


class _Decode(torch.nn.Module):
    """The VAE's decoding as a module's forward, so that an offload hook can move the whole VAE in and out."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample


def load_vae(root: str, subfolder: str = "vae", device=None):
    """The folder's ``AutoencoderKL``, loaded once per device: the decoder and the inpainting experts' encoders
    share it."""
    from diffusers import AutoencoderKL

    return cached("vae", root, None, device, lambda: load_pretrained(AutoencoderKL, root, subfolder).eval()
                  .to(device), subfolder)


def vae_decoder(path_or_id: str, subfolder: str = "vae", device=None):
    """A decode(latents) -> images in [-1, 1] callable for ``Product(decode=...)``: potentials see pixels.
    The VAE runs on ``device`` (default CPU) in float32, ``decode.micro_batch`` latents per call (all when None);
    images come back on the latents' device."""
    return decoder_of(load_vae(resolve(path_or_id), subfolder, device))


def decoder_of(vae):
    """``vae_decoder``'s callable on an ``AutoencoderKL`` already loaded (a folder's, or a user's pipeline's), on
    the VAE's own device and dtype."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # FLUX's VAE shifts its latents
    module = _Decode(vae)

    def decode(latents: Tensor) -> Tensor:  # differentiable where the caller enables grad (gradient guidance)
        p = next(module.parameters())
        z = (latents / vae.config.scaling_factor + shift).to(p.device, p.dtype)
        out = torch.cat([module(chunk) for chunk in z.split(decode.micro_batch or len(z))])
        return out.clamp(-1, 1).to(latents.device, latents.dtype)
    decode.vae, decode.module, decode.micro_batch = vae, module, None  # Product.to moves the VAE
    decode.offload_modules = lambda: [module]
    return decode
