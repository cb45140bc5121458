"""Generative experts wrapping diffusers components behind the denoiser protocol (no pipelines).

Schedulers are read once as tables (``alphas_cumprod``); their ``step()`` is never called. One module per
pipeline kind, every name re-exported here (``from poegen.experts.diffusers import ...``):

    common.py      resolve (local folder or cached hub id), prompt tokenising/encoding once, micro-batched
                   backbone calls shared by experts on one model
    vae.py         the AutoencoderKL: config and latent scale, load_vae, vae_decoder (decoder_of a loaded VAE)
    unet.py        VPUNetExpert (pixel UNet2DModel), TextConditionedUNetExpert (Stable Diffusion 1.x/2.x), unet_config
    sdxl.py        SDXLExpert and its two-encoder prompt encoding
    controlnet.py  ControlNetExpert, SDXLControlNetExpert, load_controlnet_prompts
    flow.py        FlowTransformerExpert (SD3-style rectified flow), FluxExpert and FLUX latent packing

diffusers and transformers are imported inside the loaders only: importing this package loads neither.
"""
# the package's names, private helpers included, as ``poegen.experts.diffusers`` offered them in one module
from .common import _encoded, _micro_batched, _stacked_conditioning, _text_output, resolve
from .controlnet import ControlNetExpert, SDXLControlNetExpert, _ControlNetMixin, load_controlnet_prompts
from .flow import (FlowTransformerExpert, FluxExpert, _flux_parts, encode_flux_prompt, latent_ids, log, pack_latents,
                   unpack_latents)
from .sdxl import SDXLExpert, _sdxl_parts, encode_sdxl_prompt
from .unet import TextConditionedUNetExpert, VPUNetExpert, _sd_parts, encode_sd_prompt, unet_config
from .vae import _Decode, _vae_config, _vae_scale, decoder_of, load_vae, vae_decoder

