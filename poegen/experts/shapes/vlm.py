"""A small trained yes/no scorer for shapes-world images (the world's "VLM"), and its question language.

Questions (word order as below; 'a'/'an'/'the' optional, '?' ignored):
    is there a [size] [colour] shape              e.g. "is there a red ball?"
    is the <phrase> (left of | right of | on | above | below) the <phrase>
    are there <n> <shape plural>                  e.g. "are there two boxes?"  (n = zero..four)
A relation holds when some object matching the first phrase stands in it to a different object
matching the second. The question is parsed (fixed vocabulary and grammar) into structured ids; the
network is modular: a small dilated CNN gives per-pixel colour / shape / size / object-density maps,
each phrase becomes a soft mask, and the answer head sees the masks' counts and a relation CNN run
on the two masks. `ShapesVLMExpert.log_potential` returns log P(yes | image, question).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import weights_io
from .vocab import NUMBERS, PLURAL_OF, PLURALS, Phrase, encode, parse_phrase, split_words
from .weights_io import WEIGHTS_DIR  # noqa: F401  (re-exported for the scripts)
from .world import COLOUR_NAMES, SHAPES, SIZE_NAMES

logger = logging.getLogger(__name__)

RELATION_WORDS = ("left", "right", "on", "above", "below")
THRESHOLD = {"left": 0.3, "right": 0.3, "above": 0.5, "below": 0.5}  # world units a positional relation needs


# --------------------------------------------------------------------------- question language


@dataclass(frozen=True)
class Query:
    """A parsed question: kind is 'exists', 'relation' or 'count'."""

    kind: str
    a: Phrase | None = None
    rel: str | None = None
    b: Phrase | None = None
    n: int | None = None


def parse_question(text: str) -> Query:
    """Parse a yes/no question of the shapes world (ValueError naming the grammar if malformed)."""
    encode(text)  # raises on unknown words, listing the vocabulary
    w = split_words(text)
    grammar = ("'is there a [size] [colour] shape', 'is the <phrase> left of|right of|on|above|below the <phrase>', "
               "'are there <zero..four> <balls|boxes|wedges>'")
    if len(w) >= 3 and w[:2] == ["is", "there"]:
        return Query("exists", a=parse_phrase(" ".join(w[2:])))
    if len(w) == 4 and w[:2] == ["are", "there"] and w[2] in NUMBERS and w[3] in PLURALS:
        return Query("count", a=Phrase(shape=PLURALS[w[3]]), n=NUMBERS.index(w[2]))
    if len(w) >= 4 and w[0] == "is":
        rels = [i for i, x in enumerate(w) if x in RELATION_WORDS]
        if len(rels) == 1:
            i = rels[0]
            j = i + 2 if w[i] in ("left", "right") and i + 1 < len(w) and w[i + 1] == "of" else i + 1
            if w[i] in ("left", "right") and j != i + 2:
                raise ValueError(f"expected '{w[i]} of' in {text!r}; grammar: {grammar}")
            return Query("relation", a=parse_phrase(" ".join(w[1:i])), rel=w[i], b=parse_phrase(" ".join(w[j:])))
    raise ValueError(f"cannot parse question {text!r}; grammar: {grammar}")


def holds(rel: str, a, b, on) -> bool:
    """Spatial relation between two objects with world x, y (on: callable on the pair)."""
    if rel == "left":
        return a.x < b.x - THRESHOLD[rel]
    if rel == "right":
        return a.x > b.x + THRESHOLD[rel]
    if rel == "on":
        return bool(on(a, b))
    if rel == "above":
        return a.y > b.y + THRESHOLD[rel]
    if rel == "below":
        return a.y < b.y - THRESHOLD[rel]
    raise ValueError(f"unknown relation {rel!r}; relations: {RELATION_WORDS}")


def answer(query: Query | str, objects, on) -> bool:
    """Ground-truth answer for objects (colour, shape, size, x, y) and an `on(a, b)` predicate."""
    q = parse_question(query) if isinstance(query, str) else query
    if q.kind == "exists":
        return any(q.a.matches(o) for o in objects)
    if q.kind == "count":
        return sum(q.a.matches(o) for o in objects) == q.n
    return any(holds(q.rel, a, b, on) for a in objects for b in objects
               if a is not b and q.a.matches(a) and q.b.matches(b))


def answer_scene(query: Query | str, scene) -> bool:
    """Ground-truth answer for a simulated Scene (support relation from the physics contacts)."""
    objs = list(scene.objects)
    index = {id(o): i for i, o in enumerate(objs)}
    return answer(query, objs, lambda a, b: scene.on(index[id(a)], index[id(b)]))


def answer_detections(query: Query | str, dets) -> bool:
    """Answer from checker detections ('on' = touching from above, see Detection.rests_on)."""
    return answer(query, list(dets), lambda a, b: a.rests_on(b))


def _describe(o, rng, p_size=0.25, p_shape_only=0.2) -> str:
    """A random referring phrase for object o (sometimes with size, sometimes shape only)."""
    if rng.random() < p_shape_only:
        return o.shape
    return f"{o.size} {o.colour} {o.shape}" if rng.random() < p_size else f"{o.colour} {o.shape}"


def _random_phrase(rng) -> str:
    """A random phrase of the vocabulary, usually colour + shape."""
    from .world import COLOUR_NAMES, SIZE_NAMES
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    r = rng.random()
    if r < 0.15:
        return shape
    if r < 0.35:
        return f"{SIZE_NAMES[rng.integers(len(SIZE_NAMES))]} {colour} {shape}"
    return f"{colour} {shape}"


def random_question(scene, rng: np.random.Generator, want: bool, tries: int = 60) -> str | None:
    """A random question about `scene` whose ground-truth answer is `want` (None if none found)."""
    objs = scene.objects
    for _ in range(tries):
        kind = rng.choice(["exists", "relation", "relation", "relation", "count"])
        if kind == "exists":
            desc = _describe(objs[rng.integers(len(objs))], rng) if want or rng.random() < 0.3 else _random_phrase(rng)
            q = f"is there a {desc}"
        elif kind == "count":
            shape = SHAPES[rng.integers(len(SHAPES))]
            true_n = sum(o.shape == shape for o in objs)
            if want and true_n >= len(NUMBERS):  # five or more: only 'no' questions can be asked
                continue
            n = true_n if want else int(np.clip(true_n + rng.choice([-2, -1, 1, 1, 2]), 0, len(NUMBERS) - 1))
            if not want and n == true_n:  # clipped onto the truth: draw again
                continue
            q = f"are there {NUMBERS[n]} {PLURAL_OF[shape]}"
        else:
            if len(objs) >= 2 and rng.random() < 0.85:
                i, j = (int(v) for v in rng.choice(len(objs), size=2, replace=False))
                if scene.supports and rng.random() < 0.4:
                    i, j = scene.supports[rng.integers(len(scene.supports))]
                    if rng.random() < 0.3:
                        i, j = j, i
                on = lambda a, b: scene.on(objs.index(a), objs.index(b))  # noqa: E731
                rels = [r for r in RELATION_WORDS if holds(r, objs[i], objs[j], on) == want]
                if not rels:
                    continue
                rel = "on" if "on" in rels and rng.random() < 0.6 else str(rng.choice(rels))
                da, db = _describe(objs[i], rng), _describe(objs[j], rng)
            else:
                rel = str(rng.choice(RELATION_WORDS))
                da, db = _random_phrase(rng), _random_phrase(rng)
            q = f"is the {da} {rel} of the {db}" if rel in ("left", "right") else f"is the {da} {rel} the {db}"
            if rel != "on" and not _unambiguous(q, scene):
                continue
        if answer_scene(q, scene) == want:
            return q
    return None


def _unambiguous(q: str, scene) -> bool:
    """False when a positional question has a pair within the relation's margin band (hard to call)."""
    qq = parse_question(q)
    for a in scene.objects:
        for b in scene.objects:
            if a is not b and qq.a.matches(a) and qq.b.matches(b):
                d = a.x - b.x if qq.rel in ("left", "right") else a.y - b.y
                margin = THRESHOLD.get(qq.rel, 0.5)  # 'on' (never asked here) as the vertical ones
                if margin - 0.25 < abs(d) < margin + 0.25:
                    return False
    return True


# --------------------------------------------------------------------------- network

KINDS = ("exists", "relation", "count")
NULL_N = len(NUMBERS)


def encode_query(q: Query | str) -> list[int]:
    """Structured ids of a question: [kind, rel, n, colour_a, shape_a, size_a, colour_b, shape_b, size_b]."""
    from .model import phrase_ids

    q = parse_question(q) if isinstance(q, str) else q
    rel = RELATION_WORDS.index(q.rel) if q.rel else len(RELATION_WORDS)
    n = q.n if q.n is not None else NULL_N
    return [KINDS.index(q.kind), rel, n, *phrase_ids(q.a), *phrase_ids(q.b)]


def encode_batch(questions: list[str]) -> Tensor:
    """(N, 9) long tensor of structured question ids."""
    return torch.tensor([encode_query(q) for q in questions], dtype=torch.long)


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
    potential of an absence, "is there a ball?" answered no)."""

    def __init__(self, net: ShapesVLM, question: str, batch_size: int = 256, negate: bool = False):
        self.query = parse_question(question)  # validates the grammar and the vocabulary
        self.net, self.question, self.batch_size = net.eval(), question, batch_size
        self.ids = encode_batch([question])
        self.sign = -1.0 if negate else 1.0
        self.name = f"vlm[not: {question}]" if negate else f"vlm[{question}]"

    @property
    def batch_key(self):
        return (ShapesVLMExpert, id(self.net))

    @classmethod
    def log_potential_batch(cls, experts, x0: Tensor) -> Tensor:
        """(K, N) log P(yes) <= 0 of K questions on images x0 (N,3,32,32) in [-1,1] (clamped): the attribute maps
        are computed once per image, then every question reads them."""
        first, k = experts[0], len(experts)
        dev = next(first.net.parameters()).device
        ids = torch.cat([e.ids for e in experts]).to(dev)
        signs = torch.tensor([e.sign for e in experts], device=dev)
        out = []
        for chunk in x0.split(first.batch_size):
            img = chunk.to(dev, torch.float32).clamp(-1, 1)
            n = img.shape[0]
            index = torch.arange(n, device=dev).repeat(k)
            logit = first.net(img, ids.repeat_interleave(n, 0), index=index, maps=first.net.maps(img))
            out.append(F.logsigmoid(logit.reshape(k, n) * signs[:, None]).float())
        return torch.cat(out, 1).to(x0.device) if out else torch.zeros(k, 0, device=x0.device)

    def log_potential(self, x0: Tensor) -> Tensor:
        """(N,) log P(yes) <= 0 for images x0 (N,3,32,32) in [-1,1] (clamped)."""
        return self.log_potential_batch([self], x0)[0]

    def __repr__(self) -> str:
        return f"ShapesVLMExpert({self.question!r}{', negate=True' if self.sign < 0 else ''})"


class ShapesVLMScorer:
    """A loaded scorer; `expert(question)` gives a discriminative expert."""

    def __init__(self, net: ShapesVLM):
        self.net = net.eval()

    def expert(self, question: str, negate: bool = False) -> ShapesVLMExpert:
        """Expert returning log P(yes) for `question` (``negate``: log P(no))."""
        return ShapesVLMExpert(self.net, question, negate=negate)

    @torch.no_grad()
    def log_prob_yes(self, images: Tensor, questions: list[str]) -> Tensor:
        """(N,) log P(yes) for paired images and questions."""
        return F.logsigmoid(self.net(images.float().clamp(-1, 1), encode_batch(questions)))


def save_vlm(net: ShapesVLM, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write vlm.safetensors (fp32) + vlm_config.json into out_dir."""
    return weights_io.write(out_dir, "vlm", net.state_dict(), {**net.config, **(extra or {})})


def load_vlm(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesVLMScorer:
    """Load the scorer from `path` (default: the package's weights/ folder)."""
    sd, cfg, wfile = weights_io.read(path, "vlm", "shapes VLM", "scripts/train_shapes_vlm.py")
    net = ShapesVLM({k: cfg[k] for k in ShapesVLM().config if k in cfg})
    net.load_state_dict(sd)
    logger.info("loaded shapes VLM from %s", wfile)
    return ShapesVLMScorer(net.to(device))
