"""VP/epsilon UNet experts: a pixel-space ``UNet2DModel`` (``VPUNetExpert``) and Stable Diffusion 1.x/2.x's
text-conditioned ``UNet2DConditionModel`` on VAE latents (``TextConditionedUNetExpert``), with their loaders.

Schedulers are read once as tables (``alphas_cumprod``); their ``step()`` is never called."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ...schedules import sigma_to_vp_t, vp_input, vp_sigmas
from ..cache import cached
from .common import (_encoded, _micro_batched, _stacked_conditioning, _text_output, load_pretrained, read_config,
                     resolve)


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

        torch_dtype = kwargs.pop("torch_dtype", None)
        root = resolve(path_or_id)
        unet = cached("unet", root, torch_dtype, None, lambda: load_pretrained(
            UNet2DModel, root, unet_subfolder, torch_dtype=torch_dtype), unet_subfolder)
        scheduler = load_pretrained(DDPMScheduler, root, scheduler_subfolder)
        kwargs.setdefault("name", f"unet[{path_or_id}]")
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, **kwargs)

    @property
    def batch_key(self):
        """Experts with equal keys share one backbone call per evaluation (see ``denoise_batch``)."""
        return (type(self), id(self.unet), self.prediction_type)

    def offload_modules(self) -> list:
        """The modules an offload hook may move off the accelerator between uses (``poegen.memory``)."""
        return [self.unet]

    def _conditioning(self, n: int) -> dict:
        """Per-row keyword tensors of this expert's backbone call for n rows (none for a plain UNet)."""
        return {}

    def _forward(self, x_vp: Tensor, t: Tensor, **cond) -> Tensor:
        return self.unet(x_vp, t).sample

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise_batch([self], x, sigma)[0]

    @classmethod
    def denoise_batch(cls, experts, x: Tensor, sigma: Tensor):
        """x0_hat of several experts sharing one backbone: their rows are stacked into one forward per
        micro-batch (conditionings concatenated), then split and converted per expert."""
        first, n, E = experts[0], x.shape[0], len(experts)
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(n)
        s = sigma.reshape(-1, *[1] * (x.dim() - 1))
        t = sigma_to_vp_t(sigma.double(), first.alphas_cumprod).to(x.dtype).repeat(E)
        x_vp = vp_input(x, s)
        rows = x_vp.repeat(E, *[1] * (x.dim() - 1))
        out = _micro_batched(first._forward, rows, t, _stacked_conditioning(experts, n), first.micro_batch,
                             next(first.unet.parameters()).dtype)
        return [first._to_x0(o, x, x_vp, s) for o in out.split(n)]

    def _to_x0(self, out: Tensor, x: Tensor, x_vp: Tensor, s: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return x - s * out
        a = 1 / (1 + s ** 2).sqrt()
        if self.prediction_type == "v_prediction":  # v = a eps - (s a) x0  =>  x0 = a x_vp - (s a) v
            return a * x_vp - s * a * out
        return out


def encode_sd_prompt(parts: dict, text: str) -> Tensor:
    """The text encoder's last hidden states of ``text`` on Stable Diffusion parts (``tokenizer``, ``encoder``);
    callers cache it per prompt with ``_encoded``."""
    return _text_output(parts["encoder"], parts["tokenizer"], text).last_hidden_state


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
        return TextConditionedUNetExpert.load_prompts(path_or_id, [prompt], **kwargs)[0]

    @classmethod
    def load_prompts(cls, path_or_id: str, prompts, torch_dtype=None, **kwargs):
        """One expert per prompt, all on one UNet loaded once per (folder, dtype) (so a product of them is one
        call per step, whichever config entry or region asked for them)."""
        return cls.from_parts(_sd_parts(path_or_id, torch_dtype), prompts, **kwargs)

    @classmethod
    def from_parts(cls, parts: dict, prompts, **kwargs):
        """One expert per prompt on already loaded parts (``unet``, ``scheduler``, ``tokenizer``, ``encoder`` and an
        ``embeddings`` cache): a folder's (``_sd_parts``) or a user's pipeline's (``poegen.from_pipeline``)."""
        return [cls(parts["unet"], parts["scheduler"].alphas_cumprod, parts["scheduler"].config.prediction_type,
                    _encoded(parts, prompt, lambda text: encode_sd_prompt(parts, text)),
                    **dict(kwargs, name=kwargs.get("name") or f"sd[{prompt}]"))
                for prompt in prompts]

    def _conditioning(self, n: int) -> dict:
        return {"encoder_hidden_states": self.text_embeddings.expand(n, -1, -1)}

    def _net_kwargs(self, encoder_hidden_states: Tensor = None) -> dict:
        """Keyword arguments of the UNet (and of a ControlNet on it) for one batch of conditioning rows."""
        return {"encoder_hidden_states": encoder_hidden_states}

    def _forward(self, x_vp: Tensor, t: Tensor, **cond) -> Tensor:
        return self.unet(x_vp, t, **self._net_kwargs(**cond)).sample


def _sd_parts(path_or_id: str, torch_dtype=None) -> dict:
    """UNet (in ``torch_dtype``), scheduler, tokenizer and text encoder of a Stable Diffusion folder, loaded once."""
    def load():
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = resolve(path_or_id)
        return {"root": root, "embeddings": {},
                "unet": load_pretrained(UNet2DConditionModel, root, "unet", torch_dtype=torch_dtype),
                "scheduler": load_pretrained(DDPMScheduler, root, "scheduler"),
                "tokenizer": load_pretrained(CLIPTokenizer, root, "tokenizer"),
                "encoder": load_pretrained(CLIPTextModel, root, "text_encoder").eval()}
    return cached("sd", path_or_id, torch_dtype, None, load)


def unet_config(path_or_id: str) -> dict:
    """The UNet config of a Stable Diffusion (or SDXL) folder, read without loading weights."""
    return read_config(Path(resolve(path_or_id)) / "unet" / "config.json", required=False)
