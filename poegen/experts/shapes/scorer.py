"""A small trained yes/no scorer for shapes-world images (the world's "VLM").

The network is modular: a small dilated CNN gives per-pixel colour / shape / size / object-density maps, each of the
question's phrases (``questions.encode_query``) becomes a soft mask, and the answer head sees the masks' counts and a
relation CNN run on the two masks. ``ShapesVLMExpert.log_potential`` returns log P(yes | image, question).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import defaults
from . import weights_io
from .questions import KINDS, NULL_N, RELATION_WORDS, encode_batch, parse_question
from .weights_io import WEIGHTS_DIR  # noqa: F401  (re-exported for the scripts)
from .world import COLOUR_NAMES, SHAPES, SIZE_NAMES

logger = logging.getLogger(__name__)


def _coords(x: Tensor) -> Tensor:
    """x with two coordinate channels (col, row in [-1, 1]) appended."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, xs, ys], 1)


class ShapesVLM(nn.Module):
    """Modular scorer: per-pixel attribute maps -> soft masks of the question's phrases -> counts and a
    relation CNN on the two masks -> logit of 'yes'. The maps may be supervised by the renderer's masks."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {"width": 32, "rel_width": 24, "hidden": 128, "image_size": 32,
                       "n_colours": len(COLOUR_NAMES), "n_shapes": len(SHAPES), "n_sizes": len(SIZE_NAMES),
                       **(config or {})}
        c = self.config
        w = c["width"]
        self.encoder = nn.Sequential(
            nn.Conv2d(5, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
        # colour over palette + background; shape and size given foreground; object density (sums to 1 / object)
        self.heads = nn.Conv2d(w, c["n_colours"] + 1 + c["n_shapes"] + c["n_sizes"] + 1, 1)
        r = c["rel_width"]
        self.relation = nn.Sequential(
            nn.Conv2d(6, r, 3, padding=1), nn.ReLU(),
            nn.Conv2d(r, r, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(r + 2, r, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(r, r, 3, padding=1), nn.ReLU())
        n_in = len(KINDS) + len(RELATION_WORDS) + 1 + NULL_N + 1 + 6 + 2 * r
        self.head = nn.Sequential(nn.Linear(n_in, c["hidden"]), nn.ReLU(), nn.Linear(c["hidden"], c["hidden"]),
                                  nn.ReLU(), nn.Linear(c["hidden"], 1))

    def maps(self, image: Tensor) -> dict[str, Tensor]:
        """Per-pixel logits: colour (N,K+1,H,W; last = background), shape, size, and density (N,H,W) >= 0."""
        c = self.config
        h = self.heads(self.encoder(_coords(image)))
        k, s, z = c["n_colours"] + 1, c["n_shapes"], c["n_sizes"]
        return {"colour": h[:, :k], "shape": h[:, k:k + s], "size": h[:, k + s:k + s + z],
                "density": F.softplus(h[:, -1]) / 20.0}

    def phrase_mask(self, m: dict[str, Tensor], colour: Tensor, shape: Tensor, size: Tensor) -> Tensor:
        """Soft mask (N,H,W) of pixels matching a phrase (index = table size means 'any')."""
        pc, ps, pz = m["colour"].softmax(1), m["shape"].softmax(1), m["size"].softmax(1)
        fg = 1 - pc[:, -1]

        def pick(p: Tensor, idx: Tensor, null: int, any_: Tensor) -> Tensor:
            """p[idx] per row, or `any_` where idx is null."""
            got = p.gather(1, idx.clamp(max=null - 1).view(-1, 1, 1, 1).expand(-1, 1, *p.shape[2:]))[:, 0]
            return torch.where((idx == null).view(-1, 1, 1), any_, got)

        one = torch.ones_like(fg)
        return (pick(pc[:, :-1], colour, pc.shape[1] - 1, fg) * pick(ps, shape, ps.shape[1], one)
                * pick(pz, size, pz.shape[1], one))

    def forward(self, image: Tensor, q: Tensor, index: Tensor | None = None, maps: dict | None = None) -> Tensor:
        """Logit of 'yes' (Q,) for questions q (Q, 9) about images image[index] (default: one per image)."""
        m = self.maps(image) if maps is None else maps
        if index is not None:
            m = {k: v[index] for k, v in m.items()}
        ma = self.phrase_mask(m, q[:, 3], q[:, 4], q[:, 5])
        mb = self.phrase_mask(m, q[:, 6], q[:, 7], q[:, 8])
        d = m["density"]
        count_a, count_b = (ma * d).sum((1, 2)), (mb * d).sum((1, 2))
        n = q[:, 2].float()
        has_n = (q[:, 2] < NULL_N).float()
        scal = torch.stack([count_a, count_b, has_n * (count_a - n), has_n * (count_a - n).abs(),
                            torch.tanh(2 * (count_a - 0.5)), torch.tanh(2 * (count_b - 0.5))], -1)
        r = self.relation[:4](_coords(torch.stack([ma, mb, ma * d * 20, mb * d * 20], 1)))
        r = self.relation[4:](_coords(r))
        feats = torch.cat([F.one_hot(q[:, 0], len(KINDS)).float(), F.one_hot(q[:, 1], len(RELATION_WORDS) + 1).float(),
                           F.one_hot(q[:, 2], NULL_N + 1).float(), scal, r.amax((2, 3)), r.mean((2, 3))], -1)
        return self.head(feats).squeeze(-1)


class ShapesVLMExpert:
    """Discriminative expert log P(yes | x0, question) for one fixed question (``negate``: log P(no), the
    potential of an absence, "is there a ball?" answered no). ``certify_threshold`` (``poegen.certify``): met when
    the answer asked has probability >= ``defaults.CERTIFY_P``, or ``defaults.CERTIFY_COUNT_P`` for a count of two
    or more."""

    certify_threshold = math.log(defaults.CERTIFY_P)

    def __init__(self, net: ShapesVLM, question: str, batch_size: int = 256, negate: bool = False):
        self.query = parse_question(question)  # validates the grammar and the vocabulary
        self.net, self.question, self.batch_size = net.eval(), question, batch_size
        self.ids = encode_batch([question])
        self.sign = -1.0 if negate else 1.0
        if self.query.kind == "count" and self.query.n >= 2 and not negate:
            self.certify_threshold = math.log(defaults.CERTIFY_COUNT_P)
        self.name = f"vlm[not: {question}]" if negate else f"vlm[{question}]"

    @property
    def batch_key(self):
        return (ShapesVLMExpert, id(self.net))

    @classmethod
    def log_potential_batch(cls, experts, x0: Tensor) -> Tensor:
        """(K, N) log-potentials <= 0 of K experts on one scorer (questions: log P(answer asked); ``ShapesFormExpert``
        its pixel cost) on images x0 (N,3,32,32) in [-1,1] (clamped): the attribute maps are computed once per
        image, then every expert reads them."""
        first, k = experts[0], len(experts)
        dev = next(first.net.parameters()).device
        asks = [j for j, e in enumerate(experts) if e.ids is not None]
        ids = torch.cat([experts[j].ids for j in asks]).to(dev) if asks else None
        signs = torch.tensor([experts[j].sign for j in asks], device=dev)
        out = []
        for chunk in x0.split(first.batch_size):
            img = chunk.to(dev, torch.float32).clamp(-1, 1)
            n = img.shape[0]
            maps = first.net.maps(img)
            rows = [None] * k
            if asks:
                index = torch.arange(n, device=dev).repeat(len(asks))
                logit = first.net(img, ids.repeat_interleave(n, 0), index=index, maps=maps)
                for j, v in zip(asks, F.logsigmoid(logit.reshape(len(asks), n) * signs[:, None]).float()):
                    rows[j] = v
            for j, e in enumerate(experts):
                if e.ids is None:
                    rows[j] = e.read(maps)
            out.append(torch.stack(rows))
        return torch.cat(out, 1).to(x0.device) if out else torch.zeros(k, 0, device=x0.device)

    def log_potential(self, x0: Tensor) -> Tensor:
        """(N,) log P(yes) <= 0 for images x0 (N,3,32,32) in [-1,1] (clamped)."""
        return self.log_potential_batch([self], x0)[0]

    def __repr__(self) -> str:
        return f"ShapesVLMExpert({self.question!r}{', negate=True' if self.sign < 0 else ''})"


class ShapesFormExpert(ShapesVLMExpert):
    """The scorer's say that every object is well formed: log potential = -``per_pixel`` times the object pixels
    whose shape its map is unsure of (no shape at P >= ``SURE_P``; the map was trained to stay uniform on objects
    half one shape and half another). A question asks whether an object is there and passes a half-formed one; this
    potential does not. Met (``poegen.certify``) below ``defaults.CERTIFY_UNSURE_PX`` such pixels."""

    SURE_P = 0.7

    def __init__(self, net: ShapesVLM, per_pixel: float = 0.1, batch_size: int = 256):
        self.net, self.per_pixel, self.batch_size = net.eval(), per_pixel, batch_size
        self.ids, self.sign, self.question, self.name = None, 1.0, None, "form"
        self.certify_threshold = -per_pixel * defaults.CERTIFY_UNSURE_PX

    def read(self, maps: dict) -> Tensor:
        """(N,) log potential from the scorer's attribute maps of N images."""
        foreground = 1 - maps["colour"].softmax(1)[:, -1]
        unsure = (maps["shape"].softmax(1).amax(1) < self.SURE_P).float()
        return -self.per_pixel * (foreground * unsure).sum((1, 2)).float()

    def __repr__(self) -> str:
        return f"ShapesFormExpert(per_pixel={self.per_pixel})"


class ShapesVLMScorer:
    """A loaded scorer; `expert(question)` gives a discriminative expert."""

    def __init__(self, net: ShapesVLM):
        self.net = net.eval()

    def expert(self, question: str, negate: bool = False) -> ShapesVLMExpert:
        """Expert returning log P(yes) for `question` (``negate``: log P(no))."""
        return ShapesVLMExpert(self.net, question, negate=negate)

    def form(self) -> ShapesFormExpert:
        """The potential that every object is well formed (``ShapesFormExpert``)."""
        return ShapesFormExpert(self.net)

    @torch.no_grad()
    def log_prob_yes(self, images: Tensor, questions: list[str]) -> Tensor:
        """(N,) log P(yes) for paired images and questions."""
        return F.logsigmoid(self.net(images.float().clamp(-1, 1), encode_batch(questions)))


def save_vlm(net: ShapesVLM, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write vlm.safetensors (fp32) + vlm_config.json into out_dir."""
    return weights_io.write(out_dir, "vlm", net.state_dict(), {**net.config, **(extra or {})})


FRAMES = "vlm_frames"  # the clips' scorer: the weights before the last retraining (see VLM_CARD.md)


def load_vlm(path: str | Path | None = None, device: str | torch.device = "cpu", stem: str = "vlm") -> ShapesVLMScorer:
    """Load the scorer from `path` (default: the package's weights/ folder); ``stem`` names the files (``FRAMES``:
    the scorer of clips' frames)."""
    sd, cfg, wfile = weights_io.read(path, stem, "shapes VLM", "scripts/train_shapes_vlm.py")
    net = ShapesVLM({k: cfg[k] for k in ShapesVLM().config if k in cfg})
    net.load_state_dict(sd)
    logger.info("loaded shapes VLM from %s", wfile)
    return ShapesVLMScorer(net.to(device))
