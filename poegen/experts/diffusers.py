"""Generative experts wrapping diffusers components behind the denoiser protocol (no pipelines).

Schedulers are read once as tables (``alphas_cumprod``); their ``step()`` is never called.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..schedules import flow_input, sigma_to_flow, sigma_to_vp_t, vp_input, vp_sigmas
from .cache import cached

log = logging.getLogger("poegen.experts.diffusers")


def resolve(path_or_id: str) -> str:
    """A local folder, or a model id already in the local Hugging Face cache; otherwise a clear error."""
    if Path(path_or_id).exists():
        return str(path_or_id)
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path_or_id, local_files_only=True)
    except Exception:
        if Path(path_or_id).is_absolute() or path_or_id.startswith((".", "~")) or path_or_id.count("/") != 1:
            raise FileNotFoundError(f"model folder {path_or_id!r} does not exist; pass the folder a model was "
                                    f"downloaded or saved to, or a hub id such as 'org/name'") from None
        raise FileNotFoundError(
            f"model {path_or_id!r} not found: it is neither a local folder nor in the Hugging Face cache "
            f"(HF_HOME). Fetch it first, e.g. `huggingface-cli download {path_or_id}` or "
            f"`huggingface-cli download {path_or_id} --local-dir <folder>` and pass the folder.") from None


def _prompt_ids(tokenizer, prompt: str, length: Optional[int] = None) -> Tensor:
    """(1, length) token ids of ``prompt`` padded or truncated to ``length`` (default: the tokenizer's maximum)."""
    return tokenizer([prompt], padding="max_length", max_length=length or tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _stacked_conditioning(experts, n: int) -> dict:
    """The experts' per-row conditioning tensors for n rows each, concatenated in expert order."""
    conds = [e._conditioning(n) for e in experts]
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def _micro_batched(forward, rows: Tensor, t: Tensor, cond: dict, micro_batch: Optional[int], dtype) -> Tensor:
    """``forward(rows, t, **cond)`` in chunks of ``micro_batch`` rows (all at once when None): one backbone call
    per chunk, inputs cast to the model's dtype and outputs back to the rows' dtype."""
    mb = micro_batch or rows.shape[0]
    cond = {k: v.to(rows.device, dtype) for k, v in cond.items()}
    return torch.cat([forward(rows[i:i + mb].to(dtype), t[i:i + mb], **{k: v[i:i + mb] for k, v in cond.items()})
                      .to(rows.dtype) for i in range(0, rows.shape[0], mb)])


def _vae_config(root: str) -> dict:
    config = Path(root) / "vae" / "config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def _vae_scale(root: str) -> int:
    """Pixels per latent of the folder's VAE (2^(blocks - 1)); 8 when it has no vae/ folder."""
    blocks = _vae_config(root).get("block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else 8


def _sd_parts(path_or_id: str, torch_dtype=None) -> dict:
    """UNet (in ``torch_dtype``), scheduler, tokenizer and text encoder of a Stable Diffusion folder, loaded once."""
    def load():
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = resolve(path_or_id)
        return {"root": root, "embeddings": {},
                "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype),
                "scheduler": DDPMScheduler.from_pretrained(root, subfolder="scheduler"),
                "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
                "encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval()}
    return cached("sd", path_or_id, torch_dtype, None, load)


@torch.no_grad()
def _encoded(parts: dict, prompt: str, encode):
    """``encode(prompt)``, once per prompt and loaded model."""
    if prompt not in parts["embeddings"]:
        parts["embeddings"][prompt] = encode(prompt)
    return parts["embeddings"][prompt]


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
        unet = cached("unet", root, torch_dtype, None, lambda: UNet2DModel.from_pretrained(
            root, subfolder=unet_subfolder, torch_dtype=torch_dtype), unet_subfolder)
        scheduler = DDPMScheduler.from_pretrained(root, subfolder=scheduler_subfolder)
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
        parts = _sd_parts(path_or_id, torch_dtype)
        return [cls(parts["unet"], parts["scheduler"].alphas_cumprod, parts["scheduler"].config.prediction_type,
                    _encoded(parts, prompt, lambda text: parts["encoder"](_prompt_ids(parts["tokenizer"], text))
                             .last_hidden_state), **dict(kwargs, name=kwargs.get("name") or f"sd[{prompt}]"))
                for prompt in prompts]

    def _conditioning(self, n: int) -> dict:
        return {"encoder_hidden_states": self.text_embeddings.expand(n, -1, -1)}

    def _net_kwargs(self, encoder_hidden_states: Tensor = None) -> dict:
        """Keyword arguments of the UNet (and of a ControlNet on it) for one batch of conditioning rows."""
        return {"encoder_hidden_states": encoder_hidden_states}

    def _forward(self, x_vp: Tensor, t: Tensor, **cond) -> Tensor:
        return self.unet(x_vp, t, **self._net_kwargs(**cond)).sample


class _ControlNetMixin:
    """A text-conditioned UNet expert steered by a ``ControlNetModel`` on a fixed control image (e.g. the physics
    expert's depth map) in [0, 1] at pixel resolution, shape (1, C, H, W); the UNet's own conditioning goes to both."""

    def _control(self, controlnet, control_image: Tensor, conditioning_scale: float):
        self.controlnet, self.control_image, self.conditioning_scale = controlnet.eval(), control_image, conditioning_scale

    @property
    def batch_key(self):
        return (type(self), id(self.unet), id(self.controlnet), self.conditioning_scale)

    def offload_modules(self) -> list:
        return [self.controlnet, self.unet]

    def _conditioning(self, n: int) -> dict:
        return {**super()._conditioning(n), "controlnet_cond": self.control_image.expand(n, -1, -1, -1)}

    def _forward(self, x_vp: Tensor, t: Tensor, controlnet_cond: Tensor = None, **cond) -> Tensor:
        kwargs = self._net_kwargs(**cond)
        down, mid = self.controlnet(x_vp, t, controlnet_cond=controlnet_cond, conditioning_scale=self.conditioning_scale,
                                    return_dict=False, **kwargs)
        return self.unet(x_vp, t, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                         **kwargs).sample


class ControlNetExpert(_ControlNetMixin, TextConditionedUNetExpert):
    """Stable Diffusion 1.x/2.x with a ControlNet (see ``_ControlNetMixin``)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, controlnet,
                 control_image: Tensor, conditioning_scale: float = 1.0, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, **kwargs)
        self._control(controlnet, control_image, conditioning_scale)

    @classmethod
    def from_pretrained(cls, path_or_id: str, prompt: str = "", controlnet: str = "", control_image: Tensor = None,
                        conditioning_scale: float = 1.0, **kwargs) -> "ControlNetExpert":
        """The Stable Diffusion folder ``path_or_id`` plus a ControlNet folder or cached id ``controlnet``."""
        return load_controlnet_prompts(path_or_id, controlnet, [prompt], control_image, conditioning_scale, **kwargs)[0]


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
        parts = _sdxl_parts(path_or_id, torch_dtype)
        unet, scheduler, root = parts["unet"], parts["scheduler"], parts["root"]
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        target = tuple(target_size or (size[0] * _vae_scale(root), size[1] * _vae_scale(root)))
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


class SDXLControlNetExpert(_ControlNetMixin, SDXLExpert):
    """Stable Diffusion XL with a ControlNet (see ``_ControlNetMixin``)."""

    def __init__(self, unet, alphas_cumprod, prediction_type: str, text_embeddings: Tensor, pooled_embeddings: Tensor,
                 time_ids: Tensor, controlnet, control_image: Tensor, conditioning_scale: float = 1.0, **kwargs):
        super().__init__(unet, alphas_cumprod, prediction_type, text_embeddings, pooled_embeddings, time_ids, **kwargs)
        self._control(controlnet, control_image, conditioning_scale)


def load_controlnet_prompts(base: str, controlnet: str, prompts, control_image: Tensor, conditioning_scale: float = 1.0,
                            torch_dtype=None, **kwargs):
    """One ControlNet expert per prompt on the SD 1.x/2.x or SDXL folder ``base`` (told apart by the UNet's
    ``addition_embed_type``) and the ControlNet folder or cached id ``controlnet``, each loaded once."""
    from diffusers import ControlNetModel

    if not controlnet:
        raise ValueError("a ControlNet expert needs the ControlNet's folder or cached id")
    if control_image is None or control_image.dim() != 4:
        raise ValueError("a ControlNet expert needs a control image of shape (1, C, H, W) in [0, 1]")
    root = resolve(controlnet)
    net = cached("controlnet", root, torch_dtype, None,
                 lambda: ControlNetModel.from_pretrained(root, torch_dtype=torch_dtype))
    xl = unet_config(base).get("addition_embed_type") == "text_time"
    kwargs.setdefault("name", None)
    experts = (SDXLExpert if xl else TextConditionedUNetExpert).load_prompts(base, prompts, torch_dtype=torch_dtype)
    kind = SDXLControlNetExpert if xl else ControlNetExpert
    out = []
    for prompt, e in zip(prompts, experts):
        cond = (e.text_embeddings, e.pooled_embeddings, e.time_ids) if xl else (e.text_embeddings,)
        out.append(kind(e.unet, e.alphas_cumprod, e.prediction_type, *cond, net, control_image, conditioning_scale,
                        **dict(kwargs, name=kwargs["name"] or f"controlnet[{prompt}]")))
    return out


def unet_config(path_or_id: str) -> dict:
    """The UNet config of a Stable Diffusion (or SDXL) folder, read without loading weights."""
    config = Path(resolve(path_or_id)) / "unet" / "config.json"
    return json.loads(config.read_text()) if config.exists() else {}


def _sdxl_parts(path_or_id: str, torch_dtype=None) -> dict:
    """UNet, scheduler and both (tokenizer, CLIP text encoder) pairs of an SDXL folder, loaded once."""
    def load():
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        root = resolve(path_or_id)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype)
        if unet.config.addition_embed_type != "text_time":
            raise ValueError(f"{path_or_id}: unet addition_embed_type is {unet.config.addition_embed_type!r}, not "
                             "'text_time'; this is not an SDXL UNet (use the `sd` expert for SD 1.x/2.x)")
        index = Path(root) / "model_index.json"
        index = json.loads(index.read_text()) if index.exists() else {}
        return {"root": root, "unet": unet, "embeddings": {},
                "scheduler": DDPMScheduler.from_pretrained(root, subfolder="scheduler"),
                "encoders": [(CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
                              CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval()),
                             (CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2"),
                              CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2").eval())],
                "zeros_for_empty": index.get("force_zeros_for_empty_prompt", True)}
    return cached("sdxl", path_or_id, torch_dtype, None, load)


@torch.no_grad()
def encode_sdxl_prompt(encoders, prompt: str):
    """(hidden states (1, L, d1 + d2), pooled (1, proj)) of ``prompt`` through SDXL's two (tokenizer, CLIP) pairs:
    penultimate layers concatenated, and the second encoder's projected embedding."""
    hidden = []
    for tokenizer, encoder in encoders:
        out = encoder(_prompt_ids(tokenizer, prompt), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), out.text_embeds


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

        model = SD3Transformer2DModel.from_pretrained(resolve(path_or_id), subfolder=subfolder)
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
        return {"root": root, "embeddings": {},
                "transformer": FluxTransformer2DModel.from_pretrained(root, subfolder="transformer",
                                                                      torch_dtype=torch_dtype),
                "clip_tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
                "clip": CLIPTextModel.from_pretrained(root, subfolder="text_encoder").eval(),
                "t5_tokenizer": AutoTokenizer.from_pretrained(root, subfolder="tokenizer_2"),
                "t5": T5EncoderModel.from_pretrained(root, subfolder="text_encoder_2").eval()}
    return cached("flux", path_or_id, torch_dtype, None, load)


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
        parts = _flux_parts(path_or_id, torch_dtype)
        root, model = parts["root"], parts["transformer"]
        side = 2 * ((resolution or _vae_config(root).get("sample_size", 1024)) // (2 * _vae_scale(root)))
        shape = (model.config.in_channels // 4, side, side)
        length = min(max_sequence_length, parts["t5_tokenizer"].model_max_length)

        def encode(prompt):
            return (parts["t5"](_prompt_ids(parts["t5_tokenizer"], prompt, length)).last_hidden_state,
                    parts["clip"](_prompt_ids(parts["clip_tokenizer"], prompt)).pooler_output)
        experts = []
        for prompt in prompts:
            hidden, pooled = _encoded(parts, (prompt, length), lambda key: encode(key[0]))
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

    return cached("vae", root, None, device, lambda: AutoencoderKL.from_pretrained(root, subfolder=subfolder).eval()
                  .to(device), subfolder)


def vae_decoder(path_or_id: str, subfolder: str = "vae", device=None):
    """A decode(latents) -> images in [-1, 1] callable for ``Product(decode=...)``: potentials see pixels.
    The VAE runs on ``device`` (default CPU) in float32, ``decode.micro_batch`` latents per call (all when None);
    images come back on the latents' device."""
    vae = load_vae(resolve(path_or_id), subfolder, device)
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
