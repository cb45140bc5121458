"""A fixed tokenizer for the shapes world's words, and phrase parsing ("a red ball" -> colour, shape)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .world import COLOUR_NAMES, SHAPES, SIZE_NAMES

PLURALS = {"balls": "ball", "boxes": "box", "wedges": "wedge"}
PLURAL_OF = {shape: word for word, shape in PLURALS.items()}
NUMBERS = ("zero", "one", "two", "three", "four")
RELATIONS = ("left", "right", "on", "above", "below")
FUNCTION_WORDS = ("is", "are", "there", "a", "an", "the", "of")
SPECIALS = ("<pad>", "<unk>")
WORDS = SPECIALS + FUNCTION_WORDS + RELATIONS + NUMBERS + COLOUR_NAMES + SIZE_NAMES + SHAPES + tuple(PLURALS)
WORD_TO_ID = {w: i for i, w in enumerate(WORDS)}
PAD_ID = WORD_TO_ID["<pad>"]


def vocabulary() -> tuple[str, ...]:
    """The words the tokenizer accepts (special tokens excluded)."""
    return WORDS[len(SPECIALS):]


def _unknown(word: str) -> ValueError:
    """An error for an unknown word that lists the vocabulary."""
    return ValueError(f"unknown word {word!r} in the shapes world; vocabulary: {', '.join(vocabulary())}")


def split_words(text: str) -> list[str]:
    """Lower-case words of a sentence (letters and digits of any script), punctuation dropped."""
    return re.findall(r"[^\W_]+", text.lower())


def encode(text: str, max_len: int | None = None) -> list[int]:
    """Token ids of a sentence; raises ValueError on a word outside the vocabulary."""
    ids = []
    for w in split_words(text):
        if w not in WORD_TO_ID or w in SPECIALS:
            raise _unknown(w)
        ids.append(WORD_TO_ID[w])
    if max_len is not None:
        if len(ids) > max_len:
            raise ValueError(f"sentence has {len(ids)} words, more than max_len={max_len}: {text!r}")
        ids = ids + [PAD_ID] * (max_len - len(ids))
    return ids


def decode(ids) -> str:
    """The sentence of a list of token ids (padding dropped)."""
    return " ".join(WORDS[int(i)] for i in ids if int(i) != PAD_ID)


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: any of colour, shape, size may be None (unspecified)."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None

    def matches(self, obj) -> bool:
        """True when a SceneObject fits every specified attribute."""
        return all(v is None or getattr(obj, k) == v for k, v in
                   (("colour", self.colour), ("shape", self.shape), ("size", self.size)))

    def __str__(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape) if w)


def parse_phrase(text: str) -> Phrase:
    """Parse e.g. 'a red ball', 'the large blue box', 'wedge' into a Phrase (ValueError if malformed)."""
    words = split_words(text)
    for w in words:
        if w not in WORD_TO_ID:
            raise _unknown(w)
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    colour = shape = size = None
    for w in words:
        if w in COLOUR_NAMES and colour is None:
            colour = w
        elif w in SIZE_NAMES and size is None:
            size = w
        elif (w in SHAPES or w in PLURALS) and shape is None:
            shape = PLURALS.get(w, w)
        else:
            raise ValueError(f"cannot parse {text!r} as '[a|the] [size] [colour] shape'; "
                             f"sizes {SIZE_NAMES}, colours {COLOUR_NAMES}, shapes {SHAPES}")
    if shape is None:
        raise ValueError(f"phrase {text!r} names no shape; shapes are {SHAPES}")
    return Phrase(colour, shape, size)
