"""Where a policy's gold score comes from, and whether a reward can see correctness (testbed only).

Two readings of the testbed's gold scorer (``score = 0.6 * correctness + 0.4 * format * on_topic``,
see ``alignlab.testbed.gold``) that explain what alignment can still gain on top of a policy:

- :func:`gold_breakdown` — the policy's greedy answers to the held-out prompts, per task family:
  gold score, accuracy, format credit, and the *format headroom*: how much the gold score would
  rise if every answer kept its content and had a perfect format. A reward that only judges style
  can lift a policy by at most this much.
- :func:`reward_sees_correctness` — sample ``k`` answers per prompt, take every pair of answers in
  the perfect format of which one is correct and the other not, and count how often the reward
  scores the correct one higher. 0.5 is a reward blind to correctness; PPO, best-of-N and
  rejection sampling cannot raise accuracy beyond what this share lets them.

Both read the gold scorer; neither changes it.

Example:
    >>> breakdown = gold_breakdown("sft", registry=registry)  # doctest: +SKIP
    >>> round(breakdown.format_headroom, 3)  # doctest: +SKIP
    0.089
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alignlab.errors import ConfigError

if TYPE_CHECKING:
    from alignlab.registry import Registry


@dataclass(frozen=True)
class FamilyGold:
    """Gold metrics of one task family's answers."""

    prompts: int
    gold_score: float
    gold_accuracy: float
    gold_format: float
    format_headroom: float


@dataclass(frozen=True)
class GoldBreakdown:
    """A policy's greedy gold metrics, overall and per task family."""

    prompts: int
    gold_score: float
    gold_accuracy: float
    gold_format: float
    format_headroom: float
    families: dict[str, FamilyGold] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gold_score": self.gold_score,
            "gold_accuracy": self.gold_accuracy,
            "gold_format": self.gold_format,
            "format_headroom": self.format_headroom,
        }
        for name, fam in self.families.items():
            out[f"gold_score/{name}"] = fam.gold_score
            out[f"gold_accuracy/{name}"] = fam.gold_accuracy
        return out


@dataclass(frozen=True)
class CorrectnessProbe:
    """How often a reward ranks a correct answer above a wrong one when both are perfectly formatted.

    Attributes:
        pairs: (correct, wrong) pairs of clean sampled answers to the same prompt.
        share: share of them where the reward scored the correct answer higher (ties count half).
        prompts, k: prompts sampled and samples per prompt.
        sampled_accuracy: share of all samples that are correct.
    """

    pairs: int
    share: float | None
    prompts: int
    k: int
    sampled_accuracy: float

    def to_metrics(self) -> dict[str, Any]:
        return {"correctness_pairs": self.pairs, "correctness_share": self.share}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _summarise(judged: list[Any]) -> tuple[float, float, float, float]:
    from alignlab.testbed.gold import WEIGHT_CORRECT, WEIGHT_FORMAT

    scores = [j.score for j in judged]
    perfect_format = [min(1.0, WEIGHT_CORRECT * j.correctness + WEIGHT_FORMAT * j.on_topic) for j in judged]
    return (
        _mean(scores),
        _mean([float(j.correct) for j in judged]),
        _mean([j.form * j.on_topic for j in judged]),
        _mean([p - s for p, s in zip(perfect_format, scores)]),
    )


def gold_breakdown(
    policy: Any,
    n: int = 200,
    registry: Registry | None = None,
    *,
    tokenizer: Any = None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    engine: str = "hf",
) -> GoldBreakdown:
    """Greedy-decode ``policy`` on the first ``n`` held-out testbed prompts; gold metrics per family.

    ``policy`` is a reference (or a loaded model with ``tokenizer``). The overall numbers equal
    ``alignlab.testbed.gold_score(policy, n)``'s for the same settings. ``engine`` (``hf`` |
    ``vllm`` | ``auto``) is what decodes, as in :func:`alignlab.models.generate`.
    """
    from alignlab.testbed.gold import judge
    from alignlab.testbed.world import parse_prompt

    _, _, prompts, responses = _greedy_on_eval_prompts(
        policy, registry, tokenizer, n, max_new_tokens=max_new_tokens, batch_size=batch_size, engine=engine
    )
    judged = [judge(p, r) for p, r in zip(prompts, responses)]
    by_family: dict[str, list[Any]] = defaultdict(list)
    for prompt, j in zip(prompts, judged):
        by_family[str(parse_prompt(prompt).family)].append(j)
    families = {name: FamilyGold(len(items), *_summarise(items)) for name, items in sorted(by_family.items())}
    return GoldBreakdown(len(prompts), *_summarise(judged), families=families)


def reward_sees_correctness(
    policy: Any,
    reward: Any,
    n: int = 200,
    k: int = 8,
    registry: Registry | None = None,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    engine: str = "hf",
) -> CorrectnessProbe:
    """Sample ``k`` answers from ``policy`` to ``n`` held-out prompts; does ``reward`` prefer the right ones?

    Only pairs where both answers have a perfect format (``format * on_topic == 1``) count, so the
    reward cannot tell them apart by style. ``engine`` samples them (:func:`sampled_rounds`).
    """
    from alignlab.rewards import load_scorer
    from alignlab.testbed.data import eval_prompts
    from alignlab.testbed.gold import judge

    if k < 2:
        raise ConfigError(f"reward_sees_correctness: k must be at least 2 (samples per prompt), got {k}")
    model, tokenizer = _load_policy(policy, registry, None)
    scorer = load_scorer(reward, registry)
    prompts = eval_prompts(n)
    wins = 0.0
    pairs = correct = 0
    samples = sampled_rounds(
        model, tokenizer, prompts, k, temperature, max_new_tokens, batch_size, seed, engine=engine
    )
    scores = [scorer(prompts, responses) for responses in samples]
    for i, prompt in enumerate(prompts):
        judged = [judge(prompt, samples[r][i]) for r in range(k)]
        correct += sum(j.correct for j in judged)
        clean = [r for r in range(k) if judged[r].form * judged[r].on_topic == 1.0]
        right = [r for r in clean if judged[r].correct]
        wrong = [r for r in clean if not judged[r].correct]
        for a in right:
            for b in wrong:
                pairs += 1
                diff = scores[a][i] - scores[b][i]
                wins += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    return CorrectnessProbe(
        pairs, wins / pairs if pairs else None, len(prompts), k, correct / (len(prompts) * k)
    )


def pass_at_k(correct: int, samples: int, k: int) -> float:
    """Unbiased pass@k from ``correct`` right answers among ``samples`` (Chen et al. 2021):
    ``1 - C(n - c, k) / C(n, k)``, the chance that k of the samples hold at least one right one."""
    from math import comb

    if not 1 <= k <= samples:
        raise ConfigError(f"pass@{k} needs 1 <= k <= {samples} (the samples per prompt)")
    return 1.0 - comb(samples - correct, k) / comb(samples, k)


@dataclass(frozen=True)
class PassAtK:
    """pass@k of exactly right answers, overall and per task family (testbed held-out prompts).

    Attributes:
        prompts, samples: held-out prompts and sampled answers per prompt (temperature 1).
        overall: k -> pass@k over all prompts; ``families``: family -> k -> pass@k.
        greedy_accuracy: the greedy answers' accuracy on the same prompts, for comparison.
    """

    prompts: int
    samples: int
    overall: dict[int, float]
    families: dict[str, dict[int, float]]
    greedy_accuracy: float

    def to_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"pass@{k}": v for k, v in self.overall.items()}
        for name, curve in self.families.items():
            out.update({f"pass@{k}/{name}": v for k, v in curve.items()})
        return out


def correctness_pass_at_k(
    policy: Any,
    n: int = 200,
    samples: int = 8,
    registry: Registry | None = None,
    *,
    tokenizer: Any = None,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    engine: str = "hf",
) -> PassAtK:
    """Sample ``samples`` answers per held-out prompt: how often do k of them hold an exactly
    right one? What RL with a verifiable reward can teach from (a policy that never samples the
    right answer gets no signal for it), against the greedy accuracy it has. ``engine`` decodes
    the greedy answers and samples the rest (:func:`sampled_rounds`)."""
    from alignlab.eval.best_of_n import curve_sizes
    from alignlab.testbed.gold import is_correct
    from alignlab.testbed.world import parse_prompt

    model, tokenizer, prompts, greedy = _greedy_on_eval_prompts(
        policy, registry, tokenizer, n, max_new_tokens=max_new_tokens, batch_size=batch_size, engine=engine
    )
    draws = sampled_rounds(
        model, tokenizer, prompts, samples, temperature, max_new_tokens, batch_size, seed, engine=engine
    )
    sizes = curve_sizes(samples)
    right = [sum(is_correct(p, d[i]) for d in draws) for i, p in enumerate(prompts)]
    by_family: dict[str, list[int]] = defaultdict(list)
    for prompt, c in zip(prompts, right):
        by_family[str(parse_prompt(prompt).family)].append(c)

    def curve(counts: list[int]) -> dict[int, float]:
        return {k: _mean([pass_at_k(c, samples, k) for c in counts]) for k in sizes}

    return PassAtK(
        len(prompts),
        samples,
        curve(right),
        {name: curve(counts) for name, counts in sorted(by_family.items())},
        _mean([float(is_correct(p, r)) for p, r in zip(prompts, greedy)]),
    )


def sampled_rounds(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    engine: str = "hf",
) -> list[list[str]]:
    """``k`` rounds of one sampled answer per prompt (round r seeded ``seed + r``): (k, prompts).

    ``engine`` is what samples (``hf`` | ``vllm`` | ``auto``, see :func:`alignlab.models.generate`).
    vLLM samples all ``k`` rounds in one call (one engine, not one per round): answer ``i`` of
    round ``r`` is seeded ``seed + r * len(prompts) + i``.
    """
    from alignlab.models import generate
    from alignlab.models.engines import EngineKind, resolve_engine

    kind = resolve_engine(engine, "engine")
    sampling: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "do_sample": True,
        "temperature": temperature,
        "engine": kind,
    }
    if kind == EngineKind.VLLM and prompts:
        flat = generate(model, tokenizer, [p for _ in range(k) for p in prompts], seed=seed, **sampling)
        return [flat[r * len(prompts) : (r + 1) * len(prompts)] for r in range(k)]
    return [generate(model, tokenizer, prompts, seed=seed + round_, **sampling) for round_ in range(k)]


def _greedy_on_eval_prompts(
    policy: Any, registry: Registry | None, tokenizer: Any, n: int, **decoding: Any
) -> tuple[Any, Any, list[str], list[str]]:
    """The loaded policy, its tokenizer, the first ``n`` held-out prompts and its greedy answers."""
    from alignlab.models import generate
    from alignlab.testbed.data import eval_prompts

    model, tokenizer = _load_policy(policy, registry, tokenizer)
    prompts = eval_prompts(n)
    return model, tokenizer, prompts, generate(model, tokenizer, prompts, do_sample=False, **decoding)


def _load_policy(policy: Any, registry: Registry | None, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(policy, str) or type(policy).__name__ in ("Artifact", "ExternalRef"):
        from alignlab.models import load_causal_lm

        return load_causal_lm(policy, registry)
    if tokenizer is None:
        raise ConfigError("gold_breakdown: pass tokenizer= along with a loaded model, or pass a reference")
    return policy, tokenizer
