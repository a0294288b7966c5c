"""GAE, whitening and per-token rewards against slow per-element loops and hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    compute_gae,
    compute_reinforce,
    get_advantage_estimator,
    per_token_rewards,
    register_advantage_estimator,
)
from alignlab.rl.masked import masked_mean, masked_var, masked_whiten

LENGTHS = [1, 7, 3, 10, 1, 5]  # includes length-1 rows and one full row
T = 10


def _batch(seed: int = 0, garbage: float = float("nan")) -> tuple[torch.Tensor, ...]:
    """Random rewards/values (B, T) with padding filled with ``garbage`` and the matching mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(LENGTHS), T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    rewards = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64)
    values = torch.randn(len(LENGTHS), T, generator=g, dtype=torch.float64)
    rewards = rewards.masked_fill(mask == 0, garbage)
    values = values.masked_fill(mask == 0, garbage)
    return rewards, values, mask


def slow_gae(rewards, values, mask, gamma, lam):
    """A_t = Σ_{k=t}^{L-1} (γλ)^(k-t) δ_k, δ_k = r_k + γ V_{k+1} - V_k, V_L = 0; one element at a time."""
    adv = torch.zeros(rewards.shape, dtype=torch.float64)
    ret = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        length = int(mask[b].sum())
        for t in range(length):
            total = 0.0
            for k in range(t, length):
                next_value = float(values[b, k + 1]) if k + 1 < length else 0.0
                delta = float(rewards[b, k]) + gamma * next_value - float(values[b, k])
                total += (gamma * lam) ** (k - t) * delta
            adv[b, t] = total
            ret[b, t] = total + float(values[b, t])
    return adv, ret


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_slow_reference_and_padding_does_not_leak(gamma: float, lam: float) -> None:
    rewards, values, mask = _batch(seed=1)  # padding holds NaN: any leak would show
    adv, ret = compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = slow_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


def test_gae_hand_worked_three_tokens() -> None:
    # γ = 1, λ = 0.5; r = [0.1, -0.2, 1.0], V = [0.5, 0.4, 0.8], V after the last token = 0.
    # δ2 = 1.0 + 0   - 0.8 = 0.2      A2 = 0.2
    # δ1 = -0.2 + 0.8 - 0.4 = 0.2     A1 = 0.2 + 0.5·0.2  = 0.3
    # δ0 = 0.1 + 0.4 - 0.5 = 0.0      A0 = 0.0 + 0.5·0.3  = 0.15
    # returns = A + V = [0.65, 0.7, 1.0]
    # Row 2 has one token: r = 2, V = 0.5 -> A = 2 - 0.5 = 1.5, return 2.0.
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [2.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.4, 0.8, 9.0], [0.5, 9.0, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    expected_adv = torch.tensor([[0.15, 0.3, 0.2, 0.0], [1.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    expected_ret = torch.tensor([[0.65, 0.7, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, expected_ret)


def test_reinforce_is_discounted_reward_to_go() -> None:
    rewards, values, mask = _batch(seed=2)
    adv, ret = compute_reinforce(rewards, values, mask, gamma=0.9)
    expected = torch.zeros(rewards.shape, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        length = int(mask[b].sum())
        for t in range(length):
            expected[b, t] = sum(0.9 ** (k - t) * float(rewards[b, k]) for k in range(t, length))
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected)


def _real_values(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return [float(x[b, t]) for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]


def test_masked_mean_and_var_match_loops() -> None:
    x, _, mask = _batch(seed=3, garbage=1e6)
    real = _real_values(x, mask)
    mean = sum(real) / len(real)
    var = sum((v - mean) ** 2 for v in real) / (len(real) - 1)
    assert float(masked_mean(x, mask)) == pytest.approx(mean)
    assert float(masked_var(x, mask)) == pytest.approx(var)
    assert float(masked_var(x, mask, unbiased=False)) == pytest.approx(var * (len(real) - 1) / len(real))
    rows = [sum(_real_values(x[b : b + 1], mask[b : b + 1])) / n for b, n in enumerate(LENGTHS)]
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor(rows, dtype=torch.float64))


def test_masked_var_refuses_too_few_values() -> None:
    x = torch.tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[1, 0]]))
    assert float(masked_var(x, torch.tensor([[1, 0]]), unbiased=False)) == 0.0


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_slow_reference(shift_mean: bool) -> None:
    x, _, mask = _batch(seed=4, garbage=1e6)
    real = _real_values(x, mask)
    mean = sum(real) / len(real)
    std = math.sqrt(sum((v - mean) ** 2 for v in real) / (len(real) - 1) + 1e-8)
    expected = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                expected[b, t] = (float(x[b, t]) - mean) / std + (0.0 if shift_mean else mean)
    out = masked_whiten(x, mask, shift_mean=shift_mean)
    torch.testing.assert_close(out, expected)
    if shift_mean:
        assert float(masked_mean(out, mask)) == pytest.approx(0.0, abs=1e-12)
        assert float(masked_var(out, mask)) == pytest.approx(1.0, rel=1e-6)


def test_per_token_rewards_score_on_last_real_token_kl_elsewhere() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.3, -9.0, -9.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.1, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    score = torch.tensor([3.0, -1.0])
    rewards, kl = per_token_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # k1 = logp - logp_ref: row 0 -> [0.5, -1.0, 0.0], row 1 -> [-0.2]
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0]]))
    # -0.1·kl everywhere real; + score on the last real token (index 2 of row 0, index 0 of row 1)
    expected = torch.tensor([[-0.05, 0.1, 3.0, 0.0], [0.02 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_per_token_rewards_k3_estimator() -> None:
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref_logprobs = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1]])
    rewards, kl = per_token_rewards(torch.tensor([0.0]), logprobs, ref_logprobs, mask, 0.5, kl_estimator="k3")
    r = ref_logprobs.exp() / logprobs.exp()  # p_ref / p
    torch.testing.assert_close(kl, (r - 1) - r.log())
    assert torch.all(kl >= 0)
    torch.testing.assert_close(rewards, -0.5 * kl)


def test_per_token_rewards_refuses_empty_rows_and_unknown_estimators() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        per_token_rewards(torch.zeros(2), x, x, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ConfigError, match="did you mean 'k3'"):
        per_token_rewards(torch.zeros(2), x, x, torch.ones(2, 3), 0.1, kl_estimator="k33")


def test_advantage_estimator_registry() -> None:
    assert {e.value for e in AdvantageEstimator} <= set(ADVANTAGE_ESTIMATORS)
    assert get_advantage_estimator("gae") is compute_gae
    assert get_advantage_estimator(AdvantageEstimator.REINFORCE) is compute_reinforce
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("gae", compute_reinforce)
    with pytest.raises(ConfigError, match="did you mean 'gae'"):
        get_advantage_estimator("gea")
