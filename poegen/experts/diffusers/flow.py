"""Flow-matching transformer experts: SD3-style ``FlowTransformerExpert`` and FLUX.1 (``FluxExpert``) with its
2x2 latent packing and position ids."""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

from ...schedules import flow_input, sigma_to_flow
from ..cache import cached
from .common import _encoded, _micro_batched, _stacked_conditioning, _text_output, load_pretrained, resolve
from .vae import _vae_config, _vae_scale

log = logging.getLogger("poegen.experts.diffusers")


class FlowTransformerExpert:
    """A rectified-flow transformer (SD3-style ``SD3Transformer2DModel``) for fixed prompt embeddings.

    Flow time t = sigma / (1 + sigma) and input x / (1 + sigma); the model predicts the velocity
    v = eps - x0, so x0_hat = x_t - t v. Prompt embeddings come from the model's text encoders
    (``encoder_hidden_states``, ``pooled_projections``), computed once by the caller. Experts on one
    transformer share one call per micro-batch (``batch_key``/``denoise_batch``), as the UNet experts do."""

    def __init__(self, transformer, encoder_hidden_states: Tensor, pooled_projections: Tensor,
                 micro_batch: Optional[int] = None, name: Optional[str] = None, shape=None):
        self.transformer = transformer.eval()
        self.encoder_hidden_states, self.pooled_projections = encoder_hidden_states, pooled_projections
        if shape is None:
            size = transformer.config.sample_size
            shape = (transformer.config.in_channels, size, size)
        self.shape = tuple(shape)
        self.sigma_min, self.sigma_max = 1e-3, 1e3  # t in [0.001, 0.999]
        self.micro_batch, self.name = micro_batch, name or "flow-transformer"

    @classmethod
    def from_pretrained(cls, path_or_id: str, encoder_hidden_states: Tensor, pooled_projections: Tensor,
                        subfolder: str = "transformer", **kwargs) -> "FlowTransformerExpert":
        from diffusers import SD3Transformer2DModel

        model = load_pretrained(SD3Transformer2DModel, resolve(path_or_id), subfolder)
        return cls(model, encoder_hidden_states, pooled_projections, **kwargs)

    @property
    def batch_key(self):
        return (type(self), id(self.transformer))

    def offload_modules(self) -> list:
        return [self.transformer]

    def _conditioning(self, n: int) -> dict:
        return {"encoder_hidden_states": self.encoder_hidden_states.expand(n, -1, -1),
                "pooled_projections": self.pooled_projections.expand(n, -1)}

    def _forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return self.transformer(hidden_states=x_t, timestep=(1000 * t).to(x_t.dtype), **cond).sample

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise_batch([self], x, sigma)[0]

    @classmethod
    def denoise_batch(cls, experts, x: Tensor, sigma: Tensor):
        """x0_hat = x_t - t v of several experts on one transformer, one call per micro-batch."""
        first, n, E = experts[0], x.shape[0], len(experts)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(n)
        s = sigma.reshape(-1, *[1] * (x.dim() - 1))
        t = sigma_to_flow(sigma)
        x_t = flow_input(x, s)
        v = _micro_batched(first._forward, x_t.repeat(E, *[1] * (x.dim() - 1)), t.repeat(E),
                           _stacked_conditioning(experts, n), first.micro_batch,
                           next(first.transformer.parameters()).dtype)
        return [x_t - t.reshape_as(s) * vi for vi in v.split(n)]


def pack_latents(x: Tensor) -> Tensor:
    """FLUX token layout: (N, C, H, W) latents as (N, H/2 * W/2, 4C) rows of 2x2 patches."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: Tensor, c: int, h: int, w: int) -> Tensor:
    """Inverse of ``pack_latents``."""
    n = tokens.shape[0]
    return tokens.reshape(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def latent_ids(h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """FLUX image position ids of an (h, w) grid of patches: rows (0, row, column)."""
    ids = torch.zeros(h, w, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w, device=device, dtype=dtype)[None, :]
    return ids.reshape(h * w, 3)


def _flux_parts(path_or_id: str, torch_dtype=None) -> dict:
    """Transformer, CLIP and T5 text encoders (with tokenizers) of a FLUX folder, loaded once."""
    def load():
        from diffusers import FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

        root = resolve(path_or_id)
        return {"root": root, "embeddings": {}, "vae_scale": _vae_scale(root),
                "sample_size": _vae_config(root).get("sample_size", 1024),
                "transformer": load_pretrained(FluxTransformer2DModel, root, "transformer", torch_dtype=torch_dtype),
                "clip_tokenizer": load_pretrained(CLIPTokenizer, root, "tokenizer"),
                "clip": load_pretrained(CLIPTextModel, root, "text_encoder").eval(),
                "t5_tokenizer": load_pretrained(AutoTokenizer, root, "tokenizer_2"),
                "t5": load_pretrained(T5EncoderModel, root, "text_encoder_2").eval()}
    return cached("flux", path_or_id, torch_dtype, None, load)


def encode_flux_prompt(parts: dict, prompt: str, length: int):
    """(T5 hidden states, pooled CLIP) of ``prompt`` on FLUX parts (``t5``, ``t5_tokenizer``, ``clip``,
    ``clip_tokenizer``); callers cache it under the key (prompt, length) with ``_encoded``."""
    return (_text_output(parts["t5"], parts["t5_tokenizer"], prompt, length).last_hidden_state,
            _text_output(parts["clip"], parts["clip_tokenizer"], prompt).pooler_output)


class FluxExpert(FlowTransformerExpert):
    """FLUX.1 (``FluxTransformer2DModel``) for one prompt, through the same flow -> VE conversion.

    Latents (C, H, W) are packed into 2x2 patches with image position ids; the text is the T5 hidden
    states (``encoder_hidden_states``, text ids all zero) and the pooled CLIP embedding. Guidance-distilled
    checkpoints (``guidance_embeds``, FLUX.1-dev) take the scalar ``guidance``; FLUX.1-schnell has none."""

    def __init__(self, transformer, encoder_hidden_states: Tensor, pooled_projections: Tensor, shape,
                 guidance: Optional[float] = 3.5, **kwargs):
        super().__init__(transformer, encoder_hidden_states, pooled_projections, shape=shape, **kwargs)
        c, h, w = self.shape
        if 4 * c != transformer.config.in_channels or h % 2 or w % 2:
            raise ValueError(f"shape {self.shape}: FLUX needs 4 * channels = in_channels "
                             f"({transformer.config.in_channels}) and even height and width")
        self.guidance = guidance if transformer.config.guidance_embeds else None
        if guidance is not None and not transformer.config.guidance_embeds:
            log.info("%s: the transformer has no guidance embedding; guidance %s is not used", self.name, guidance)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", **kwargs) -> "FluxExpert":
        """Load a FLUX folder (transformer/, tokenizer/, text_encoder/, tokenizer_2/, text_encoder_2/)."""
        return cls.load_prompts(path_or_id, [prompt], **kwargs)[0]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts, resolution: Optional[int] = None, max_sequence_length: int = 512,
                     torch_dtype=None, **kwargs):
        """One expert per prompt on one transformer; images are ``resolution`` pixels square (default: the VAE's
        ``sample_size``, 1024 for FLUX.1), latents 2 * (resolution // (2 * vae factor)) on a side."""
        return cls.from_parts(_flux_parts(path_or_id, torch_dtype), prompts, resolution, max_sequence_length, **kwargs)

    @classmethod
    def from_parts(cls, parts: dict, prompts, resolution: Optional[int] = None, max_sequence_length: int = 512,
                   **kwargs):
        """One expert per prompt on already loaded parts (``transformer``, ``clip_tokenizer``, ``clip``,
        ``t5_tokenizer``, ``t5``, ``vae_scale``, ``sample_size`` (default pixels) and an ``embeddings`` cache): a
        folder's (``_flux_parts``) or a user's pipeline's (``poegen.from_pipeline``)."""
        model = parts["transformer"]
        side = 2 * ((resolution or parts["sample_size"]) // (2 * parts["vae_scale"]))
        shape = (model.config.in_channels // 4, side, side)
        length = min(max_sequence_length, parts["t5_tokenizer"].model_max_length)
        experts = []
        for prompt in prompts:
            hidden, pooled = _encoded(parts, (prompt, length), lambda key: encode_flux_prompt(parts, *key))
            args = dict(kwargs, name=kwargs.get("name") or f"flux[{prompt}]")
            experts.append(cls(model, hidden, pooled, shape, **args))
        return experts

    @property
    def batch_key(self):
        return (type(self), id(self.transformer), self.shape)

    def _conditioning(self, n: int) -> dict:
        cond = super()._conditioning(n)
        if self.guidance is not None:
            cond["guidance"] = torch.full((n,), float(self.guidance), device=self.pooled_projections.device)
        return cond

    def _forward(self, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor = None, pooled_projections: Tensor = None,
                 guidance: Tensor = None) -> Tensor:
        _, c, h, w = x_t.shape
        v = self.transformer(hidden_states=pack_latents(x_t), encoder_hidden_states=encoder_hidden_states,
                             pooled_projections=pooled_projections, timestep=t.to(x_t.dtype), guidance=guidance,
                             img_ids=latent_ids(h // 2, w // 2, x_t.device, x_t.dtype),
                             txt_ids=torch.zeros(encoder_hidden_states.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
                             ).sample
        return unpack_latents(v, c, h, w)
