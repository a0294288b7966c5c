"""Quality scoring with a language model as judge: a rubric read from next-token probabilities.

For each rubric criterion (relevance, clarity, completeness, accuracy by default) the judge is
asked for a digit from 1 to 5, and the score is the *expected value* of the judge's next-token
distribution over "1".."5" (renormalised over those five tokens) rather than a generated
answer: it is smooth, needs no parsing and works with tiny models. A record's score is the mean
over the criteria.

Pairs (preference records) are judged with both responses in view, in both orders, and each
response's scores are averaged over its two positions, which cancels a judge's position bias.

Example:
    >>> from alignlab.models import load_causal_lm  # doctest: +SKIP
    >>> judge = RubricJudge(*load_causal_lm("sft"))  # doctest: +SKIP
    >>> judge.score_texts([("User: 2+2?", "4")])  # doctest: +SKIP
    [{'relevance': 4.1, 'clarity': 3.9, 'completeness': 3.7, 'accuracy': 4.0, 'mean': 3.93}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.data.messages import render_transcript
from alignlab.errors import ConfigError

Verdict = tuple[str, str] | None
Scores = dict[str, float]  # criterion -> expected score in [1, 5], and "mean"

RUBRIC: dict[str, str] = {
    "relevance": "does it address what was asked",
    "clarity": "is it clear, well organised and easy to follow",
    "completeness": "does it cover everything the request needs",
    "accuracy": "is what it says correct",
}
DIGITS = ("1", "2", "3", "4", "5")


@dataclass
class JudgeSettings:
    """Settings of the judge step.

    Attributes:
        model: the judge, any causal LM reference (registry artifact, local path, hub id), loaded
            with alignlab.models.load_causal_lm.
        criteria: rubric criteria, each scored 1-5; relevance, clarity, completeness and
            accuracy have built-in descriptions, other names are used as they are.
        threshold: keep a record when its mean rubric score (of the chosen response, for pairs)
            is at least this (1-5). Default 4.5: AlpaGasus (Chen et al. 2023, §3) keeps the
            Alpaca examples its ChatGPT judge scores at least 4.5 of 5, and LLM-judged cleaning
            guides keep the top 10-20%; the earlier 3.0 kept nearly everything.
        batch_size: judge prompts per forward pass.
        both_orders: judge pairs in both orders and average (cancels position bias); false asks
            once, chosen first.
        min_margin: for pairs, also drop those whose chosen response does not beat the rejected
            one by at least this much (None: no check).
        max_chars: characters of each conversation and response shown to the judge (the
            conversation keeps its end, a response its start).
        explain: also ask the judge for a one-sentence justification of each record it drops,
            generated greedily, and store it with the score in the cleaning report.
        explain_tokens: the justification's budget in new tokens.
    """

    model: str = ""
    criteria: list[str] = field(default_factory=lambda: list(RUBRIC))
    threshold: float = 4.5
    batch_size: int = 8
    both_orders: bool = True
    min_margin: float | None = None
    max_chars: int = 2000
    explain: bool = False
    explain_tokens: int = 48


def _head(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + " […]"


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "[…] " + text[-n:]


def single_prompt(context: str, response: str, criterion: str, max_chars: int = 2000) -> str:
    """The judge prompt for one response (or, without context, one text) and one criterion."""
    what = RUBRIC.get(criterion, criterion)
    if context:
        head = f"Conversation:\n{_tail(context, max_chars)}\n\nResponse:\n{_head(response, max_chars)}"
        subject = "the response"
    else:
        head, subject = f"Text:\n{_head(response, max_chars)}", "the text"
    return (
        f"You are a strict grader.\n\n{head}\n\nCriterion: {criterion} ({what}).\n"
        f"Rate {subject} on this criterion from 1 (very poor) to 5 (excellent). Answer with one digit."
    )


def pair_prompt(
    context: str, first: str, second: str, position: int, criterion: str, max_chars: int = 2000
) -> str:
    """The judge prompt rating the response at ``position`` (1 or 2) of a pair on one criterion."""
    what = RUBRIC.get(criterion, criterion)
    return (
        "You are a strict grader comparing two responses to the same conversation.\n\n"
        f"Conversation:\n{_tail(context, max_chars)}\n\n"
        f"Response 1:\n{_head(first, max_chars)}\n\nResponse 2:\n{_head(second, max_chars)}\n\n"
        f"Criterion: {criterion} ({what}).\n"
        f"Rate Response {position} on this criterion from 1 (very poor) to 5 (excellent). Answer with one digit."
    )


def explain_prompt(
    context: str, response: str, criteria: Sequence[str], score: float, max_chars: int = 2000
) -> str:
    """The prompt asking the judge why ``response`` scored ``score`` on ``criteria``."""
    named = ", ".join(f"{c} ({RUBRIC.get(c, c)})" for c in criteria)
    head = (
        f"Conversation:\n{_tail(context, max_chars)}\n\nResponse:\n{_head(response, max_chars)}"
        if context
        else f"Text:\n{_head(response, max_chars)}"
    )
    return (
        f"You are a strict grader.\n\n{head}\n\nCriteria: {named}.\nIt was rated {score:.1f} out of 5. "
        "In one short sentence, say why."
    )


class RubricJudge:
    """Score texts and pairs with a causal LM's next-token distribution over "1".."5".

    Args:
        model: a causal LM (anything returning ``.logits`` of shape (B, T, V)); read with
            ``alignlab.models.scoring.option_logprobs``.
        tokenizer: its tokenizer; prompts go through its chat template when it has one.
        criteria: rubric criteria.
        batch_size: prompts per forward pass.
        max_chars: characters of each text shown to the judge.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        criteria: Sequence[str] = tuple(RUBRIC),
        *,
        batch_size: int = 8,
        max_chars: int = 2000,
    ) -> None:
        if not criteria:
            raise ConfigError("judge.criteria: name at least one criterion")
        self.model, self.tokenizer = model, tokenizer
        self.criteria = list(criteria)
        self.batch_size = max(1, batch_size)
        self.max_chars = max_chars

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        if getattr(self.tokenizer, "chat_template", None):
            from alignlab.models.generation import encode_prompts

            return encode_prompts(self.tokenizer, list(prompts))
        return [self.tokenizer.encode(p + "\nScore:") for p in prompts]

    def expected_scores(self, prompts: Sequence[str]) -> list[float]:
        """The expected digit (1-5) under the judge's next-token distribution, one per prompt."""
        import torch

        from alignlab.models.scoring import option_logprobs

        if not prompts:
            return []
        # log-probabilities of "1".."5" at the answer position, renormalised over the five: (5,) each
        logps = option_logprobs(
            self.model,
            self.tokenizer,
            self._encode(prompts),
            [DIGITS] * len(prompts),
            batch_size=self.batch_size,
        )
        values = torch.arange(1, 6, dtype=torch.float32)
        return [float((logp.exp() * values).sum()) for logp in logps]

    def _collect(self, flat: list[float], n_items: int) -> list[Scores]:
        per = len(self.criteria)
        out = []
        for i in range(n_items):
            row = dict(zip(self.criteria, flat[i * per : (i + 1) * per]))
            row["mean"] = sum(row.values()) / per
            out.append(row)
        return out

    def explain(self, items: Sequence[tuple[str, str, float]], max_new_tokens: int = 48) -> list[str]:
        """A one-sentence justification per ``(context, response, score)``, generated greedily."""
        from alignlab.models import generate

        if not items:
            return []
        prompts = [explain_prompt(c, r, self.criteria, score, self.max_chars) for c, r, score in items]
        replies = generate(
            self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=self.batch_size
        )
        return [" ".join(r.split()) or "(no justification)" for r in replies]

    def score_texts(self, items: Sequence[tuple[str, str]]) -> list[Scores]:
        """Rubric scores of ``(context, response)`` items (context "" to judge a text on its own)."""
        prompts = [
            single_prompt(context, response, c, self.max_chars)
            for context, response in items
            for c in self.criteria
        ]
        return self._collect(self.expected_scores(prompts), len(items))

    def score_pairs(
        self, items: Sequence[tuple[str, str, str]], *, both_orders: bool = True
    ) -> list[tuple[Scores, Scores]]:
        """Rubric scores of both responses of ``(context, a, b)`` items, each shown beside the other.

        With ``both_orders``, each response is rated once as Response 1 and once as Response 2
        and its scores are averaged: a judge that favours a position gives both the same bonus.
        """
        orders = [(0, 1), (1, 0)] if both_orders else [(0, 1)]
        prompts = []
        for context, a, b in items:
            pair = (a, b)
            for first, second in orders:
                for position in (1, 2):
                    for c in self.criteria:
                        prompts.append(
                            pair_prompt(context, pair[first], pair[second], position, c, self.max_chars)
                        )
        flat = self._collect(self.expected_scores(prompts), len(prompts) // len(self.criteria))
        results = []
        per_item = 2 * len(orders)
        for i in range(len(items)):
            rows = flat[i * per_item : (i + 1) * per_item]
            sums: list[dict[str, float]] = [{}, {}]
            for k, (first, second) in enumerate(orders):
                for position, who in ((0, first), (1, second)):
                    for key, value in rows[2 * k + position].items():
                        sums[who][key] = sums[who].get(key, 0.0) + value / len(orders)
            results.append((sums[0], sums[1]))
        return results


def judge_item(record: dict[str, Any]) -> tuple[str, str, str] | tuple[str, str, str, str]:
    """What the judge sees of a canonical record: ``("single", context, response)`` or
    ``("pair", context, chosen, rejected)``."""
    if "chosen" in record and "rejected" in record:
        return "pair", render_transcript(record["prompt"]), record["chosen"], record["rejected"]
    if "responses" in record:  # a ranking: its best response
        return "single", render_transcript(record["prompt"]), record["responses"][0]
    if "messages" in record:
        messages = record["messages"]
        if messages and messages[-1].get("role") == "assistant":
            return "single", render_transcript(messages[:-1]), messages[-1].get("content") or ""
        return "single", "", render_transcript(messages)
    if "prompt" in record:
        return "single", "", render_transcript(record["prompt"])
    return "single", "", str(record.get("text", ""))


def _describe(scores: Scores) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "mean")
    return f"score {scores['mean']:.2f} ({parts})"


class JudgeFilter:
    """Drop records the judge scores below the threshold (batch by batch)."""

    def __init__(
        self, settings: JudgeSettings, judge: RubricJudge | None = None, registry: Any = None
    ) -> None:
        self.settings = settings
        if judge is None:
            if not settings.model:
                raise ConfigError("judge.model: name the judge model (a registry reference, path or hub id)")
            from alignlab.models import load_causal_lm

            model, tokenizer = load_causal_lm(settings.model, registry)
            judge = RubricJudge(
                model,
                tokenizer,
                settings.criteria,
                batch_size=settings.batch_size,
                max_chars=settings.max_chars,
            )
        self.judge = judge
        self.total, self.scored = 0.0, 0

    @property
    def stats(self) -> dict[str, float]:
        return {
            "mean_score": round(self.total / self.scored, 4) if self.scored else 0.0,
            "scored": self.scored,
        }

    def check_batch(self, records: Sequence[dict[str, Any]]) -> list[Verdict]:
        items = [judge_item(r) for r in records]
        singles = [i for i, item in enumerate(items) if item[0] == "single"]
        pairs = [i for i, item in enumerate(items) if item[0] == "pair"]
        verdicts: list[Verdict] = [None] * len(records)
        s = self.settings
        for i, scores in zip(singles, self.judge.score_texts([items[i][1:3] for i in singles])):  # type: ignore[misc]
            self._count(scores["mean"])
            if scores["mean"] < s.threshold:
                verdicts[i] = ("low judge score", _describe(scores))
        pair_items = [items[i][1:4] for i in pairs]
        for i, (chosen, rejected) in zip(
            pairs, self.judge.score_pairs(pair_items, both_orders=s.both_orders)
        ):  # type: ignore[arg-type]
            self._count(chosen["mean"])
            if chosen["mean"] < s.threshold:
                verdicts[i] = ("low judge score", "chosen " + _describe(chosen))
            elif s.min_margin is not None and chosen["mean"] - rejected["mean"] < s.min_margin:
                verdicts[i] = (
                    "judge disagrees with the label",
                    f"chosen {chosen['mean']:.2f} vs rejected {rejected['mean']:.2f} (margin < {s.min_margin})",
                )
        if s.explain:
            self._explain(items, verdicts)
        return verdicts

    def _explain(self, items: list[Any], verdicts: list[Verdict]) -> None:
        """Add the judge's justification to each drop's detail (the report stores it)."""
        import re

        dropped = [i for i, v in enumerate(verdicts) if v is not None]
        asked = []
        for i in dropped:
            score = re.search(r"(\d+\.\d+)", verdicts[i][1])  # type: ignore[index]  (the score shown)
            asked.append((items[i][1], items[i][2], float(score.group(1)) if score else 0.0))
        for i, reason in zip(dropped, self.judge.explain(asked, self.settings.explain_tokens)):
            reason_kind, detail = verdicts[i]  # type: ignore[misc]
            verdicts[i] = (reason_kind, f"{detail}; judge says: {reason}")

    def _count(self, score: float) -> None:
        self.total += score
        self.scored += 1
