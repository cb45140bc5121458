"""Generative experts wrapping diffusers components behind the denoiser protocol (no pipelines).

Schedulers are read once as tables (``alphas_cumprod``); their ``step()`` is never called.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..schedules import sigma_to_vp_t, vp_input, vp_sigmas

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
    alpha_bar matches sigma (log-sigma interpolation of the table)."""

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

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(n)
        s = sigma.reshape(-1, *[1] * (x.dim() - 1))
        t = sigma_to_vp_t(sigma.double(), self.alphas_cumprod).to(x.dtype)
        x_vp = vp_input(x, s)
        p = next(self.unet.parameters())
        mb = self.micro_batch or n  # micro-batches bound the memory of one call
        out = torch.cat([self.unet(x_vp[i:i + mb].to(p.dtype), t[i:i + mb]).sample.to(x.dtype)
                         for i in range(0, n, mb)])
        if self.prediction_type == "epsilon":
            return x - s * out
        a = 1 / (1 + s ** 2).sqrt()
        if self.prediction_type == "v_prediction":  # v = a eps - (s a) x0  =>  x0 = a x_vp - (s a) v
            return a * x_vp - s * a * out
        return out
