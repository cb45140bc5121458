"""Prompts of the shapes world as products of experts.

"a red ball and a blue box", "a green wedge left of a yellow ball", "a red ball on a blue box":
each object phrase becomes a phrase expert of the shapes prior with the unconditional prior
divided out (composable-diffusion weights: beta_null = 1 - sum_i w_i, beta_i = w_i), and each
object and relation becomes a VLM potential log P(yes | question).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ... import defaults
from .vocab import NUMBERS, PLURAL_OF, PLURALS, SPECIALS, WORD_TO_ID, Phrase, parse_phrase, split_words, vocabulary
from .questions import RELATION_WORDS

PROMPT_WORDS = ("and", "no", "objects")  # "no red objects": nothing red
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
# defaults of the shapes world, tuned on seeds 1000-1003 of the pair prompts (the evaluation uses seeds from 0)
GUIDANCE = defaults.SHAPES_GUIDANCE           # composable-diffusion weight of each phrase expert
VLM_WEIGHT = defaults.SHAPES_POTENTIAL_WEIGHT  # lambda of each yes/no question
COUNT_WEIGHT = 2.0  # a count question's lambda, as a multiple of VLM_WEIGHT (chosen on tuning seeds 1000+)
RELATION_WEIGHT = 2.0  # a relation question's lambda, as a multiple of VLM_WEIGHT (likewise)
FORM_WEIGHT = 1 / 3  # the form potential's lambda as a multiple of VLM_WEIGHT (1 at the default, as tuned)
REGION_PX = 5.0  # std (pixels) of the Gaussian window each placed phrase expert is confined to (chosen on tuning seeds 1000+)


@dataclass
class Prompt:
    """Objects named by a prompt (a counted phrase appears once per object), relations (i, relation, j) between
    them, and the phrases it says are absent ("no ball")."""

    objects: List[Phrase]
    relations: List[Tuple[int, str, int]] = field(default_factory=list)
    absent: List[Phrase] = field(default_factory=list)

    def object_questions(self) -> List[str]:
        """"is there a red ball?" once per distinct phrase."""
        return [f"is there a {p}?" for p in dict.fromkeys(self.objects)]

    def relation_questions(self) -> List[str]:
        """"is the red ball left of the blue box?" per relation."""
        return [f"is the {self.objects[i]} {f'{rel} of' if rel in ('left', 'right') else rel} the {self.objects[j]}?"
                for i, rel, j in self.relations]

    def absent_phrases(self) -> List[str]:
        """The absent phrases, one per shape where an absence names none ("no red objects")."""
        from .world import SHAPES

        return list(dict.fromkeys(str(Phrase(a.colour, s, a.size)) for a in self.absent
                                  for s in ([a.shape] if a.shape else SHAPES)))

    def questions(self) -> List[str]:
        """Yes/no questions whose answers the prompt asks to be yes: its objects, then its relations."""
        return self.object_questions() + self.relation_questions()


def count_questions(phrases: List[Phrase]) -> List[str]:
    """"are there N balls?" for every shape, N the number of phrases of that shape (the scorer counts up to four):
    together they ask that nothing but the named objects be drawn, no second ball, no stray box."""
    from .world import SHAPES

    counts = {shape: sum(p.shape == shape for p in phrases) for shape in SHAPES}
    return [f"are there {NUMBERS[n]} {PLURAL_OF[shape]}?" for shape, n in counts.items() if n < len(NUMBERS)]


def _short(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error message, its middle elided when long (a message stays one readable line)."""
    return repr(text) if len(text) <= limit else repr(f"{text[:limit // 2]} ... {text[-limit // 2:]}")


EXAMPLE = "'two red balls and a blue box', 'a green ball on a red box on a blue box', 'a yellow wedge and no ball'"


def _phrase(words: List[str], quoted: str) -> Phrase:
    """One object's phrase from its words, a long one quoted shortened in the error."""
    phrase = " ".join(words)
    try:
        return parse_phrase(phrase)
    except ValueError as e:
        raise ValueError(str(e).replace(repr(phrase), _short(phrase)) + f" (in prompt {quoted})") from None


def _counted(clause: List[str], quoted: str) -> Tuple[Phrase, int]:
    """(phrase, count) of a clause "two red balls", "one box" or "no ball" / "no red objects" (count 0)."""
    head, rest = clause[0], clause[1:]
    if not rest or rest[0] in NUMBERS or rest[0] == "no":
        raise ValueError(f"{_short(' '.join(clause))} in prompt {quoted}: expected e.g. {EXAMPLE}")
    if head == "zero":
        raise ValueError(f"'zero' in prompt {quoted}: say 'no {' '.join(rest)}'")
    if rest[-1] == "objects":  # "no red objects": an absent colour or size, of any shape
        if head != "no" or not rest[:-1]:
            raise ValueError(f"'objects' in prompt {quoted}: only after 'no' and a colour or size, e.g. "
                             "'a box, no red objects'")
        p = _phrase(rest[:-1] + ["ball"], quoted)  # any shape stands in for the parse
        return Phrase(p.colour, None, p.size), 0
    p = _phrase(rest, quoted)
    if head == "no":
        return p, 0
    n = NUMBERS.index(head)
    if (rest[-1] in PLURALS) != (n > 1):
        raise ValueError(f"{_short(' '.join(clause))} in prompt {quoted}: "
                         + ("a count above one takes the plural, e.g. 'two red balls'" if n > 1 else
                            "'one' takes the singular, e.g. 'one red ball'"))
    return p, n


def _chain(clause: List[str], rel_at: List[int], quoted: str) -> Tuple[List[List[str]], List[str]]:
    """A clause "A on B left of C" cut at its relation words: the object parts [A, B, C] and relations [on, left]."""
    cuts, parts, rels = 0, [], []
    for k in rel_at:
        rel = clause[k]
        if rel in ("left", "right") and clause[k + 1:k + 2] != ["of"]:
            raise ValueError(f"write '{rel} of' in {quoted}")
        parts.append(clause[cuts:k])
        rels.append(rel)
        cuts = k + (2 if rel in ("left", "right") else 1)
    return parts + [clause[cuts:]], rels


def parse_prompt(text: str) -> Prompt:
    """Parse a prompt of the world's vocabulary into objects, relations and absences. Clauses are joined by "and"
    or commas; a clause is an object ("a red ball"), a count of one phrase ("two red balls", one to four), an
    absence ("no ball", "no red wedges") or a chain of relations ("a green ball on a red box on a blue box"); a
    later clause may name an earlier object again ("... and the green box left of a blue ball"). What it cannot
    say is refused naming the word, with examples that work."""
    # a comma joins clauses where an object starts after it ("a red box, a cyan ball"); elsewhere it is dropped
    words = split_words(re.sub(r",\s*(?=(?:a|an|the|no|one|two|three|four)\b)", " and ", text, flags=re.IGNORECASE))
    quoted = _short(text)
    for w in words:
        if w.isdigit():
            raise ValueError(f"{w!r} in prompt {quoted}: write counts as words (one to four), e.g. {EXAMPLE}")
    unknown = list(dict.fromkeys(w for w in words if (w not in WORD_TO_ID or w in SPECIALS) and w not in PROMPT_WORDS))
    if unknown:  # every one at once: fixing them one run at a time is tedious
        raise ValueError(_unknown_words(unknown, quoted))
    if not words:
        raise ValueError("empty prompt: name at least one object, e.g. 'a red ball'")
    objects: List[Phrase] = []
    counted, absent, relations = set(), [], []

    def index(part: List[str], side: str, rel_words: str) -> int:
        if not part:
            raise ValueError(f"{rel_words!r} in prompt {quoted} needs an object {side} it, e.g. "
                             f"'a red ball {rel_words} a blue box'")
        p = _phrase(part, quoted)
        if p in counted:
            raise ValueError(f"{' '.join(part)!r} in prompt {quoted} is one of several counted objects: a relation "
                             f"needs one object, e.g. 'a red ball on a blue box'")
        if p not in objects:
            objects.append(p)
        return objects.index(p)

    clause: List[str] = []
    for w in words + ["and"]:
        if w != "and":
            clause.append(w)
            continue
        if not clause:
            raise ValueError(f"empty clause in prompt {quoted}: 'and' and commas must join object phrases")
        head = clause[0]
        rel_at = [k for k, x in enumerate(clause) if x in RELATION_WORDS]
        if head == "no" or head in NUMBERS:
            if rel_at:
                raise ValueError(_counted_in_relation(clause, rel_at, quoted))
            p, n = _counted(clause, quoted)
            if head == "no":
                absent.append(p)
            elif p in objects:
                raise ValueError(f"prompt {quoted} names {p} twice; say how many once, e.g. 'two red balls'")
            else:
                objects.extend([p] * n)
                if n > 1:
                    counted.add(p)
        elif rel_at and any(x in NUMBERS or x == "no" or x in PLURALS for x in clause):
            raise ValueError(_counted_in_relation(clause, rel_at, quoted))
        elif any(x in PLURALS for x in clause):
            plural = next(x for x in clause if x in PLURALS)
            raise ValueError(f"{plural!r} in prompt {quoted} needs a count (one to four) or 'no', e.g. {EXAMPLE}")
        elif rel_at:
            parts, rels = _chain(clause, rel_at, quoted)
            ids = []
            for k, part in enumerate(parts):  # a relation word needs an object on both sides
                rel_words = rels[min(k, len(rels) - 1)]
                rel_words = f"{rel_words} of" if rel_words in ("left", "right") else rel_words
                ids.append(index(part, "before" if k < len(rels) else "after", rel_words))
            for a, rel, b in zip(ids, rels, ids[1:]):
                if a == b:
                    raise ValueError(f"{_short(' '.join(clause))} relates an object to itself; a relation needs two "
                                     "objects of different colour or shape")
                for i, r, j in relations:
                    if ((i, j) == (a, b) and OPPOSITE.get(r) == rel) or ((i, j) == (b, a) and r == rel):
                        raise ValueError(f"{_short(' '.join(clause))} contradicts an earlier relation in {quoted}")
                relations.append((a, rel, b))
        else:
            p = _phrase(clause, quoted)
            if p in objects:
                raise ValueError(f"prompt {quoted} names {_short(' '.join(clause))} twice; two objects need different "
                                 f"colours or shapes, or a count, e.g. {EXAMPLE}")
            objects.append(p)
        clause = []
    if not objects:
        raise ValueError(f"prompt {quoted} names no object to draw, only absent ones; e.g. {EXAMPLE}")
    for a in absent:
        if any(a.matches(o) for o in objects):
            raise ValueError(f"prompt {quoted} asks for a {next(o for o in objects if a.matches(o))} and for no "
                             f"{a if a.shape else f'{a} objects'}")
    return Prompt(objects, relations, absent)


def _unknown_words(unknown: List[str], quoted: str) -> str:
    """The error for words outside the vocabulary: every one named, a near spelling suggested, the words known and
    prompts that work."""
    import difflib

    known = vocabulary() + PROMPT_WORDS
    names = [_short(w, 24) for w in unknown]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    words = [w for w in known if w not in ("is", "are", "there")]  # the questions' words: no prompt needs them
    close = {w: difflib.get_close_matches(w, words, 1, cutoff=0.75) for w in unknown}
    near = [f"{n}: did you mean {close[w][0]!r}?" for w, n in zip(unknown, names) if close[w]]
    return (f"unknown word{'s' if len(unknown) > 1 else ''} {listed} in prompt {quoted}"
            + (f" ({'; '.join(near)})" if near else "")
            + f"; the shapes world knows: {', '.join(known)}; e.g. {EXAMPLE}")


def _counted_in_relation(clause: List[str], rel_at: List[int], quoted: str) -> str:
    """The error for a counted or absent object inside a relation ("a red ball on two blue boxes"), with the two
    prompts that say what it can: the relation with one object, or the count without the relation."""
    parts, rels = _chain(clause, rel_at, quoted)
    bad = next(p for p in parts if any(x in NUMBERS or x == "no" or x in PLURALS for x in p))
    fixes = []
    try:
        one = _phrase([x for x in bad if x not in NUMBERS and x != "no"], quoted)
        words = [x for k, part in enumerate(parts) for x in ((["a", *str(one).split()] if part is bad else part)
                                                             + (_rel_words(rels[k]) if k < len(rels) else []))]
        fixes.append(" ".join(words))
    except ValueError:
        pass
    if bad[0] in NUMBERS[2:]:  # the count kept, the relation dropped
        fixes.append(" and ".join(" ".join(p) for p in parts))
    works = []
    for fix in fixes:
        try:
            parse_prompt(fix)
            works.append(repr(fix))
        except ValueError:
            pass
    return (f"{_short(' '.join(bad))} in prompt {quoted}: a relation ({', '.join(dict.fromkeys(rels))}) joins single "
            f"objects, not counted or absent ones; e.g. {' or '.join(works) if works else EXAMPLE}")


def _rel_words(rel: str) -> List[str]:
    return [rel, "of"] if rel in ("left", "right") else [rel]


FLOOR_ROW = 27.0   # pixel row (of 32) of a floor object's centre in ``placement`` (a small object's)
STACK_ROWS = 7.0   # rows from an object's centre to that of the object resting on it
LARGE_LIFT = 2.0   # rows: half the height difference of a large and a small object (0.4 world units at 5 px each)


def placement(p: Prompt) -> Optional[List[Tuple[float, float]]]:
    """(col, row) pixel places (of 32) for a prompt's objects, which the phrase experts are conditioned on, so that
    they do not draw their objects over each other: objects on the floor side by side in equal slots, ordered to
    satisfy 'left of' and 'right of', and an object 'on' (or 'above') another straight over it; a single object in
    the middle of the floor (placed, the footprint potential sees a stray second object: poe's one-object misses
    on ShapesEval tier A were such extras). None when the relations admit no such arrangement (objects then go
    unplaced, each expert drawing its own anywhere). On the tuning seeds (1000-1003, 16 runs per category), placing
    raised ``exact`` on pairs from 0.75 to 1.00 and on relations from 0.38 to 1.00; a floor row of 25 or 26
    (a large object's centre) instead of 27 lost the three-object prompt. An object asked 'large' sits
    ``LARGE_LIFT`` rows higher, where a large one's centre is (at row 27 the prior drew it small)."""
    n = len(p.objects)
    over, before = {}, []
    for i, rel, j in p.relations:
        if rel in ("on", "above", "below"):
            top, bottom = (j, i) if rel == "below" else (i, j)
            if top in over:
                return None
            over[top] = bottom
        else:
            before.append((i, j) if rel == "left" else (j, i))

    def base(k, depth=0):
        return (k, depth) if k not in over else (None, depth) if depth > n else base(over[k], depth + 1)
    levels = {k: base(k) for k in range(n)}
    if any(b is None for b, _ in levels.values()) or len(set(levels.values())) < n:  # a cycle, or two on one
        return None
    floor = [k for k in range(n) if k not in over]
    after = {k: {levels[b][0] for a, b in before if levels[a][0] == k} for k in floor}
    if any(k in after[k] for k in floor):  # left of something it stands on
        return None
    order = []
    while len(order) < len(floor):  # stable topological order: the prompt's order where relations allow
        free = [k for k in floor if k not in order and not any(k in after[m] for m in floor if m not in order)]
        if not free:
            return None
        order.append(free[0])
    col = {k: 32 * (m + 1) / (len(floor) + 1) for m, k in enumerate(order)}

    def lift(k):  # a large object's centre sits LARGE_LIFT rows higher than a small one's
        return LARGE_LIFT if p.objects[k].size == "large" else 0.0

    def row(k):
        return FLOOR_ROW - lift(k) if k not in over else row(over[k]) - STACK_ROWS - lift(k) - lift(over[k])
    return [(col[levels[k][0]], row(k)) for k in range(n)]


def _check_scene_prompt(text: str, spec):
    """A scene spec's prompt in the shapes world, which draws the scene's own objects and has no background: it
    must name only objects of the scene (it is then redundant), else it is refused rather than ignored."""
    try:
        prompt = parse_prompt(text.replace(",", " and "))  # commas join objects, as layouts split them
    except ValueError as e:
        raise ValueError(f"scene prompt: {e}") from None
    for p in prompt.objects:
        if not any(p.matches(o) for o in spec.objects):
            have = ", ".join(f"{o.size} {o.colour} {o.shape}" for o in spec.objects)
            raise ValueError(f"scene prompt {_short(text)} names a {p}, which is not among the scene's objects "
                             f"({have}); the shapes world draws the objects, so describe them or leave prompt out")


