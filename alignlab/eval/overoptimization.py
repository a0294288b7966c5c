"""Reward over-optimisation: proxy reward, gold score and KL on one plot (Gao et al. 2022).

Optimising a learned (proxy) reward model drives the proxy score up without end, while the true
(gold) score rises, peaks and falls: the policy learns to exploit the reward model. Plotted
against the distance from the initial policy, ``d = sqrt(KL(pi || pi_ref))``, the two curves
part where reward hacking starts. Two optimisers are read this way:

- a PPO run, from the ``history`` metric of its artifact (one entry per step, keys like
  ``step``, ``reward_score``, ``kl``, ``gold_score``; gold scores may be sparser than steps);
- best-of-N sampling (:func:`best_of_n_eval`), whose KL is known in closed form:
  ``KL_bon(N) = log N - (N - 1) / N``.

Example:
    >>> result = overoptimization(registry, "ppo")  # doctest: +SKIP
    >>> result.overoptimized, result.gold_peak_kl  # doctest: +SKIP
    (True, 4.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.errors import ConfigError

if TYPE_CHECKING:
    from alignlab.registry import Registry

PROXY_KEYS = ("reward_score", "reward_mean", "reward", "score", "rm_score")
KL_KEYS = ("kl", "kl_to_reference", "kl_mean", "objective/kl")
GOLD_KEYS = ("gold_score",)
GOLD_DROP_TOLERANCE = 0.02  # gold scores live in [0, 1]: a drop smaller than this is noise


@dataclass(frozen=True)
class OptimizationPoint:
    """One point along an optimisation: its step (or N), KL to the reference, and both scores."""

    step: float
    kl: float
    proxy: float | None = None
    gold: float | None = None

    @property
    def distance(self) -> float:
        """``sqrt(KL)``, the x axis of Gao et al. (a negative KL estimate counts as 0)."""
        return math.sqrt(max(self.kl, 0.0))


def _first(entry: Mapping[str, Any], keys: Sequence[str]) -> tuple[str | None, float | None]:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return key, float(value)
    return None, None


def read_history(history: Sequence[Mapping[str, Any]]) -> tuple[list[OptimizationPoint], str | None]:
    """Points from per-step history entries; entries without a KL are skipped, missing scores are None.

    Returns:
        ``(points sorted by step, the proxy key found)``.
    """
    points, proxy_key = [], None
    for i, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            continue
        _, kl = _first(entry, KL_KEYS)
        key, proxy = _first(entry, PROXY_KEYS)
        _, gold = _first(entry, GOLD_KEYS)
        if kl is None or (proxy is None and gold is None):
            continue
        proxy_key = proxy_key or key
        _, step = _first(entry, ("step",))
        points.append(OptimizationPoint(step if step is not None else float(i), kl, proxy, gold))
    return sorted(points, key=lambda p: p.step), proxy_key


@dataclass(frozen=True)
class OverOptimizationResult:
    """Where the gold score peaked along an optimisation, and whether the proxy kept rising after.

    Attributes:
        points: the (step, KL, proxy, gold) points read.
        gold_peak: the highest gold score. gold_peak_kl: the KL there. gold_peak_step: its step.
        gold_final: the last gold score. proxy_at_gold_peak: the proxy score at the gold peak.
        proxy_final: the last proxy score. kl_final: the last KL.
        overoptimized: the gold score fell more than the tolerance below its peak while the
            proxy score rose past its value there: reward hacking.
        proxy_key: the history key read as the proxy score.
    """

    points: list[OptimizationPoint] = field(repr=False)
    gold_peak: float | None
    gold_peak_kl: float | None
    gold_peak_step: float | None
    gold_final: float | None
    proxy_at_gold_peak: float | None
    proxy_final: float | None
    kl_final: float
    overoptimized: bool
    proxy_key: str | None = None

    def to_metrics(self) -> dict[str, Any]:
        """Flat summary metrics for ``Registry.add_metrics`` (the curve itself stays in ``history``)."""
        keys = (
            "gold_peak",
            "gold_peak_kl",
            "gold_peak_step",
            "gold_final",
            "proxy_at_gold_peak",
            "proxy_final",
            "kl_final",
            "overoptimized",
        )
        return {f"overopt_{k}": getattr(self, k) for k in keys if getattr(self, k) is not None}


def analyze(
    points: Sequence[OptimizationPoint], proxy_key: str | None = None, tolerance: float = GOLD_DROP_TOLERANCE
) -> OverOptimizationResult:
    """Find the gold peak and tell whether the proxy kept climbing while gold fell."""
    if not points:
        raise ConfigError("over-optimisation: no points with a KL and a proxy or gold score")
    gold = [p for p in points if p.gold is not None]
    proxy = [p for p in points if p.proxy is not None]
    peak = max(gold, key=lambda p: p.gold) if gold else None  # type: ignore[arg-type, return-value]
    at_peak = min(proxy, key=lambda p: abs(p.step - peak.step)).proxy if peak and proxy else None
    proxy_final = proxy[-1].proxy if proxy else None
    gold_final = gold[-1].gold if gold else None
    hacked = (
        peak is not None
        and gold_final is not None
        and at_peak is not None
        and proxy_final is not None
        and gold_final < peak.gold - tolerance
        and proxy_final > at_peak
    )  # type: ignore[operator]
    return OverOptimizationResult(
        points=list(points),
        gold_peak=peak.gold if peak else None,
        gold_peak_kl=peak.kl if peak else None,
        gold_peak_step=peak.step if peak else None,
        gold_final=gold_final,
        proxy_at_gold_peak=at_peak,
        proxy_final=proxy_final,
        kl_final=points[-1].kl,
        overoptimized=bool(hacked),
        proxy_key=proxy_key,
    )


def overoptimization(registry: Registry, ref: Any) -> OverOptimizationResult:
    """Read the ``history`` metric of a PPO artifact and analyse it.

    Raises:
        ConfigError: the artifact has no usable ``history`` (names the keys it has instead).
    """
    art = registry.get(ref)
    history = art.metrics.get("history")
    if not isinstance(history, list) or not history:
        raise ConfigError(
            f"{art.ref} has no 'history' metric (per-step PPO statistics); its metrics are: "
            f"{', '.join(sorted(art.metrics)) or 'none'}. Over-optimisation is read from a PPO run."
        )
    points, key = read_history(history)
    if not points:
        raise ConfigError(
            f"{art.ref}: no history entry has a KL ({', '.join(KL_KEYS)}) together with a proxy "
            f"({', '.join(PROXY_KEYS)}) or gold score; first entry keys: {sorted(history[0])}"
        )
    return analyze(points, key)


def plot_overoptimization(
    points: Sequence[OptimizationPoint],
    path: str | Path,
    *,
    x: str = "sqrt_kl",
    title: str = "over-optimisation",
) -> Path:
    """Proxy score (left axis) and gold score (right axis) against sqrt(KL) or KL; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in ("sqrt_kl", "kl"):
        raise ConfigError(f"x axis must be 'sqrt_kl' or 'kl', got {x!r}")

    def xs(series: Sequence[OptimizationPoint]) -> list[float]:
        return [p.distance if x == "sqrt_kl" else p.kl for p in series]

    fig = Figure(figsize=(6, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    proxy = [p for p in points if p.proxy is not None]
    gold = [p for p in points if p.gold is not None]
    lines = []
    if proxy:
        lines += ax.plot(
            xs(proxy), [p.proxy for p in proxy], color="C0", marker=".", label="proxy (reward model)"
        )
    ax.set_ylabel("proxy score", color="C0")
    ax.set_xlabel("sqrt(KL to reference) [nats^0.5]" if x == "sqrt_kl" else "KL to reference [nats]")
    if gold:
        gold_ax = ax.twinx()
        lines += gold_ax.plot(xs(gold), [p.gold for p in gold], color="C1", marker="o", label="gold")
        gold_ax.set_ylabel("gold score", color="C1")
        peak = max(gold, key=lambda p: p.gold)  # type: ignore[arg-type, return-value]
        ax.axvline(xs([peak])[0], color="C1", linestyle=":", alpha=0.7)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(lines, [line.get_label() for line in lines], loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def best_of_n_kl(n: int) -> float:
    """KL(best-of-N || base) = log N - (N - 1) / N (Stiennon et al. 2020; Gao et al. 2022)."""
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class BestOfNResult:
    """Best-of-N curve of a policy under a reward, with the gold curve when the gold scorer applies.

    Attributes:
        reward: N -> expected best-of-N reward. gold: N -> gold score of the reward's pick (or None).
        kl: N -> KL of best-of-N sampling to the policy.
        n: samples per prompt. prompts: prompts sampled. reward_ref: the reward, as given.
    """

    reward: dict[int, float]
    gold: dict[int, float] | None
    kl: dict[int, float]
    n: int
    prompts: int
    reward_ref: str = ""

    def points(self) -> list[OptimizationPoint]:
        """The curve as optimisation points (step = N), for :func:`plot_overoptimization`."""
        return [
            OptimizationPoint(n, self.kl[n], self.reward[n], self.gold[n] if self.gold else None)
            for n in sorted(self.reward)
        ]

    def to_metrics(self) -> dict[str, Any]:
        """Flat metrics for ``Registry.add_metrics``; curves keyed by str(N) as JSON needs."""
        out: dict[str, Any] = {
            "bon_eval_reward": {str(k): v for k, v in self.reward.items()},
            "bon_eval_n": self.n,
            "bon_eval_prompts": self.prompts,
            "bon_eval_reward_ref": self.reward_ref,
        }
        if self.gold:
            out["bon_eval_gold"] = {str(k): v for k, v in self.gold.items()}
        return out


def best_of_n_eval(
    policy: Any,
    reward: Any,
    prompts: str = "testbed:eval?n=64",
    n: int = 8,
    registry: Registry | None = None,
    *,
    gold: bool | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    seed: int = 0,
    limit: int | None = None,
    engine: str = "hf",
) -> BestOfNResult:
    """Sample ``n`` answers per prompt from ``policy``, score them, and build the best-of-N curves.

    The gold curve scores, for each N, the sample the reward would pick — the expected gold score
    of the proxy's best-of-N choice, estimated over all N-subsets like the reward curve.

    Args:
        policy: a causal LM reference. reward: a reward-model reference, import path or callable.
        prompts: a prompt source (``load_records(kind="prompt")``).
        n: samples per prompt (the curve covers N = 1, 2, 4, ..., n).
        registry: resolves references.
        gold: also score with the testbed's gold scorer; default: when ``prompts`` is a testbed source.
        temperature, max_new_tokens, batch_size, seed: sampling settings.
        limit: use only the first N prompts.
        engine: what samples: ``hf`` (transformers' ``generate``), ``vllm`` (vLLM loaded with the
            policy's weights, one engine for all the samples) or ``auto`` (vLLM where it imports).
    """
    from alignlab.data import load_records
    from alignlab.eval.best_of_n import best_of_n_curve, curve_sizes, sample_and_score
    from alignlab.models import load_causal_lm
    from alignlab.models.engines import resolve_engine
    from alignlab.rewards import load_scorer, prompt_text

    sizes = curve_sizes(n)
    engine = resolve_engine(engine, "engine")  # an engine that cannot run here fails before loading
    chats = [
        r["prompt"] for r in load_records(prompts, kind="prompt", registry=registry, limit=limit).records
    ]
    scorer = load_scorer(reward, registry)
    model, tokenizer = load_causal_lm(policy, registry)
    samples, rewards = sample_and_score(
        model,
        tokenizer,
        scorer,
        chats,
        k=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        desc=f"best of {n}",
        engine=engine,
    )
    gold_curve = None
    if gold if gold is not None else prompts.startswith("testbed:"):
        from alignlab.testbed import gold_reward_fn

        golds = [gold_reward_fn([prompt_text(c)] * len(s), s) for c, s in zip(chats, samples)]
        gold_curve = {size: _gold_of_pick(rewards, golds, size) for size in sizes}
    return BestOfNResult(
        reward=best_of_n_curve(rewards, sizes),
        gold=gold_curve,
        kl={size: best_of_n_kl(size) for size in sizes},
        n=n,
        prompts=len(chats),
        reward_ref=reward if isinstance(reward, str) else getattr(reward, "__qualname__", "fn"),
    )


def _gold_of_pick(rewards: Sequence[Sequence[float]], golds: Sequence[Sequence[float]], size: int) -> float:
    """Mean over prompts of E[gold of the reward-best sample in a random ``size``-subset].

    With samples sorted by reward (ties: by position), the i-th (0-based) is the pick of
    C(i, size - 1) of the C(K, size) subsets, as in :func:`alignlab.eval.best_of_n.expected_max`.
    """
    total = 0.0
    for r_row, g_row in zip(rewards, golds):
        order = sorted(range(len(r_row)), key=lambda j: (r_row[j], -j))
        denom = math.comb(len(r_row), size)
        total += sum(g_row[j] * math.comb(i, size - 1) / denom for i, j in enumerate(order))
    return total / len(rewards)
