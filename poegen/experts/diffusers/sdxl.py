"""Stable Diffusion XL: the text-conditioned UNet expert with SDXL's two CLIP text encoders and added time ids."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cache import cached
from .common import _encoded, _text_output, load_pretrained, read_config, resolve
from .unet import TextConditionedUNetExpert
from .vae import _vae_scale


class SDXLExpert(TextConditionedUNetExpert):
    """Stable Diffusion XL: a ``UNet2DConditionModel`` with ``addition_embed_type="text_time"`` for one prompt.

    The text conditioning is the penultimate hidden states of both CLIP text encoders concatenated, the pooled
    (projected) embedding of the second, and the added time ids (original size, crop corner, target size).
    Classifier-free guidance is a product as for SD 1.x; the empty prompt gives zero embeddings when the
    folder's ``force_zeros_for_empty_prompt`` says so (SDXL base does)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, pooled_embeddings: Tensor,
                 time_ids: Tensor, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, **kwargs)
        self.pooled_embeddings, self.time_ids = pooled_embeddings, time_ids  # (1, proj), (1, 6)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", **kwargs) -> "SDXLExpert":
        """Load an SDXL folder (unet/, scheduler/, tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/)."""
        return cls.load_prompts(path_or_id, [prompt], **kwargs)[0]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts, original_size=None, crop_top_left=(0, 0), target_size=None,
                     torch_dtype=None, **kwargs):
        """One expert per prompt, all on one UNet (so a product of them is one batched call per step).

        Sizes are (height, width) in pixels; both default to the UNet's sample size times the VAE factor."""
        return cls.from_parts(_sdxl_parts(path_or_id, torch_dtype), prompts, original_size, crop_top_left, target_size,
                              **kwargs)

    @classmethod
    def from_parts(cls, parts: dict, prompts, original_size=None, crop_top_left=(0, 0), target_size=None, **kwargs):
        """One expert per prompt on already loaded parts (``unet``, ``scheduler``, ``encoders``, ``zeros_for_empty``,
        ``vae_scale`` and an ``embeddings`` cache): a folder's (``_sdxl_parts``) or a user's pipeline's."""
        unet, scheduler, scale = parts["unet"], parts["scheduler"], parts["vae_scale"]
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        target = tuple(target_size or (size[0] * scale, size[1] * scale))
        time_ids = torch.tensor([[*(original_size or target), *crop_top_left, *target]], dtype=torch.float32)
        experts = []
        for prompt in prompts:
            hidden, pooled = _encoded(parts, prompt, lambda text: encode_sdxl_prompt(parts["encoders"], text))
            if prompt == "" and parts["zeros_for_empty"]:
                hidden, pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
            args = dict(kwargs, name=kwargs.get("name") or f"sdxl[{prompt}]")
            experts.append(cls(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, hidden, pooled,
                               time_ids, **args))
        return experts

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "text_embeds": self.pooled_embeddings.expand(n, -1),
                "time_ids": self.time_ids.expand(n, -1)}

    def _net_kwargs(self, encoder_hidden_states: Tensor = None, text_embeds: Tensor = None,
                    time_ids: Tensor = None) -> dict:
        return {"encoder_hidden_states": encoder_hidden_states,
                "added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}


def _sdxl_parts(path_or_id: str, torch_dtype=None) -> dict:
    """UNet, scheduler and both (tokenizer, CLIP text encoder) pairs of an SDXL folder, loaded once."""
    def load():
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        root = resolve(path_or_id)
        unet = load_pretrained(UNet2DConditionModel, root, "unet", torch_dtype=torch_dtype)
        if unet.config.addition_embed_type != "text_time":
            raise ValueError(f"{path_or_id}: unet addition_embed_type is {unet.config.addition_embed_type!r}, not "
                             "'text_time'; this is not an SDXL UNet (use the `sd` expert for SD 1.x/2.x)")
        index = read_config(Path(root) / "model_index.json", required=False)
        return {"root": root, "unet": unet, "embeddings": {}, "vae_scale": _vae_scale(root),
                "scheduler": load_pretrained(DDPMScheduler, root, "scheduler"),
                "encoders": [(load_pretrained(CLIPTokenizer, root, "tokenizer"),
                              load_pretrained(CLIPTextModel, root, "text_encoder").eval()),
                             (load_pretrained(CLIPTokenizer, root, "tokenizer_2"),
                              load_pretrained(CLIPTextModelWithProjection, root, "text_encoder_2").eval())],
                "zeros_for_empty": index.get("force_zeros_for_empty_prompt", True)}
    return cached("sdxl", path_or_id, torch_dtype, None, load)


@torch.no_grad()
def encode_sdxl_prompt(encoders, prompt: str):
    """(hidden states (1, L, d1 + d2), pooled (1, proj)) of ``prompt`` through SDXL's two (tokenizer, CLIP) pairs:
    penultimate layers concatenated, and the second encoder's projected embedding."""
    hidden = []
    for tokenizer, encoder in encoders:
        out = _text_output(encoder, tokenizer, prompt, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), out.text_embeds
