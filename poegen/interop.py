"""poegen inside users' code: a diffusers pipeline already loaded becomes generative experts on its own modules
(no second copy, no reload), a plain function on images becomes a potential, and samples become images.

    expert = poegen.from_pipeline(pipe, "a red ball")                  # pipe.unet / pipe.transformer, pipe.vae
    product = poegen.Product([expert], potentials=[poegen.potential(redness)])
    images = poegen.decode_images(product, poegen.sample(product, num_particles=4, num_steps=30))

The experts are the ones the named route builds from a folder (``from_parts`` of each family's class), handed the
pipeline's components instead of loaded ones.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .hardware import configure_threads
from .schedules import vp_sigmas

log = logging.getLogger("poegen.interop")

FAMILIES = "StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline, " \
           "DDPMPipeline/DDIMPipeline"


def _component(pipe, name: str, family: str):
    value = getattr(pipe, name, None)
    if value is None:
        raise ValueError(f"from_pipeline: this {family} pipeline has no {name}; load the pipeline with its {name} "
                         "(a refiner or a pipeline without text encoders cannot encode a prompt)")
    return value


def _check_latents(pipe, backbone, channels: int, family: str):
    """The backbone's latent channels must be the VAE's (an inpainting or Fill model takes extra channels)."""
    latent = pipe.vae.config.latent_channels
    if channels != latent:
        raise ValueError(f"from_pipeline: the {family} {type(backbone).__name__} reads {channels} channels but the VAE "
                         f"makes {latent}: inpainting, Fill and Control variants are not supported here (use "
                         "`poegen edit` for inpainting)")


def _family(pipe) -> str:
    """sd, sdxl, sd3, flux or pixel (an unconditional UNet2DModel), from the pipeline's backbone."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel, UNet2DModel

    if getattr(pipe, "controlnet", None) is not None:
        raise ValueError("from_pipeline: ControlNet pipelines are not supported; pass the base pipeline, or name the "
                         "models in a config (kind controlnet)")
    unet, transformer = getattr(pipe, "unet", None), getattr(pipe, "transformer", None)
    if isinstance(unet, UNet2DModel):
        return "pixel"
    if isinstance(unet, UNet2DConditionModel):
        family = "sdxl" if unet.config.addition_embed_type == "text_time" else "sd"
        _check_latents(pipe, unet, unet.config.in_channels, family)
        return family
    if isinstance(transformer, SD3Transformer2DModel):
        _check_latents(pipe, transformer, transformer.config.in_channels, "sd3")
        return "sd3"
    if isinstance(transformer, FluxTransformer2DModel):
        _check_latents(pipe, transformer, transformer.config.in_channels // 4, "flux")
        return "flux"
    raise TypeError(f"from_pipeline: {type(pipe).__name__} is not supported; supported: {FAMILIES}")


def _experts(pipe, family: str, prompts: Sequence[str], options: dict) -> list:
    """The family's experts on the pipeline's own modules (each family's ``from_parts``, as the folder route)."""
    from .experts.diffusers import FluxExpert, SDXLExpert, TextConditionedUNetExpert, VPUNetExpert

    if family == "pixel":
        if any(prompts):
            raise ValueError(f"from_pipeline: {type(pipe).__name__}'s UNet has no text conditioning; pass prompt=''")
        sch = pipe.scheduler
        return [VPUNetExpert(pipe.unet, sch.alphas_cumprod, sch.config.prediction_type, **options) for _ in prompts]
    if family == "sd":
        parts = {"unet": pipe.unet, "scheduler": pipe.scheduler, "embeddings": {},
                 "tokenizer": _component(pipe, "tokenizer", family), "encoder": _component(pipe, "text_encoder", family)}
        return TextConditionedUNetExpert.from_parts(parts, prompts, **options)
    if family == "sdxl":
        encoders = [(_component(pipe, t, family), _component(pipe, e, family))
                    for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
        parts = {"unet": pipe.unet, "scheduler": pipe.scheduler, "embeddings": {}, "encoders": encoders,
                 "vae_scale": pipe.vae_scale_factor,
                 "zeros_for_empty": getattr(pipe.config, "force_zeros_for_empty_prompt", True)}
        return SDXLExpert.from_parts(parts, prompts, **options)
    if family == "sd3":
        from .experts.sd3 import SD3Expert

        t5 = getattr(pipe, "text_encoder_3", None)
        encoders = [(_component(pipe, t, family), _component(pipe, e, family))
                    for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
        encoders.append(None if t5 is None else (_component(pipe, "tokenizer_3", family), t5))
        parts = {"transformer": pipe.transformer, "vae_scale": pipe.vae_scale_factor,
                 "text": {"encoders": encoders, "embeddings": {}}}
        return SD3Expert.from_parts(parts, prompts, where=type(pipe).__name__, **options)
    parts = {"transformer": pipe.transformer, "embeddings": {}, "vae_scale": pipe.vae_scale_factor,
             "sample_size": getattr(pipe, "default_sample_size", 128) * pipe.vae_scale_factor,
             "clip_tokenizer": _component(pipe, "tokenizer", family), "clip": _component(pipe, "text_encoder", family),
             "t5_tokenizer": _component(pipe, "tokenizer_2", family), "t5": _component(pipe, "text_encoder_2", family)}
    return FluxExpert.from_parts(parts, prompts, **options)


def from_pipeline(pipe, prompt: Union[str, Sequence[str]] = "", **options):
    """Generative experts on a diffusers pipeline the caller already loaded, sharing its modules (``expert.unet is
    pipe.unet``, or ``expert.transformer is pipe.transformer``; the text encoders encode each prompt once).

    ``prompt``: one prompt (returns one expert) or a list (one expert each, all on the one backbone, so a product
    of them is one batched call per step: ``from_pipeline(pipe, [prompt, ""])`` with weights ``[w, 1 - w]`` is
    classifier-free guidance). ``options`` go to the family's expert (``micro_batch``, ``name``; ``resolution``
    and ``max_sequence_length`` for SD3 and FLUX, ``guidance`` for FLUX, sizes for SDXL). Latent models' experts
    carry ``decode``, the pipeline's VAE, which a Product takes for its potentials and ``decode_images``."""
    from .experts.diffusers import decoder_of

    family = _family(pipe)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"from_pipeline: prompt must be a string or a non-empty list of strings, not {prompt!r}")
    experts = _experts(pipe, family, prompts, options)
    if family != "pixel":
        decode = decoder_of(pipe.vae)
        for e in experts:
            e.decode = decode
    return experts[0] if isinstance(prompt, str) else experts


def pipeline_sigmas(pipe, num_inference_steps: int, **set_timesteps) -> list:
    """The pipeline's own noise levels for ``num_inference_steps`` as decreasing VE sigmas, for
    ``poegen.sample(..., num_steps=len(sigmas) - 1, sigmas=sigmas)``: its last level returns x0_hat there, as the
    pipeline's last step does when it ends at alpha = 1. VP schedulers give the sigma table (Euler, DPM-Solver)
    or sqrt((1 - abar) / abar) at their timesteps (DDIM, DDPM, PNDM); flow-match schedulers t / (1 - t), with
    t = 1 (an infinite sigma) moved to the experts' highest level, 1000. ``set_timesteps`` (e.g. ``mu`` for
    FLUX's dynamic shift) goes to the scheduler, a copy of the pipeline's (whose state is left alone)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, **set_timesteps)
    table = getattr(scheduler, "sigmas", None)
    if hasattr(scheduler, "alphas_cumprod"):
        if table is None:
            steps = torch.unique_consecutive(torch.as_tensor(scheduler.timesteps).long())
            sigmas = vp_sigmas(scheduler.alphas_cumprod)[steps]
        else:
            sigmas = torch.as_tensor(table, dtype=torch.float64)
    elif table is not None:
        t = torch.as_tensor(table, dtype=torch.float64).clamp(max=1000 / 1001)
        sigmas = t / (1 - t)
    else:
        raise TypeError(f"pipeline_sigmas: {type(scheduler).__name__} has neither alphas_cumprod nor sigmas")
    return [float(s) for s in sigmas if s > 0]


class FunctionPotential:
    """A user's function on images as a discriminative expert: ``f`` gets the product's (decoded) clean images as
    an (N, 3, H, W) float32 tensor in [0, 1] (``pil=True``: a list of N PIL images) and returns N log-weights;
    -inf rules an image out, NaN is an error."""

    def __init__(self, f: Callable, name: Optional[str] = None, pil: bool = False):
        if not callable(f):
            raise TypeError(f"potential: expected a function of images, got {type(f).__name__}")
        self.f, self.pil = f, pil
        self.name = name or getattr(f, "__name__", None) or type(f).__name__

    def log_potential(self, x0: Tensor) -> Tensor:
        n = x0.shape[0]
        images = ((x0.float() + 1) / 2).clamp(0, 1)
        if self.pil:
            from .pipeline import to_pil
            images = [to_pil(x * 2 - 1) for x in images]
        value = self.f(images)
        try:
            out = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            out = None
        if out is None or out.is_complex() or out.dtype == torch.bool:
            raise TypeError(f"potential {self.name}: the function returned {type(value).__name__}"
                            f"{'' if out is None else ' of ' + str(out.dtype)}; return N real log-weights (a "
                            "tensor, array or list)")
        if out.shape != (n,):
            raise ValueError(f"potential {self.name}: the function returned shape {tuple(out.shape)} for {n} images; "
                             f"return one log-weight per image, shape ({n},)")
        nan = torch.isnan(out.float())
        if bool(nan.any()):
            raise ValueError(f"potential {self.name}: the function returned NaN for image(s) "
                             f"{nan.nonzero().flatten().tolist()}; return -inf to rule an image out")
        if bool((out.float() == math.inf).any()):
            raise ValueError(f"potential {self.name}: the function returned +inf; log-weights must be finite or -inf")
        return out.to(x0.device, x0.dtype)


def potential(f: Callable, name: Optional[str] = None, pil: bool = False) -> FunctionPotential:
    """A potential from ``f(images) -> (N,) log-weights`` (see ``FunctionPotential``), for
    ``Product(..., potentials=[poegen.potential(f)], lambdas=[...])``. Latent models' x0 is decoded first by the
    Product's ``decode`` (``from_pipeline``'s experts bring the pipeline's VAE); pixel models' x0 is the image."""
    return FunctionPotential(f, name, pil)


def decode_images(product, x, pil: bool = True):
    """Images of samples ``x`` (a SampleResult's ``x`` or the result itself) through the product's ``decode``
    (none: x is the image): a list of PIL images, or with ``pil=False`` an (N, 3, H, W) float tensor in [0, 1]."""
    x = getattr(x, "x", x)
    configure_threads()  # as samplers.sample: a decoder's convolutions run on the free cores
    with torch.no_grad():
        images = product.decode(x) if product.decode is not None else x
    images = ((images.float() + 1) / 2).clamp(0, 1)
    if not pil:
        return images
    from .pipeline import to_pil
    return [to_pil(i * 2 - 1) for i in images.cpu()]
