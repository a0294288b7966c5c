"""The task families of the testbed world, registered on import.

Each family is four small pure functions (sample, solve, mistake, statement) plus its prompt
templates. Every answer is computable from the prompt text alone, given the fixed world of
:mod:`alignlab.testbed.world` — and needs the prompt: the numbers, words and names in it decide
the answer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from alignlab.testbed.world import (
    ATTRIBUTE_VALUES,
    FACTS,
    LIST_WORDS,
    MAX_NUMBER,
    NAMES,
    AnswerKind,
    TaskFamily,
    TaskSpec,
    Template,
    register,
)

Params = Mapping[str, Any]


def _near_miss(correct: int, rng: random.Random, avoid: tuple[int, ...] = ()) -> int:
    """A wrong number close to the right one (or one of the operands): a typical slip."""
    choices = [correct + d for d in (-2, -1, 1, 2)] + list(avoid)
    choices = [c for c in choices if 0 <= c <= MAX_NUMBER and c != correct]
    return rng.choice(choices)


# Arithmetic is kept small (49 sums, 56 differences): facts a tiny model can memorise from a
# few hundred pretraining steps, as it memorises the people's facts.
MAX_ADDEND = 6
MAX_MINUEND = 10

# -- addition: "What is 3 plus 4?" -> 7 (operands 0..6) --------------------------------------------


def _add_sample(rng: random.Random, fixed: Mapping[str, str]) -> dict[str, Any]:
    return {"a": rng.randint(0, MAX_ADDEND), "b": rng.randint(0, MAX_ADDEND)}


def _add_solve(p: Params) -> tuple[str, ...]:
    return (str(p["a"] + p["b"]),)


def _add_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    return (str(_near_miss(p["a"] + p["b"], rng, (p["a"], p["b"]))),)


_ADD_FACTS = (
    "{a} plus {b} is {c}.",
    "{a} and {b} make {c}.",
    "The sum of {a} and {b} is {c}.",
    "If you add {a} and {b} you get {c}.",
)


def _add_statement(p: Params, rng: random.Random) -> str:
    return rng.choice(_ADD_FACTS).format(a=p["a"], b=p["b"], c=p["a"] + p["b"])


register(
    TaskSpec(
        family=TaskFamily.ADDITION,
        kind=AnswerKind.NUMBER,
        templates=(
            Template("What is {a} plus {b}?"),
            Template("Add {a} and {b}."),
            Template("What is the sum of {a} and {b}?"),
        ),
        sample=_add_sample,
        solve=_add_solve,
        mistake=_add_mistake,
        statement=_add_statement,
        graded=True,
    )
)

# -- subtraction: "What is 9 minus 4?" -> 5 (0..10 minus 0..6, never below zero) -------------------


def _sub_sample(rng: random.Random, fixed: Mapping[str, str]) -> dict[str, Any]:
    a = rng.randint(0, MAX_MINUEND)
    return {"a": a, "b": rng.randint(0, min(a, MAX_ADDEND))}


def _sub_solve(p: Params) -> tuple[str, ...]:
    return (str(p["a"] - p["b"]),)


def _sub_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    return (str(_near_miss(p["a"] - p["b"], rng, (p["a"], p["b"]))),)


_SUB_FACTS = (
    "{a} minus {b} is {c}.",
    "If you take {b} away from {a} you get {c}.",
    "Subtract {b} from {a} and you get {c}.",
)


def _sub_statement(p: Params, rng: random.Random) -> str:
    return rng.choice(_SUB_FACTS).format(a=p["a"], b=p["b"], c=p["a"] - p["b"])


register(
    TaskSpec(
        family=TaskFamily.SUBTRACTION,
        kind=AnswerKind.NUMBER,
        templates=(
            Template("What is {a} minus {b}?"),
            Template("Subtract {b} from {a}."),
            Template("Take {b} away from {a}."),
        ),
        sample=_sub_sample,
        solve=_sub_solve,
        mistake=_sub_mistake,
        statement=_sub_statement,
        graded=True,
    )
)

# -- comparison: "Which is bigger, 7 or 12?" -> 12 ---------------------------------------------------


def _cmp_sample(rng: random.Random, fixed: Mapping[str, str]) -> dict[str, Any]:
    a, b = rng.sample(range(MAX_NUMBER + 1), 2)
    return {"a": a, "b": b}


def _cmp_solve(p: Params) -> tuple[str, ...]:
    pick = max if p["op"] == "bigger" else min
    return (str(pick(p["a"], p["b"])),)


def _cmp_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    pick = min if p["op"] == "bigger" else max  # the other one
    return (str(pick(p["a"], p["b"])),)


_CMP_FACTS = (
    "{hi} is bigger than {lo}.",
    "{lo} is smaller than {hi}.",
    "Of {a} and {b}, the bigger number is {hi}.",
    "Of {a} and {b}, the smaller number is {lo}.",
)


def _cmp_statement(p: Params, rng: random.Random) -> str:
    hi, lo = max(p["a"], p["b"]), min(p["a"], p["b"])
    return rng.choice(_CMP_FACTS).format(a=p["a"], b=p["b"], hi=hi, lo=lo)


register(
    TaskSpec(
        family=TaskFamily.COMPARISON,
        kind=AnswerKind.NUMBER,
        templates=(
            Template("Which is bigger, {a} or {b}?", {"op": "bigger"}),
            Template("Which number is bigger: {a} or {b}?", {"op": "bigger"}),
            Template("Which is smaller, {a} or {b}?", {"op": "smaller"}),
            Template("Which number is smaller: {a} or {b}?", {"op": "smaller"}),
        ),
        sample=_cmp_sample,
        solve=_cmp_solve,
        mistake=_cmp_mistake,
        statement=_cmp_statement,
    )
)

# -- counting: "What number comes after 7?" -> 8 --------------------------------------------------------


def _count_sample(rng: random.Random, fixed: Mapping[str, str]) -> dict[str, Any]:
    if fixed["dir"] == "after":
        return {"a": rng.randint(0, MAX_NUMBER - 1)}
    return {"a": rng.randint(1, MAX_NUMBER)}


def _count_solve(p: Params) -> tuple[str, ...]:
    return (str(p["a"] + 1 if p["dir"] == "after" else p["a"] - 1),)


def _count_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    wrong = p["a"] - 1 if p["dir"] == "after" else p["a"] + 1  # the wrong direction
    return (str(rng.choice([p["a"], wrong] if 0 <= wrong <= MAX_NUMBER else [p["a"]])),)


_COUNT_FACTS = (
    "After {n} comes {m}.",
    "Before {m} comes {n}.",
    "One more than {n} is {m}.",
    "One less than {m} is {n}.",
)


def _count_statement(p: Params, rng: random.Random) -> str:
    n = p["a"] if p["dir"] == "after" else p["a"] - 1
    return rng.choice(_COUNT_FACTS).format(n=n, m=n + 1)


register(
    TaskSpec(
        family=TaskFamily.COUNTING,
        kind=AnswerKind.NUMBER,
        templates=(
            Template("What number comes after {a}?", {"dir": "after"}),
            Template("What is one more than {a}?", {"dir": "after"}),
            Template("What comes right after {a}?", {"dir": "after"}),
            Template("What number comes before {a}?", {"dir": "before"}),
            Template("What is one less than {a}?", {"dir": "before"}),
            Template("What comes right before {a}?", {"dir": "before"}),
        ),
        sample=_count_sample,
        solve=_count_solve,
        mistake=_count_mistake,
        statement=_count_statement,
        graded=True,
    )
)

# -- list pick: "What is the last word in the list cat, owl, fox?" -> fox -------------------------------

_POSITIONS = {"first": 0, "second": 1, "last": -1}


def _list_sample(rng: random.Random, fixed: Mapping[str, str]) -> dict[str, Any]:
    return {"items": tuple(rng.sample(LIST_WORDS, 3))}


def _pick_solve(p: Params) -> tuple[str, ...]:
    return (p["items"][_POSITIONS[p["pos"]]],)


def _pick_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    right = _pick_solve(p)[0]
    return (rng.choice([w for w in p["items"] if w != right]),)


def _pick_statement(p: Params, rng: random.Random) -> str:
    items = p["items"]
    return (
        f"In the list {', '.join(items)}, the first word is {items[0]}, "
        f"the second word is {items[1]} and the last word is {items[-1]}."
    )


register(
    TaskSpec(
        family=TaskFamily.LIST_PICK,
        kind=AnswerKind.WORD,
        templates=tuple(
            Template(f"What is the {pos} word in the list {{items}}?", {"pos": pos}) for pos in _POSITIONS
        ),
        sample=_list_sample,
        solve=_pick_solve,
        mistake=_pick_mistake,
        statement=_pick_statement,
        vocabulary=lambda p: frozenset(LIST_WORDS),
    )
)

# -- list reverse: "Reverse the list cat, owl, fox." -> fox, owl, cat -----------------------------------


def _rev_solve(p: Params) -> tuple[str, ...]:
    return tuple(reversed(p["items"]))


def _rev_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    items = tuple(p["items"])
    swapped = (items[1], items[0], *items[2:])  # a half-done job, or no job at all
    return rng.choice([items, swapped, tuple(reversed(swapped))])


_REV_FACTS = ("The list {items} backwards is {rev}.", "Reversed, the list {items} reads {rev}.")


def _rev_statement(p: Params, rng: random.Random) -> str:
    return rng.choice(_REV_FACTS).format(items=", ".join(p["items"]), rev=", ".join(_rev_solve(p)))


register(
    TaskSpec(
        family=TaskFamily.LIST_REVERSE,
        kind=AnswerKind.WORDS,
        templates=(Template("Reverse the list {items}."), Template("Write the list {items} backwards.")),
        sample=_list_sample,
        solve=_rev_solve,
        mistake=_rev_mistake,
        statement=_rev_statement,
        vocabulary=lambda p: frozenset(LIST_WORDS),
        graded=True,
    )
)

# -- world facts: "Where does Mira live?" -> Oakvale (knowledge only pretraining gives) ----------------


def _fact_sample(rng: random.Random, fixed: Mapping[str, str]) -> dict[str, Any]:
    return {"name": rng.choice(NAMES)}


def _fact_solve(p: Params) -> tuple[str, ...]:
    return (FACTS[p["name"]][p["attr"]],)


def _fact_mistake(p: Params, rng: random.Random) -> tuple[str, ...]:
    right = _fact_solve(p)[0]
    return (rng.choice([v for v in ATTRIBUTE_VALUES[p["attr"]] if v != right]),)


_FACT_SENTENCES = {
    "color": ("{name} likes the color {v}.", "The favorite color of {name} is {v}."),
    "pet": ("{name} has a pet {v}.", "The pet of {name} is {a} {v}."),
    "town": ("{name} lives in {v}.", "The town of {name} is {v}."),
}


def _fact_statement(p: Params, rng: random.Random) -> str:
    value = _fact_solve(p)[0]
    article = "an" if value[0] in "aeiou" else "a"
    return rng.choice(_FACT_SENTENCES[p["attr"]]).format(name=p["name"], v=value, a=article)


register(
    TaskSpec(
        family=TaskFamily.WORLD_FACT,
        kind=AnswerKind.WORD,
        templates=(
            Template("What color does {name} like?", {"attr": "color"}),
            Template("What is the favorite color of {name}?", {"attr": "color"}),
            Template("Which color does {name} like best?", {"attr": "color"}),
            Template("What pet does {name} have?", {"attr": "pet"}),
            Template("Which animal is the pet of {name}?", {"attr": "pet"}),
            Template("What kind of pet does {name} have?", {"attr": "pet"}),
            Template("Where does {name} live?", {"attr": "town"}),
            Template("In which town does {name} live?", {"attr": "town"}),
            Template("What town does {name} live in?", {"attr": "town"}),
        ),
        sample=_fact_sample,
        solve=_fact_solve,
        mistake=_fact_mistake,
        statement=_fact_statement,
        vocabulary=lambda p: frozenset(v.lower() for v in ATTRIBUTE_VALUES[p["attr"]]),
    )
)


def person_bio(name: str, rng: random.Random) -> list[str]:
    """All facts about one person, as sentences in random order (pretraining documents)."""
    sentences = [_fact_statement({"name": name, "attr": attr}, rng) for attr in ATTRIBUTE_VALUES]
    rng.shuffle(sentences)
    return sentences
