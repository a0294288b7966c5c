"""An LLM judge: any local causal LM asked which of two answers is better.

The judge reads one token: at the answer position of its chat prompt it compares the
probabilities of the two labels (``"1"`` / ``"2"``, or ``"A"`` / ``"B"``), softmax over the two.
LLM judges prefer whichever answer comes first (or second) regardless of content, so every pair
is judged in both orders and the two readings averaged: a pure position bias cancels exactly.

Example:
    >>> judge = LLMJudge.load("judge-model", registry)  # doctest: +SKIP
    >>> verdicts = judge.compare(["What is 3 plus 4?"], ["The answer is 7."], ["8"])  # doctest: +SKIP
    >>> verdicts[0].p_a  # doctest: +SKIP
    0.83
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignlab.errors import ConfigError
from alignlab.models.scoring import option_logprobs

if TYPE_CHECKING:
    from alignlab.registry import Registry

JUDGE_TEMPLATE = (
    "Which answer to the question is better?\n\n"
    "Question: {prompt}\n\n"
    "Answer {first}: {answer_first}\n\n"
    "Answer {second}: {answer_second}\n\n"
    "Reply with {first} or {second}."
)


@dataclass(frozen=True)
class PairVerdict:
    """The judge's reading of one pair (A, B) in both orders.

    Attributes:
        p_a_shown_first: P(A is better) with A shown first, i.e. P(label 1 | A, B).
        p_a_shown_second: P(A is better) with A shown second, i.e. P(label 2 | B, A).
    """

    p_a_shown_first: float
    p_a_shown_second: float

    @property
    def p_a(self) -> float:
        """P(A is better), averaged over both orders."""
        return (self.p_a_shown_first + self.p_a_shown_second) / 2

    @property
    def position_bias(self) -> float:
        """Mean P(label 1) over both orders minus 0.5: > 0 means the judge favours the first slot."""
        return (self.p_a_shown_first + 1.0 - self.p_a_shown_second) / 2 - 0.5


def parse_labels(labels: str | Sequence[str]) -> tuple[str, str]:
    """``"12"``, ``"AB"``, ``("1", "2")`` -> the two labels, distinct and non-empty."""
    pair = tuple(labels)
    if len(pair) != 2 or pair[0] == pair[1] or not all(isinstance(x, str) and x.strip() for x in pair):
        raise ConfigError(f"judge labels must be two distinct strings such as '12' or 'AB', got {labels!r}")
    return pair[0], pair[1]


class LLMJudge:
    """Compare two answers with a causal LM reading P(label 1) vs P(label 2).

    Args:
        model: the judge's causal LM. tokenizer: its tokenizer (with a chat template).
        labels: the two answer labels ("12" or "AB").
        template: the user turn; fields ``prompt``, ``first``, ``second``, ``answer_first``,
            ``answer_second``.
        batch_size: sequences per forward pass.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        labels: str | Sequence[str] = "12",
        template: str = JUDGE_TEMPLATE,
        batch_size: int = 8,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = parse_labels(labels)
        self.template = template
        self.batch_size = batch_size

    @classmethod
    def load(cls, ref: str, registry: Registry | None = None, **kwargs: Any) -> LLMJudge:
        """A judge from any causal LM reference (artifact, path, hub id)."""
        from alignlab.models import load_causal_lm

        model, tokenizer = load_causal_lm(ref, registry)
        return cls(model, tokenizer, **kwargs)

    def prompt(self, question: str, answer_first: str, answer_second: str) -> str:
        """The user turn the judge answers."""
        first, second = self.labels
        return self.template.format(
            prompt=question,
            first=first,
            second=second,
            answer_first=answer_first,
            answer_second=answer_second,
        )

    def p_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        """P(label 1) for each (prompt, answer shown first, answer shown second), over the two labels."""
        from alignlab.models.generation import encode_prompts

        if not len(prompts) == len(first) == len(second):
            raise ConfigError(f"judge: {len(prompts)} prompts, {len(first)} and {len(second)} answers")
        contexts = encode_prompts(
            self.tokenizer, [self.prompt(p, a, b) for p, a, b in zip(prompts, first, second)]
        )
        scores = option_logprobs(
            self.model,
            self.tokenizer,
            contexts,
            [list(self.labels)] * len(contexts),
            batch_size=self.batch_size,
        )
        return [float(s.exp()[0]) for s in scores]

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[PairVerdict]:
        """Judge each pair (A, B) in both orders."""
        a_first = self.p_first(prompts, a, b)
        b_first = self.p_first(prompts, b, a)
        return [PairVerdict(x, 1.0 - y) for x, y in zip(a_first, b_first)]
