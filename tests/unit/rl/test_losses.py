"""Clipped policy / value losses, entropy, log-probs and explained variance."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.rl.losses import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_entropy,
    policy_loss,
    value_loss,
)


def test_policy_loss_hand_worked() -> None:
    # ε = 0.2, four real tokens and one padding token.
    #   ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2  clipped (the gain is capped at 1+ε)
    #   ratio 1.5, A=-1: max( 1.5,  1.2) =  1.5  not clipped (a pessimistic bound)
    #   ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5  not clipped
    #   ratio 0.5, A=-1: max( 0.5,  0.8) =  0.8  clipped at 1-ε
    # loss = (-1.2 + 1.5 - 0.5 + 0.8) / 4 = 0.15; clip fraction = 2/4
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.0]], dtype=torch.float64)
    old = torch.full_like(ratios, -1.0)
    logprobs = (old + ratios.log()).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old, advantages, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.15)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 1.5, 0.5, 0.5)]
    assert stats["approx_kl"] == pytest.approx(sum(k3) / 4)
    loss.backward()
    # clipped tokens and padding get no gradient; d(-A·ratio)/dlogp = -A·ratio, over 4 tokens
    expected_grad = torch.tensor([[0.0, 1.5 / 4, -0.5 / 4, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected_grad)


def test_policy_loss_matches_direct_loop_and_ignores_padding_garbage() -> None:
    g = torch.Generator().manual_seed(0)
    lengths, T = [1, 4, 6, 2], 6
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    logprobs = torch.randn(4, T, generator=g, dtype=torch.float64) * 0.3
    old = logprobs + torch.randn(4, T, generator=g, dtype=torch.float64) * 0.3
    advantages = torch.randn(4, T, generator=g, dtype=torch.float64)
    logprobs = logprobs.masked_fill(mask == 0, 80.0).requires_grad_()  # exp(80) would overflow a NaN in
    old = old.masked_fill(mask == 0, float("nan"))
    loss, stats = policy_loss(logprobs, old, advantages, mask, clip=0.1)
    terms, clipped = [], 0
    for b, n in enumerate(lengths):
        for t in range(n):
            ratio = math.exp(logprobs[b, t].item() - old[b, t].item())
            a = float(advantages[b, t])
            unclipped, clip_term = -a * ratio, -a * min(max(ratio, 0.9), 1.1)
            terms.append(max(unclipped, clip_term))
            clipped += clip_term > unclipped
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["clip_fraction"] == pytest.approx(clipped / len(terms))
    loss.backward()
    assert torch.isfinite(logprobs.grad).all() and torch.all(logprobs.grad[mask == 0] == 0)


def test_value_loss_hand_worked() -> None:
    # ε = 0.2, old values all 0.
    #   v=0.5, R=1: (v-R)² = 0.25; v_clip = 0.2 -> (0.2-1)² = 0.64; max = 0.64 (clipped branch)
    #   v=0.5, R=0: (v-R)² = 0.25; v_clip = 0.2 -> 0.04;             max = 0.25
    #   v=0.1, R=1: inside the clip range, both 0.81;                max = 0.81 (not counted)
    # loss = 0.5 · (0.64 + 0.25 + 0.81) / 3; clip fraction 1/3
    values = torch.tensor([[0.5, 0.5, 0.1, 7.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 4, dtype=torch.float64)
    returns = torch.tensor([[1.0, 0.0, 1.0, -7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.70 / 3)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    # token 0: the clipped branch is constant in v -> no gradient; token 1: 0.5·2·(0.5-0)/3
    # token 2: both branches equal, torch.maximum splits the gradient: 0.5·2·(0.1-1)/3 in total
    torch.testing.assert_close(
        values.grad, torch.tensor([[0.0, 0.5 / 3, -0.9 / 3, 0.0]], dtype=torch.float64)
    )

    unclipped_loss, unclipped_stats = value_loss(values, old, returns, mask, clip=None)
    assert unclipped_loss.item() == pytest.approx(0.5 * (0.25 + 0.25 + 0.81) / 3)
    assert unclipped_stats["value_clip_fraction"] == 0.0


def test_entropy_of_uniform_is_log_vocab() -> None:
    for vocab in (2, 17, 1000):
        logits = torch.full((3, 5, vocab), 4.2)
        torch.testing.assert_close(entropy_from_logits(logits), torch.full((3, 5), math.log(vocab)))


def test_entropy_matches_direct_formula_and_is_stable() -> None:
    logits = torch.randn(2, 3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    huge = torch.tensor([[[1e4, 0.0, -1e4]]])
    assert torch.isfinite(entropy_from_logits(huge)).all()
    banned = torch.tensor([[[0.0, 0.0, float("-inf")]]], requires_grad=True)
    h = entropy_from_logits(banned)
    torch.testing.assert_close(h, torch.tensor([[math.log(2)]]))
    h.sum().backward()
    assert torch.isfinite(banned.grad).all()
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = entropy_from_logits(logits)[mask.bool()].mean()
    torch.testing.assert_close(masked_entropy(logits, mask), expected)


def test_logprobs_from_logits_equals_log_softmax_gather() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 13, generator=g) * 10
    tokens = torch.randint(0, 13, (3, 4), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), expected)
    half = logprobs_from_logits(logits.bfloat16(), tokens)
    assert half.dtype == torch.float32


def test_explained_variance() -> None:
    g = torch.Generator().manual_seed(2)
    returns = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    garbage = torch.where(mask.bool(), returns, 1e3)  # padding must not count
    assert explained_variance(garbage, returns, mask) == pytest.approx(1.0)
    constant = torch.full_like(returns, 0.3)
    assert explained_variance(constant, returns, mask) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(explained_variance(constant, torch.ones(3, 5), mask))
