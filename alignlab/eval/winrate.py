"""Win rate of one policy against another on a prompt set, under a chosen judge.

Both policies answer every prompt (greedy decoding); a judge then says, per prompt, how likely
A's answer is the better one:

- ``gold``: the testbed's gold scorer (testbed prompts only) — 1, 0 or 0.5 on a tie;
- a reward model reference or ``"package.module:function"``: the same from its scores;
- ``llm:JUDGE_REF``: a causal LM asked to compare the two answers, each pair in both orders
  (see :mod:`alignlab.eval.judge`);
- ``openai:MODEL``: an OpenAI-compatible chat endpoint giving FastChat's pairwise verdict, both
  orders (see :mod:`alignlab.eval.grading`).

``win_rate = (wins + ties / 2) / n``, where a prompt is a win when P(A better) > 0.5.

Example:
    >>> result = win_rate("ppo", "sft", "testbed:eval?n=100", judge="gold", registry=registry)  # doctest: +SKIP
    >>> result.win_rate  # doctest: +SKIP
    0.64
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from alignlab.errors import ConfigError, DataError
from alignlab.rewards import Prompt, prompt_text, score_chats

if TYPE_CHECKING:
    from alignlab.registry import Registry

TIE_TOLERANCE = 1e-9


class JudgeKind(StrEnum):
    """Who decides which answer is better."""

    GOLD = "gold"  # the testbed's hidden gold scorer
    REWARD = "reward"  # a reward model or a reward function, pointwise
    LLM = "llm"  # a causal LM comparing the two answers, both orders
    ENDPOINT = "openai"  # an OpenAI-compatible chat endpoint, FastChat's pairwise verdict, both orders

    @property
    def pairwise(self) -> bool:
        """Judges that see both answers at once (and so can be biased by their order)."""
        return self in (JudgeKind.LLM, JudgeKind.ENDPOINT)


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed ``--judge`` value: ``gold``, ``REWARD_REF``, ``llm:JUDGE_REF`` or ``openai:MODEL``."""

    kind: JudgeKind
    ref: str | None = None

    @classmethod
    def parse(cls, spec: str) -> JudgeSpec:
        spec = spec.strip()
        if spec == JudgeKind.GOLD:
            return cls(JudgeKind.GOLD)
        if spec.startswith("llm:"):
            if not spec[4:].strip():
                raise ConfigError("judge 'llm:' needs a model reference, e.g. llm:sft or llm:./judge-model")
            return cls(JudgeKind.LLM, spec[4:].strip())
        if spec.startswith("openai:"):
            if not spec[7:].strip():
                raise ConfigError("judge 'openai:' needs the model the endpoint serves, e.g. openai:gpt-4o")
            return cls(JudgeKind.ENDPOINT, spec[7:].strip())
        if not spec:
            raise ConfigError("judge: write gold, a reward model reference, or llm:JUDGE_REF")
        return cls(JudgeKind.REWARD, spec)

    def __str__(self) -> str:
        names = {
            JudgeKind.GOLD: "gold",
            JudgeKind.LLM: f"llm:{self.ref}",
            JudgeKind.ENDPOINT: f"openai:{self.ref}",
        }
        return names.get(self.kind, self.ref or "")


@dataclass(frozen=True)
class WinRateResult:
    """A against B on one prompt set.

    Attributes:
        win_rate: (wins + ties / 2) / n.
        wins: prompts where P(A better) > 0.5. losses: where it is < 0.5. ties: where it is 0.5.
        n: prompts judged.
        preference_mean: mean P(A better) (soft win rate).
        judge: the judge, as given.
        policy_a: reference of A. policy_b: reference of B.
        score_a_mean: A's mean score (pointwise judges). score_b_mean: B's.
        position_bias: the LLM judge's mean P(label 1) minus 0.5 over both orders (pairwise only).
        preferences: P(A better) per prompt.
    """

    win_rate: float
    wins: int
    losses: int
    ties: int
    n: int
    preference_mean: float
    judge: str
    policy_a: str = ""
    policy_b: str = ""
    score_a_mean: float | None = None
    score_b_mean: float | None = None
    position_bias: float | None = None
    preferences: tuple[float, ...] = ()

    def to_metrics(self) -> dict[str, Any]:
        """Flat metrics for ``Registry.add_metrics`` of policy A (latest result; the history keeps all)."""
        out: dict[str, Any] = {
            "win_rate": self.win_rate,
            "win_rate_opponent": self.policy_b,
            "win_rate_judge": self.judge,
            "win_rate_n": self.n,
            "win_rate_preference_mean": self.preference_mean,
        }
        for key in ("score_a_mean", "score_b_mean", "position_bias"):
            if getattr(self, key) is not None:
                out[f"win_rate_{key}"] = getattr(self, key)
        return out


def summarize(preferences: Sequence[float], judge: str, **extra: Any) -> WinRateResult:
    """Wins, losses and ties from per-prompt P(A better)."""
    if not preferences:
        raise DataError("win rate: no prompts were judged")
    wins = sum(p > 0.5 + TIE_TOLERANCE for p in preferences)
    losses = sum(p < 0.5 - TIE_TOLERANCE for p in preferences)
    n = len(preferences)
    ties = n - wins - losses
    return WinRateResult(
        win_rate=(wins + 0.5 * ties) / n,
        wins=wins,
        losses=losses,
        ties=ties,
        n=n,
        preference_mean=sum(preferences) / n,
        judge=judge,
        preferences=tuple(float(p) for p in preferences),
        **extra,
    )


def pointwise_preferences(scores_a: Sequence[float], scores_b: Sequence[float]) -> list[float]:
    """1 where A scores higher, 0 where lower, 0.5 on a tie."""
    return [0.5 if abs(a - b) <= TIE_TOLERANCE else float(a > b) for a, b in zip(scores_a, scores_b)]


def judge_responses(
    judge: JudgeSpec | str,
    prompts: Sequence[Prompt],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    registry: Registry | None = None,
    *,
    labels: str = "12",
    judge_obj: Any = None,
    endpoint: dict[str, Any] | None = None,
) -> WinRateResult:
    """Judge two answer lists to the same prompts.

    Args:
        judge: ``gold``, a reward reference / import path, or ``llm:REF`` (or a JudgeSpec).
        prompts: the prompts (strings or chats). responses_a, responses_b: the two answer lists.
        registry: resolves references.
        labels: the LLM judge's answer labels ("12" or "AB").
        judge_obj: an already built scorer or :class:`~alignlab.eval.judge.LLMJudge` to use instead
            of loading ``judge`` (tests, or reuse across calls).
        endpoint: for ``openai:MODEL``, :class:`~alignlab.eval.grading.EndpointSettings` fields
            (``base_url``, ``api_key_env``, ...).
    """
    spec = judge if isinstance(judge, JudgeSpec) else JudgeSpec.parse(judge)
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ConfigError(
            f"win rate: {len(prompts)} prompts, {len(responses_a)} and {len(responses_b)} answers"
        )
    if spec.kind.pairwise:
        if judge_obj is not None:
            llm = judge_obj
        elif spec.kind is JudgeKind.ENDPOINT:
            from alignlab.eval.grading import EndpointJudge, EndpointSettings

            given = {k: v for k, v in (endpoint or {}).items() if v is not None}
            llm = EndpointJudge(EndpointSettings(model=spec.ref or "", **given))
        else:
            from alignlab.eval.judge import LLMJudge

            llm = LLMJudge.load(spec.ref or "", registry, labels=labels)
        verdicts = llm.compare([prompt_text(p) for p in prompts], responses_a, responses_b)
        bias = sum(v.position_bias for v in verdicts) / len(verdicts) if verdicts else 0.0
        return summarize([v.p_a for v in verdicts], str(spec), position_bias=bias)
    if spec.kind is JudgeKind.GOLD:
        from alignlab.testbed import gold_reward_fn

        scorer = judge_obj or gold_reward_fn
        scores_a = list(scorer([prompt_text(p) for p in prompts], list(responses_a)))
        scores_b = list(scorer([prompt_text(p) for p in prompts], list(responses_b)))
    else:
        from alignlab.rewards import load_scorer

        scorer = judge_obj or load_scorer(spec.ref, registry)
        scores = score_chats(scorer, [*prompts, *prompts], [*responses_a, *responses_b])
        scores_a, scores_b = scores[: len(prompts)], scores[len(prompts) :]
    return summarize(
        pointwise_preferences(scores_a, scores_b),
        str(spec),
        score_a_mean=sum(scores_a) / len(scores_a),
        score_b_mean=sum(scores_b) / len(scores_b),
    )


def answer(
    policy: Any,
    prompts: Sequence[Prompt],
    registry: Registry | None = None,
    *,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    engine: str = "hf",
) -> list[str]:
    """Greedy answers of the policy ``policy`` (a reference) to ``prompts``; the model is freed after.
    ``engine`` (``hf`` | ``vllm`` | ``auto``) decodes them, as in :func:`alignlab.models.generate`."""
    from alignlab.models import generate, load_causal_lm

    model, tokenizer = load_causal_lm(policy, registry)
    responses = generate(
        model,
        tokenizer,
        list(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        engine=engine,
    )
    del model
    gc.collect()
    return responses


def win_rate(
    policy_a: Any,
    policy_b: Any,
    prompts: str | Sequence[Prompt],
    judge: str = "gold",
    registry: Registry | None = None,
    *,
    limit: int | None = None,
    max_new_tokens: int = 48,
    labels: str = "12",
    batch_size: int = 32,
    engine: str = "hf",
    endpoint: dict[str, Any] | None = None,
) -> WinRateResult:
    """Win rate of ``policy_a`` against ``policy_b``.

    Args:
        policy_a, policy_b: causal LM references.
        prompts: a prompt source (``load_records(kind="prompt")``: a file, ``testbed:eval``, a
            dataset artifact) or the prompts themselves.
        judge: ``gold``, a reward reference / import path, or ``llm:JUDGE_REF``.
        registry: resolves references.
        limit: use only the first N prompts of a source.
        max_new_tokens: answer length.
        labels: the LLM judge's labels.
        batch_size: prompts per generation batch.
        engine: what decodes both policies' answers: ``hf`` (transformers' ``generate``),
            ``vllm`` (vLLM loaded with the policy's weights) or ``auto`` (vLLM where it imports).
        endpoint: the ``openai:MODEL`` judge's endpoint settings (``base_url``, ``api_key_env``).
    """
    from alignlab.models.engines import resolve_engine

    spec = JudgeSpec.parse(judge)  # a bad judge fails before any generation
    engine = resolve_engine(engine, "engine")  # and so does an engine that cannot run here
    if isinstance(prompts, str):
        from alignlab.data import load_records

        chats: list[Any] = [
            r["prompt"] for r in load_records(prompts, kind="prompt", registry=registry, limit=limit).records
        ]
    else:
        chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts][:limit]
    decoding: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "engine": engine}
    responses_a = answer(policy_a, chats, registry, **decoding)
    responses_b = answer(policy_b, chats, registry, **decoding)
    result = judge_responses(
        spec, chats, responses_a, responses_b, registry, labels=labels, endpoint=endpoint
    )
    return dataclasses.replace(result, policy_a=_ref(policy_a, registry), policy_b=_ref(policy_b, registry))


def _ref(policy: Any, registry: Registry | None) -> str:
    ref = getattr(policy, "ref", None)
    if ref:
        return ref
    if registry is not None and isinstance(policy, str):
        try:
            return getattr(registry.resolve(policy), "ref", policy)
        except Exception:  # a label only: never fail a finished evaluation over it
            return policy
    return str(policy)
