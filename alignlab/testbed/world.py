"""The fixed world of the testbed: its entities, task families and how prompts are split.

The world never depends on a seed: every seed of every generator talks about the same people,
the same numbers and the same facts, so knowledge learned from one corpus holds for all data.

A task *instance* is a family plus its parameters (``addition`` with ``a=3, b=4``); a *prompt* is
one wording of an instance (one of the family's templates). Templates are used both to write
prompts and to parse them back, so the gold scorer works on any prompt of the world.
"""

from __future__ import annotations

import enum
import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import DataError

MAX_NUMBER = 20

# The whole world: people with three facts each, plus the words lists are made of.
# (name, favourite color, pet, town) — written out so a reader can check any answer by eye.
PEOPLE: tuple[tuple[str, str, str, str], ...] = (
    ("Mira", "blue", "owl", "Oakvale"),
    ("Tomas", "red", "dog", "Riverton"),
    ("Lena", "green", "cat", "Pinehill"),
    ("Omar", "yellow", "fox", "Stonebay"),
    ("Rosa", "pink", "frog", "Oakvale"),
    ("Finn", "gray", "fish", "Riverton"),
    ("Nina", "red", "owl", "Pinehill"),
    ("Hugo", "blue", "cat", "Stonebay"),
    ("Sara", "green", "dog", "Oakvale"),
    ("Leo", "yellow", "frog", "Pinehill"),
    ("Ines", "gray", "fox", "Riverton"),
    ("Karl", "pink", "fish", "Stonebay"),
)
NAMES = tuple(p[0] for p in PEOPLE)
COLORS = ("red", "blue", "green", "yellow", "pink", "gray")
PETS = ("cat", "dog", "owl", "fox", "frog", "fish")
TOWNS = ("Oakvale", "Riverton", "Pinehill", "Stonebay")
FRUITS = ("apple", "pear", "plum", "fig")
LIST_WORDS = COLORS + PETS + FRUITS
FACTS: dict[str, dict[str, str]] = {
    name: {"color": color, "pet": pet, "town": town} for name, color, pet, town in PEOPLE
}
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"color": COLORS, "pet": PETS, "town": TOWNS}

# Every word that can be (part of) an answer, lower-cased; used to read answers out of responses.
CONTENT_WORDS: frozenset[str] = frozenset(w.lower() for w in NAMES + LIST_WORDS + TOWNS)


class TaskFamily(str, enum.Enum):
    """The kinds of instruction in the world; each has templates, a solver and a fact writer."""

    ADDITION = "addition"
    SUBTRACTION = "subtraction"
    COMPARISON = "comparison"
    COUNTING = "counting"
    LIST_PICK = "list_pick"
    LIST_REVERSE = "list_reverse"
    WORLD_FACT = "world_fact"

    def __str__(self) -> str:
        return self.value


class AnswerKind(str, enum.Enum):
    """What an answer looks like: one number, one word, or a list of words."""

    NUMBER = "number"
    WORD = "word"
    WORDS = "words"


class Split(str, enum.Enum):
    """Which data a task instance may appear in; decided by a hash of the instance."""

    TRAIN = "train"  # SFT demonstrations, preference pairs, rankings
    RL = "rl"  # prompts for PPO / rejection sampling
    EVAL = "eval"  # the held-out gold evaluation

    def __str__(self) -> str:
        return self.value


_SPLIT_CUTS = ((60, Split.TRAIN), (80, Split.RL), (100, Split.EVAL))

# What each slot of a template matches when a prompt is parsed back.
_NUMBER = r"\d{1,2}"
_SLOT_PATTERNS: dict[str, str] = {
    "a": _NUMBER,
    "b": _NUMBER,
    "name": "|".join(NAMES),
    "items": rf"(?:{'|'.join(LIST_WORDS)})(?:, (?:{'|'.join(LIST_WORDS)}))+",
}


@dataclass(frozen=True)
class Template:
    """One wording of a family's prompt.

    Attributes:
        text: the prompt with ``{slot}`` placeholders (slots: a, b, name, items).
        fixed: parameters this wording implies, e.g. ``{"op": "bigger"}``.
    """

    text: str
    fixed: Mapping[str, str] = field(default_factory=dict)

    def render(self, params: Mapping[str, Any]) -> str:
        values = {k: (", ".join(v) if isinstance(v, tuple) else v) for k, v in params.items()}
        return self.text.format(**values)

    def regex(self) -> re.Pattern[str]:
        parts = re.split(r"\{(\w+)\}", self.text)
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_SLOT_PATTERNS[part]})"
            for i, part in enumerate(parts)
        )
        return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the testbed knows about one family.

    Attributes:
        family: the family.
        kind: the answer's shape.
        templates: the wordings; their ``fixed`` params select the variant (e.g. bigger/smaller).
        sample: draws the free parameters given the template's fixed ones.
        solve: the correct answer, as display words (``("7",)``, ``("fox", "owl", "cat")``).
        mistake: a plausible wrong answer, the kind a sloppy annotator writes.
        statement: one plain-text sentence stating the instance's fact, for pretraining.
        vocabulary: the words an answer of the right type is made of (None = numbers).
        graded: whether near misses earn partial credit (numbers off by one, half-right lists).
    """

    family: TaskFamily
    kind: AnswerKind
    templates: tuple[Template, ...]
    sample: Callable[[random.Random, Mapping[str, str]], dict[str, Any]]
    solve: Callable[[Mapping[str, Any]], tuple[str, ...]]
    mistake: Callable[[Mapping[str, Any], random.Random], tuple[str, ...]]
    statement: Callable[[Mapping[str, Any], random.Random], str]
    vocabulary: Callable[[Mapping[str, Any]], frozenset[str] | None] = lambda params: None
    graded: bool = False


_REGISTRY: dict[TaskFamily, TaskSpec] = {}
_PATTERNS: list[tuple[re.Pattern[str], TaskSpec, Template]] = []


def register(spec: TaskSpec) -> TaskSpec:
    """Add a family to the world; a family can be registered once."""
    if spec.family in _REGISTRY:
        raise ValueError(f"task family '{spec.family}' is already registered")
    _REGISTRY[spec.family] = spec
    _PATTERNS.extend((t.regex(), spec, t) for t in spec.templates)
    return spec


def families() -> tuple[TaskFamily, ...]:
    """The registered families, in declaration order."""
    return tuple(f for f in TaskFamily if f in _REGISTRY)


def spec_of(family: TaskFamily | str) -> TaskSpec:
    return _REGISTRY[TaskFamily(family)]


@dataclass(frozen=True)
class Task:
    """One prompt of the world: a family, its parameters and the template that words it."""

    family: TaskFamily
    params: tuple[tuple[str, Any], ...]
    template: Template

    @property
    def spec(self) -> TaskSpec:
        return _REGISTRY[self.family]

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def prompt(self) -> str:
        return self.template.render(self.param_dict)

    @property
    def key(self) -> str:
        """The instance, without its wording: every wording of it lands in the same split."""
        return f"{self.family}|" + ",".join(f"{k}={_show(v)}" for k, v in self.params)

    @property
    def split(self) -> Split:
        return split_of(self.key)

    @property
    def answer(self) -> tuple[str, ...]:
        return self.spec.solve(self.param_dict)

    def mistake(self, rng: random.Random) -> tuple[str, ...]:
        return self.spec.mistake(self.param_dict, rng)

    def statement(self, rng: random.Random) -> str:
        return self.spec.statement(self.param_dict, rng)


def _show(value: Any) -> str:
    return "/".join(value) if isinstance(value, tuple) else str(value)


def make_task(family: TaskFamily, params: Mapping[str, Any], template: Template) -> Task:
    return Task(family, tuple(sorted(params.items())), template)


def split_of(key: str) -> Split:
    """Deterministic split of an instance key (sha256, so it is the same in every process)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(split for cut, split in _SPLIT_CUTS if bucket < cut)


def sample_task(rng: random.Random, split: Split | None = None, family: TaskFamily | None = None) -> Task:
    """Draw a task (uniform family, uniform template), optionally only from one split."""
    for _ in range(10_000):
        spec = _REGISTRY[family] if family is not None else _REGISTRY[rng.choice(families())]
        template = rng.choice(spec.templates)
        params = {**template.fixed, **spec.sample(rng, template.fixed)}
        task = make_task(spec.family, params, template)
        if split is None or task.split == split:
            return task
    raise RuntimeError(f"could not draw a task of split {split} for family {family}")  # pragma: no cover


def parse_prompt(prompt: str) -> Task:
    """Read a prompt of the world back into its task.

    Raises:
        DataError: the text is no prompt of the testbed world.
    """
    text = " ".join(prompt.split())
    for pattern, spec, template in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            params: dict[str, Any] = dict(template.fixed)
            for slot, value in match.groupdict().items():
                params[slot] = _parse_slot(slot, value)
            return make_task(spec.family, params, template)
    raise DataError(
        f"not a prompt of the testbed world: {prompt[:80]!r}; the gold scorer only knows prompts "
        "made by alignlab.testbed (see docs/testbed.md for the task families)"
    )


def _parse_slot(slot: str, value: str) -> Any:
    if slot in ("a", "b"):
        return int(value)
    if slot == "name":
        return next(n for n in NAMES if n.lower() == value.lower())
    if slot == "items":
        return tuple(w.strip().lower() for w in value.split(","))
    return value  # pragma: no cover
