"""KL between the policy and the reference model: per-token estimators and the KL coefficient.

The coefficient β weighs the per-token penalty ``-β·KL_t`` in the PPO reward. It is either fixed
or adapted toward a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", as TRL's legacy ``AdaptiveKLController`` had it). Both controllers save and load
their state so that a resumed run continues with the very same β.

Example:
    >>> ctl = make_kl_controller("adaptive", 0.1, target=6.0, horizon=10_000)
    >>> ctl.update(current_kl=12.0, n_steps=256)  # KL far above target: β grows by 0.2·256/10_000
    >>> round(ctl.value, 6)
    0.100512
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

import torch
from torch import Tensor

from alignlab.errors import ConfigError, TrainingError, did_you_mean


def _k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio.square()


def _k3(log_ratio: Tensor) -> Tensor:
    # r = p_ref / p = exp(-log_ratio); (r - 1) - log r, written with expm1 for small ratios.
    return torch.expm1(-log_ratio) + log_ratio


class KLEstimator(StrEnum):
    """Per-token estimators of KL(π ‖ π_ref) from one sample (J. Schulman, "Approximating KL
    divergence", 2020). With ``log_ratio = logp - logp_ref`` and ``r = p_ref / p``:

    - ``k1``: ``log_ratio`` — unbiased, can be negative per token (InstructGPT's penalty).
    - ``k2``: ``0.5 · log_ratio²`` — biased, low variance, non-negative.
    - ``k3``: ``(r - 1) - log r`` — unbiased and non-negative.
    """

    K1 = "k1"
    K2 = "k2"
    K3 = "k3"

    def estimate(self, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
        """Per-token KL estimate, same shape as the inputs (e.g. ``(B, T)``)."""
        return _KL_ESTIMATES[self](logprobs - ref_logprobs)


_KL_ESTIMATES: dict[KLEstimator, Callable[[Tensor], Tensor]] = {
    KLEstimator.K1: _k1,
    KLEstimator.K2: _k2,
    KLEstimator.K3: _k3,
}


class KLController(Protocol):
    """What PPO needs from a KL coefficient: its value, a step, and resumable state."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedKLController:
    """A constant KL coefficient (InstructGPT used β = 0.02)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Moves β so that the measured KL tracks ``target`` (Ziegler et al. 2019).

    ``e = clip(kl / target - 1, -0.2, 0.2)``; ``β ← β · (1 + e · n_steps / horizon)``.
    ``n_steps`` is the number of samples (episodes) in the batch the KL was measured on.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ConfigError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if not target > 0:
            raise ConfigError(f"the adaptive KL target must be > 0, got {target}")
        if not horizon > 0:
            raise ConfigError(f"the adaptive KL horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale β by ``1 + clip(current_kl / target - 1, ±0.2) · n_steps / horizon``."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise TrainingError(
                f"the measured KL is {current_kl}; the policy has diverged from the reference "
                "(lower the learning rate or raise the KL coefficient)"
            )
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


class KLControl(StrEnum):
    """How the KL coefficient evolves during PPO."""

    FIXED = "fixed"
    ADAPTIVE = "adaptive"


def make_kl_controller(
    kind: KLControl | str,
    init: float,
    target: float | None = None,
    horizon: float | None = None,
) -> FixedKLController | AdaptiveKLController:
    """Build the controller named by ``kind``; ``adaptive`` needs ``target`` and ``horizon``."""
    names = [k.value for k in KLControl]
    if kind not in names:
        raise ConfigError(
            f"unknown KL control {kind!r}; choose one of {names}" + did_you_mean(str(kind), names)
        )
    if KLControl(kind) is KLControl.FIXED:
        return FixedKLController(init)
    if target is None or horizon is None:
        raise ConfigError(
            "adaptive KL control needs both `target` and `horizon` (e.g. target=6.0, horizon=10000)"
        )
    return AdaptiveKLController(init, target, horizon)
