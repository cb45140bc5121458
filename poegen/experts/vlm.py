"""Discriminative experts from transformers models: CLIP score (and, later, VQA-style yes/no scorers)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .diffusers import resolve

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _embedding(out) -> Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


class ClipScore:
    """logit_scale * cos(CLIP image embedding, CLIP text embedding) of images in [-1, 1] (Radford et al. 2021).

    Differentiable in the image: preprocessing (resize, normalise) is done in torch."""

    def __init__(self, model, tokenizer, text: str, name: Optional[str] = None):
        self.model = model.eval()
        length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        ids = tokenizer([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            self.text = F.normalize(_embedding(model.get_text_features(**ids)), dim=-1)
        self.size = model.config.vision_config.image_size
        self.scale = float(model.logit_scale.detach().exp())
        self.name = name or f"clip[{text}]"

    @classmethod
    def from_pretrained(cls, path_or_id: str, text: str, **kwargs) -> "ClipScore":
        from transformers import CLIPModel, CLIPTokenizer

        root = resolve(path_or_id)
        return cls(CLIPModel.from_pretrained(root), CLIPTokenizer.from_pretrained(root), text, **kwargs)

    def log_potential(self, x0: Tensor) -> Tensor:
        p = next(self.model.parameters())
        img = F.interpolate((x0.float().clamp(-1, 1) + 1) / 2, size=(self.size, self.size), mode="bilinear",
                            align_corners=False)
        mean, std = torch.tensor(CLIP_MEAN, device=x0.device), torch.tensor(CLIP_STD, device=x0.device)
        img = (img - mean[:, None, None]) / std[:, None, None]
        emb = F.normalize(_embedding(self.model.get_image_features(pixel_values=img.to(p.dtype))), dim=-1)
        return (self.scale * emb.float() @ self.text.to(emb.device).float().T)[:, 0].to(x0.dtype)
