"""KL estimators and the fixed / adaptive KL coefficient controllers."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.errors import ConfigError, TrainingError
from alignlab.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLControl,
    KLEstimator,
    make_kl_controller,
)


def test_kl_estimators_hand_worked() -> None:
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    # log_ratio = logp - ref = [0.5, -1.0]
    torch.testing.assert_close(
        KLEstimator.K1.estimate(logp, ref), torch.tensor([0.5, -1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        KLEstimator("k2").estimate(logp, ref), torch.tensor([0.125, 0.5], dtype=torch.float64)
    )
    # r = p_ref / p = [e^-0.5, e^1]; k3 = (r - 1) - log r
    expected = torch.tensor([math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1], dtype=torch.float64)
    torch.testing.assert_close(KLEstimator.K3.estimate(logp, ref), expected)


def test_k3_is_unbiased_for_the_true_kl() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    true_kl = float((p * (p / q).log()).sum())  # KL(p ‖ q), sampling from p
    k3 = KLEstimator.K3.estimate(p.log(), q.log())
    assert float((p * k3).sum()) == pytest.approx(true_kl)  # the expectation under p, exactly
    assert torch.all(k3 >= 0)


def test_fixed_controller_never_moves() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 512)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


@pytest.mark.parametrize(
    ("kl", "n_steps", "expected"),
    [
        (6.6, 100, 0.1 * (1 + 0.1 * 100 / 10_000)),  # e = 6.6/6 - 1 = 0.1 -> β · 1.001 = 0.1001
        (12.0, 256, 0.1 * (1 + 0.2 * 256 / 10_000)),  # e = 1.0 clipped to 0.2 -> 0.100512
        (3.0, 256, 0.1 * (1 - 0.2 * 256 / 10_000)),  # e = -0.5 clipped to -0.2 -> 0.099488
        (5.4, 1000, 0.1 * (1 - 0.1 * 1000 / 10_000)),  # e = -0.1 -> 0.099
        (6.0, 256, 0.1),  # on target: unchanged
    ],
)
def test_adaptive_controller_hand_worked(kl: float, n_steps: int, expected: float) -> None:
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(kl, n_steps)
    assert ctl.value == pytest.approx(expected)
    assert (ctl.value > 0.1) == (kl > 6.0) or ctl.value == pytest.approx(0.1)


def test_adaptive_controller_resumes_identically() -> None:
    kls = [8.0, 7.1, 2.0, 6.3, 5.9, 30.0]
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=1000)
    for kl in kls[:3]:
        ctl.update(kl, 64)
    resumed = AdaptiveKLController(0.9, target=1.0, horizon=5)
    resumed.load_state_dict(ctl.state_dict())
    for kl in kls[3:]:
        ctl.update(kl, 64)
        resumed.update(kl, 64)
        assert resumed.value == ctl.value
    assert resumed.state_dict() == ctl.state_dict()


def test_adaptive_controller_refuses_non_finite_kl() -> None:
    with pytest.raises(TrainingError, match="diverged"):
        AdaptiveKLController(0.1, 6.0, 10_000).update(float("nan"), 8)


def test_make_kl_controller() -> None:
    assert isinstance(make_kl_controller("fixed", 0.02), FixedKLController)
    ctl = make_kl_controller(KLControl.ADAPTIVE, 0.05, target=6.0, horizon=10_000)
    assert isinstance(ctl, AdaptiveKLController) and ctl.value == 0.05 and ctl.target == 6.0
    with pytest.raises(ConfigError, match="target"):
        make_kl_controller("adaptive", 0.05)
    with pytest.raises(ConfigError, match="did you mean 'adaptive'"):
        make_kl_controller("adaptiv", 0.05, 6.0, 10_000)
    with pytest.raises(ConfigError, match="horizon"):
        AdaptiveKLController(0.1, 6.0, 0)
