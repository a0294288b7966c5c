"""The hidden gold scorer: how good is one response to one testbed prompt.

``score = 0.6 * correctness + 0.4 * format * on_topic``, all in [0, 1]:

- *correctness* — the answer stated (the content words after "the answer is", or in the first
  sentence) equals the solution parsed from the prompt: 1. Graded families give partial credit
  for near misses (a number off by one: 0.25, off by two: 0.1; a list with some positions right).
- *format* — 1 minus penalties: words before the frame (filler), hedging words, extra words,
  repetition, no "The answer is" frame, no final full stop.
- *on_topic* — 1 if an answer of the right type is stated (a number for arithmetic, a color for a
  color question), 0.5 for the wrong type, 0 if no answer at all: garbage earns no format credit.

So every correct answer (>= 0.6) beats every wrong one (<= 0.55), and among answers equally right
the cleaner one wins; sloppy habits cost 0.15–0.4, which is the slope alignment has to climb.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import ConfigError
from alignlab.testbed import tasks as _tasks  # noqa: F401  (registers the task families)
from alignlab.testbed.world import CONTENT_WORDS, AnswerKind, Task, parse_prompt

WEIGHT_CORRECT = 0.6
WEIGHT_FORMAT = 0.4
PREFERENCE_TEMPERATURE = 0.05  # gold_preference = sigmoid(score difference / this)

HEDGE_WORDS = frozenset({"think", "maybe", "probably", "guess", "sure", "perhaps", "possibly", "might"})
FILLER_WORDS = frozenset({"um", "uh", "well", "hmm", "so", "okay", "oh", "like", "let", "yes"})

_FRAME = re.compile(r"\b(?:the\s+)?answer\s+is\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z]+|\d+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _is_answer_word(word: str) -> bool:
    return word.isdigit() or word in CONTENT_WORDS


@dataclass(frozen=True)
class Judgement:
    """The gold scorer's reading of one response.

    Attributes:
        expected: the correct answer's words, lower case.
        stated: the answer words read from the response, lower case.
        correctness: 1 for the exact answer, partial credit for near misses, else 0.
        form: format quality in [0, 1] (1 minus the penalties).
        on_topic: 1 answer of the right type, 0.5 wrong type, 0 no answer.
        penalties: the format penalties that applied, by name.
    """

    expected: tuple[str, ...]
    stated: tuple[str, ...]
    correctness: float
    form: float
    on_topic: float
    penalties: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.stated == self.expected

    @property
    def score(self) -> float:
        return min(
            1.0, max(0.0, WEIGHT_CORRECT * self.correctness + WEIGHT_FORMAT * self.form * self.on_topic)
        )


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """A prompt as text: a string as is, a chat (list of messages) as its last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ConfigError("a chat prompt needs at least one user message to be scored by the testbed")
    return users[-1]


def judge(prompt: str | Sequence[Mapping[str, Any]], response: str) -> Judgement:
    """Read one response to one testbed prompt (see the module docstring for the rules)."""
    task = parse_prompt(prompt_text(prompt))
    expected = tuple(w.lower() for w in task.answer)
    text = response.strip()
    if not text:
        return Judgement(expected, (), 0.0, 0.0, 0.0, {"empty": 1.0})

    frame = _FRAME.search(text)
    start = frame.end() if frame else 0
    end = _SENTENCE_END.search(text, start)
    region = _words(text[start : end.start()] if end else text[start:])
    rest = _words(text[end.end() :]) if end else []
    prefix = _words(text[: frame.start()]) if frame else []
    stated = tuple(w for w in region if _is_answer_word(w))
    extra = [w for w in region if not _is_answer_word(w)] + rest
    every = _words(text)

    penalties: dict[str, float] = {}
    if prefix:
        penalties["filler"] = min(0.6, 0.4 + 0.05 * (len(prefix) - 1))
    elif not frame and every and every[0] in FILLER_WORDS:
        penalties["filler"] = 0.4
    if not frame:
        penalties["unframed"] = 0.3
    if HEDGE_WORDS.intersection(every):
        penalties["hedge"] = 0.4
    if extra:
        penalties["extra_words"] = min(0.5, 0.08 * len(extra))
    if len(_FRAME.findall(text)) > 1 or set(stated) & set(rest) or _has_repeated_trigram(every):
        penalties["repetition"] = 0.3
    if not text.endswith((".", "!", "?")):
        penalties["unterminated"] = 0.15
    form = max(0.0, 1.0 - sum(penalties.values()))
    return Judgement(
        expected, stated, _correctness(task, expected, stated), form, _on_topic(task, stated), penalties
    )


def _has_repeated_trigram(words: list[str]) -> bool:
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) < len(grams)


def _correctness(task: Task, expected: tuple[str, ...], stated: tuple[str, ...]) -> float:
    if stated == expected:
        return 1.0
    if not task.spec.graded or not stated:
        return 0.0
    if task.spec.kind is AnswerKind.NUMBER:
        if len(stated) != 1 or not stated[0].isdigit():
            return 0.0
        return {1: 0.25, 2: 0.1}.get(abs(int(stated[0]) - int(expected[0])), 0.0)
    if len(stated) != len(expected):
        return 0.0
    return 0.5 * sum(s == e for s, e in zip(stated, expected)) / len(expected)


def _on_topic(task: Task, stated: tuple[str, ...]) -> float:
    if not stated:
        return 0.0
    vocabulary = task.spec.vocabulary(task.param_dict)
    if task.spec.kind is AnswerKind.NUMBER:
        ok = len(stated) == 1 and stated[0].isdigit()
    elif task.spec.kind is AnswerKind.WORD:
        ok = len(stated) == 1 and (vocabulary is None or stated[0] in vocabulary)
    else:
        ok = len(stated) == len(task.answer) and (vocabulary is None or set(stated) <= vocabulary)
    return 1.0 if ok else 0.5


def gold_response_score(prompt: str, response: str) -> float:
    """The gold score of one response, in [0, 1] (1 = correct, in the clean format)."""
    return judge(prompt, response).score


def is_correct(prompt: str, response: str) -> bool:
    """Whether the response states exactly the correct answer (format aside)."""
    return judge(prompt, response).correct


def gold_preference(prompt: str, a: str, b: str) -> float:
    """P(a is preferred over b) under the gold Bradley-Terry model of the gold scores."""
    diff = (gold_response_score(prompt, a) - gold_response_score(prompt, b)) / PREFERENCE_TEMPERATURE
    return 1.0 / (1.0 + math.exp(-diff))


def gold_reward_fn(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward function with the standard signature: one gold score per (prompt, response)."""
    if len(prompts) != len(responses):
        raise ConfigError(f"gold_reward_fn got {len(prompts)} prompts but {len(responses)} responses")
    return [gold_response_score(prompt_text(p), r) for p, r in zip(prompts, responses)]


def correctness(prompts: list[str], responses: list[str]) -> list[float]:
    """A verifiable reward: 1.0 for a response that states exactly the correct answer (format
    aside, :func:`is_correct`), else 0.0. Use as ``reward: alignlab.testbed:correctness``."""
    if len(prompts) != len(responses):
        raise ConfigError(f"correctness got {len(prompts)} prompts but {len(responses)} responses")
    return [float(is_correct(prompt_text(p), r)) for p, r in zip(prompts, responses)]


def score_responses(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Aggregate gold metrics of a batch of responses.

    Returns:
        ``gold_score`` (mean score), ``gold_accuracy`` (share exactly correct), ``gold_format``
        (mean format credit, format x on_topic) and ``n``.
    """
    if len(prompts) != len(responses):
        raise ConfigError(f"score_responses got {len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return {"gold_score": 0.0, "gold_accuracy": 0.0, "gold_format": 0.0, "n": 0}
    judged = [judge(p, r) for p, r in zip(prompts, responses)]
    n = len(judged)
    return {
        "gold_score": sum(j.score for j in judged) / n,
        "gold_accuracy": sum(j.correct for j in judged) / n,
        "gold_format": sum(j.form * j.on_topic for j in judged) / n,
        "n": n,
    }


def gold_score(
    model_or_ref: Any,
    n: int = 200,
    *,
    registry: Any = None,
    tokenizer: Any = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    engine: str = "hf",
) -> dict[str, float]:
    """Greedy-decode a model's answers to the first ``n`` held-out prompts and score them.

    Args:
        model_or_ref: a loaded causal LM (pass ``tokenizer`` too) or a reference the registry
            resolves (``"sft"``, ``"ppo:v2"``, an artifact, a path).
        n: how many of the fixed held-out prompts (``eval_prompts(n)``).
        registry: resolves a reference; unused for a loaded model.
        tokenizer: the model's tokenizer (a reference brings its own).
        batch_size: prompts per generation batch.
        max_new_tokens: the answer budget; a clean answer needs about ten tokens.
        engine: what decodes: ``hf`` (transformers' ``generate``), ``vllm`` or ``auto``
            (see :func:`alignlab.models.generate`). The scoring is the same whichever decodes.

    Returns:
        ``{"gold_score": mean gold score, "gold_accuracy": share of exactly correct answers}``.

    Example:
        >>> from alignlab.testbed import gold_score
        >>> gold_score("sft", n=100, registry=registry)  # doctest: +SKIP
        {'gold_score': 0.71, 'gold_accuracy': 0.52}
    """
    from alignlab.models import generate  # lazy: models imports heavy libraries
    from alignlab.testbed.data import eval_prompts  # lazy: data imports this module

    if _is_reference(model_or_ref):
        from alignlab.models import load_causal_lm

        model, loaded_tokenizer = load_causal_lm(model_or_ref, registry)
        tokenizer = tokenizer or loaded_tokenizer
    else:
        model = model_or_ref
    if tokenizer is None:
        raise ConfigError(
            "gold_score: pass tokenizer= along with a loaded model, or pass a reference instead"
        )
    prompts = eval_prompts(n)
    responses = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=False,
        engine=engine,
    )
    metrics = score_responses(prompts, responses)
    return {"gold_score": metrics["gold_score"], "gold_accuracy": metrics["gold_accuracy"]}


def _is_reference(obj: Any) -> bool:
    """A string, a path, or a registry Artifact/ExternalRef, as opposed to a loaded model."""
    return isinstance(obj, (str, os.PathLike)) or type(obj).__name__ in ("Artifact", "ExternalRef")
