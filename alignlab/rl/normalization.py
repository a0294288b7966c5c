"""Normalising sequence scores before they become PPO rewards, and :class:`ScoreShaper`, which does
it to every rollout (normalise, clip, penalise responses that never ended).

A reward model's raw scale is arbitrary; PPO is steadier when the score fed to it has mean 0 and
unit spread. Three choices (:class:`RewardNormalization`): leave scores alone, standardise them
with running moments of every score seen so far, or with the mean/std the reward model stage
measured and stored in its artifact's metrics.

Example:
    >>> moments = RunningMoments()
    >>> moments.update(scores)  # scores: (B,)
    >>> rewards = normalize_scores(scores, moments.mean, moments.std, clip=5.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor

from alignlab.errors import ConfigError

STD_EPS = 1e-8


class RewardNormalization(StrEnum):
    """Where the mean/std that standardise scores come from."""

    NONE = "none"  # raw scores
    RUNNING = "running"  # RunningMoments over every batch of scores seen so far
    REWARD_MODEL = "reward_model"  # the reward model artifact's metrics (see score_moments_from_metrics)


class RunningMoments:
    """Running mean and unbiased std of every value passed to :meth:`update`.

    Batches are merged with Chan et al.'s parallel algorithm (exact, not an exponential average);
    accumulation is in float64. Before two values have been seen, ``std`` is 1 and ``mean`` 0, so
    normalising with them is the identity.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.count = 0

    @property
    def var(self) -> float:
        """Unbiased variance of everything seen (1 before two values)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        """Unbiased standard deviation of everything seen (1 before two values)."""
        return math.sqrt(self.var)

    def update(self, x: Tensor) -> tuple[float, float]:
        """Fold a batch (any shape, all elements count) in; return its own mean and unbiased std.

        The batch std is 0 for a batch of one value.
        """
        x = x.detach().flatten().to(dtype=torch.float64)
        n = x.numel()
        if n == 0:
            raise ValueError("RunningMoments.update got an empty tensor")
        batch_mean = float(x.mean())
        batch_m2 = float((x - batch_mean).square().sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total
        return batch_mean, math.sqrt(batch_m2 / (n - 1)) if n > 1 else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])
        self.count = int(state["count"])


def normalize_scores(scores: Tensor, mean: float, std: float, clip: float | None = None) -> Tensor:
    """``(scores - mean) / std``, then clipped to ``[-clip, clip]`` when ``clip`` is given.

    scores: any shape, typically (B,). ``std`` is floored at 1e-8 so constant scores do not blow
    up.
    """
    normalized = (scores - mean) / max(float(std), STD_EPS)
    return normalized if clip is None else normalized.clamp(-clip, clip)


def score_moments_from_metrics(
    metrics: Mapping[str, Any], mean_key: str = "score_mean", std_key: str = "score_std"
) -> tuple[float, float]:
    """The (mean, std) of reward-model scores stored in an artifact's ``metrics``.

    Used by :attr:`RewardNormalization.REWARD_MODEL`; the key names are the reward stage's.
    """
    missing = [key for key in (mean_key, std_key) if key not in metrics]
    if missing:
        raise ConfigError(
            f"reward_normalization='reward_model' needs {missing} in the reward model's metrics "
            f"(it has {sorted(metrics)}); use 'running' instead, or re-run the reward stage"
        )
    return float(metrics[mean_key]), float(metrics[std_key])


class ScoreShaper:
    """Raw scores (B,) -> the scores PPO optimises: normalise, clip, penalise responses without EOS.

    Args:
        normalization: none | running (moments of every raw score so far, this batch included) |
            reward_model (``reference_moments``, the reward model's stored mean and std).
        clip: clip the normalised score to ``[-clip, clip]`` (None = no clipping).
        missing_eos_penalty: subtracted from the (normalised, clipped) score of every response
            that never emitted EOS (None = no penalty).
        reference_moments: (mean, std) for ``reward_model`` normalisation.
    """

    def __init__(
        self,
        normalization: RewardNormalization | str = RewardNormalization.NONE,
        clip: float | None = None,
        missing_eos_penalty: float | None = None,
        reference_moments: tuple[float, float] | None = None,
    ) -> None:
        self.normalization = RewardNormalization(normalization)
        if self.normalization is RewardNormalization.REWARD_MODEL and reference_moments is None:
            raise ValueError("reward_model normalisation needs the reward model's (mean, std)")
        self.clip = clip
        self.missing_eos_penalty = missing_eos_penalty
        self.reference_moments = reference_moments
        self.moments = RunningMoments()

    def __call__(self, raw: Tensor, ended: Tensor) -> Tensor:
        mean, std = 0.0, 1.0
        if self.normalization is RewardNormalization.RUNNING:
            self.moments.update(raw)
            mean, std = self.moments.mean, self.moments.std
        elif self.normalization is RewardNormalization.REWARD_MODEL:
            mean, std = self.reference_moments  # type: ignore[misc]
        scores = normalize_scores(raw, mean, std, clip=self.clip)
        if self.missing_eos_penalty:
            scores = scores - self.missing_eos_penalty * (~ended.bool()).to(scores.dtype)
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state["moments"])
