"""Critic-free advantages: each prompt's responses form a group, the group is the baseline.

Shapes: ``N`` prompts, ``G`` responses per prompt (``num_generations``); ``scores`` (N, G) is one
sequence reward per response. Every estimator is a pure function ``scores -> advantages`` (N, G),
one advantage per response, which the loss gives to every token of that response.

- ``grpo`` — ``(r - mean_group) / (std_group + ε)`` (Shao et al. 2024, DeepSeekMath; TRL's
  ``scale_rewards="group"``);
- ``dr_grpo`` — ``r - mean_group``, no std division (Liu et al. 2025, "Understanding R1-Zero-like
  training"; used with the ``constant`` loss aggregation);
- ``rloo`` — ``r - mean of the other G-1`` (Ahmadian et al. 2024; OpenRLHF, verl);
- ``reinforce_pp`` — ``(r - mean_batch) / std_batch``: REINFORCE++ (Hu 2025), normalised over the
  whole batch rather than the group;
- ``reinforce_pp_baseline`` — ``r - mean_group``, then normalised over the whole batch
  (REINFORCE++-baseline; verl's ``reinforce_plus_plus_baseline``).

The standard deviations are the unbiased ones (``torch.std``), as TRL and verl compute them.

Example:
    >>> scores = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    >>> grpo_advantages(scores)
    tensor([[ 0.8659, -0.8659, -0.8659,  0.8659]])
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import torch
from torch import Tensor

from alignlab.errors import ConfigError, did_you_mean

STD_EPS = 1e-4  # TRL's GRPO adds 1e-4 to the group std; a group of equal rewards gets advantage 0

GroupAdvantageFn = Callable[[Tensor], Tensor]


def _check(scores: Tensor) -> None:
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"group scores must be (N, G) with G >= 2 responses per prompt, got {tuple(scores.shape)}"
        )


def grpo_advantages(scores: Tensor) -> Tensor:
    """(N, G) -> (N, G): ``(r - mean) / (std + 1e-4)`` within each group."""
    _check(scores)
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True)
    return (scores - mean) / (std + STD_EPS)


def dr_grpo_advantages(scores: Tensor) -> Tensor:
    """(N, G) -> (N, G): ``r - mean`` within each group (Dr. GRPO removes the std division, which
    weighs groups of nearly equal rewards up)."""
    _check(scores)
    return scores - scores.mean(dim=1, keepdim=True)


def rloo_advantages(scores: Tensor) -> Tensor:
    """(N, G) -> (N, G): ``r_i - mean_{j≠i} r_j``, the leave-one-out baseline (unbiased)."""
    _check(scores)
    g = scores.shape[1]
    others = (scores.sum(dim=1, keepdim=True) - scores) / (g - 1)
    return scores - others


def _batch_normalise(x: Tensor) -> Tensor:
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + STD_EPS)


def reinforce_pp_advantages(scores: Tensor) -> Tensor:
    """(N, G) -> (N, G): the rewards normalised over the whole batch (REINFORCE++)."""
    _check(scores)
    return _batch_normalise(scores)


def reinforce_pp_baseline_advantages(scores: Tensor) -> Tensor:
    """(N, G) -> (N, G): the group mean subtracted, then normalised over the whole batch."""
    _check(scores)
    return _batch_normalise(scores - scores.mean(dim=1, keepdim=True))


class GroupAdvantage(StrEnum):
    """The built-in group estimators; more can be added with :func:`register_group_advantage`."""

    GRPO = "grpo"
    DR_GRPO = "dr_grpo"
    RLOO = "rloo"
    REINFORCE_PP = "reinforce_pp"
    REINFORCE_PP_BASELINE = "reinforce_pp_baseline"


GROUP_ADVANTAGES: dict[str, GroupAdvantageFn] = {}


def register_group_advantage(name: str, fn: GroupAdvantageFn) -> None:
    """Make ``fn`` usable as ``grpo.advantage: name``; a name can be registered once."""
    if name in GROUP_ADVANTAGES:
        raise ValueError(f"group advantage {name!r} is already registered to {GROUP_ADVANTAGES[name]}")
    GROUP_ADVANTAGES[str(name)] = fn


def get_group_advantage(name: str) -> GroupAdvantageFn:
    """The estimator registered as ``name`` (a :class:`ConfigError` naming the choices otherwise)."""
    if name not in GROUP_ADVANTAGES:
        names = sorted(GROUP_ADVANTAGES)
        raise ConfigError(
            f"unknown group advantage {name!r}; choose one of {names}" + did_you_mean(name, names)
        )
    return GROUP_ADVANTAGES[name]


register_group_advantage(GroupAdvantage.GRPO, grpo_advantages)
register_group_advantage(GroupAdvantage.DR_GRPO, dr_grpo_advantages)
register_group_advantage(GroupAdvantage.RLOO, rloo_advantages)
register_group_advantage(GroupAdvantage.REINFORCE_PP, reinforce_pp_advantages)
register_group_advantage(GroupAdvantage.REINFORCE_PP_BASELINE, reinforce_pp_baseline_advantages)


def equal_groups(scores: Tensor, tol: float = 0.0) -> Tensor:
    """(N, G) -> (N,) bool: the groups whose rewards are all equal (they carry no signal:
    DAPO's dynamic sampling drops them)."""
    return (scores.amax(dim=1) - scores.amin(dim=1)) <= tol


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), (B,) -> (B,) in [-1, 0].

    0 up to ``max_new_tokens - buffer`` tokens, then falling linearly to -1 at ``max_new_tokens``.
    """
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    start = max_new_tokens - buffer
    return ((start - lengths.float()) / buffer).clamp(-1.0, 0.0)
