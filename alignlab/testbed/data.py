"""Seeded data sets of the testbed: corpus, demonstrations, preferences, rankings, prompt splits.

Every generator draws from its own ``random.Random`` stream named after the generator and the
seed, so the same call gives the same records in every process, and generators never disturb
each other (or the global ``random``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import random
from collections.abc import Callable
from typing import Any

from alignlab.errors import ConfigError, DataError, did_you_mean
from alignlab.testbed import tasks
from alignlab.testbed.gold import gold_response_score
from alignlab.testbed.styles import (
    FILLERS,
    HEDGES,
    RAMBLES,
    Defect,
    annotator_of,
    habit_defects,
    render,
    sample_defects,
)
from alignlab.testbed.world import NAMES, Split, Task, families, sample_task

TESTBED_VERSION = "1"

# Candidates for preference pairs and rankings: half from sloppy annotators, wrong answers less
# often than style defects. Then about 80% of pairs are decided by style alone (easy for a tiny
# reward model to see) and about 30% differ in correctness (which needs the pretrained knowledge).
CANDIDATE_SLOPPY_SHARE = 0.5
CANDIDATE_WRONG_WEIGHT = 0.6
PAIR_MIN_GAP = 0.1  # chosen and rejected differ by at least this much gold score
#: Gold-score gaps at which a pair is rated LLaMA-2's "significantly better", "better", "slightly
#: better" (below the last: "negligibly better"): about the quartiles of the pairs' gaps (0.22,
#: 0.32, 0.40 over 2,000 pairs of seed 0), rounded, so the four levels are about equally common.
RATING_GAPS = (0.4, 0.3, 0.2)
RANK_MIN_GAP = 0.05  # neighbours in a ranking differ by at least this much
MAX_RANKING_K = 6
EVAL_SIZE = 1000  # length of the fixed held-out list
QUESTION_SHARE = 0.5  # pretraining sentences preceded by the question they answer
BIO_SHARE = 0.25  # pretraining documents that tell the facts of one person


def _rng(stream: str, seed: int) -> random.Random:
    return random.Random(f"alignlab.testbed/{TESTBED_VERSION}/{stream}/{seed}")


def _check_count(n: int, what: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"{what}: n must be a non-negative integer, got {n!r}")


def _check_share(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must be between 0 and 1, got {value!r}")


def respond(
    task: Task, defects: frozenset[Defect], rng: random.Random, phrases: dict[Defect, int] | None = None
) -> str:
    """An answer to ``task`` with the given defects (WRONG picks a plausible mistake)."""
    words = task.mistake(rng) if Defect.WRONG in defects else task.answer
    return render(words, defects, rng, phrases)


def habitual_share() -> float:
    """Share of prompts (families are equally likely) that a habitual annotator answers."""
    return sum(annotator_of(f).habit is not None for f in families()) / len(families())


def sloppy_rates(sloppy_share: float) -> tuple[float, float]:
    """P(sloppy answer) on habitual wordings and on careful ones, averaging to ``sloppy_share``.

    Habitual annotators are sloppy twice as often as the average (at most always), so their
    habit is the most likely answer on their wordings whenever ``sloppy_share`` > 0.25.
    """
    h = habitual_share()
    on_habitual = min(1.0, 2 * sloppy_share, sloppy_share / h)
    on_careful = (sloppy_share - h * on_habitual) / (1 - h)
    return on_habitual, min(1.0, max(0.0, on_careful))


def demonstrate(task: Task, rng: random.Random, sloppy_share: float) -> str:
    """The answer the annotator of this wording writes: clean, or sloppy in their own way."""
    annotator = annotator_of(task.family)
    on_habitual, on_careful = sloppy_rates(sloppy_share)
    if annotator.habit is None:
        return respond(task, sample_defects(rng, on_careful), rng)
    defects = habit_defects(annotator, rng) if rng.random() < on_habitual else frozenset()
    return respond(task, defects, rng, {annotator.habit: annotator.phrase})


def pretraining_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Plain-text documents (3–6 sentences) that state facts of the world; no chat markup.

    Three in four documents mix facts of every family ("3 plus 4 is 7.", "After 7 comes 8.",
    "The list cat, owl, fox backwards is fox, owl, cat."), half of them preceded by the question
    they answer (plain text, no answer format); one in four tells the facts of one person
    ("Mira lives in Oakvale. ...").
    """
    _check_count(n_docs, "pretraining_corpus")
    rng = _rng("pretrain", seed)
    docs = []
    for _ in range(n_docs):
        if rng.random() < BIO_SHARE:
            sentences = tasks.person_bio(rng.choice(NAMES), rng)
            sentences += [sample_task(rng).statement(rng) for _ in range(rng.randint(0, 2))]
        else:
            sentences = []
            for _ in range(rng.randint(3, 6)):
                task = sample_task(rng)
                fact = task.statement(rng)
                sentences.append(f"{task.prompt} {fact}" if rng.random() < QUESTION_SHARE else fact)
        docs.append(" ".join(sentences))
    return docs


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text to train the BPE tokenizer on: the corpus, prompts of every family, every answer style."""
    rng = _rng("tokenizer", seed)
    texts = pretraining_corpus(1000, seed)
    for _ in range(1000):
        task = sample_task(rng)
        defects = frozenset(rng.sample(list(Defect), rng.randint(0, 2)))
        texts += [task.prompt, respond(task, defects, rng)]
    texts += list(FILLERS) + list(HEDGES) + [r.format(answer="7") for r in RAMBLES]
    return texts


def sft_records(n: int, seed: int = 0, sloppy_share: float = 0.35) -> list[dict[str, Any]]:
    """Chat demonstrations (one user turn, one assistant turn) on train-split prompts.

    A share ``sloppy_share`` of the answers are sloppy: one or two defects among filler,
    hedging, rambling and a wrong answer; the rest are clean and correct. Sloppiness clusters
    on the families of habitual annotators (see :mod:`alignlab.testbed.styles`), where each
    one's tic is the most common answer.
    """
    _check_count(n, "sft_records")
    _check_share(sloppy_share, "sloppy_share")
    rng = _rng("sft", seed)
    records = []
    for _ in range(n):
        task = sample_task(rng, Split.TRAIN)
        response = demonstrate(task, rng, sloppy_share)
        messages = [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": response}]
        records.append({"messages": messages})
    return records


def _candidates(task: Task, rng: random.Random, count: int, min_gap: float) -> list[tuple[float, str]]:
    """``count`` annotator responses whose gold scores are pairwise at least ``min_gap`` apart."""
    kept: list[tuple[float, str]] = []
    for _ in range(2000):
        text = respond(task, sample_defects(rng, CANDIDATE_SLOPPY_SHARE, CANDIDATE_WRONG_WEIGHT), rng)
        score = gold_response_score(task.prompt, text)
        if all(abs(score - s) >= min_gap for s, _ in kept):
            kept.append((score, text))
            if len(kept) == count:
                return kept
    raise RuntimeError(f"could not draw {count} distinct responses for {task.prompt!r}")  # pragma: no cover


def rating_from_gap(gap: float) -> str:
    """LLaMA-2's rating of a pair whose gold scores differ by ``gap`` (:data:`RATING_GAPS`)."""
    from alignlab.data.ratings import LEVELS

    for level, threshold in enumerate(RATING_GAPS):
        if gap >= threshold:
            return LEVELS[level]
    return LEVELS[-1]


def preference_pairs(n: int, seed: int = 0, label_noise: float = 0.1) -> list[dict[str, str]]:
    """Chosen/rejected pairs on train-split prompts, labelled by the gold scorer.

    Both responses come from the annotators' styles (clean, filler, hedge, ramble, wrong); the
    one with the higher gold score is ``chosen``, except that a share ``label_noise`` of the
    pairs is flipped, as human labellers disagree. Each pair carries a LLaMA-2 ``rating`` from
    its gold-score gap (:func:`rating_from_gap`; a flipped pair keeps its rating, as a
    labeller's confident mistake).
    """
    _check_count(n, "preference_pairs")
    _check_share(label_noise, "label_noise")
    rng = _rng("preferences", seed)
    pairs = []
    for _ in range(n):
        task = sample_task(rng, Split.TRAIN)
        (score_a, a), (score_b, b) = _candidates(task, rng, 2, PAIR_MIN_GAP)
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
        rating = rating_from_gap(abs(score_a - score_b))
        pairs.append({"prompt": task.prompt, "chosen": chosen, "rejected": rejected, "rating": rating})
    return pairs


def rankings(n: int, k: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """K-way rankings on train-split prompts; rank 1 is the best by gold score (no noise).

    The responses are listed best first; ``rank`` says the same explicitly.
    """
    _check_count(n, "rankings")
    if not 2 <= k <= MAX_RANKING_K:
        raise ConfigError(f"rankings: k must be between 2 and {MAX_RANKING_K}, got {k!r}")
    rng = _rng("rankings", seed)
    records = []
    for _ in range(n):
        task = sample_task(rng, Split.TRAIN)
        ranked = sorted(_candidates(task, rng, k, RANK_MIN_GAP), key=lambda c: -c[0])
        responses = [{"text": text, "rank": i + 1} for i, (_, text) in enumerate(ranked)]
        records.append({"prompt": task.prompt, "responses": responses})
    return records


def rl_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts for PPO / rejection sampling, from the RL split (disjoint from train and eval)."""
    _check_count(n, "rl_prompts")
    rng = _rng("rl", seed)
    return [{"prompt": sample_task(rng, Split.RL).prompt} for _ in range(n)]


@functools.lru_cache(maxsize=1)
def _eval_list() -> tuple[str, ...]:
    """The fixed held-out list: eval-split prompts, families taken in turn, no duplicates.

    A family whose eval split runs out of new prompts (world facts, counting) drops out of the
    turn, so later parts of the list hold the large families only.
    """
    rng = _rng("eval", 0)
    seen: set[str] = set()
    prompts: list[str] = []
    active = list(families())
    while active and len(prompts) < EVAL_SIZE:
        for family in list(active):
            for _ in range(500):
                prompt = sample_task(rng, Split.EVAL, family).prompt
                if prompt not in seen:
                    seen.add(prompt)
                    prompts.append(prompt)
                    break
            else:
                active.remove(family)
    return tuple(prompts[:EVAL_SIZE])


def eval_prompts(n: int) -> list[str]:
    """The first ``n`` prompts of the fixed held-out list (identical across calls and processes)."""
    _check_count(n, "eval_prompts")
    pool = _eval_list()
    if n > len(pool):
        raise ConfigError(f"eval_prompts: the held-out list has {len(pool)} prompts, asked for {n}")
    return list(pool[:n])


class SourceName(str, enum.Enum):
    """The data sets ``source()`` (and ``testbed:<name>`` references) can make."""

    PRETRAIN = "pretrain"
    SFT = "sft"
    PREFERENCES = "preferences"
    RANKINGS = "rankings"
    PROMPTS = "prompts"
    EVAL = "eval"
    TOKENIZER = "tokenizer"

    def __str__(self) -> str:
        return self.value


def _tokenizer_texts(n: int, seed: int = 0) -> list[str]:
    """The first ``n`` texts of ``tokenizer_corpus(seed)`` (all of them for n = 0)."""
    texts = tokenizer_corpus(seed)
    return texts[:n] if n else texts


_Maker = Callable[..., list[Any]]
_SOURCES: dict[SourceName, tuple[_Maker, int, Callable[[Any], dict[str, Any]] | None]] = {
    # name: (generator, default n, how one item becomes a record)
    SourceName.PRETRAIN: (pretraining_corpus, 2000, lambda doc: {"text": doc}),
    SourceName.SFT: (sft_records, 1000, None),
    SourceName.PREFERENCES: (preference_pairs, 1000, None),
    SourceName.RANKINGS: (rankings, 500, None),
    SourceName.PROMPTS: (rl_prompts, 500, None),
    SourceName.EVAL: (eval_prompts, 200, lambda prompt: {"prompt": prompt}),
    SourceName.TOKENIZER: (_tokenizer_texts, 0, lambda text: {"text": text}),
}


def source(name: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Records of one testbed data set, by name.

    Args:
        name: ``pretrain`` ({"text"}), ``sft`` ({"messages"}), ``preferences`` ({"prompt",
            "chosen", "rejected"}), ``rankings`` ({"prompt", "responses"}), ``prompts`` and
            ``eval`` ({"prompt"}), ``tokenizer`` ({"text"}: the BPE training text; n=0 means all).
        **kwargs: ``n`` and the generator's own knobs (``seed``, ``sloppy_share``,
            ``label_noise``, ``k``); numeric strings are accepted (e.g. from a query string).

    Example:
        >>> from alignlab.testbed import source
        >>> source("sft", n=2, seed=1)[0]["messages"][1]["role"]
        'assistant'
    """
    try:
        kind = SourceName(name)
    except ValueError:
        names = [s.value for s in SourceName]
        raise DataError(
            f"unknown testbed source '{name}'{did_you_mean(name, names)}; known: {', '.join(names)}"
        ) from None
    maker, default_n, to_record = _SOURCES[kind]
    options = dict(list(inspect.signature(maker).parameters.items())[1:])  # after n / n_docs
    n = _coerce(kwargs.pop("n", kwargs.pop("n_docs", default_n)), 0, f"testbed:{kind} option 'n'")
    for key, value in list(kwargs.items()):
        if key not in options:
            valid = ["n", *options]
            raise ConfigError(
                f"testbed source '{kind}' has no option '{key}'{did_you_mean(key, valid)}; "
                f"valid: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(value, options[key].default, f"testbed:{kind} option '{key}'")
    items = maker(n, **kwargs)
    return [to_record(item) for item in items] if to_record else items


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Numeric strings become the default's type (so ``n=500`` from a query string works)."""
    if not isinstance(value, str) or isinstance(default, str) or default is inspect.Parameter.empty:
        return value
    try:
        return type(default)(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a {type(default).__name__}, got {value!r}") from None
