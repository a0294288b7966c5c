"""Data mixtures with a sampling weight per source (GPT-3 style).

A budget is split between sources by weight. A small, high-quality source may then be seen
several epochs while a large one is seen less than once; the effective epochs per source are
reported. Deterministic given the seed.

The budget is counted in whatever unit ``size`` gives an item: tokens for token lists (Pretrain,
the default ``size=len``), or records (``size=lambda record: 1``) or characters when mixing
records (``alignlab data prepare``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SourceShare:
    """What one source contributes to the mixture.

    ``available_tokens`` and ``sampled_tokens`` are in the unit of the mixture's ``size`` function
    (tokens for token lists; records or characters for records); ``documents`` counts items drawn.
    """

    name: str
    weight: float
    available_tokens: int
    sampled_tokens: int
    documents: int

    @property
    def epochs(self) -> float:
        """Effective epochs: sampled / available units."""
        return self.sampled_tokens / self.available_tokens if self.available_tokens else 0.0


def plan_budget(sizes: Mapping[str, int], weights: Mapping[str, float], total_tokens: int) -> dict[str, int]:
    """Units each source gets: ``total_tokens * w_i / sum(w)`` (sources of weight 0 get none)."""
    if set(sizes) != set(weights):
        raise ValueError("sizes and weights must name the same sources")
    if any(w < 0 for w in weights.values()):
        raise ValueError("mixture weights must be >= 0")
    total_w = sum(weights.values())
    if total_w <= 0:
        raise ValueError("at least one mixture weight must be > 0")
    return {name: round(total_tokens * weights[name] / total_w) for name in sizes}


def sample_mixture(
    sources: Mapping[str, Sequence[T]],
    weights: Mapping[str, float],
    total_tokens: int | None = None,
    seed: int = 0,
    *,
    size: Callable[[T], int] = len,  # type: ignore[assignment]
) -> tuple[list[T], list[SourceShare]]:
    """Draw whole items (documents, records) from each source until its budget is met.

    Each source is walked in a shuffled order, epoch after epoch (re-shuffled each epoch), so
    repetition is spread evenly. ``total_tokens`` defaults to the sum of all sources (one pass
    over everything if the weights were proportional to size).

    Args:
        sources: name -> items (any sequence: token lists, records, lazy index sequences).
        weights: name -> sampling weight (relative).
        total_tokens: the budget, in the unit of ``size``.
        seed: the shuffling seed; the same seed gives the same mixture.
        size: an item's size in budget units; ``len`` (tokens of a token list) by default,
            ``lambda item: 1`` to count records.

    Returns:
        The mixed items (shuffled together) and one SourceShare per source.

    Example:
        >>> docs, shares = sample_mixture({"a": ["x", "y"], "b": ["z"]}, {"a": 1, "b": 1}, 4, size=lambda r: 1)
        >>> sorted(docs), [(s.name, s.epochs) for s in shares]
        (['x', 'y', 'z', 'z'], [('a', 1.0), ('b', 2.0)])
    """
    sizes = {name: sum(size(d) for d in docs) for name, docs in sources.items()}
    for name, docs in sources.items():
        if not len(docs) or sizes[name] == 0:
            raise ValueError(f"mixture source {name!r} is empty")
    budget = plan_budget(sizes, weights, total_tokens if total_tokens is not None else sum(sizes.values()))
    rng = random.Random(seed)
    mixed: list[Any] = []
    shares = []
    for name, docs in sources.items():
        taken, n_docs, order = 0, 0, []
        while taken < budget[name]:
            if not order:
                order = list(range(len(docs)))
                rng.shuffle(order)
            doc = docs[order.pop()]
            mixed.append(doc)
            taken += size(doc)
            n_docs += 1
        shares.append(SourceShare(name, float(weights[name]), sizes[name], taken, n_docs))
    rng.shuffle(mixed)
    return mixed, shares
