"""Stable Diffusion inpainting: a 9-channel UNet fed the noisy latents, the mask on the latent grid and the masked
image's latents (as ``StableDiffusionInpaintPipeline`` concatenates them), behind the denoiser protocol."""
from __future__ import annotations

import hashlib
import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import torch_dtype as _torch_dtype
from .diffusers import TextConditionedUNetExpert, _encoded, _sd_parts, encode_sd_prompt, load_vae, unet_config

log = logging.getLogger("poegen.experts.inpaint")

OPTIONS = ("micro_batch", "torch_dtype")   # keyword options of ``load_sd_inpaint``


def _inpaint_parts(path_or_id: str, torch_dtype=None) -> dict:
    """The folder's UNet (9 input channels), scheduler, tokenizer and text encoder, loaded once as ``_sd_parts``
    loads them; the masked-image latents are kept per (image, mask) in ``parts["masked"]``."""
    channels = unet_config(path_or_id).get("in_channels")
    if channels != 9:
        raise ValueError(f"{path_or_id}: unet in_channels is {channels}, not 9; this is not an inpainting UNet "
                         "(use the `sd` kind)")
    parts = _sd_parts(path_or_id, torch_dtype)
    parts.setdefault("masked", {})
    return parts


def _digest(*tensors: Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pixel_mask(mask: Tensor, image: Tensor) -> Tensor:
    """``mask`` (H, W) or (1, 1, H, W) as a binary (1, 1, H, W) tensor (1 = repaint), checked against ``image``."""
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image has shape {tuple(image.shape)}; give one RGB image (1, 3, H, W) in [-1, 1]")
    mask = mask[None, None] if mask.dim() == 2 else mask
    if mask.dim() != 4 or mask.shape[:2] != (1, 1) or mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; give (H, W) or (1, 1, H, W) with the image's "
                         f"H, W = {tuple(image.shape[2:])}")
    return (mask >= 0.5).to(image.dtype)  # binarised as the pipeline's mask processor does


@torch.no_grad()
def inpaint_conditioning(vae, image: Tensor, mask: Tensor, masked_image_latents: Optional[Tensor] = None):
    """(mask on the latent grid (1, 1, h, w), masked image latents (1, C, h, w)): the mask resized by nearest
    neighbour, the image with the repainted part zeroed encoded by the VAE (its mode, times the scaling factor)."""
    mask = _pixel_mask(mask, image)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    H, W = image.shape[2:]
    if H % scale or W % scale:
        raise ValueError(f"image size {H}x{W} is not a multiple of the VAE factor {scale}")
    h, w = H // scale, W // scale
    if masked_image_latents is None:
        p = next(vae.parameters())
        masked = (image * (mask < 0.5)).to(p.device, p.dtype)
        masked_image_latents = vae.encode(masked).latent_dist.mode() * vae.config.scaling_factor
    if masked_image_latents.shape != (1, vae.config.latent_channels, h, w):
        raise ValueError(f"masked_image_latents has shape {tuple(masked_image_latents.shape)}, not "
                         f"(1, {vae.config.latent_channels}, {h}, {w})")
    return F.interpolate(mask, size=(h, w)).float().cpu(), masked_image_latents.float().cpu()


class SDInpaintExpert(TextConditionedUNetExpert):
    """Stable Diffusion inpainting for one prompt and one (image, mask): the UNet sees the VP-scaled latents, then
    the latent mask and the masked image's latents (unscaled) on the channel axis. Guidance as for ``sd``."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, mask: Tensor,
                 masked_image_latents: Tensor, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, **kwargs)
        if unet.config.in_channels != 1 + 2 * masked_image_latents.shape[1]:
            raise ValueError(f"unet in_channels {unet.config.in_channels} != latents + mask + masked image channels")
        self.mask, self.masked_image_latents = mask, masked_image_latents  # (1, 1, h, w), (1, C, h, w)
        self.shape = tuple(masked_image_latents.shape[1:])

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", image: Tensor = None, mask: Tensor = None,
                        **kwargs) -> "SDInpaintExpert":
        """One prompt's expert on an inpainting folder (see ``load_prompts``)."""
        return cls.load_prompts(path_or_id, [prompt], image, mask, **kwargs)[0]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts: Sequence[str], image: Tensor, mask: Tensor, torch_dtype=None,
                     micro_batch: Optional[int] = None, name: Optional[str] = None,
                     masked_image_latents: Optional[Tensor] = None):
        """One expert per prompt on one 9-channel UNet, loaded once per (folder, dtype); ``image`` (1, 3, H, W) in
        [-1, 1], ``mask`` (H, W) or (1, 1, H, W) with 1 = repaint; the masked image is encoded once per (image, mask)
        unless ``masked_image_latents`` (1, 4, H/f, W/f) are given."""
        if image is None or mask is None:
            raise ValueError("an inpainting expert needs image (1, 3, H, W) in [-1, 1] and mask (H, W), 1 = repaint")
        parts = _inpaint_parts(path_or_id, torch_dtype)
        key = _digest(image, mask) if masked_image_latents is None else _digest(image, mask, masked_image_latents)
        if key not in parts["masked"]:
            parts["masked"][key] = inpaint_conditioning(load_vae(parts["root"]), image, mask, masked_image_latents)
        mask_latent, latents = parts["masked"][key]
        scheduler = parts["scheduler"]
        return [cls(parts["unet"], scheduler.alphas_cumprod, scheduler.config.prediction_type,
                    _encoded(parts, prompt, lambda text: encode_sd_prompt(parts, text)), mask_latent, latents,
                    micro_batch=micro_batch,
                    name=name or f"sd-inpaint[{prompt}]")
                for prompt in prompts]

    @property
    def batch_key(self):
        return (type(self), id(self.unet), self.prediction_type, self.shape)

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "mask": self.mask.expand(n, -1, -1, -1),
                "masked_image_latents": self.masked_image_latents.expand(n, -1, -1, -1)}

    def _forward(self, x_vp: Tensor, t: Tensor, mask: Tensor = None, masked_image_latents: Tensor = None,
                 **cond) -> Tensor:
        return self.unet(torch.cat([x_vp, mask, masked_image_latents], dim=1), t, **self._net_kwargs(**cond)).sample


def load_sd_inpaint(path: str, texts: Sequence[str], image: Tensor, mask: Tensor, **options) -> list:
    """Registry loader: one ``SDInpaintExpert`` per text on the folder ``path`` (options: ``OPTIONS``; a dtype may be
    named, e.g. ``torch_dtype: float16``)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"sd-inpaint options {unknown} are not among {', '.join(OPTIONS)}")
    if "torch_dtype" in options:
        options = dict(options, torch_dtype=_torch_dtype(options["torch_dtype"]))
    return SDInpaintExpert.load_prompts(path, list(texts), image, mask, **options)
