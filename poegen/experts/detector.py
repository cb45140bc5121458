"""An open-vocabulary detector as an expert: OWLv2 (Minderer et al. 2023) scores every image patch's box against
text phrases; a potential rewards the best detection of its phrase weighted by overlap with a target box, and
``mean_iou`` is the layout metric of Zhang et al. (2025, Sec. 5): the IoU of each object's best box with its target.

Images are preprocessed in torch (pad to square, bilinear resize, normalise), so the potential is differentiable."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import cached
from .cache import torch_dtype as _torch_dtype
from .diffusers import resolve
from .diffusers.common import load_pretrained
from .vlm import _normalise

log = logging.getLogger("poegen.experts.detector")

OPTIONS = ("micro_batch", "torch_dtype")   # keyword options of ``load_detector``
TEXT_QUERY_TYPES = ("owlv2", "owlvit")     # config model_type of detectors that take text queries


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes (x0, y0, x1, y1) in ``a`` and ``b``, broadcast over leading dimensions."""
    def area(x):
        return (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)

    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return inter / (area(a) + area(b) - inter).clamp(min=torch.finfo(inter.dtype).tiny)


def _check_box(box, where: str) -> Optional[Tuple[float, ...]]:
    """A target box as 4 floats x0 < x1, y0 < y1 in [0, 1], or None."""
    if box is None:
        return None
    box = tuple(float(v) for v in box)
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise ValueError(f"{where}: box {box} is not x0, y0, x1, y1 in [0, 1] with x0 < x1 and y0 < y1; "
                         "give it in image fractions")
    return box


class DetectorScorer:
    """An OWLv2 / OWL-ViT detector and its tokenizer: per-patch boxes and their scores against text phrases.
    The model is frozen (no parameter gradients); gradients flow to the images only."""

    def __init__(self, model, tokenizer, image_mean, image_std, micro_batch: Optional[int] = None):
        self.model, self.tokenizer, self.micro_batch = model.eval().requires_grad_(False), tokenizer, micro_batch
        self.size = model.config.vision_config.image_size
        self.pad = model.config.model_type == "owlv2"  # OWLv2 pads to a square at the bottom right; OWL-ViT stretches
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self._tokens: Dict[str, Tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path_or_id: str, torch_dtype=None, micro_batch: Optional[int] = None) -> "DetectorScorer":
        """An OWLv2 (or OWL-ViT) folder or cached id holding the model and its processor (tokenizer, image stats)."""
        from transformers import AutoConfig, AutoProcessor

        root = resolve(path_or_id)
        try:
            config = AutoConfig.from_pretrained(root)
        except (OSError, ValueError, KeyError):
            config = None
        kind = getattr(config, "model_type", None)
        if kind not in TEXT_QUERY_TYPES or getattr(config, "text_config", None) is None:
            raise ValueError(f"{path_or_id!r} (model_type {kind!r}) is not a detector that can take text queries; "
                             "pass an OWLv2 folder such as google/owlv2-base-patch16-ensemble")
        if kind == "owlv2":
            from transformers import Owlv2ForObjectDetection as Detector
        else:
            from transformers import OwlViTForObjectDetection as Detector
        model, processor = cached("detector", root, _torch_dtype(torch_dtype), None, lambda: (
            load_pretrained(Detector, root, dtype=_torch_dtype(torch_dtype)), load_pretrained(AutoProcessor, root)))
        ip = processor.image_processor
        return cls(model, processor.tokenizer, ip.image_mean, ip.image_std, micro_batch=micro_batch)

    def tokens(self, phrases: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """(input_ids, attention_mask), each (K, L), of the phrases; each phrase is tokenised once and cached."""
        new = [p for p in dict.fromkeys(phrases) if p not in self._tokens]
        if new:
            enc = self.tokenizer(new, padding="max_length", max_length=self.length, truncation=True,
                                 return_tensors="pt")
            for i, p in enumerate(new):
                self._tokens[p] = (enc["input_ids"][i], enc["attention_mask"][i])
        rows = [self._tokens[p] for p in phrases]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def pixels(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] as the model's pixel_values: padded to a square (OWLv2), resized and normalised."""
        h, w = images.shape[-2:]
        if self.pad and h != w:
            s = max(h, w)  # the processor pads with 0 after rescaling to [0, 1], i.e. -1 here
            images = F.pad(images, (0, s - w, 0, s - h), value=-1.0)
        dtype = next(self.model.parameters()).dtype
        return _normalise(images, (self.size, self.size), self.mean, self.std, dtype)

    def detect(self, images: Tensor, phrases: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """(scores (N, K, P), boxes (N, P, 4)): sigmoid of each patch's logit for each phrase, and each patch's box
        as x0, y0, x1, y1 in image fractions; one forward per micro-batch of images carries all K phrases."""
        if not phrases:
            raise ValueError("phrases: no phrase to detect; give at least one")
        pixels = self.pixels(images)
        ids, mask = (t.to(pixels.device) for t in self.tokens(phrases))
        scores, boxes = [], []
        for chunk in pixels.split(self.micro_batch or len(pixels)):
            n = len(chunk)
            out = self.model(input_ids=ids.repeat(n, 1), attention_mask=mask.repeat(n, 1), pixel_values=chunk)
            scores.append(out.logits.float().sigmoid().transpose(1, 2))
            boxes.append(out.pred_boxes.float())
        cxcywh = torch.cat(boxes)
        half = cxcywh[..., 2:] / 2
        xyxy = torch.cat([cxcywh[..., :2] - half, cxcywh[..., :2] + half], -1)
        h, w = images.shape[-2:]
        if self.pad and h != w:  # boxes are fractions of the padded square; rescale to the image's own sides
            s = max(h, w)
            xyxy = xyxy * xyxy.new_tensor([s / w, s / h, s / w, s / h])
        return torch.cat(scores), xyxy


class DetectorPotential:
    """log(max_p score_p(phrase) * IoU(box_p, target) + eps): the detector's best detection of the phrase that
    overlaps the target box (log max_p score_p without a box). Potentials on one detector share one forward."""

    def __init__(self, scorer: DetectorScorer, phrase: str, box=None, name: Optional[str] = None, eps: float = 1e-6):
        self.scorer, self.phrase, self.eps = scorer, phrase, float(eps)
        self.box = _check_box(box, f"detector potential {phrase!r}")
        where = "" if self.box is None else "@" + ",".join(f"{v:.2f}" for v in self.box)
        self.name = name or f"detect[{phrase}{where}]"

    rows_per_question = False  # micro_batch counts images: every object is a query of each image's call

    @property
    def batch_key(self):
        """Potentials with equal keys are evaluated together by ``log_potential_batch``."""
        return (DetectorPotential, id(self.scorer.model))

    @property
    def micro_batch(self) -> Optional[int]:
        return self.scorer.micro_batch

    @micro_batch.setter
    def micro_batch(self, value: Optional[int]):
        self.scorer.micro_batch = value

    def offload_modules(self) -> list:
        return [self.scorer.model]

    @classmethod
    def log_potential_batch(cls, potentials: Sequence["DetectorPotential"], images: Tensor) -> Tensor:
        """(K, N) log-potentials of K potentials on one detector from a single ``detect`` call (the first's scorer)."""
        phrases = list(dict.fromkeys(p.phrase for p in potentials))
        scores, boxes = potentials[0].scorer.detect(images, phrases)
        out = []
        for p in potentials:
            s = scores[:, phrases.index(p.phrase)]
            if p.box is not None:
                s = s * box_iou(boxes, boxes.new_tensor(p.box))
            out.append(torch.log(s.max(-1).values + p.eps))
        return torch.stack(out).to(images.dtype)

    def log_potential(self, x0: Tensor) -> Tensor:
        return self.log_potential_batch([self], x0)[0]


def mean_iou(scorer: DetectorScorer, images: Tensor, phrases: Sequence[str], boxes) -> Tensor:
    """(N,) mIoU of Zhang et al. (2025): per image, the mean over objects of the IoU between the object's
    highest-scoring box and its target box; ``boxes`` is (K, 4) or (N, K, 4) in image fractions."""
    with torch.no_grad():
        scores, pred = scorer.detect(images, phrases)
    target = torch.as_tensor(boxes, dtype=torch.float32, device=pred.device)
    if target.shape[-2:] != (len(phrases), 4):
        raise ValueError(f"boxes: shape {tuple(target.shape)}; expected ({len(phrases)}, 4), one box per phrase")
    best = scores.argmax(-1)  # (N, K)
    chosen = torch.gather(pred, 1, best[..., None].expand(-1, -1, 4))
    return box_iou(chosen, target.expand_as(chosen)).mean(-1)


def load_detector(path: str, phrases_and_boxes: Sequence, micro_batch: Optional[int] = None,
                  torch_dtype=None) -> List[DetectorPotential]:
    """One potential per object on one shared detector; each object is a phrase, a (phrase, box) pair or a
    mapping with ``phrase`` and an optional ``box`` (x0, y0, x1, y1 in image fractions)."""
    objects = []
    for i, item in enumerate(phrases_and_boxes):
        if isinstance(item, str):
            item = (item, None)
        elif isinstance(item, dict):
            if "phrase" not in item:
                raise ValueError(f"objects[{i}]: no phrase; give phrase: and optionally box:")
            item = (item["phrase"], item.get("box"))
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"objects[{i}]: {item!r} is not a phrase or a (phrase, box) pair")
        objects.append((item[0], _check_box(item[1], f"objects[{i}]")))
    if not objects:
        raise ValueError("objects: none given; the detector needs at least one phrase")
    scorer = DetectorScorer.from_pretrained(path, torch_dtype=torch_dtype, micro_batch=micro_batch)
    return [DetectorPotential(scorer, phrase, box) for phrase, box in objects]
