"""The best-of-N curve: how much reward picking the best of N samples buys, for N = 1, 2, 4, ..., K.

From K scored samples per prompt, the expected best of N is estimated without bias over all
N-subsets of the K samples (the pass@k estimator of Chen et al. 2021, applied to scores): with the
scores sorted ascending ``s_1 <= ... <= s_K``, the i-th is the maximum of
``C(i - 1, N - 1)`` of the ``C(K, N)`` subsets, so

    E[max of N] = sum_i s_i * C(i - 1, N - 1) / C(K, N).

It uses every sample (lower variance than "the first N"), does not depend on their order, and is
non-decreasing in N (a random (N+1)-subset contains a random N-subset). At N = 1 it is the mean
score, at N = K the maximum.

Example:
    >>> best_of_n_curve([[0.0, 1.0], [0.5, 0.5]])
    {1: 0.5, 2: 0.75}
    >>> expected_max([1.0, 2.0, 3.0], 2)  # subsets {1,2} {1,3} {2,3}: maxima 2, 3, 3
    2.6666666666666665
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import comb
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.errors import ConfigError

if TYPE_CHECKING:
    from alignlab.rewards import Scorer


def curve_sizes(k: int) -> list[int]:
    """N = 1, 2, 4, ... up to ``k``, and ``k`` itself when it is not a power of two."""
    if k < 1:
        raise ConfigError(f"best-of-N needs at least one sample per prompt, got k={k}")
    sizes = [1 << i for i in range(k.bit_length()) if 1 << i <= k]
    return sizes if sizes[-1] == k else [*sizes, k]


def expected_max(scores: Sequence[float], n: int) -> float:
    """Unbiased estimate of E[max of n samples] from the ``len(scores)`` samples of one prompt."""
    k = len(scores)
    if not 1 <= n <= k:
        raise ConfigError(f"best-of-{n} needs 1 <= N <= {k} (the samples per prompt)")
    ordered = sorted(scores)
    total = comb(k, n)
    # comb(i, n - 1) is 0 for i < n - 1: the n - 1 lowest scores are never a subset's maximum
    return sum(s * (comb(i, n - 1) / total) for i, s in enumerate(ordered))


def best_of_n_curve(
    scores: Sequence[Sequence[float]], sizes: Sequence[int] | None = None
) -> dict[int, float]:
    """Mean over prompts of the expected best-of-N score, for each N in ``sizes``.

    Args:
        scores: ``scores[p][j]``, the score of sample j of prompt p, K samples per prompt (P, K).
        sizes: the N values; default :func:`curve_sizes` of K.

    Returns:
        ``{N: mean expected max}``, N ascending.
    """
    if not scores:
        raise ConfigError("best-of-N curve of no prompts")
    k = len(scores[0])
    if any(len(row) != k for row in scores):
        raise ConfigError("best-of-N curve: every prompt needs the same number of samples")
    sizes = sorted(sizes) if sizes is not None else curve_sizes(k)
    return {n: sum(expected_max(row, n) for row in scores) / len(scores) for n in sizes}


def plot_best_of_n(
    curves: Mapping[str, Mapping[int | str, float]], path: str | Path, title: str = "best of N"
) -> Path:
    """Plot one or more best-of-N curves (label -> {N: value}) to a PNG; returns the path.

    Uses matplotlib's Agg canvas directly, so no GUI backend and no global pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, curve in curves.items():
        points = sorted((int(n), float(v)) for n, v in curve.items())
        ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    sizes = sorted({int(n) for curve in curves.values() for n in curve})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("N (samples per prompt)")
    ax.set_ylabel("mean max score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def sample_and_score(
    model: Any,
    tokenizer: Any,
    scorer: Scorer,
    prompts: Sequence[Any],
    *,
    k: int,
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    desc: str = "sampling",
    engine: str = "hf",
    columns: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[list[str]], list[list[float]]]:
    """Sample ``k`` responses per prompt and score them (rejection sampling, best-of-N curves).

    Each prompt is repeated ``k`` times in a generation batch, so a batch holds
    ``max(1, batch_size // k)`` prompts. ``engine`` is what samples (``hf`` | ``vllm`` | ``auto``,
    see :func:`alignlab.models.generate`); vLLM samples every prompt in one call (one engine for
    the whole set, row ``j`` of it seeded ``seed + j``), and the scoring then goes batch by batch.
    ``columns`` (each prompt record's other fields, such as ``answer``) go to the scorer with the
    prompt's K responses (:func:`alignlab.rewards.score_chats`).

    Returns:
        ``(samples, rewards)``, both (P, K): ``samples[p][j]`` is response j to prompt p.
    """
    import torch
    from tqdm.auto import tqdm

    from alignlab.models import generate
    from alignlab.models.engines import EngineKind, resolve_engine
    from alignlab.rewards import score_chats

    per_batch = max(1, batch_size // k)
    sampling: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": True,
        "temperature": temperature,
        "top_p": top_p,
    }
    kind = resolve_engine(engine, "engine")
    pregenerated: list[str] | None = None
    if kind == EngineKind.VLLM and prompts:
        everything = [p for p in prompts for _ in range(k)]  # prompt p at rows p*K .. p*K+K-1
        pregenerated = generate(model, tokenizer, everything, **sampling, seed=seed, engine=kind)
    torch.manual_seed(seed)
    samples: list[list[str]] = []
    rewards: list[list[float]] = []
    bar = tqdm(range(0, len(prompts), per_batch), desc=desc, unit="batch")
    for start in bar:
        chunk = prompts[start : start + per_batch]
        repeated = [p for p in chunk for _ in range(k)]  # (B * K,): prompt p at rows p*K .. p*K+K-1
        if pregenerated is not None:
            responses = pregenerated[start * k : (start + len(chunk)) * k]
        else:
            responses = generate(
                model, tokenizer, repeated, **sampling, batch_size=len(repeated), engine=kind
            )
        rows = columns[start : start + per_batch] if columns else []
        by_column = {
            key: [row.get(key) for row in rows for _ in range(k)] for key in (rows[0] if rows else {})
        }
        scores = score_chats(scorer, repeated, responses, by_column)
        for i in range(len(chunk)):
            samples.append(responses[i * k : (i + 1) * k])
            rewards.append(scores[i * k : (i + 1) * k])
        bar.set_postfix(best=f"{sum(max(r) for r in rewards) / len(rewards):.3f}")
    return samples, rewards
