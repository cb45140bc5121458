"""Stable Diffusion 3 (MMDiT, rectified flow; Esser et al. 2024, arXiv 2403.03206) with its three text encoders.

The transformer and the text encoders are loaded once per ``load_prompts`` call; each prompt is encoded as
diffusers' ``StableDiffusion3Pipeline.encode_prompt`` does, and every expert shares the one transformer, so a
product of prompts (classifier-free guidance included) is one batched call per evaluation.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import cached
from .cache import torch_dtype as _torch_dtype
from .diffusers import FlowTransformerExpert, _encoded, _text_output, _vae_scale, resolve, vae_decoder
from .diffusers.common import load_pretrained

log = logging.getLogger("poegen.experts.sd3")

# the keyword options a config entry of kind "sd3" may give ``load_sd3``
OPTIONS = ("micro_batch", "resolution", "max_sequence_length", "torch_dtype")


def load_text_encoders(root: str, torch_dtype=None) -> list:
    """[(tokenizer, CLIP), (tokenizer_2, CLIP 2), (tokenizer_3, T5) or None] of an SD3 folder; the T5 pair is
    None when the folder has no text_encoder_3/ (SD3 without T5: its tokens are zeros)."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    encoders = [(load_pretrained(CLIPTokenizer, root, tok),
                 load_pretrained(CLIPTextModelWithProjection, root, enc, torch_dtype=torch_dtype).eval())
                for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
    if (Path(root) / "text_encoder_3").is_dir():
        t5 = load_pretrained(T5EncoderModel, root, "text_encoder_3", torch_dtype=torch_dtype).eval()
        encoders.append((load_pretrained(AutoTokenizer, root, "tokenizer_3"), t5))
    else:
        log.info("%s has no text_encoder_3/: the T5 tokens are zeros (as StableDiffusion3Pipeline without T5)", root)
        encoders.append(None)
    return encoders


@torch.no_grad()
def encode_sd3_prompt(encoders, prompt: str, joint_attention_dim: int, max_sequence_length: int = 256
                      ) -> Tuple[Tensor, Tensor]:
    """(hidden states (1, L_clip + max_sequence_length, joint_attention_dim), pooled (1, p1 + p2)) of ``prompt``,
    as ``StableDiffusion3Pipeline.encode_prompt``: both CLIPs' penultimate layers concatenated on the feature
    axis and zero-padded to T5's width, then T5's last hidden states appended on the token axis; pooled is both
    CLIPs' projected embeddings concatenated. Both CLIPs read the first tokenizer's length, as the pipeline."""
    length = encoders[0][0].model_max_length
    hidden, pooled = [], []
    for tokenizer, encoder in encoders[:2]:
        out = _text_output(encoder, tokenizer, prompt, length, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    clip = torch.cat(hidden, dim=-1)
    if encoders[2] is None:
        t5 = torch.zeros(1, max_sequence_length, joint_attention_dim, dtype=clip.dtype, device=clip.device)
    else:
        tokenizer, encoder = encoders[2]
        t5 = _text_output(encoder, tokenizer, prompt, max_sequence_length).last_hidden_state
    if clip.shape[-1] > t5.shape[-1]:
        raise ValueError(f"the CLIP hidden sizes sum to {clip.shape[-1]}, more than the T5 width {t5.shape[-1]}: "
                         "this is not an SD3 folder (the transformer's joint_attention_dim is the T5 width)")
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)


def _check_widths(config, encoders, path: str):
    """Short errors when the text encoders do not fit the transformer (a mixed-up folder)."""
    pooled = sum(enc.config.projection_dim for _, enc in encoders[:2])
    if pooled != config.pooled_projection_dim:
        raise ValueError(f"{path}: the CLIP projection_dims sum to {pooled}, but transformer pooled_projection_dim is "
                         f"{config.pooled_projection_dim}; text_encoder/ and text_encoder_2/ must be SD3's")
    if encoders[2] is not None and encoders[2][1].config.d_model != config.joint_attention_dim:
        raise ValueError(f"{path}: text_encoder_3 d_model is {encoders[2][1].config.d_model}, but transformer "
                         f"joint_attention_dim is {config.joint_attention_dim}; text_encoder_3/ must be SD3's T5")


class SD3Expert(FlowTransformerExpert):
    """Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``) for one prompt, through the flow -> VE conversion of
    ``FlowTransformerExpert`` (t = sigma / (1 + sigma), x0_hat = x_t - t v).

    Classifier-free guidance is a product: ``Product([cond, uncond], weights=[w, 1 - w])`` with ``uncond`` the
    empty prompt on the same transformer (``load_prompts(path, [prompt, ""])``, or ``load_sd3``)."""

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", **kwargs) -> "SD3Expert":
        """Load an SD3 folder (transformer/, tokenizer{,_2,_3}/, text_encoder{,_2,_3}/) and encode ``prompt``."""
        return cls.load_prompts(path_or_id, [prompt], **kwargs)[0]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts: Sequence[str], resolution: Optional[int] = None,
                     max_sequence_length: int = 256, torch_dtype=None, micro_batch: Optional[int] = None,
                     name: Optional[str] = None) -> list:
        """One expert per prompt, all on one transformer, loaded once with the text encoders (which are dropped
        after encoding). Images are ``resolution`` pixels square (default: the transformer's sample_size times
        the VAE factor, as the pipeline), latents (in_channels, resolution // vae factor, same). The T5 tokens
        are padded to ``max_sequence_length`` as the pipeline pads them (256 by default, at most 512)."""
        from diffusers import SD3Transformer2DModel

        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of prompts, got one string; use from_pretrained for one")
        torch_dtype = _torch_dtype(torch_dtype)
        root = resolve(path_or_id)
        model = cached("sd3", root, torch_dtype, None, lambda: load_pretrained(
            SD3Transformer2DModel, root, "transformer", torch_dtype=torch_dtype))
        text = cached("sd3-text", root, torch_dtype, None,
                      lambda: {"encoders": load_text_encoders(root, torch_dtype), "embeddings": {}})
        return cls.from_parts({"transformer": model, "text": text, "vae_scale": _vae_scale(root)}, prompts,
                              resolution, max_sequence_length, micro_batch, name, where=path_or_id)

    @classmethod
    def from_parts(cls, parts: dict, prompts: Sequence[str], resolution: Optional[int] = None,
                   max_sequence_length: int = 256, micro_batch: Optional[int] = None, name: Optional[str] = None,
                   where: str = "sd3") -> list:
        """One expert per prompt on already loaded parts (``transformer``, ``vae_scale`` and ``text``: the
        ``encoders`` of ``load_text_encoders`` and an ``embeddings`` cache): a folder's or a user's pipeline's."""
        if not 1 <= int(max_sequence_length) <= 512:
            raise ValueError(f"max_sequence_length {max_sequence_length} must be between 1 and 512 (as "
                             "StableDiffusion3Pipeline)")
        model, text = parts["transformer"], parts["text"]
        shape = _latent_shape(model.config, parts["vae_scale"], resolution)
        _check_widths(model.config, text["encoders"], where)
        experts = []
        for prompt in prompts:
            hidden, pooled = _encoded(text, (prompt, int(max_sequence_length)), lambda key: encode_sd3_prompt(
                text["encoders"], key[0], model.config.joint_attention_dim, key[1]))
            experts.append(cls(model, hidden, pooled, micro_batch=micro_batch, name=name or f"sd3[{prompt}]",
                               shape=shape))
        return experts

    @property
    def batch_key(self):
        return (type(self), id(self.transformer), self.shape)


def _latent_shape(config, vae_scale: int, resolution: Optional[int]) -> Tuple[int, int, int]:
    """(in_channels, side, side) for ``resolution`` pixels square; side = resolution // vae_scale."""
    if resolution is None:
        return (config.in_channels, config.sample_size, config.sample_size)
    step = vae_scale * config.patch_size
    if resolution <= 0 or resolution % step:
        raise ValueError(f"resolution {resolution} must be a positive multiple of {step} (VAE factor {vae_scale} "
                         f"times patch_size {config.patch_size})")
    return (config.in_channels, resolution // vae_scale, resolution // vae_scale)


def load_sd3(path: str, prompt: str, guidance: float, **options):
    """Registry loader: ([the prompt's expert, the empty prompt's], [guidance, 1 - guidance], the VAE decoder):
    classifier-free guidance as a product, one transformer and one batched call per step."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"sd3 options {unknown} are not among {', '.join(OPTIONS)}")
    experts = SD3Expert.load_prompts(path, [prompt, ""], **options)
    return experts, [guidance, 1.0 - guidance], vae_decoder(path)
