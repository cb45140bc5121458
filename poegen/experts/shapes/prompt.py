"""Prompts of the shapes world as products of experts.

"a red ball and a blue box", "a green wedge left of a yellow ball", "a red ball on a blue box":
each object phrase becomes a phrase expert of the shapes prior with the unconditional prior
divided out (composable-diffusion weights: beta_null = 1 - sum_i w_i, beta_i = w_i), and each
object and relation becomes a VLM potential log P(yes | question).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ...product import Product
from .vocab import WORD_TO_ID, SPECIALS, Phrase, parse_phrase, split_words, vocabulary
from .vlm import RELATION_WORDS

PROMPT_WORDS = ("and",)
# defaults of the shapes world, tuned on seeds 1000-1003 of the pair prompts (the evaluation uses seeds from 0)
GUIDANCE = 2.5     # composable-diffusion weight of each phrase expert
VLM_WEIGHT = 3.0   # lambda of each yes/no question


@dataclass
class Prompt:
    """Objects named by a prompt and relations (i, relation, j) between them."""

    objects: List[Phrase]
    relations: List[Tuple[int, str, int]] = field(default_factory=list)

    def questions(self) -> List[str]:
        """Yes/no questions whose answers the prompt asks to be yes."""
        out = [f"is there a {p}?" for p in self.objects]
        for i, rel, j in self.relations:
            rel_words = f"{rel} of" if rel in ("left", "right") else rel
            out.append(f"is the {self.objects[i]} {rel_words} the {self.objects[j]}?")
        return out


def parse_prompt(text: str) -> Prompt:
    """Parse a prompt of the world's vocabulary; an unknown word lists the vocabulary."""
    words = split_words(text)
    for w in words:
        if (w not in WORD_TO_ID or w in SPECIALS) and w not in PROMPT_WORDS:
            raise ValueError(f"unknown word {w!r} in prompt {text!r}; the shapes world knows: "
                             f"{', '.join(vocabulary() + PROMPT_WORDS)}")
    if not words:
        raise ValueError("empty prompt: name at least one object, e.g. 'a red ball'")
    objects: List[Phrase] = []
    relations = []

    def index(phrase_words: List[str]) -> int:
        p = parse_phrase(" ".join(phrase_words))
        if p not in objects:
            objects.append(p)
        return objects.index(p)

    clause: List[str] = []
    for w in words + ["and"]:
        if w != "and":
            clause.append(w)
            continue
        if not clause:
            raise ValueError(f"empty clause in prompt {text!r}: 'and' must join object phrases")
        rel_at = [k for k, x in enumerate(clause) if x in RELATION_WORDS]
        if len(rel_at) > 1:
            raise ValueError(f"one relation per clause in {text!r}; join clauses with 'and'")
        if rel_at:
            k = rel_at[0]
            rel = clause[k]
            rest = clause[k + 2:] if rel in ("left", "right") and clause[k + 1:k + 2] == ["of"] else clause[k + 1:]
            if rel in ("left", "right") and clause[k + 1:k + 2] != ["of"]:
                raise ValueError(f"write '{rel} of' in {text!r}")
            relations.append((index(clause[:k]), rel, index(rest)))
        else:
            index(clause)
        clause = []
    return Prompt(objects, relations)


def _over_null(prior, experts: List, guidance: float, bf16: bool):
    """Composable-diffusion weights: each phrase expert w, the unconditional prior 1 - sum w (left out at 0)."""
    weights = [guidance] * len(experts)
    if 1.0 - sum(weights) != 0:
        return [prior.null(bf16=bf16)] + experts, [1.0 - sum(weights)] + weights
    return experts, weights


def build_product(prompt: str | Prompt, prior=None, vlm=None, guidance: Optional[float] = None,
                  vlm_weight: Optional[float] = None,
                  schedule="linear", positions: Optional[List] = None, bf16: bool = False) -> Product:
    """The product of experts for a prompt: phrase experts over the divided-out prior, VLM potentials."""
    from .model import load_prior
    from .vlm import load_vlm

    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    guidance = GUIDANCE if guidance is None else guidance
    vlm_weight = VLM_WEIGHT if vlm_weight is None else vlm_weight
    prior = prior or load_prior()
    positions = positions or [None] * len(p.objects)
    experts, weights = _over_null(prior, [prior.expert(str(o), pos, bf16=bf16) for o, pos in zip(p.objects, positions)],
                                  guidance, bf16)
    potentials, lambdas = [], []
    if vlm_weight:
        scorer = vlm or load_vlm()
        potentials = [scorer.expert(q) for q in p.questions()]
        lambdas = [vlm_weight] * len(potentials)
    return Product(experts, weights=weights, potentials=potentials, lambdas=lambdas, schedule=schedule)


def build_scene_product(physics, prior=None, guidance: Optional[float] = None, bf16: bool = False) -> Product:
    """The product for a simulated scene (a PhysicsExpert): one phrase expert per visible object at
    its simulated position over the divided-out prior, the layout potential and, when the spec asks
    for it, the hard centroid constraint (weights from the spec's constraints)."""
    from .model import load_prior

    prior = prior or load_prior()
    guidance = GUIDANCE if guidance is None else guidance
    objects = [(physics.scene.objects[k], physics.positions[k]) for k in physics.visible]
    experts, weights = _over_null(prior, [prior.expert(f"{o.size} {o.colour} {o.shape}", pos, bf16=bf16)
                                          for o, pos in objects], guidance, bf16)
    potentials, lambdas = [], []
    for c in physics.spec.constraints:
        potentials.append(physics.layout_potential() if c.type == "layout" else physics.hard_constraint(c.tolerance))
        lambdas.append(c.weight)
    return Product(experts, weights=weights, potentials=potentials, lambdas=lambdas, schedule="linear")
