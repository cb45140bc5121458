"""The shapes world's question language: yes/no questions parsed into structured ``Query``s, and their ids for
the scorer (``scorer.ShapesVLM``).

Questions (word order as below; 'a'/'an'/'the' optional, '?' ignored):
    is there a [size] [colour] shape              e.g. "is there a red ball?"
    is the <phrase> (left of | right of | on | above | below) the <phrase>
    are there <n> <shape plural>                  e.g. "are there two boxes?"  (n = zero..four)
The question is parsed (fixed vocabulary and grammar) into structured ids: its kind, relation, number and the two
phrases' colour, shape and size. What makes an answer true is ``truth``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .vocab import NUMBERS, PLURALS, Phrase, encode, parse_phrase, split_words

RELATION_WORDS = ("left", "right", "on", "above", "below")
KINDS = ("exists", "relation", "count")
NULL_N = len(NUMBERS)


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
