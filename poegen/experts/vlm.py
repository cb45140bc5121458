"""Discriminative experts from transformers models: CLIP score, a PickScore-style preference scorer, and a
VQAScore-style log P("Yes") from an image-text-to-text VLM."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import defaults
from .cache import cached
from .diffusers.common import load_pretrained, resolve

log = logging.getLogger("poegen.experts.vlm")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VQA_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'  # VQAScore (Lin et al. 2024)
LLAVA_TEMPLATE = "USER: {image}\n{question} ASSISTANT:"              # Llava-1.5, when there is no chat template
PICKSCORE_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"      # PickScore_v1 ships no tokenizer of its own


def _embedding(out) -> Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _normalise(x0: Tensor, size, mean, std, dtype) -> Tensor:
    """Images in [-1, 1] resized (bilinear) to ``size`` and normalised like the model's processor, in torch."""
    img = F.interpolate((x0.float().clamp(-1, 1) + 1) / 2, size=tuple(size), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(mean, device=x0.device), torch.tensor(std, device=x0.device)
    return ((img - mean[:, None, None]) / std[:, None, None]).to(dtype)


class ClipScore:
    """logit_scale * cos(CLIP image embedding, CLIP text embedding) of images in [-1, 1] (Radford et al. 2021).

    Differentiable in the image: preprocessing (resize, normalise) is done in torch. Questions on one model share
    a ``batch_key``: each image is embedded once and dotted with every question's text embedding."""

    def __init__(self, model, tokenizer, text: str, name: Optional[str] = None, micro_batch: Optional[int] = None):
        self.model, self.micro_batch = model.eval(), micro_batch
        length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        ids = tokenizer([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        ids = {k: v.to(model.device) for k, v in ids.items()}  # the model may already be on an accelerator
        with torch.no_grad():
            self.text = F.normalize(_embedding(model.get_text_features(**ids)), dim=-1)
        self.size = model.config.vision_config.image_size
        self.scale = float(model.logit_scale.detach().exp())
        self.name = name or f"clip[{text}]"

    @classmethod
    def from_pretrained(cls, path_or_id: str, text: str, tokenizer: Optional[str] = None, torch_dtype=None,
                        **kwargs) -> "ClipScore":
        """A CLIPModel folder or cached id (loaded once per dtype); its tokenizer from ``tokenizer`` when given."""
        from transformers import CLIPModel, CLIPTokenizer

        root = resolve(path_or_id)
        model, tok = cached("clip", root, torch_dtype, None, lambda: (
            load_pretrained(CLIPModel, root, dtype=torch_dtype),
            load_pretrained(CLIPTokenizer, resolve(tokenizer) if tokenizer else root)), tokenizer)
        return cls(model, tok, text, **kwargs)

    rows_per_question = False  # micro_batch counts images: each is embedded once for every question

    @property
    def batch_key(self):
        return (ClipScore, id(self.model))

    def offload_modules(self) -> list:
        return [self.model.vision_model]

    @classmethod
    def log_potential_batch(cls, potentials, x0: Tensor):
        """(K, N) scores of K questions on one model: ceil(N / micro_batch) image-embedding calls in all."""
        first = potentials[0]
        p = next(first.model.parameters())
        img = _normalise(x0, (first.size, first.size), CLIP_MEAN, CLIP_STD, p.dtype)
        emb = torch.cat([_embedding(first.model.get_image_features(pixel_values=chunk))
                         for chunk in img.split(first.micro_batch or len(img))])
        texts = torch.cat([q.text for q in potentials]).to(emb.device).float()
        return (first.scale * F.normalize(emb.float(), dim=-1) @ texts.T).T.to(x0.dtype)

    def log_potential(self, x0: Tensor) -> Tensor:
        return self.log_potential_batch([self], x0)[0]


class PickScore(ClipScore):
    """PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on human preferences, scored as logit_scale times
    the cosine of image and prompt embeddings, i.e. ``ClipScore`` on the PickScore_v1 checkpoint. Its folder
    has no tokenizer; it is taken from the folder when present, else from LAION's CLIP-ViT-H-14."""

    @classmethod
    def from_pretrained(cls, path_or_id: str, text: str, tokenizer: Optional[str] = None, **kwargs) -> "PickScore":
        root = resolve(path_or_id)
        if tokenizer is None and not (Path(root) / "tokenizer_config.json").exists():
            tokenizer = PICKSCORE_TOKENIZER
        kwargs.setdefault("name", f"pickscore[{text}]")
        return super().from_pretrained(root, text, tokenizer=tokenizer, **kwargs)


class VQAScore:
    """VQAScore (Lin et al. 2024): log P(answer | image, question) of an image-text-to-text VLM, read from the
    logits at the answer position (softmax over the whole vocabulary, so the value is <= 0); with ``versus``
    (e.g. "No") the softmax is over the two answers only, log P(yes) / (P(yes) + P(no)).

    Works with VLMs whose processor gives a fixed-size ``pixel_values`` (Llava family): the prompt's image
    tokens are expanded once by the processor, and images are resized and normalised in torch, so the score
    is differentiable in the image.

    ``certify_threshold`` (``poegen.certify``): met when the answer has probability >= ``defaults.CERTIFY_P`` (a
    config entry's ``certify`` option sets another probability)."""

    certify_threshold = math.log(defaults.CERTIFY_P)

    def __init__(self, model, processor, question: str, answer: str = "Yes", versus: Optional[str] = None,
                 template: Optional[str] = None, micro_batch: Optional[int] = None, name: Optional[str] = None):
        from PIL import Image

        self.model, self.micro_batch = model.eval(), micro_batch
        self.name = name or f"vqa[{question}]"
        tok = processor.tokenizer
        image_token = getattr(processor, "image_token", "<image>")
        if template is None and getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            prompt = (template or LLAVA_TEMPLATE).format(image=image_token, question=question)
        ip = processor.image_processor
        crop = getattr(ip, "crop_size", None) or ip.size
        blank = Image.new("RGB", (crop["width"], crop["height"]))
        inputs = processor(images=blank, text=prompt, return_tensors="pt")
        extra = sorted(set(inputs) - {"input_ids", "attention_mask", "pixel_values"})
        if extra or inputs["pixel_values"].dim() != 4:
            raise ValueError(f"{type(processor).__name__} gives {', '.join(extra) or 'variable-size pixel_values'}; "
                             "VQAScore supports VLMs with a fixed-size image input (Llava family)")
        self.input_ids, self.attention_mask = inputs["input_ids"], inputs["attention_mask"]
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.size = tuple(inputs["pixel_values"].shape[-2:])
        self.mean, self.std = tuple(ip.image_mean), tuple(ip.image_std)
        self.answer_ids = [self._token(tok, answer)] + ([self._token(tok, versus)] if versus else [])

    @staticmethod
    def _token(tokenizer, word: str) -> int:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if not ids or ids[0] == tokenizer.unk_token_id:
            raise ValueError(f"answer {word!r} is not in the VLM's vocabulary; pass another answer= word")
        if len(ids) > 1:
            log.warning("answer %r is %d tokens; scoring its first token only", word, len(ids))
        return ids[0]

    @classmethod
    def from_pretrained(cls, path_or_id: str, text: str, question: str = VQA_QUESTION, torch_dtype=None,
                        **kwargs) -> "VQAScore":
        """An image-text-to-text folder or cached id (model and processor); ``question`` formatted with ``text``."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        root = resolve(path_or_id)
        kwargs.setdefault("name", f"vqa[{text}]")
        model, processor = cached("vqa", root, torch_dtype, None, lambda: (
            load_pretrained(AutoModelForImageTextToText, root, dtype=torch_dtype),
            load_pretrained(AutoProcessor, root)))
        return cls(model, processor, question.format(text), **kwargs)

    rows_per_question = True  # micro_batch counts (question, image) rows

    @property
    def batch_key(self):
        return (VQAScore, id(self.model))

    def offload_modules(self) -> list:
        return [self.model]

    @classmethod
    def log_potential_batch(cls, potentials, x0: Tensor):
        """(K, N) scores of K questions on one VLM: the K * N (question, image) rows go through the model in
        ceil(K * N / micro_batch) calls; prompts of unequal length are left-padded with matching position ids."""
        first, n, k = potentials[0], x0.shape[0], len(potentials)
        p = next(first.model.parameters())
        pixels = _normalise(x0, first.size, first.mean, first.std, p.dtype)
        width = max(q.input_ids.shape[1] for q in potentials)
        ids = torch.stack([F.pad(q.input_ids[0], (width - q.input_ids.shape[1], 0), value=q.pad_id) for q in potentials])
        mask = torch.stack([F.pad(q.attention_mask[0], (width - q.input_ids.shape[1], 0)) for q in potentials])
        ids, mask = ids.to(x0.device).repeat_interleave(n, 0), mask.to(x0.device).repeat_interleave(n, 0)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        image = torch.arange(n, device=x0.device).repeat(k)
        mb = first.micro_batch or k * n
        logits = torch.cat([first.model(input_ids=ids[i:i + mb], attention_mask=mask[i:i + mb],
                                        position_ids=positions[i:i + mb], pixel_values=pixels[image[i:i + mb]],
                                        logits_to_keep=1).logits[:, -1].float()
                            for i in range(0, k * n, mb)]).reshape(k, n, -1)
        return torch.stack([q._score(row) for q, row in zip(potentials, logits)]).to(x0.dtype)

    def _score(self, logits: Tensor) -> Tensor:
        """log P(answer) over the vocabulary, or against ``versus`` only, from answer-position logits (N, V)."""
        if len(self.answer_ids) == 1:
            return logits.log_softmax(-1)[:, self.answer_ids[0]]
        pair = logits[:, self.answer_ids]
        return pair[:, 0] - pair.logsumexp(-1)

    def log_potential(self, x0: Tensor) -> Tensor:
        return self.log_potential_batch([self], x0)[0]
