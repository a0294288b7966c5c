"""Few-shot multiple choice in the MMLU / C-Eval style, with optional contextual calibration.

Each question is shown after ``k`` solved examples; the model's next-token logits for the option
letters at the answer position (right after ``Answer:``) are compared, softmax over the options
only. Accuracy is reported beside the random baseline (mean of 1 / number of options).

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use") estimates the bias the prompt
itself gives each letter by asking the same k-shot prompt a content-free question ("N/A" as the
question and as every option), then corrects for it: ``p_cal ∝ p / p_cf``.

Questions are JSONL lines ``{"question", "choices": [...], "answer": "B" or 1, "subject"?,
"category"?}``, or C-Eval's and MMLU's native rows ``{"question", "A", "B", "C", "D", "answer"}``
(JSONL, or a CSV with that header, as C-Eval ships ``<subject>_val.csv``; the subject then comes
from the file name). A C-Eval ``subject_mapping.json`` (``{subject: [English name, Chinese name,
category]}``) gives each subject its display name and category.

Templates: ``mmlu`` (Hendrycks et al. 2021: "The following are multiple choice questions (with
answers) about {subject}." ... "Answer:") and ``ceval_zh`` (C-Eval's own prompt, Huang et al.
2023: "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。" ... "答案：").

Example:
    >>> questions = load_questions("mmlu_sample.jsonl")  # doctest: +SKIP
    >>> evaluate_multiple_choice(model, tokenizer, questions, shots=5, calibrate=True).accuracy  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlab.errors import ConfigError, DataError
from alignlab.models.scoring import option_logprobs

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CONTENT_FREE = ("N/A",)


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` is the index of the correct choice."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    category: str | None = None
    subject_name: str | None = None  # the name the header shows (the subject's, by default)
    explanation: str | None = None  # a worked solution (C-Eval dev's column), for chain-of-thought shots


_SPLIT_SUFFIXES = ("_val", "_dev", "_test")


def _subject_of_file(path: Path) -> str:
    stem = path.stem
    for suffix in _SPLIT_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def load_subject_mapping(path: str | Path) -> dict[str, tuple[str, str, str]]:
    """C-Eval's ``subject_mapping.json``: ``{subject: [English name, Chinese name, category]}``."""
    from alignlab.data.sources import read_utf8

    path = Path(path)
    if not path.is_file():
        raise DataError(f"subject mapping not found: {path}")
    try:
        raw = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, list) and len(v) == 3 and all(isinstance(x, str) for x in v) for v in raw.values()
    ):
        raise DataError(
            f"{path}: expected {{subject: [English name, Chinese name, category]}} as C-Eval ships it"
        )
    return {k: (v[0], v[1], v[2]) for k, v in raw.items()}


def load_questions(
    path: str | Path, *, mapping: dict[str, tuple[str, str, str]] | None = None, chinese_names: bool = False
) -> list[Question]:
    """Read questions from a JSONL or CSV file; errors name ``file:line`` and the field.

    ``mapping`` (:func:`load_subject_mapping`) adds each subject's category and display name
    (its Chinese name with ``chinese_names``, for the ``ceval_zh`` template).

    Raises:
        DataError: a missing file, bad JSON, or a record without a question, with fewer than two
            choices, or with an answer that is not one of its letters / indices.
    """
    from alignlab.data.sources import read_utf8

    path = Path(path)
    if not path.is_file():
        raise DataError(f"questions file not found: {path}")
    text = read_utf8(path)
    if path.suffix.lower() == ".csv":
        import csv
        import io

        rows = [(n, row) for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2)]
        default_subject: str | None = _subject_of_file(path)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err})") from None
        default_subject = None
    out = [_question(row, f"{path}:{number}", default_subject) for number, row in rows]
    if not out:
        raise DataError(f"{path}: no questions")
    if mapping:
        out = [_mapped(q, mapping, chinese_names) for q in out]
    return out


def _mapped(q: Question, mapping: dict[str, tuple[str, str, str]], chinese: bool) -> Question:
    if q.subject not in mapping:
        return q
    import dataclasses

    english, zh, category = mapping[q.subject]
    return dataclasses.replace(q, category=q.category or category, subject_name=zh if chinese else english)


def _native_choices(row: dict[str, Any]) -> list[Any] | None:
    """C-Eval's / MMLU's ``A``, ``B``, ... columns, in order (None when the row has none)."""
    choices = []
    for letter in LETTERS:
        if letter not in row or row[letter] is None:
            break
        choices.append(row[letter])
    return choices or None


def _question(row: Any, where: str, default_subject: str | None = None) -> Question:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str):
        raise DataError(f"{where}: expected an object with a 'question' string")
    choices = row.get("choices") if "choices" in row else _native_choices(row)
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise DataError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} options")
    answer = row.get("answer")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        raise DataError(f"{where}: 'answer' must be a letter such as 'B' or a 0-based index, got {answer!r}")
    if not 0 <= index < len(choices):
        raise DataError(f"{where}: answer {answer!r} is not one of the {len(choices)} choices")
    subject = row.get("subject") or default_subject
    category = row.get("category")
    explanation = row.get("explanation")
    return Question(
        row["question"],
        tuple(str(c) for c in choices),
        index,
        str(subject) if subject else None,
        str(category) if category else None,
        explanation=str(explanation).strip() if explanation and str(explanation).strip() else None,
    )


@dataclass(frozen=True)
class Template:
    """How a question is shown: the header (``{subject}`` filled in) and the answer marker; the
    option letters follow the marker after ``letter_prefix``."""

    header: str
    header_without_subject: str
    answer_marker: str
    letter_prefix: str
    cot_lead: str  # what a chain-of-thought answer starts with, after the marker
    cot_conclusion: str  # how it ends, ``{letter}`` filled in
    cot_pattern: str  # a regular expression whose group 1 reads the letter back


TEMPLATES = {
    "mmlu": Template(
        "The following are multiple choice questions (with answers) about {subject}.\n\n",
        "The following are multiple choice questions (with answers).\n\n",
        "Answer:",
        " ",
        " Let's think step by step.",
        "So the answer is {letter}.",
        r"answer is:?\s*\(?([A-Z])\b",
    ),
    "ceval_zh": Template(
        "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
        "以下是单项选择题，请选出其中的正确答案。\n\n",
        "答案：",
        "",
        "让我们一步一步思考，",  # C-Eval's chain-of-thought prompt (Huang et al. 2023, its code)
        "所以答案是{letter}。",
        r"答案是\s*([A-Z])",
    ),
}


def template_named(name: str) -> Template:
    if name not in TEMPLATES:
        raise ConfigError(f"multiple choice: template {name!r} is not one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def format_question(q: Question, with_answer: bool, template: Template = TEMPLATES["mmlu"]) -> str:
    """``question``, the lettered options, then the answer marker (and the letter for a solved example)."""
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices))
    answer = f"{template.letter_prefix}{LETTERS[q.answer]}\n\n" if with_answer else ""
    return f"{q.question}\n{options}\n{template.answer_marker}{answer}"


def format_cot_question(q: Question, with_answer: bool, template: Template) -> str:
    """A chain-of-thought block: the question, its options, the marker and the lead; for a solved
    example also its explanation and the conclusion naming the letter."""
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices))
    head = f"{q.question}\n{options}\n{template.answer_marker}{template.cot_lead}"
    if not with_answer:
        return head
    conclusion = template.cot_conclusion.format(letter=LETTERS[q.answer])
    return f"{head}\n{q.explanation}\n{conclusion}\n\n"


def _header(q: Question, template: Template) -> str:
    """The template's header, naming ``q``'s subject when it has one."""
    name = q.subject_name or (q.subject.replace("_", " ") if q.subject else None)
    return template.header.format(subject=name) if name else template.header_without_subject


def cot_prompt(q: Question, shots: Sequence[Question], template: Template) -> str:
    """The chain-of-thought prompt: header, ``k`` worked examples, the question up to the lead."""
    return (
        _header(q, template)
        + "".join(format_cot_question(s, True, template) for s in shots)
        + format_cot_question(q, False, template)
    )


def read_cot_answer(text: str, template: Template, n_choices: int) -> int | None:
    """The option index a chain-of-thought answer concludes with (the last match of the
    template's pattern before the next question), or None when it names none."""
    import re

    reply = text.split("\n\n", 1)[0]
    found = [m.group(1) for m in re.finditer(template.cot_pattern, reply)]
    letters = [LETTERS.index(x) for x in found if LETTERS.index(x) < n_choices]
    return letters[-1] if letters else None


def few_shot_prompt(q: Question, shots: Sequence[Question], template: Template = TEMPLATES["mmlu"]) -> str:
    """The template's prompt: a header naming the subject, ``k`` solved examples, the question."""
    return (
        _header(q, template)
        + "".join(format_question(s, True, template) for s in shots)
        + format_question(q, False, template)
    )


def select_shots(pool: Sequence[Question], q: Question, k: int) -> list[Question]:
    """The first ``k`` questions of ``pool`` other than ``q``, same subject first (deterministic)."""
    others = [p for p in pool if p is not q and p != q]
    same = [p for p in others if p.subject == q.subject]
    rest = [p for p in others if p.subject != q.subject]
    return (same + rest)[:k]


def calibrate(probs: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Contextual calibration: ``p_cal ∝ p / p_cf`` over the last dimension (K options)."""
    corrected = probs / content_free.clamp_min(1e-12)
    return corrected / corrected.sum(dim=-1, keepdim=True)


@dataclass(frozen=True)
class MultipleChoiceResult:
    """Few-shot multiple-choice results.

    Attributes:
        accuracy: share of questions whose most probable option is the answer (after
            calibration when ``calibrated``).
        random_baseline: expected accuracy of guessing (mean of 1 / options).
        n: questions scored.
        shots: solved examples per prompt.
        calibrated: whether contextual calibration was applied.
        accuracy_uncalibrated: the accuracy before calibration (equal to ``accuracy`` without it).
        per_subject: accuracy by subject (questions without a subject under ``"-"``).
        per_category: accuracy by category (C-Eval's STEM, Social Science, Humanities, Other),
            for questions with one; empty otherwise.
        cot: whether the answers were generated with chain-of-thought and read after the
            reasoning (:func:`evaluate_multiple_choice_cot`).
        unparsed: chain-of-thought answers that named no option (counted wrong).
        predictions: the predicted option index of each question.
        probabilities: the option probabilities of each question (as used for ``predictions``).
    """

    accuracy: float
    random_baseline: float
    n: int
    shots: int
    calibrated: bool
    accuracy_uncalibrated: float
    per_subject: dict[str, float] = field(default_factory=dict)
    per_category: dict[str, float] = field(default_factory=dict)
    cot: bool = False
    unparsed: int = 0
    predictions: list[int] = field(default_factory=list, repr=False)
    probabilities: list[list[float]] = field(default_factory=list, repr=False)

    def to_metrics(self, source: str = "") -> dict[str, Any]:
        """Flat metrics for ``Registry.add_metrics``."""
        out: dict[str, Any] = {
            "mc_accuracy": self.accuracy,
            "mc_random_baseline": self.random_baseline,
            "mc_n": self.n,
            "mc_shots": self.shots,
            "mc_calibrated": self.calibrated,
            "mc_accuracy_uncalibrated": self.accuracy_uncalibrated,
            "mc_per_subject": self.per_subject,
        }
        if self.per_category:
            out["mc_per_category"] = self.per_category
        if self.cot:
            out.update(mc_cot=True, mc_unparsed=self.unparsed)
        if source:
            out["mc_questions"] = source
        return out


def evaluate_multiple_choice(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    *,
    shots: int = 5,
    calibrate_bias: bool = False,
    content_free: Sequence[str] = CONTENT_FREE,
    shot_pool: Sequence[Question] | None = None,
    batch_size: int = 8,
    template: str = "mmlu",
) -> MultipleChoiceResult:
    """k-shot accuracy of ``model`` on ``questions``.

    Args:
        model: a causal LM. tokenizer: its tokenizer.
        questions: the questions to score.
        shots: solved examples before each question.
        calibrate_bias: apply contextual calibration (one extra content-free prompt per distinct
            set of examples and number of options, averaged over ``content_free`` strings).
        content_free: the content-free stand-ins for question and options.
        shot_pool: where examples come from (a dev split); default the other questions.
        batch_size: sequences per forward pass.
        template: ``mmlu`` or ``ceval_zh`` (:data:`TEMPLATES`).
    """
    style = template_named(template)
    if shots < 0:
        raise ConfigError(f"shots must be >= 0, got {shots}")
    if not questions:
        raise DataError("multiple choice: no questions")
    pool = list(shot_pool) if shot_pool is not None else list(questions)
    examples = [select_shots(pool, q, shots) for q in questions]
    letters = [[f"{style.letter_prefix}{LETTERS[i]}" for i in range(len(q.choices))] for q in questions]

    def encode(text: str) -> list[int]:
        return tokenizer(text).input_ids  # the tokenizer's own BOS, as in any document

    contexts = [encode(few_shot_prompt(q, ex, style)) for q, ex in zip(questions, examples)]
    probs = [lp.exp() for lp in option_logprobs(model, tokenizer, contexts, letters, batch_size=batch_size)]
    raw = [int(p.argmax()) for p in probs]
    final = probs
    if calibrate_bias:
        keys = [(tuple(ex), q.subject, len(q.choices)) for q, ex in zip(questions, examples)]
        unique = {key: i for i, key in reversed(list(enumerate(keys)))}  # key -> its first question
        cf_contexts, cf_options, owners = [], [], []
        for key, i in unique.items():
            q = questions[i]
            for text in content_free:
                blank = Question(text, (text,) * len(q.choices), 0, q.subject, q.category, q.subject_name)
                cf_contexts.append(encode(few_shot_prompt(blank, examples[i], style)))
                cf_options.append(letters[i])
                owners.append(key)
        cf_scores = option_logprobs(model, tokenizer, cf_contexts, cf_options, batch_size=batch_size)
        bias: dict[Any, list[torch.Tensor]] = {}
        for key, lp in zip(owners, cf_scores):
            bias.setdefault(key, []).append(lp.exp())
        final = [calibrate(p, torch.stack(bias[key]).mean(dim=0)) for p, key in zip(probs, keys)]
    predictions = [int(p.argmax()) for p in final]
    return _result(
        questions,
        predictions,
        shots=shots,
        calibrated=calibrate_bias,
        accuracy_uncalibrated=sum(r == q.answer for r, q in zip(raw, questions)) / len(questions),
        probabilities=[p.tolist() for p in final],
    )


def _result(questions: Sequence[Question], predictions: list[int], **fields: Any) -> MultipleChoiceResult:
    """Accuracy overall, per subject and per category, and the random baseline, of ``predictions``."""
    hits = [pred == q.answer for pred, q in zip(predictions, questions)]
    by_subject: dict[str, list[bool]] = {}
    by_category: dict[str, list[bool]] = {}
    for q, hit in zip(questions, hits):
        by_subject.setdefault(q.subject or "-", []).append(hit)
        if q.category:
            by_category.setdefault(q.category, []).append(hit)
    n = len(questions)
    accuracy = sum(hits) / n
    fields.setdefault("accuracy_uncalibrated", accuracy)
    return MultipleChoiceResult(
        accuracy=accuracy,
        random_baseline=sum(1 / len(q.choices) for q in questions) / n,
        n=n,
        per_subject={s: sum(h) / len(h) for s, h in sorted(by_subject.items())},
        per_category={c: sum(h) / len(h) for c, h in sorted(by_category.items())},
        predictions=predictions,
        **fields,
    )


def evaluate_multiple_choice_cot(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    *,
    shots: int = 5,
    shot_pool: Sequence[Question] | None = None,
    template: str = "mmlu",
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> MultipleChoiceResult:
    """Chain-of-thought few-shot accuracy: each question follows ``shots`` worked examples (their
    ``explanation``, then the conclusion naming the letter), the model continues greedily from
    the template's lead ("Let's think step by step." / "让我们一步一步思考，"), and the letter is
    read from its conclusion ("So the answer is B." / "所以答案是B。"), before any next question.
    An answer that names no option counts as wrong and in ``unparsed``.

    Raises:
        DataError: an example without an explanation (C-Eval's dev split has them; MMLU has none).
    """
    from alignlab.models.generation import left_pad

    style = template_named(template)
    if not questions:
        raise DataError("multiple choice: no questions")
    pool = list(shot_pool) if shot_pool is not None else list(questions)
    examples = [select_shots(pool, q, shots) for q in questions]
    missing = next((s for ex in examples for s in ex if not s.explanation), None)
    if missing is not None:
        raise DataError(
            f"multiple choice --cot: the example {missing.question[:60]!r} has no 'explanation'; chain-of-thought "
            "examples need worked solutions (C-Eval's dev files have them in the explanation column)"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    contexts = [tokenizer(cot_prompt(q, ex, style)).input_ids for q, ex in zip(questions, examples)]
    replies: list[str] = []
    for start in range(0, len(contexts), batch_size):
        ids, mask = left_pad(contexts[start : start + batch_size], tokenizer.pad_token_id)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        replies.extend(tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True))
    if was_training:
        model.train()
    read = [read_cot_answer(r, style, len(q.choices)) for r, q in zip(replies, questions)]
    predictions = [-1 if p is None else p for p in read]
    return _result(
        questions, predictions, shots=shots, calibrated=False, cot=True, unparsed=sum(p is None for p in read)
    )
