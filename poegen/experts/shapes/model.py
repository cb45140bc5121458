"""The shapes-world prior: a small conditional diffusion UNet for p(image | object phrase, position).

Trained with the EDM preconditioning (Karras et al. 2022, arXiv 2206.00364) directly in the engine's
variance-exploding form x = x0 + sigma * eps, so `denoise` needs no conversion. Conditioning: a phrase
(colour, shape, size; each may be null) added to the time embedding, and an optional position given
as a Gaussian blob in an extra input channel (all zeros = no position). The all-null condition is the
unconditional prior (trained by conditioning dropout).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ...hardware import autocast, check_dtype, in_chunks, rows_per_forward
from . import weights_io
from .unet import UNet
from .vocab import Phrase, parse_phrase
from .weights_io import WEIGHTS_DIR  # noqa: F401  (re-exported for the scripts)
from .world import COLOUR_NAMES, SHAPES, SIZE_NAMES

logger = logging.getLogger(__name__)

TRAIN_SCRIPT = "scripts/train_shapes_prior.py (then --export)"

DEFAULT_CONFIG = {
    "image_size": 32,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 32,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "blob_sigma_px": 1.5,
}


def position_map(positions, size: int = 32, blob_sigma: float = 1.5) -> Tensor:
    """(N, 1, size, size) Gaussian blobs at pixel (col, row) positions; a None/NaN row gives zeros."""
    out = torch.zeros(len(positions), 1, size, size)
    grid = torch.arange(size, dtype=torch.float32)
    for i, pos in enumerate(positions):
        if pos is None or any(math.isnan(float(v)) for v in pos):
            continue
        col, row = float(pos[0]), float(pos[1])
        gx = torch.exp(-0.5 * ((grid - col) / blob_sigma) ** 2)
        gy = torch.exp(-0.5 * ((grid - row) / blob_sigma) ** 2)
        out[i, 0] = gy[:, None] * gx[None, :]
    return out


def edm_scales(sigma: Tensor, sigma_data: float):
    """EDM's (c_in, c_out) for noise levels sigma: the network's input and output scales."""
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return c_in, c_out


def noise_time(sigma: Tensor, config: dict) -> Tensor:
    """The networks' time input: log sigma mapped linearly from [sigma_min, sigma_max] (``config``) to [0, 1000]."""
    lo, hi = math.log(config["sigma_min"]), math.log(config["sigma_max"])
    return 1000 * (sigma.clamp(config["sigma_min"], config["sigma_max"]).log() - lo) / (hi - lo)


def phrase_ids(phrase: Phrase | None) -> tuple[int, int, int]:
    """Embedding indices (colour, shape, size) of a phrase; the last index of each table is null."""
    if phrase is None:
        return len(COLOUR_NAMES), len(SHAPES), len(SIZE_NAMES)
    c = COLOUR_NAMES.index(phrase.colour) if phrase.colour else len(COLOUR_NAMES)
    s = SHAPES.index(phrase.shape) if phrase.shape else len(SHAPES)
    z = SIZE_NAMES.index(phrase.size) if phrase.size else len(SIZE_NAMES)
    return c, s, z


class ShapesDenoiser(nn.Module):
    """EDM-preconditioned conditional UNet: D(x; sigma, phrase ids, position map) -> x0_hat."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        c = self.config
        temb = c["block_out_channels"][0] * 4
        self.unet = UNet(c, in_channels=4, out_channels=3)  # diffusers' UNet2DModel, its parameter names kept
        self.colour_emb = nn.Embedding(len(COLOUR_NAMES) + 1, temb)
        self.shape_emb = nn.Embedding(len(SHAPES) + 1, temb)
        self.size_emb = nn.Embedding(len(SIZE_NAMES) + 1, temb)
        for e in (self.colour_emb, self.shape_emb, self.size_emb):
            nn.init.normal_(e.weight, std=0.02)

    def forward(self, x: Tensor, sigma: Tensor, ids: Tensor, pos_map: Tensor) -> Tensor:
        """x0_hat from x (N,3,H,W), sigma (N,), ids (N,3) long, pos_map (N,1,H,W)."""
        c = self.config
        sd = c["sigma_data"]
        sigma = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_in, c_out = edm_scales(sigma, sd)
        t = noise_time(sigma.flatten(), c)
        cls = self.colour_emb(ids[:, 0]) + self.shape_emb(ids[:, 1]) + self.size_emb(ids[:, 2])
        h = torch.cat([x * c_in, pos_map.to(x.dtype)], dim=1)
        f = self.unet(h, t, cls)
        return c_skip * x + c_out * f.to(x.dtype)


class ShapesPhraseExpert:
    """Generative expert p(image | phrase, position) of the shapes prior, in the engine's VE convention."""

    shape = (3, 32, 32)

    def __init__(self, net: ShapesDenoiser, phrase: Phrase | str | None = None, position=None,
                 dtype: str = "auto", name: str | None = None, clip: bool = True):
        if isinstance(phrase, str):
            phrase = parse_phrase(phrase)
        self.net, self.phrase, self.position, self.clip = net, phrase, position, clip
        self.dtype = check_dtype(dtype)  # the forwards' compute dtype: auto = bf16 only where it is native
        self.sigma_min = float(net.config["sigma_min"])
        self.sigma_max = float(net.config["sigma_max"])
        self.ids = torch.tensor(phrase_ids(phrase), dtype=torch.long)
        size = net.config["image_size"]
        self.shape = (3, size, size)
        self.pos_map = position_map([position], size, net.config["blob_sigma_px"])
        where = f" at {tuple(round(float(v), 1) for v in position)}" if position is not None else ""
        self.name = name or f"shapes[{phrase if phrase is not None else 'null'}{where}]"

    @property
    def batch_key(self):
        """Phrase experts of one network share a single forward per evaluation (``denoise_batch``)."""
        return (type(self), id(self.net), self.dtype, self.clip)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x0_hat for x = x0 + sigma * eps; x (N,3,H,W), sigma 0-d or (N,)."""
        return self.denoise_batch([self], x, sigma)[0]

    @classmethod
    def denoise_batch(cls, experts, x: Tensor, sigma: Tensor):
        """x0_hat of several phrase experts in one forward: rows stacked, phrase ids and position maps concatenated."""
        first, n, E = experts[0], x.shape[0], len(experts)
        dev = next(first.net.parameters()).device
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=dev).reshape(-1).expand(n).repeat(E)
        xin = x.to(dev, torch.float32).repeat(E, 1, 1, 1)
        ids = torch.cat([e.ids.to(dev).expand(n, 3) for e in experts])
        pos = torch.cat([e.pos_map.to(dev).expand(n, -1, -1, -1) for e in experts])
        out = forward(first.net, first.dtype, xin, sigma, ids, pos)
        out = out.clamp(-1, 1) if first.clip else out  # images live in [-1, 1]
        return list(out.to(x.device, x.dtype).split(n))

    def __repr__(self) -> str:
        return f"ShapesPhraseExpert({self.name})"


def forward(net, dtype: str, x: Tensor, sigma: Tensor, ids: Tensor, pos: Tensor) -> Tensor:
    """The prior's x0_hat of stacked rows (on the net's device) in float32, computed at ``dtype`` (a name for
    ``pick_dtype``: autocast where it is not float32); shared by the phrase and clip experts' batched forwards."""
    with autocast(dtype, x.device):
        return in_chunks(lambda *a: net(*a).float(), rows_per_forward(x.device), x, sigma, ids, pos)


class ShapesPrior:
    """A loaded shapes prior; `expert(...)` builds phrase-, position- or null-conditioned experts."""

    def __init__(self, net: ShapesDenoiser):
        self.net = net.eval()
        self.config = net.config

    def expert(self, phrase: Phrase | str | None = None, position=None, dtype: str = "auto") -> ShapesPhraseExpert:
        """Expert for `phrase` ('red ball', 'large blue box', or None = unconditional) at an optional
        pixel `position` (col, row) of the object's centroid (None = anywhere), computing in ``dtype``."""
        return ShapesPhraseExpert(self.net, phrase, position, dtype)

    def null(self, dtype: str = "auto") -> ShapesPhraseExpert:
        """The unconditional prior (null phrase, no position)."""
        return self.expert(None, None, dtype)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters())


def save_prior(net: ShapesDenoiser, out_dir: str | Path, extra: dict | None = None, half: bool = True) -> Path:
    """Write prior.safetensors (fp16 by default) and prior_config.json into out_dir."""
    sd = {k: (v.half() if half and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    return weights_io.write(out_dir, "prior", sd, {**net.config, **(extra or {})})


def load_prior(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesPrior:
    """Load the prior from `path` (a folder with prior.safetensors + prior_config.json; default: the
    package's weights/ folder)."""
    sd, cfg, wfile = weights_io.read(path, "prior", "shapes prior", TRAIN_SCRIPT)
    net = ShapesDenoiser({k: v for k, v in cfg.items() if k in DEFAULT_CONFIG})
    net.load_state_dict({k: v.float() for k, v in sd.items()})
    net.config.update({k: v for k, v in cfg.items() if k not in DEFAULT_CONFIG})
    logger.info("loaded shapes prior from %s (%d parameters)", wfile, count_parameters(net))
    return ShapesPrior(net.to(device))
