"""Running moments and score normalisation."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.rl.normalization import (
    RewardNormalization,
    RunningMoments,
    normalize_scores,
    score_moments_from_metrics,
)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=g, dtype=torch.float64) * 3 + 5 for n in (4, 1, 17, 2, 64)]


def test_running_moments_equal_moments_of_the_concatenation() -> None:
    moments = RunningMoments()
    seen: list[torch.Tensor] = []
    for batch in _batches():
        batch_mean, batch_std = moments.update(batch)
        seen.append(batch)
        everything = torch.cat(seen)
        assert batch_mean == pytest.approx(float(batch.mean()))
        assert batch_std == pytest.approx(float(batch.std()) if batch.numel() > 1 else 0.0)
        assert moments.mean == pytest.approx(float(everything.mean()))
        assert moments.std == pytest.approx(float(everything.std()))  # unbiased
        assert moments.count == everything.numel()


def test_running_moments_start_as_identity_and_resume_identically() -> None:
    fresh = RunningMoments()
    assert (fresh.mean, fresh.std) == (0.0, 1.0)
    batches = _batches()
    moments = RunningMoments()
    for batch in batches[:2]:
        moments.update(batch)
    resumed = RunningMoments()
    resumed.load_state_dict(moments.state_dict())
    for batch in batches[2:]:
        assert moments.update(batch) == resumed.update(batch)
    assert resumed.state_dict() == moments.state_dict()
    with pytest.raises(ValueError, match="empty"):
        moments.update(torch.tensor([]))


def test_normalize_scores_hand_worked() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(normalize_scores(scores, mean=2.0, std=0.5), torch.tensor([-2.0, 0.0, 2.0]))
    torch.testing.assert_close(normalize_scores(scores, 2.0, 0.5, clip=1.5), torch.tensor([-1.5, 0.0, 1.5]))
    assert torch.isfinite(normalize_scores(scores, 2.0, 0.0)).all()


def test_reward_model_moments_from_metrics() -> None:
    assert score_moments_from_metrics({"score_mean": 0.3, "score_std": 2.0, "accuracy": 0.7}) == (0.3, 2.0)
    with pytest.raises(ConfigError, match="score_std"):
        score_moments_from_metrics({"score_mean": 0.3})
    assert [r.value for r in RewardNormalization] == ["none", "running", "reward_model"]
