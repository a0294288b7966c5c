"""Per-token rewards and advantages (GAE, REINFORCE), over the masked statistics of
:mod:`alignlab.rl.masked`.

Shapes: ``B`` responses in a batch, ``T`` the padded response length. ``mask`` (B, T) is 1 on
the real tokens of each response and 0 on the padding after its EOS; every function here treats
padding as absent (whatever values it holds never reach a real position).

Example:
    >>> rewards, kl = per_token_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.05)
    >>> advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    >>> advantages = masked_whiten(advantages, mask)  # alignlab.rl.masked
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import torch
from torch import Tensor

from alignlab.errors import ConfigError, did_you_mean
from alignlab.rl.kl import KLEstimator

# --- rewards ------------------------------------------------------------------------------------


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of the last real token of each row of ``mask`` (B, T); refuses empty rows."""
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
        raise ValueError(f"rows {empty} of the response mask have no real token; drop empty responses first")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).amax(dim=1)


def per_token_rewards(
    score: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator | str = KLEstimator.K1,
) -> tuple[Tensor, Tensor]:
    """The InstructGPT / Ziegler et al. per-token reward: ``-β·KL_t``, plus the score at EOS.

    Args:
        score: (B,) sequence score of each response (reward model, gold scorer, ...).
        logprobs: (B, T) log π(a_t | s_t) of the sampled tokens under the policy.
        ref_logprobs: (B, T) the same under the frozen reference model.
        mask: (B, T).
        kl_coef: β.
        kl_estimator: how ``KL_t`` is estimated from one sample (see :class:`KLEstimator`).

    Returns:
        rewards (B, T): ``-β·KL_t`` on every real token, ``+ score`` on the last real token of
        each row, 0 on padding; kl (B, T): the per-token estimate, 0 on padding.
    """
    names = [k.value for k in KLEstimator]
    if kl_estimator not in names:
        raise ConfigError(
            f"unknown KL estimator {kl_estimator!r}; choose one of {names}"
            + did_you_mean(str(kl_estimator), names)
        )
    mask = mask.bool()
    kl = torch.where(mask, KLEstimator(kl_estimator).estimate(logprobs, ref_logprobs), 0)
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rewards = rewards.scatter_add(1, last[:, None], score.to(rewards.dtype)[:, None])
    return rewards, kl


# --- advantage estimators -----------------------------------------------------------------------


def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) on a padded batch.

    ``δ_t = r_t + γ·V_{t+1} - V_t``; ``A_t = δ_t + γλ·A_{t+1}``. The last real token of each row
    is terminal (EOS or the length limit): the value after it is 0. A padding position resets
    the recursion, so padding never leaks into real positions.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value estimates V(s_t) (pass them detached).
        mask: (B, T).
        gamma: discount γ.
        lam: GAE λ (1 = Monte-Carlo returns minus V, 0 = one-step TD).

    Returns:
        advantages (B, T) and returns = advantages + values (B, T), both 0 on padding.
    """
    mask = mask.bool()
    rewards = torch.where(mask, rewards, 0)
    values = torch.where(mask, values, 0)
    next_value = values.new_zeros(values.shape[0])  # (B,)
    running = values.new_zeros(values.shape[0])  # (B,)  A_{t+1}
    columns: list[Tensor] = []
    for t in reversed(range(values.shape[1])):  # a loop over T, vectorised over the batch
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(mask[:, t], delta + gamma * lam * running, 0)
        columns.append(running)
        next_value = values[:, t]
    advantages = torch.stack(columns[::-1], dim=1)
    return advantages, torch.where(mask, advantages + values, 0)


def compute_reinforce(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Baseline-free REINFORCE: advantages = returns = the discounted reward-to-go (B, T).

    ``G_t = Σ_{k≥t} γ^(k-t) r_k`` over the real tokens of the row; ``values`` and ``lam`` are
    ignored (the same thing as GAE with V = 0 and λ = 1).
    """
    return compute_gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)


class AdvantageFn(Protocol):
    """``(rewards, values, mask, gamma, lam) -> (advantages, returns)``, all (B, T)."""

    def __call__(
        self, rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = ..., lam: float = ...
    ) -> tuple[Tensor, Tensor]: ...


class AdvantageEstimator(StrEnum):
    """The built-in advantage estimators; more can be added with :func:`register_advantage_estimator`."""

    GAE = "gae"
    REINFORCE = "reinforce"


ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage_estimator(name: str, fn: AdvantageFn) -> None:
    """Make ``fn`` usable as ``advantage_estimator: name``; a name can be registered once."""
    if name in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"advantage estimator {name!r} is already registered to {ADVANTAGE_ESTIMATORS[name]}"
        )
    ADVANTAGE_ESTIMATORS[str(name)] = fn


def get_advantage_estimator(name: str) -> AdvantageFn:
    """The estimator registered as ``name`` (a :class:`ConfigError` naming the choices otherwise)."""
    if name not in ADVANTAGE_ESTIMATORS:
        names = sorted(ADVANTAGE_ESTIMATORS)
        raise ConfigError(
            f"unknown advantage estimator {name!r}; choose one of {names}" + did_you_mean(name, names)
        )
    return ADVANTAGE_ESTIMATORS[name]


register_advantage_estimator(AdvantageEstimator.GAE, compute_gae)
register_advantage_estimator(AdvantageEstimator.REINFORCE, compute_reinforce)
