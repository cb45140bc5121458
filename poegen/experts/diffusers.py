"""Generative experts wrapping diffusers components behind the denoiser protocol (no pipelines).

Schedulers are read once as tables (``alphas_cumprod``); their ``step()`` is never called.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..schedules import flow_input, sigma_to_flow, sigma_to_vp_t, vp_input, vp_sigmas

log = logging.getLogger("poegen.experts.diffusers")


def resolve(path_or_id: str) -> str:
    """A local folder, or a model id already in the local Hugging Face cache; otherwise a clear error."""
    if Path(path_or_id).exists():
        return str(path_or_id)
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path_or_id, local_files_only=True)
    except Exception:
        raise FileNotFoundError(
            f"model {path_or_id!r} not found: it is neither a local folder nor in the Hugging Face cache "
            f"(HF_HOME). Fetch it first, e.g. `huggingface-cli download {path_or_id}` or "
            f"`huggingface-cli download {path_or_id} --local-dir <folder>` and pass the folder.") from None


class VPUNetExpert:
    """A pixel-space ``UNet2DModel`` trained as a VP diffusion, predicting epsilon, v or the sample.

    At VE noise sigma the model sees ``x / sqrt(1 + sigma^2)`` at the fractional timestep whose
    alpha_bar matches sigma (log-sigma interpolation of the table). Subclasses change ``_forward``."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon", micro_batch: Optional[int] = None,
                 name: Optional[str] = None):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type {prediction_type!r} is not one of epsilon, v_prediction, sample")
        self.unet = unet.eval()
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        table = vp_sigmas(self.alphas_cumprod)
        self.sigma_min, self.sigma_max = float(table[0]), float(table[-1])
        self.prediction_type, self.micro_batch = prediction_type, micro_batch
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (unet.config.in_channels, *size)
        self.name = name or f"unet[{getattr(unet.config, '_name_or_path', '') or 'vp'}]"

    @classmethod
    def from_pretrained(cls, path_or_id: str, unet_subfolder: str = "unet", scheduler_subfolder: str = "scheduler",
                        **kwargs) -> "VPUNetExpert":
        """Load a DDPM/DDIM-style folder (``unet/`` and ``scheduler/``) from disk or the local cache."""
        from diffusers import DDPMScheduler, UNet2DModel

        root = resolve(path_or_id)
        unet = UNet2DModel.from_pretrained(root, subfolder=unet_subfolder)
        scheduler = DDPMScheduler.from_pretrained(root, subfolder=scheduler_subfolder)
        kwargs.setdefault("name", f"unet[{path_or_id}]")
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, **kwargs)

    @property
    def batch_key(self):
        """Experts with equal keys share one backbone call per evaluation (see ``denoise_batch``)."""
        return (type(self), id(self.unet), self.prediction_type)

    def _conditioning(self, n: int) -> dict:
        """Per-row keyword tensors of this expert's backbone call for n rows (none for a plain UNet)."""
        return {}

    def _forward(self, x_vp: Tensor, t: Tensor, **cond) -> Tensor:
        return self.unet(x_vp, t).sample

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise_batch([self], x, sigma)[0]

    @classmethod
    @torch.no_grad()
    def denoise_batch(cls, experts, x: Tensor, sigma: Tensor):
        """x0_hat of several experts sharing one backbone: their rows are stacked into one forward per
        micro-batch (conditionings concatenated), then split and converted per expert."""
        first, n, E = experts[0], x.shape[0], len(experts)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(n)
        s = sigma.reshape(-1, *[1] * (x.dim() - 1))
        t = sigma_to_vp_t(sigma.double(), first.alphas_cumprod).to(x.dtype).repeat(E)
        x_vp = vp_input(x, s)
        rows = x_vp.repeat(E, *[1] * (x.dim() - 1))
        conds = [e._conditioning(n) for e in experts]
        cond = {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
        p = next(first.unet.parameters())
        mb = first.micro_batch or E * n  # micro-batches bound the memory of one call
        out = torch.cat([first._forward(rows[i:i + mb].to(p.dtype), t[i:i + mb],
                                        **{k: v[i:i + mb].to(p.dtype) for k, v in cond.items()}).to(x.dtype)
                         for i in range(0, E * n, mb)])
        return [first._to_x0(o, x, x_vp, s) for o in out.split(n)]

    def _to_x0(self, out: Tensor, x: Tensor, x_vp: Tensor, s: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return x - s * out
        a = 1 / (1 + s ** 2).sqrt()
        if self.prediction_type == "v_prediction":  # v = a eps - (s a) x0  =>  x0 = a x_vp - (s a) v
            return a * x_vp - s * a * out
        return out


class TextConditionedUNetExpert(VPUNetExpert):
    """Stable Diffusion 1.x/2.x: a ``UNet2DConditionModel`` on VAE latents for one fixed text prompt.

    Classifier-free guidance is a product, not a hack: ``Product([cond, uncond], weights=[w, 1 - w])``
    with ``uncond`` the same model on the empty prompt (``from_pretrained(path, "")``)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, **kwargs)
        self.text_embeddings = text_embeddings  # (1, tokens, dim)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", **kwargs) -> "TextConditionedUNetExpert":
        """Load unet/, scheduler/, tokenizer/ and text_encoder/ of a Stable Diffusion folder and encode ``prompt``."""
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = resolve(path_or_id)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval()
        ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            emb = encoder(ids).last_hidden_state
        kwargs.setdefault("name", f"sd[{prompt}]")
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, emb, **kwargs)

    def _conditioning(self, n: int) -> dict:
        return {"encoder_hidden_states": self.text_embeddings.expand(n, -1, -1)}

    def _forward(self, x_vp: Tensor, t: Tensor, encoder_hidden_states: Tensor = None) -> Tensor:
        return self.unet(x_vp, t, encoder_hidden_states=encoder_hidden_states).sample


class ControlNetExpert(TextConditionedUNetExpert):
    """A text-conditioned UNet steered by a ``ControlNetModel`` on a fixed control image (e.g. a depth map
    from the physics expert), in [0, 1] at pixel resolution, shape (1, C, H, W)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, controlnet,
                 control_image: Tensor, conditioning_scale: float = 1.0, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, **kwargs)
        self.controlnet, self.control_image, self.conditioning_scale = controlnet.eval(), control_image, conditioning_scale

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", controlnet: str = "", control_image: Tensor = None,
                        conditioning_scale: float = 1.0, **kwargs) -> "ControlNetExpert":
        """The Stable Diffusion folder ``path_or_id`` plus a ControlNet folder or cached id ``controlnet``."""
        from diffusers import ControlNetModel

        base = TextConditionedUNetExpert.from_pretrained(path_or_id, prompt)
        net = ControlNetModel.from_pretrained(resolve(controlnet))
        kwargs.setdefault("name", f"controlnet[{prompt}]")
        return cls(base.unet, base.alphas_cumprod, base.prediction_type, base.text_embeddings, net, control_image,
                   conditioning_scale, **kwargs)

    @property
    def batch_key(self):
        return (type(self), id(self.unet), id(self.controlnet), self.conditioning_scale)

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "controlnet_cond": self.control_image.expand(n, -1, -1, -1)}

    def _forward(self, x_vp: Tensor, t: Tensor, encoder_hidden_states: Tensor = None,
                 controlnet_cond: Tensor = None) -> Tensor:
        down, mid = self.controlnet(x_vp, t, encoder_hidden_states=encoder_hidden_states, controlnet_cond=controlnet_cond,
                                    conditioning_scale=self.conditioning_scale, return_dict=False)
        return self.unet(x_vp, t, encoder_hidden_states=encoder_hidden_states, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


class FlowTransformerExpert:
    """A rectified-flow transformer (SD3-style ``SD3Transformer2DModel``) for fixed prompt embeddings.

    Flow time t = sigma / (1 + sigma) and input x / (1 + sigma); the model predicts the velocity
    v = eps - x0, so x0_hat = x_t - t v. Prompt embeddings come from the model's text encoders
    (``encoder_hidden_states``, ``pooled_projections``), computed once by the caller."""

    def __init__(self, transformer, encoder_hidden_states: Tensor, pooled_projections: Tensor,
                 micro_batch: Optional[int] = None, name: Optional[str] = None):
        self.transformer = transformer.eval()
        self.encoder_hidden_states, self.pooled_projections = encoder_hidden_states, pooled_projections
        size = transformer.config.sample_size
        self.shape = (transformer.config.in_channels, size, size)
        self.sigma_min, self.sigma_max = 1e-3, 1e3  # t in [0.001, 0.999]
        self.micro_batch, self.name = micro_batch, name or "flow-transformer"

    @classmethod
    def from_pretrained(cls, path_or_id: str, encoder_hidden_states: Tensor, pooled_projections: Tensor,
                        subfolder: str = "transformer", **kwargs) -> "FlowTransformerExpert":
        from diffusers import SD3Transformer2DModel

        model = SD3Transformer2DModel.from_pretrained(resolve(path_or_id), subfolder=subfolder)
        return cls(model, encoder_hidden_states, pooled_projections, **kwargs)

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(n)
        s = sigma.reshape(-1, *[1] * (x.dim() - 1))
        t = sigma_to_flow(sigma)
        x_t = flow_input(x, s)
        p = next(self.transformer.parameters())
        mb = self.micro_batch or n
        v = torch.cat([self.transformer(
            hidden_states=x_t[i:i + mb].to(p.dtype), timestep=(1000 * t[i:i + mb]).to(p.dtype),
            encoder_hidden_states=self.encoder_hidden_states.to(p).expand(len(x_t[i:i + mb]), -1, -1),
            pooled_projections=self.pooled_projections.to(p).expand(len(x_t[i:i + mb]), -1)).sample.to(x.dtype)
            for i in range(0, n, mb)])
        return x_t - t.reshape_as(s) * v


def vae_decoder(path_or_id: str, subfolder: str = "vae"):
    """A decode(latents) -> images in [-1, 1] callable for ``Product(decode=...)``: potentials see pixels."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(resolve(path_or_id), subfolder=subfolder).eval()

    @torch.no_grad()
    def decode(latents: Tensor) -> Tensor:
        return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    return decode
