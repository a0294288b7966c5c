"""Reward-model accuracy on a preference set: how often it scores ``chosen`` above ``rejected``.

Any scorer works (a reward-model artifact, ``"package.module:function"``, a callable). A reward
model sees the whole chat prompt, as it was trained; a function sees the last user turn.

Example:
    >>> result = evaluate_reward_accuracy("reward_model", "testbed:preferences?n=200&seed=3")  # doctest: +SKIP
    >>> result.accuracy, result.margin_mean  # doctest: +SKIP
    (0.86, 1.9)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignlab.errors import DataError
from alignlab.rewards import Scorer, load_scorer, score_chats

if TYPE_CHECKING:
    from alignlab.registry import Registry


@dataclass(frozen=True)
class RewardAccuracyResult:
    """Agreement of a scorer with preference labels.

    Attributes:
        accuracy: share of pairs scored chosen > rejected; a tie counts one half.
        margin_mean: mean of score(chosen) - score(rejected).
        pairs: pairs scored.
        ties: pairs scored equal.
        source: the preference data.
    """

    accuracy: float
    margin_mean: float
    pairs: int
    ties: int
    source: str = ""

    def to_metrics(self) -> dict[str, Any]:
        """Flat metrics for ``Registry.add_metrics``."""
        return {
            "rm_accuracy": self.accuracy,
            "rm_margin_mean": self.margin_mean,
            "rm_pairs": self.pairs,
            "rm_ties": self.ties,
            "rm_data": self.source,
        }


def reward_accuracy(
    scorer: Scorer, records: Sequence[dict[str, Any]], source: str = ""
) -> RewardAccuracyResult:
    """Accuracy of ``scorer`` on canonical preference records (``prompt``, ``chosen``, ``rejected``).

    Each response is scored once, in one call for all chosen and rejected responses.
    """
    if not records:
        raise DataError(f"reward accuracy: no preference pairs in {source or 'the data'}")
    prompts = [r["prompt"] for r in records]
    scores = score_chats(
        scorer, prompts + prompts, [r["chosen"] for r in records] + [r["rejected"] for r in records]
    )
    n = len(records)
    gaps = [c - r for c, r in zip(scores[:n], scores[n:])]
    ties = sum(g == 0 for g in gaps)
    return RewardAccuracyResult(
        accuracy=(sum(g > 0 for g in gaps) + 0.5 * ties) / n,
        margin_mean=sum(gaps) / n,
        pairs=n,
        ties=ties,
        source=source,
    )


def evaluate_reward_accuracy(
    reward: Any,
    source: str,
    registry: Registry | None = None,
    *,
    limit: int | None = None,
    batch_size: int = 32,
) -> RewardAccuracyResult:
    """Load the scorer and the preference data (``load_records(source, kind="preference")``), then score."""
    from alignlab.data import load_records

    records = load_records(source, kind="preference", registry=registry, limit=limit)
    scorer = load_scorer(reward, registry, batch_size=batch_size)
    return reward_accuracy(scorer, records.records, source=source)
