"""Data mixtures with a sampling weight per source (GPT-3 style).

A token budget is split between sources by weight. A small, high-quality source may then be
seen several epochs while a large one is seen less than once; the effective epochs per source
are reported. Deterministic given the seed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceShare:
    """What one source contributes to the mixture."""

    name: str
    weight: float
    available_tokens: int
    sampled_tokens: int
    documents: int

    @property
    def epochs(self) -> float:
        """Effective epochs: sampled tokens / available tokens."""
        return self.sampled_tokens / self.available_tokens if self.available_tokens else 0.0


def plan_budget(sizes: Mapping[str, int], weights: Mapping[str, float], total_tokens: int) -> dict[str, int]:
    """Tokens each source gets: ``total_tokens * w_i / sum(w)`` (sources of weight 0 get none)."""
    if set(sizes) != set(weights):
        raise ValueError("sizes and weights must name the same sources")
    if any(w < 0 for w in weights.values()):
        raise ValueError("mixture weights must be >= 0")
    total_w = sum(weights.values())
    if total_w <= 0:
        raise ValueError("at least one mixture weight must be > 0")
    return {name: round(total_tokens * weights[name] / total_w) for name in sizes}


def sample_mixture(
    sources: Mapping[str, Sequence[Sequence[int]]],
    weights: Mapping[str, float],
    total_tokens: int | None = None,
    seed: int = 0,
) -> tuple[list[Sequence[int]], list[SourceShare]]:
    """Draw whole documents from each source until its token budget is met.

    Each source is walked in a shuffled order, epoch after epoch (re-shuffled each epoch), so
    repetition is spread evenly. ``total_tokens`` defaults to the sum of all sources (one pass
    over everything if the weights were proportional to size).

    Returns:
        The mixed documents (shuffled together) and one SourceShare per source.
    """
    sizes = {name: sum(len(d) for d in docs) for name, docs in sources.items()}
    for name, docs in sources.items():
        if not docs or sizes[name] == 0:
            raise ValueError(f"mixture source {name!r} is empty")
    budget = plan_budget(sizes, weights, total_tokens if total_tokens is not None else sum(sizes.values()))
    rng = random.Random(seed)
    mixed: list[Sequence[int]] = []
    shares = []
    for name, docs in sources.items():
        taken, n_docs, order = 0, 0, []
        while taken < budget[name]:
            if not order:
                order = list(range(len(docs)))
                rng.shuffle(order)
            doc = docs[order.pop()]
            mixed.append(doc)
            taken += len(doc)
            n_docs += 1
        shares.append(SourceShare(name, float(weights[name]), sizes[name], taken, n_docs))
    rng.shuffle(mixed)
    return mixed, shares
