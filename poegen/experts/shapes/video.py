"""The shapes world's video prior: the image prior's frames plus a small learned space-time correction.

p_video(clip) is modelled through its denoiser: the unconditional image prior denoises every frame on its own and a
small (2+1)-D convolutional network ``TemporalNet`` adds what the frames tell each other (an object keeps its colour,
shape and size from frame to frame, a resting one stays put, a moving one moves smoothly):

    x0_video(x, sigma) = x0_prior(x_f, sigma) for every frame f  +  c_out(sigma) * TemporalNet(c_in x, x0_prior, sigma)

with EDM's c_in, c_out (sigma_data of the prior). The network's last convolution starts at zero, so an untrained
correction is the image prior frame by frame exactly; it is trained on simulated clips with the image prior frozen
(``scripts/train_shapes_video.py``). The convolutions are causal in nothing and padded in time, so one network takes
clips of any length (trained on 5 frames spread over the simulated time).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from ...hardware import in_chunks, rows_per_forward
from . import weights_io
from .model import count_parameters, edm_scales, noise_time
from .unet import timestep_embedding

logger = logging.getLogger(__name__)

TRAIN_SCRIPT = "scripts/train_shapes_video.py (then --export)"

DEFAULT_CONFIG = {"channels": [32, 64, 64], "emb": 64, "groups": 8, "sigma_data": 0.5, "sigma_min": 0.002,
                  "sigma_max": 80.0}


class _Block(nn.Module):
    """Residual (2+1)-D block: a 3x3 spatial then a 3-tap temporal convolution, each after GroupNorm + SiLU, the noise
    level entering as a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, emb: int, groups: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, c_in), nn.GroupNorm(groups, c_out)
        self.space = nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1))
        self.time = nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0))
        self.film = nn.Linear(emb, 2 * c_out)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        y = self.space(nn.functional.silu(self.norm1(h)))
        scale, shift = self.film(e)[:, :, None, None, None].chunk(2, dim=1)
        y = self.norm2(y) * (1 + scale) + shift
        y = self.time(nn.functional.silu(y))
        return self.skip(h) + y


class TemporalNet(nn.Module):
    """The correction: clips (N, 3, F, H, W) in, (N, 3, F, H, W) out; a two-level space-time UNet."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        c0, c1, c2 = self.config["channels"]
        emb, g = self.config["emb"], self.config["groups"]
        self.emb = nn.Sequential(nn.Linear(16, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv3d(6, c0, (3, 3, 3), padding=1)
        self.down0 = _Block(c0, c0, emb, g)
        self.pool0 = nn.Conv3d(c0, c1, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.down1 = _Block(c1, c1, emb, g)
        self.pool1 = nn.Conv3d(c1, c2, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.mid = nn.ModuleList([_Block(c2, c2, emb, g), _Block(c2, c2, emb, g)])
        self.up1 = _Block(c2 + c1, c1, emb, g)
        self.up0 = _Block(c1 + c0, c0, emb, g)
        self.out_norm = nn.GroupNorm(g, c0)
        self.out = nn.Conv3d(c0, 3, (3, 3, 3), padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _embed(self, sigma: Tensor) -> Tensor:
        """The noise level's embedding: sinusoidal features (sines first) of the prior's time input."""
        return self.emb(timestep_embedding(noise_time(sigma.float().reshape(-1), self.config), 16, cos_first=False))

    def forward(self, x: Tensor, frames_x0: Tensor, sigma: Tensor) -> Tensor:
        """TemporalNet(c_in x, x0 of the image prior, sigma), unscaled; sigma (N,)."""
        c_in, _ = edm_scales(sigma.reshape(-1, 1, 1, 1, 1), self.config["sigma_data"])
        e = self._embed(sigma)
        h0 = self.down0(self.inp(torch.cat([x * c_in, frames_x0], dim=1)), e)
        h1 = self.down1(self.pool0(h0), e)
        h = self.pool1(h1)
        for block in self.mid:
            h = block(h, e)
        up = lambda a, like: nn.functional.interpolate(a, size=like.shape[2:], mode="nearest")  # noqa: E731
        h = self.up1(torch.cat([up(h, h1), h1], dim=1), e)
        h = self.up0(torch.cat([up(h, h0), h0], dim=1), e)
        return self.out(nn.functional.silu(self.out_norm(h)))

    def correct(self, x: Tensor, frames_x0: Tensor, sigma: Tensor) -> Tensor:
        """The video prior's x0 from clips x (N, 3, F, H, W), the image prior's frames' x0 (same shape) and sigma
        (N,): frames_x0 + c_out(sigma) * TemporalNet(...)."""
        _, c_out = edm_scales(sigma.reshape(-1, 1, 1, 1, 1).to(x.dtype), self.config["sigma_data"])
        rows = rows_per_forward(x.device)  # a chunk of whole clips with about that many frames
        return frames_x0 + c_out * in_chunks(self, rows and max(1, rows // x.shape[2]), x, frames_x0, sigma)


def save_video_prior(net: TemporalNet, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write video.safetensors (fp16) and video_config.json into out_dir."""
    sd = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    return weights_io.write(out_dir, "video", sd, {**net.config, **(extra or {})})


def load_video_prior(path: str | Path | None = None, device: str | torch.device = "cpu") -> TemporalNet:
    """The trained correction from ``path`` (a folder with video.safetensors + video_config.json; default: the
    package's weights/ folder), in eval mode."""
    sd, cfg, wfile = weights_io.read(path, "video", "shapes video prior", TRAIN_SCRIPT)
    net = TemporalNet({k: v for k, v in cfg.items() if k in DEFAULT_CONFIG})
    net.load_state_dict({k: v.float() for k, v in sd.items()})
    net.config.update({k: v for k, v in cfg.items() if k not in DEFAULT_CONFIG})
    logger.info("loaded shapes video prior from %s (%d parameters)", wfile, count_parameters(net))
    return net.to(device).eval()
