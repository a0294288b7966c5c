"""Reward-model losses: pairwise (with margin), K-way rankings, per-prompt weighting, centring."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.reward_losses import (
    centering_penalty,
    pairwise_loss,
    per_prompt_mean,
    ranking_loss,
    ranking_pairs,
)
from alignlab.stages.reward import batch_loss
from alignlab.stages.reward_data import Encoded, collate


def nll(x: float) -> float:
    """-log σ(x), computed directly."""
    return math.log1p(math.exp(-x))


def test_pairwise_hand_worked() -> None:
    # r_c - r_r = 0: log 2;  = 2: log(1 + e^-2) = 0.126928;  = -1: log(1 + e) = 1.313262
    chosen = torch.tensor([0.5, 3.0, -1.0], dtype=torch.float64)
    rejected = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([math.log(2), 0.126928, 1.313262], dtype=torch.float64)
    torch.testing.assert_close(pairwise_loss(chosen, rejected), expected, atol=1e-6, rtol=0)


def test_pairwise_margin_hand_worked() -> None:
    # LLaMA-2: the gap must beat the margin. gap 2, m 2 -> log 2; gap 2, m 0.5 -> -log σ(1.5) = 0.201413
    chosen = torch.tensor([3.0, 3.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 1.0], dtype=torch.float64)
    margin = torch.tensor([2.0, 0.5], dtype=torch.float64)
    expected = torch.tensor([math.log(2), 0.201413], dtype=torch.float64)
    torch.testing.assert_close(pairwise_loss(chosen, rejected, margin), expected, atol=1e-6, rtol=0)
    assert pairwise_loss(chosen, rejected, margin)[1] > pairwise_loss(chosen, rejected)[1]


def test_ranking_pairs_layout() -> None:
    better, worse, prompt = ranking_pairs([3, 2])
    assert better.tolist() == [0, 0, 1, 3]
    assert worse.tolist() == [1, 2, 2, 4]
    assert prompt.tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="at least 2"):
        ranking_pairs([3, 1])


def test_three_way_ranking_is_the_mean_of_its_three_pairs() -> None:
    scores = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)  # best first: a > b > c
    loss, stats = ranking_loss(scores, [3])
    pairs = [nll(2.0 - 0.5), nll(2.0 + 1.0), nll(0.5 + 1.0)]
    assert loss.item() == pytest.approx(sum(pairs) / 3)
    assert stats["accuracy"] == 1.0 and stats["pairs"] == 3.0
    assert stats["margin_mean"] == pytest.approx((1.5 + 3.0 + 1.5) / 3)


def test_each_prompt_is_weighted_once_whatever_its_k() -> None:
    # prompt A: K=3, prompt B: K=2. Each prompt's loss is the mean over its pairs, then prompts are averaged:
    # (mean of A's 3 pairs + B's 1 pair) / 2 -- not the mean over all 4 pairs, which would weigh A 3 times.
    scores = torch.tensor([1.0, 0.0, -2.0, 0.3, 0.8], dtype=torch.float64)
    loss, _ = ranking_loss(scores, [3, 2])
    prompt_a = (nll(1.0) + nll(3.0) + nll(2.0)) / 3
    prompt_b = nll(0.3 - 0.8)
    assert loss.item() == pytest.approx((prompt_a + prompt_b) / 2)
    per_pair = (nll(1.0) + nll(3.0) + nll(2.0) + nll(-0.5)) / 4
    assert loss.item() != pytest.approx(per_pair)


def test_pairs_batch_is_rankings_of_two_with_margins() -> None:
    scores = torch.tensor([1.0, 0.0, 0.2, 0.7], dtype=torch.float64)  # (c1, r1, c2, r2)
    margin = torch.tensor([0.5, 0.0], dtype=torch.float64)
    loss, stats = ranking_loss(scores, [2, 2], margin)
    direct = pairwise_loss(scores[[0, 2]], scores[[1, 3]], margin).mean()
    assert loss.item() == pytest.approx(direct.item())
    assert stats["accuracy"] == 0.5


def test_ranking_loss_matches_direct_loop() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [2, 4, 3, 6, 2]
    scores = torch.randn(sum(sizes), generator=g, dtype=torch.float64)
    n_pairs = sum(math.comb(k, 2) for k in sizes)
    margin = torch.rand(n_pairs, generator=g, dtype=torch.float64)
    loss, _ = ranking_loss(scores, sizes, margin, center_coef=0.1)
    per_prompt, start, p = [], 0, 0
    for k in sizes:
        terms = []
        for i in range(k):
            for j in range(i + 1, k):
                a, b = scores[start + i].item(), scores[start + j].item()
                terms.append(nll(a - b - margin[p].item()) + 0.1 * (a + b) ** 2)
                p += 1
        per_prompt.append(sum(terms) / len(terms))
        start += k
    assert loss.item() == pytest.approx(sum(per_prompt) / len(per_prompt))


def test_centering_term() -> None:
    chosen = torch.tensor([1.0, 2.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(
        centering_penalty(chosen, rejected), torch.tensor([4.0, 1.0], dtype=torch.float64)
    )
    scores = torch.tensor([1.0, 1.0, 2.0, -3.0], dtype=torch.float64)
    plain, _ = ranking_loss(scores, [2, 2])
    centred, stats = ranking_loss(scores, [2, 2], center_coef=0.01)
    assert centred.item() == pytest.approx(plain.item() + 0.01 * (4.0 + 1.0) / 2)
    assert stats["centering"] == pytest.approx(2.5)
    # shifting every reward by a constant changes only the centring term
    shifted, _ = ranking_loss(scores + 5.0, [2, 2])
    assert shifted.item() == pytest.approx(plain.item())


def test_gradient_flows_to_every_response() -> None:
    scores = torch.tensor([0.1, 0.4, -0.3, 0.2, 0.0], dtype=torch.float64, requires_grad=True)
    loss, _ = ranking_loss(scores, [3, 2], center_coef=0.01)
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad != 0).all()
    assert scores.grad[0] < 0 and scores.grad[2] > 0  # the best is pushed up, the worst down
    assert scores.grad[3] < 0 and scores.grad[4] > 0


def test_per_prompt_mean() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    torch.testing.assert_close(
        per_prompt_mean(values, torch.tensor([0, 0, 0, 1]), 2), torch.tensor([2.0, 10.0])
    )


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="expected \\(5,\\)"):
        ranking_loss(torch.zeros(4), [3, 2])
    with pytest.raises(ValueError, match="one per pair"):
        ranking_loss(torch.zeros(5), [3, 2], margin=torch.zeros(3))


class CountingScorer(torch.nn.Module):
    """A stand-in reward model that records how many sequences each forward pass received."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.1))
        self.calls: list[int] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.calls.append(input_ids.shape[0])
        logits = (input_ids.float() * attention_mask).sum(-1, keepdim=True) * self.weight  # (R, 1)
        return type("Out", (), {"logits": logits})()


def test_each_response_is_scored_once_in_one_forward_pass() -> None:
    # one 3-way ranking (3 pairs) and one pair: 5 responses, not 2 x 4 = 8 pair members
    batch = collate(
        [Encoded([[5, 6, 7], [5, 6], [5]]), Encoded([[9], [8, 8]], margins=[0.5])], pad_token_id=0
    )
    assert batch["input_ids"].shape == (5, 3)
    assert batch["margin"].tolist() == [0.0, 0.0, 0.0, 0.5]
    model = CountingScorer()
    loss, stats, scores = batch_loss(model, batch)
    assert model.calls == [5]
    assert scores.tolist() == pytest.approx([1.8, 1.1, 0.5, 0.9, 1.6])
    assert stats["pairs"] == 4.0
    loss.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad)
