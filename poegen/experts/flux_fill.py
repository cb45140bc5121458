"""FLUX.1 Fill (inpainting): a FLUX transformer whose input is the packed noisy latents followed, on the channel
axis, by the packed latents of the masked image and the packed mask, as diffusers' ``FluxFillPipeline`` builds them.

The conditioning is computed once per (image, mask) with the folder's VAE and concatenated to every row; the
flow -> VE conversion and the batched call are ``FluxExpert``'s.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from .cache import cached, digest
from .cache import torch_dtype as _torch_dtype
from .diffusers import (FlowTransformerExpert, FluxExpert, _encoded, _flux_parts, _vae_config, _vae_scale,
                        encode_flux_prompt, latent_ids, load_vae, pack_latents, resolve, unpack_latents)

log = logging.getLogger("poegen.experts.flux_fill")

# the keyword options a config entry of kind "flux-fill" may give ``load_flux_fill``
OPTIONS = ("micro_batch", "resolution", "max_sequence_length", "torch_dtype")


def _check_transformer(path_or_id: str, root: str, c: int, f: int):
    """Short errors, before loading any weights, when transformer/ is not FLUX.1 Fill for this VAE."""
    config = json.loads((Path(root) / "transformer" / "config.json").read_text())
    n = config.get("in_channels")
    out = config.get("out_channels") or n
    if n == 4 * c:
        raise ValueError(f"{path_or_id}: transformer in_channels {n} holds only the packed latents; this is a plain "
                         "FLUX model, not FLUX.1 Fill: use the `flux` kind")
    if n != 8 * c + 4 * f * f or out != 4 * c:
        raise ValueError(f"{path_or_id}: transformer in/out channels {n}/{out} are not the {8 * c + 4 * f * f}/{4 * c} "
                         f"FLUX.1 Fill takes with this VAE ({c} latent channels, {f} pixels per latent)")


def _check_inputs(image: Tensor, mask: Tensor, f: int, resolution: Optional[int]) -> Tensor:
    """The mask as (1, 1, H, W), after checking the image and mask (shapes, ranges, sizes)."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image has shape {tuple(image.shape)}; expected (1, 3, H, W) in [-1, 1]")
    H, W = image.shape[-2:]
    mask = mask[None, None] if mask.dim() == 2 else mask
    if tuple(mask.shape) != (1, 1, H, W):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (1, 1, {H}, {W}) or ({H}, {W}), the image's "
                         "size")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask values must be 0 (keep) or 1 (repaint); binarise it first, e.g. (mask >= 0.5)")
    if image.min() < -1 or image.max() > 1:
        raise ValueError(f"image values span [{float(image.min()):.3g}, {float(image.max()):.3g}]; expected [-1, 1] "
                         "(for an image in [0, 1] pass 2 * image - 1)")
    if H % (2 * f) or W % (2 * f):
        raise ValueError(f"image is {H}x{W} pixels; both sides must be multiples of {2 * f} (VAE factor {f} times 2)")
    if resolution is not None and (H, W) != (resolution, resolution):
        raise ValueError(f"image is {H}x{W} pixels but resolution is {resolution}; resize the image and mask to "
                         f"{resolution}x{resolution} or leave resolution out")
    return mask


@torch.no_grad()
def fill_conditioning(root: str, image: Tensor, mask: Tensor, masked_image_latents: Optional[Tensor] = None) -> Tensor:
    """(1, h/2 * w/2, 4C + 4 f^2) packed tokens: the masked image's latents (VAE mode unless ``masked_image_latents``,
    raw (1, C, h, w) VAE latents, are given; then shifted and scaled) followed by the mask, each f x f pixel block
    unshuffled to f^2 channels, as ``FluxFillPipeline.prepare_mask_latents``."""
    vae = load_vae(root)  # the same object as ``vae_decoder(root)``'s
    f = _vae_scale(root)
    _, _, H, W = image.shape
    h, w = H // f, W // f
    if masked_image_latents is None:
        p = next(vae.parameters())
        masked = (image.float() * (1 - mask.float())).to(p.device, p.dtype)
        masked_image_latents = vae.encode(masked).latent_dist.mode()
    elif tuple(masked_image_latents.shape) != (1, vae.config.latent_channels, h, w):
        raise ValueError(f"masked_image_latents has shape {tuple(masked_image_latents.shape)}; expected "
                         f"(1, {vae.config.latent_channels}, {h}, {w}), the VAE latents of the masked image")
    z = (masked_image_latents.float().cpu() - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
    m = mask.float().cpu()[:, 0].reshape(1, h, f, w, f).permute(0, 2, 4, 1, 3).reshape(1, f * f, h, w)
    return torch.cat([pack_latents(z), pack_latents(m)], dim=2)


class FluxFillExpert(FluxExpert):
    """FLUX.1 Fill for one prompt and one (image, mask): ``FluxExpert`` with the fixed packed conditioning ``fill``
    (masked-image latents, then mask) appended to each row's packed latents. Mask 1 = repaint."""

    def __init__(self, transformer, encoder_hidden_states: Tensor, pooled_projections: Tensor, shape, fill: Tensor,
                 guidance: Optional[float] = 30.0, **kwargs):
        FlowTransformerExpert.__init__(self, transformer, encoder_hidden_states, pooled_projections, shape=shape,
                                       **kwargs)
        c, h, w = self.shape
        config = transformer.config
        if h % 2 or w % 2 or fill.shape[:2] != (1, h // 2 * w // 2) or config.in_channels != 4 * c + fill.shape[2] \
                or (config.out_channels or config.in_channels) != 4 * c:
            raise ValueError(f"shape {self.shape} with fill {tuple(fill.shape)}: FLUX Fill needs even sides, "
                             f"(1, h/2 * w/2, k) tokens and in_channels ({config.in_channels}) = 4 * channels + k")
        self.fill = fill
        self.guidance = guidance if config.guidance_embeds else None
        if guidance is not None and not config.guidance_embeds:
            log.info("%s: the transformer has no guidance embedding; guidance %s is not used", self.name, guidance)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", image: Tensor = None, mask: Tensor = None,
                        **kwargs) -> "FluxFillExpert":
        """Load a FLUX.1 Fill folder and condition on ``prompt``, ``image`` and ``mask`` (see ``load_prompts``)."""
        return cls.load_prompts(path_or_id, [prompt], image, mask, **kwargs)[0]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts: Sequence[str], image: Tensor, mask: Tensor,
                     resolution: Optional[int] = None, max_sequence_length: int = 512, guidance: Optional[float] = 30.0,
                     torch_dtype=None, micro_batch: Optional[int] = None, name: Optional[str] = None,
                     masked_image_latents: Optional[Tensor] = None) -> list:
        """One expert per prompt on one transformer (loaded once per folder and dtype, with FLUX's text encoders),
        all sharing the conditioning of ``image`` (1, 3, H, W) in [-1, 1] and ``mask`` (1, 1, H, W) or (H, W) in
        {0, 1}, encoded once. Latents are (C, H / f, W / f) for the VAE factor f; ``resolution``, if given, must be
        the image's side. ``masked_image_latents``: the masked image's raw VAE latents instead of the VAE's mode."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of prompts, got one string; use from_pretrained for one")
        if image is None or mask is None:
            raise ValueError("flux-fill needs an image (1, 3, H, W) in [-1, 1] and a mask (H, W) in {0, 1}")
        root = resolve(path_or_id)
        c, f = _vae_config(root).get("latent_channels", 16), _vae_scale(root)
        _check_transformer(path_or_id, root, c, f)
        mask = _check_inputs(image, mask, f, resolution)
        parts = _flux_parts(path_or_id, _torch_dtype(torch_dtype))
        model = parts["transformer"]
        if masked_image_latents is None:
            store = cached("flux-fill-conditioning", root, None, None, dict)
            key = digest(image, mask)
            if key not in store:
                store[key] = fill_conditioning(root, image, mask)
            fill = store[key]
        else:
            fill = fill_conditioning(root, image, mask, masked_image_latents)
        fill = fill.to(next(model.parameters()).device)
        shape = (c, image.shape[-2] // f, image.shape[-1] // f)
        length = min(max_sequence_length, parts["t5_tokenizer"].model_max_length)
        experts = []
        for prompt in prompts:
            hidden, pooled = _encoded(parts, (prompt, length), lambda key: encode_flux_prompt(parts, *key))
            experts.append(cls(model, hidden, pooled, shape, fill, guidance=guidance, micro_batch=micro_batch,
                               name=name or f"flux-fill[{prompt}]"))
        return experts

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "fill": self.fill.expand(n, -1, -1)}

    def _forward(self, x_t: Tensor, t: Tensor, fill: Tensor = None, encoder_hidden_states: Tensor = None,
                 pooled_projections: Tensor = None, guidance: Tensor = None) -> Tensor:
        _, c, h, w = x_t.shape
        v = self.transformer(hidden_states=torch.cat([pack_latents(x_t), fill], dim=2),
                             encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled_projections,
                             timestep=t.to(x_t.dtype), guidance=guidance,
                             img_ids=latent_ids(h // 2, w // 2, x_t.device, x_t.dtype),
                             txt_ids=torch.zeros(encoder_hidden_states.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
                             ).sample
        return unpack_latents(v, c, h, w)


def load_flux_fill(path: str, texts: Sequence[str], image: Tensor, mask: Tensor, guidance: float, **options) -> list:
    """Registry loader: one FLUX.1 Fill expert per text on ``image`` and ``mask`` (guidance is embedded, no CFG)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"flux-fill options {unknown} are not among {', '.join(OPTIONS)}")
    return FluxFillExpert.load_prompts(path, list(texts), image, mask, guidance=guidance, **options)
