"""Absolute grading by a judge model, as FastChat's MT-Bench "single answer grading" runs it.

A judge reads a question and an answer (and, when there is one, a reference answer), writes a
short explanation and ends with a rating from 1 to 10 written ``[[rating]]``. The prompts are
FastChat's ``single-v1`` (no reference) and ``single-math-v1`` (reference-guided) from
``fastchat/llm_judge/data/judge_prompts.jsonl`` (Zheng et al. 2023, "Judging LLM-as-a-Judge with
MT-Bench and Chatbot Arena"); the rating is read with FastChat's own patterns (``[[8]]``, else
``[8]``).

A judge is either

- a **local** causal LM (:class:`LocalChatJudge`: any model reference; generates greedily). A
  small local model often forgets the ``[[rating]]``: then the rating is read from its
  probabilities instead, as the expected value of ``1`` ... ``10`` after ``Rating: [[``, and the
  grade says so (``how="probabilities"``); or
- any **OpenAI-compatible** chat endpoint (:class:`EndpointJudge`: OpenAI, vLLM's or llama.cpp's
  server, ...), through the ``openai`` client with a configurable ``base_url``; the API key is
  read from an environment variable, never from a file or the command line. A rating it does not
  write is a failed grade, counted and left out of the means. The same judge also gives
  FastChat's pairwise verdict (``pair-v2``: ``[[A]]`` / ``[[B]]`` / ``[[C]]``), both orders, for
  ``alignlab eval winrate --judge openai:MODEL``.

:func:`grade_answers` grades a set and reports the mean, the per-category means, Vicuna's
**relative score** (the candidate's total over the reference answers' total, both graded by the
same reference-free prompt), and a **length-bias check**: the Spearman correlation between an
answer's length and its score, and the mean score of the longer half minus the shorter half
(judges are known to favour long answers; a correlation near 0 says this one did not here).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from alignlab.errors import ConfigError, DataError
from alignlab.models.endpoint import ChatEndpoint, EndpointError, EndpointSettings

Messages = list[dict[str, str]]

SYSTEM = "You are a helpful assistant."
_RATE = (
    "Be as objective as possible. After providing your explanation, you must rate the response on a "
    'scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".'
)
SINGLE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
    "by an AI assistant to the user question displayed below. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the "
    "response. Begin your evaluation by providing a short explanation. " + _RATE + "\n\n"
    "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
SINGLE_WITH_REFERENCE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
    "by an AI assistant to the user question displayed below. Your evaluation should consider "
    "correctness and helpfulness. You will be given a reference answer and the assistant's answer. "
    "Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and "
    "correct any mistakes. " + _RATE + "\n\n"
    "[Question]\n{question}\n\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]"
    "\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. "
    "Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do "
    "not favor certain names of the assistants. Be as objective as possible. After providing your "
    'explanation, output your final verdict by strictly following this format: "[[A]]" if assistant A is '
    'better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
PAIR = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant "
    "A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")


JudgeError = EndpointError  # the judge's endpoint could not be reached or answered with an error


def read_rating(text: str) -> float | None:
    """The rating a judge wrote: the first ``[[n]]`` (else ``[n]``), FastChat's patterns; None
    when there is none or it is outside 1..10."""
    found = _RATING.search(text) or _RATING_LOOSE.search(text)
    if not found:
        return None
    value = float(found.group(1))
    return value if 1.0 <= value <= 10.0 else None


def grading_messages(question: str, answer: str, reference: str | None = None) -> Messages:
    """The judge's conversation for one answer: FastChat's single-v1, or single-math-v1 with a reference."""
    if reference is None:
        user = SINGLE.format(question=question, answer=answer)
    else:
        user = SINGLE_WITH_REFERENCE.format(question=question, answer=answer, reference=reference)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Grade:
    """One judged answer.

    Attributes:
        score: the rating, 1-10; None when the judge gave none (``how == "failed"``).
        rationale: what the judge wrote.
        how: parsed (the judge wrote ``[[n]]``) | probabilities (a local judge's expected rating) | failed.
    """

    score: float | None
    rationale: str
    how: str


class ChatJudge(Protocol):
    """What grades: ``grade(conversations) -> [Grade]``, and a name for reports."""

    name: str

    def grade(self, conversations: Sequence[Messages]) -> list[Grade]: ...


class LocalChatJudge:
    """A local causal LM as judge: greedy explanation and rating, the rating read from its
    probabilities when it wrote none.

    Args:
        model, tokenizer: the judge (its chat template formats the conversation).
        max_new_tokens: the longest explanation.
        batch_size: conversations per generation batch.
        name: how reports name it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        name: str = "local",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.name = max_new_tokens, batch_size, name

    @classmethod
    def load(cls, ref: str, registry: Any = None, **kwargs: Any) -> LocalChatJudge:
        """A judge from any causal LM reference (artifact, folder, hub id)."""
        from alignlab.models import load_causal_lm

        model, tokenizer = load_causal_lm(ref, registry)
        return cls(model, tokenizer, name=f"llm:{ref}", **kwargs)

    def grade(self, conversations: Sequence[Messages]) -> list[Grade]:
        from alignlab.models import generate

        texts = generate(
            self.model,
            self.tokenizer,
            list(conversations),
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        grades: list[Grade | None] = [None] * len(texts)
        missing = []
        for i, text in enumerate(texts):
            score = read_rating(text)
            if score is not None:
                grades[i] = Grade(score, text.strip(), "parsed")
            else:
                missing.append(i)
        if missing:
            expected = self.expected_ratings([conversations[i] for i in missing], [texts[i] for i in missing])
            for i, score in zip(missing, expected):
                grades[i] = Grade(score, texts[i].strip(), "probabilities")
        return [g for g in grades if g is not None]

    def expected_ratings(self, conversations: Sequence[Messages], explanations: Sequence[str]) -> list[float]:
        """The expected rating 1..10 after the judge's explanation and ``Rating: [[``."""
        import torch

        from alignlab.models.generation import encode_prompts
        from alignlab.models.scoring import option_logprobs

        contexts = [
            ids + self.tokenizer(f"{text.rstrip()}\n\nRating: [[", add_special_tokens=False).input_ids
            for ids, text in zip(encode_prompts(self.tokenizer, list(conversations)), explanations)
        ]
        options = [f"{n}]]" for n in range(1, 11)]  # "1]]" is no prefix of "10]]"
        logps = option_logprobs(
            self.model, self.tokenizer, contexts, [options] * len(contexts), batch_size=self.batch_size
        )
        values = torch.arange(1, 11, dtype=torch.float32)
        return [float((lp.exp() * values).sum()) for lp in logps]


class EndpointJudge:
    """A judge behind an OpenAI-compatible ``/chat/completions`` endpoint
    (:class:`~alignlab.models.endpoint.ChatEndpoint`)."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.endpoint = ChatEndpoint(settings)
        self.settings = settings
        self.name = self.endpoint.name

    def grade(self, conversations: Sequence[Messages]) -> list[Grade]:
        grades = []
        for text in self.endpoint.complete(conversations):
            score = read_rating(text)
            grades.append(Grade(score, text.strip(), "parsed" if score is not None else "failed"))
        return grades

    def p_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        """FastChat's pairwise verdict (pair-v2) per (question, answer shown as A, answer shown as
        B): 1.0 for ``[[A]]``, 0.0 for ``[[B]]``, 0.5 for ``[[C]]`` (a tie) or no verdict."""
        conversations = [
            [
                {"role": "system", "content": PAIR_SYSTEM},
                {"role": "user", "content": PAIR.format(question=q, answer_a=a, answer_b=b)},
            ]
            for q, a, b in zip(prompts, first, second)
        ]
        found = [_VERDICT.search(r) for r in self.endpoint.complete(conversations)]
        return [{"A": 1.0, "B": 0.0}.get(m.group(1), 0.5) if m else 0.5 for m in found]

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[Any]:
        """Judge each pair (A, B) in both orders, as :meth:`alignlab.eval.judge.LLMJudge.compare`."""
        from alignlab.eval.judge import PairVerdict

        a_first = self.p_first(prompts, a, b)
        b_first = self.p_first(prompts, b, a)
        return [PairVerdict(x, 1.0 - y) for x, y in zip(a_first, b_first)]


# ---- grading a set --------------------------------------------------------------------------------


@dataclass
class GradingResult:
    """A set of answers graded by one judge.

    Attributes:
        judge: the judge's name.
        n: answers graded. failed: answers the judge gave no rating (left out of every mean).
        score_mean: mean rating, 1-10 (reference-guided where a reference was given).
        per_category: mean rating per category (questions without one: "all").
        relative_score: Vicuna's relative score, Σ candidate / Σ reference, both graded by the
            reference-free prompt; None without references (or with ``relative=False``).
        reference_score_mean: the reference answers' mean rating under that prompt.
        length_spearman: Spearman correlation between answer length (words) and rating.
        length_gap: mean rating of the longer half of the answers minus that of the shorter half.
        items: per answer: question, category, answer, score, how, rationale (and reference_score).
    """

    judge: str
    n: int
    failed: int
    score_mean: float | None
    per_category: dict[str, float]
    relative_score: float | None = None
    reference_score_mean: float | None = None
    length_spearman: float | None = None
    length_gap: float | None = None
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_metrics(self, source: str) -> dict[str, Any]:
        """Flat metrics for the graded artifact (``grade_*``)."""
        out: dict[str, Any] = {
            "grade_mean": self.score_mean,
            "grade_n": self.n,
            "grade_failed": self.failed,
            "grade_judge": self.judge,
            "grade_questions": source,
        }
        for key in ("relative_score", "reference_score_mean", "length_spearman", "length_gap"):
            if getattr(self, key) is not None:
                out[f"grade_{key}"] = getattr(self, key)
        if len(self.per_category) > 1:
            out["grade_per_category"] = dict(self.per_category)
        return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties at mean ranks); None for fewer than 3 points or a constant."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else None


def length_bias(answers: Sequence[str], scores: Sequence[float]) -> tuple[float | None, float | None]:
    """(Spearman of word count vs score, longer half's mean score minus the shorter half's)."""
    lengths = [float(len(a.split())) for a in answers]
    if len(scores) < 2:
        return None, None
    order = sorted(range(len(scores)), key=lambda i: lengths[i])
    half = len(order) // 2
    short, long_ = [scores[i] for i in order[:half]], [scores[i] for i in order[-half:]]
    return spearman(lengths, scores), (sum(long_) / half - sum(short) / half)


def grade_answers(
    judge: ChatJudge,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    references: Sequence[str | None] | None = None,
    categories: Sequence[str | None] | None = None,
    relative: bool = True,
) -> GradingResult:
    """Grade each answer (against its reference where there is one) and summarise.

    Raises:
        ConfigError: lists of different lengths, or nothing to grade.
    """
    n = len(questions)
    references = list(references) if references is not None else [None] * n
    categories = list(categories) if categories is not None else [None] * n
    if not (len(answers) == len(references) == len(categories) == n):
        raise ConfigError(f"grading: {n} questions, {len(answers)} answers, {len(references)} references")
    if n == 0:
        raise ConfigError("grading: no questions to grade")
    grades = judge.grade([grading_messages(q, a, r) for q, a, r in zip(questions, answers, references)])
    with_reference = [i for i, r in enumerate(references) if r is not None]
    relative_score = reference_mean = None
    items = [
        {
            "question": q,
            "category": c or "all",
            "answer": a,
            "score": g.score,
            "how": g.how,
            "rationale": g.rationale,
        }
        for q, a, c, g in zip(questions, answers, categories, grades)
    ]
    if relative and with_reference:
        pairs = [grading_messages(questions[i], answers[i]) for i in with_reference]
        pairs += [grading_messages(questions[i], references[i]) for i in with_reference]  # type: ignore[arg-type]
        both = judge.grade(pairs)
        m = len(with_reference)
        candidate, reference = both[:m], both[m:]
        kept = [
            (c.score, r.score)
            for c, r in zip(candidate, reference)
            if c.score is not None and r.score is not None
        ]
        if kept:
            relative_score = sum(c for c, _ in kept) / max(1e-9, sum(r for _, r in kept))
            reference_mean = sum(r for _, r in kept) / len(kept)
        for i, r in zip(with_reference, reference):
            items[i]["reference_score"] = r.score
    scored = [(it, it["score"]) for it in items if it["score"] is not None]
    per_category: dict[str, list[float]] = {}
    for it, score in scored:
        per_category.setdefault(it["category"], []).append(score)
    spear, gap = length_bias([it["answer"] for it, _ in scored], [s for _, s in scored])
    return GradingResult(
        judge=judge.name,
        n=n,
        failed=n - len(scored),
        score_mean=_mean([s for _, s in scored]),
        per_category={c: sum(v) / len(v) for c, v in sorted(per_category.items())},
        relative_score=relative_score,
        reference_score_mean=reference_mean,
        length_spearman=spear,
        length_gap=gap,
        items=items,
    )


# ---- questions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradingQuestion:
    """One question to grade answers to: its text, reference answer, category, and a given answer."""

    question: str
    reference: str | None = None
    category: str | None = None
    answer: str | None = None


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def load_grading_questions(path: str) -> list[GradingQuestion]:
    """Questions from a JSONL (or JSON, CSV, parquet) file: ``{question | prompt | turns,
    reference?, category?, answer?}``.

    MT-Bench's own ``question.jsonl`` loads as it is (``turns`` and ``reference`` are lists; the
    first turn is graded). A bad line is a DataError naming the file, line and field.
    """
    from alignlab.data.sources import object_rows

    out = []
    for where, row in object_rows(path, "questions file"):
        question = _first(row.get("question") or row.get("prompt") or row.get("turns"))
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                f"{where}: field 'question' (or 'prompt', 'turns'): a non-empty string is required"
            )
        fields = {}
        for key in ("reference", "category", "answer"):
            value = _first(row.get(key))
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
            fields[key] = value
        out.append(GradingQuestion(question, **fields))
    if not out:
        raise DataError(f"{path}: no questions")
    return out


def parse_judge(spec: str, registry: Any = None, **endpoint: Any) -> ChatJudge:
    """``llm:REF`` (a local model) or ``openai:MODEL`` (an endpoint; ``endpoint`` holds
    :class:`EndpointSettings` fields such as ``base_url``) as a judge."""
    spec = spec.strip()
    if spec.startswith("llm:") and spec[4:].strip():
        return LocalChatJudge.load(spec[4:].strip(), registry)
    if spec.startswith("openai:") and spec[7:].strip():
        given = {k: v for k, v in endpoint.items() if v is not None}
        return EndpointJudge(EndpointSettings(model=spec[7:].strip(), **given))
    raise ConfigError(
        f"judge {spec!r}: write llm:MODEL_REF (a local model) or openai:MODEL (an endpoint, with --judge-url)"
    )
