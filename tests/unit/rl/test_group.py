"""Group advantage estimators and the critic-free loss, against hand-worked values and slow loops."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.rl.group import (
    GROUP_ADVANTAGES,
    GroupAdvantage,
    dr_grpo_advantages,
    equal_groups,
    get_group_advantage,
    grpo_advantages,
    overlong_penalty,
    register_group_advantage,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)
from alignlab.rl.losses import aggregate, clipped_policy_loss

# --- estimators ---------------------------------------------------------------------------------


def slow_reference(name: str, scores: list[list[float]]) -> list[list[float]]:
    """Each estimator written out with Python lists and the statistics module."""
    out = []
    flat_centred = []
    for group in scores:
        mean = statistics.fmean(group)
        if name == "grpo":
            out.append([(r - mean) / (statistics.stdev(group) + 1e-4) for r in group])
        elif name == "dr_grpo":
            out.append([r - mean for r in group])
        elif name == "rloo":
            out.append([r - (sum(group) - r) / (len(group) - 1) for r in group])
        elif name == "reinforce_pp":
            out.append(list(group))
        elif name == "reinforce_pp_baseline":
            out.append([r - mean for r in group])
        flat_centred.extend(out[-1])
    if name.startswith("reinforce_pp"):
        mean, std = statistics.fmean(flat_centred), statistics.stdev(flat_centred)
        out = [[(x - mean) / (std + 1e-4) for x in group] for group in out]
    return out


@pytest.mark.parametrize("name", [e.value for e in GroupAdvantage])
def test_every_estimator_matches_its_slow_reference(name: str) -> None:
    scores = torch.rand(5, 6, generator=torch.Generator().manual_seed(3))
    got = get_group_advantage(name)(scores)
    want = torch.tensor(slow_reference(name, scores.tolist()))
    assert got.shape == (5, 6)
    assert torch.allclose(got, want, atol=1e-5)


def test_hand_worked_values() -> None:
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # mean 0.25; unbiased std = sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    assert torch.allclose(grpo_advantages(scores), torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / 0.5001)
    assert torch.allclose(dr_grpo_advantages(scores), torch.tensor([[0.75, -0.25, -0.25, -0.25]]))
    # leave-one-out: the right answer's baseline is 0, a wrong one's is 1/3
    assert torch.allclose(rloo_advantages(scores), torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]))


def test_a_group_of_equal_rewards_teaches_nothing() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    for name in ("grpo", "dr_grpo", "rloo"):
        assert torch.equal(get_group_advantage(name)(scores)[0], torch.zeros(3))
    assert equal_groups(scores).tolist() == [True, False]


def test_batch_normalisation_spans_groups() -> None:
    # reinforce_pp compares against the whole batch: a group of all-1 rewards is above average
    scores = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    adv = reinforce_pp_advantages(scores)
    assert (adv[0] > 0).all() and (adv[1] < 0).all()
    assert torch.equal(reinforce_pp_baseline_advantages(scores), torch.zeros(2, 2))


def test_estimators_refuse_groups_of_one() -> None:
    with pytest.raises(ValueError, match="G >= 2"):
        grpo_advantages(torch.ones(4, 1))


def test_registry_refuses_duplicates_and_names_the_choices() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_group_advantage("grpo", grpo_advantages)
    with pytest.raises(ConfigError, match="did you mean 'rloo'"):
        get_group_advantage("rlo")
    assert set(GROUP_ADVANTAGES) >= {e.value for e in GroupAdvantage}


def test_overlong_penalty_is_dapos_ramp() -> None:
    lengths = torch.tensor([10, 16, 18, 20])
    # max 20, buffer 4: free up to 16, then -1/4 per token down to -1 at 20
    assert overlong_penalty(lengths, 20, 4).tolist() == [0.0, 0.0, -0.5, -1.0]


# --- the loss -----------------------------------------------------------------------------------


def slow_loss(logp, old, adv, mask, low, high, sequence, how, max_tokens, ref=None, beta=0.0):
    """The per-token clipped surrogate and its aggregation, one token at a time."""
    rows = []
    for i in range(len(logp)):
        real = [t for t in range(len(logp[i])) if mask[i][t]]
        seq_ratio = math.exp(sum(logp[i][t] - old[i][t] for t in real) / max(1, len(real)))
        terms = []
        for t in real:
            ratio = seq_ratio if sequence else math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - low), 1 + high)
            term = -min(ratio * adv[i], clipped * adv[i])
            if beta:
                d = ref[i][t] - logp[i][t]
                term += beta * (math.exp(d) - d - 1)
            terms.append(term)
        rows.append(terms)
    if how == "token_mean":
        return sum(map(sum, rows)) / sum(map(len, rows))
    if how == "sequence_mean":
        return statistics.fmean(sum(r) / max(1, len(r)) for r in rows)
    return sum(map(sum, rows)) / (len(rows) * max_tokens)


@pytest.mark.parametrize("how", ["token_mean", "sequence_mean", "constant"])
@pytest.mark.parametrize("sequence", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_clipped_policy_loss_matches_the_slow_version(how: str, sequence: bool, beta: float) -> None:
    g = torch.Generator().manual_seed(7)
    B, T = 4, 5
    old = -torch.rand(B, T, generator=g) * 3
    logp = old + (torch.rand(B, T, generator=g) - 0.5) * 0.8  # ratios from about 0.67 to 1.5
    ref = old + (torch.rand(B, T, generator=g) - 0.5)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    loss, stats = clipped_policy_loss(
        logp,
        old,
        adv,
        mask,
        clip_low=0.2,
        clip_high=0.28,
        importance_sampling="sequence" if sequence else "token",
        aggregation=how,
        max_tokens=8,
        ref_logprobs=ref,
        kl_coef=beta,
    )
    want = slow_loss(
        logp.tolist(),
        old.tolist(),
        adv.tolist(),
        mask.tolist(),
        0.2,
        0.28,
        sequence,
        how,
        8,
        ref.tolist(),
        beta,
    )
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert 0.0 <= stats["clip_fraction_low"] <= 1.0 and 0.0 <= stats["clip_fraction_high"] <= 1.0


def test_clip_higher_lets_positive_advantages_move_further() -> None:
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(1.25), requires_grad=True)  # ratio 1.25
    adv, mask = torch.ones(1), torch.ones(1, 1)
    sym, s_stats = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    sym.backward()
    assert logp.grad.item() == 0.0 and s_stats["clip_fraction_high"] == 1.0  # clipped at 1.2: no gradient
    logp.grad = None
    high, h_stats = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    high.backward()
    assert logp.grad.item() == pytest.approx(-1.25) and h_stats["clip_fraction_high"] == 0.0


def test_aggregations_weigh_long_and_short_responses_differently() -> None:
    per_token = torch.ones(2, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    per_token[0, 0] = 5.0  # the one-token response's loss
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx((5 + 4) / 5)
    assert aggregate(per_token, mask, "sequence_mean").item() == pytest.approx((5 + 1) / 2)
    assert aggregate(per_token, mask, "constant", max_tokens=10).item() == pytest.approx(9 / 20)
