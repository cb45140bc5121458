"""The shapes prior's UNet in plain torch: the architecture of diffusers' ``UNet2DModel`` (positional time
embedding, ResNet blocks with a time projection, self-attention at the coarsest levels, an identity class
embedding), with the same parameter names, so the shipped weights load unchanged.

Written out because importing diffusers costs about 5 s on a 2-core CPU, twice what sampling a default image
takes; ``tests/test_shapes_unet.py`` checks it against ``diffusers.UNet2DModel`` on the same weights.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, cos_first: bool = True) -> Tensor:
    """Sinusoidal embedding of (N,) timesteps, cosines first by default (diffusers' flip_sin_to_cos, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    arg = t[:, None].float() * freqs[None]
    parts = [torch.cos(arg), torch.sin(arg)]
    return torch.cat(parts if cos_first else parts[::-1], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim, out), nn.Linear(out, out)

    def forward(self, t: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(t)))


class ResnetBlock2D(nn.Module):
    """GroupNorm, SiLU, conv; plus the projected time embedding; GroupNorm, SiLU, conv; residual (1x1 if widths differ)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, group-normalised, with a residual."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float):
        super().__init__()
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        n, c, hgt, wid = x.shape
        h = self.group_norm(x.view(n, c, hgt * wid)).transpose(1, 2)
        q, k, v = (f(h).view(n, -1, self.heads, c // self.heads).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, c)
        return self.to_out[0](h).transpose(1, 2).reshape(n, c, hgt, wid) + x


class Resample(nn.Module):
    """A strided 3x3 conv (down) or nearest-neighbour doubling then a 3x3 conv (up)."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest") if self.up else x)


class Block(nn.Module):
    """One level of the UNet: ResNet blocks (each followed by attention in an Attn* block), then a resampler."""

    def __init__(self, cins: Sequence[int], cout: int, temb: int, attn: bool, resample: str | None, cfg: dict):
        super().__init__()
        g, eps = cfg["norm_num_groups"], 1e-5
        self.resnets = nn.ModuleList([ResnetBlock2D(c, cout, temb, g, eps) for c in cins])
        if attn:
            self.attentions = nn.ModuleList([Attention(cout, cfg["attention_head_dim"], g, eps) for _ in cins])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Resample(cout, up=False)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Resample(cout, up=True)])

    def forward(self, h: Tensor, temb: Tensor, skips: List[Tensor] | None = None):
        """Down (skips None): (h, outputs for the skip connections). Up: h, popping its skips off the list."""
        outs = []
        for i, resnet in enumerate(self.resnets):
            if skips is not None:
                h = torch.cat([h, skips.pop()], dim=1)
            h = resnet(h, temb)
            if hasattr(self, "attentions"):
                h = self.attentions[i](h)
            outs.append(h)
        if hasattr(self, "downsamplers"):
            h = self.downsamplers[0](h)
            outs.append(h)
        if hasattr(self, "upsamplers"):
            h = self.upsamplers[0](h)
        return h if skips is not None else (h, outs)


class MidBlock(nn.Module):
    """ResNet, then (attention, ResNet) at the coarsest level."""

    def __init__(self, channels: int, temb: int, cfg: dict):
        super().__init__()
        g = cfg["norm_num_groups"]
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, temb, g, 1e-5) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, cfg["attention_head_dim"], g, 1e-5)])

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](h, temb)), temb)


class UNet(nn.Module):
    """``UNet2DModel(in_channels, out_channels, block_out_channels, layers_per_block, down/up_block_types,
    norm_num_groups, attention_head_dim, class_embed_type="identity")``: forward(x, t, class_emb) -> output."""

    def __init__(self, cfg: dict, in_channels: int = 4, out_channels: int = 3):
        super().__init__()
        widths, layers = list(cfg["block_out_channels"]), cfg["layers_per_block"]
        temb = widths[0] * 4
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], temb)
        self.down_blocks, skips, c = nn.ModuleList(), [widths[0]], widths[0]
        for i, (kind, w) in enumerate(zip(cfg["down_block_types"], widths)):
            last = i == len(widths) - 1
            self.down_blocks.append(Block([c] + [w] * (layers - 1), w, temb, kind.startswith("Attn"),
                                          None if last else "down", cfg))
            skips += [w] * (layers + (0 if last else 1))
            c = w
        self.mid_block = MidBlock(c, temb, cfg)
        self.up_blocks = nn.ModuleList()
        for i, (kind, w) in enumerate(zip(cfg["up_block_types"], reversed(widths))):
            cins = []
            for _ in range(layers + 1):
                cins.append(c + skips.pop())
                c = w
            self.up_blocks.append(Block(cins, w, temb, kind.startswith("Attn"),
                                        None if i == len(widths) - 1 else "up", cfg))
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], widths[0], eps=1e-5)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, class_emb: Tensor) -> Tensor:
        temb = self.time_embedding(timestep_embedding(t, self.conv_in.out_channels).to(x.dtype)) + class_emb
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, outs = block(h, temb)
            skips += outs
        h = self.mid_block(h, temb)
        for block in self.up_blocks:
            h = block(h, temb, skips)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
