"""Over-optimisation: reading a PPO history, spotting reward hacking, best-of-N KL and gold picks."""

import itertools
import math

import pytest

from alignlab.errors import ConfigError
from alignlab.eval.overoptimization import (
    _gold_of_pick,
    analyze,
    best_of_n_kl,
    overoptimization,
    plot_overoptimization,
    read_history,
)
from alignlab.registry import Registry

# proxy keeps rising; gold peaks at step 3 and falls; gold logged every other step; one step lacks a KL
HACKED = [
    {"step": 1, "reward_score": 0.1, "kl": 0.0, "gold_score": 0.40},
    {"step": 2, "reward_score": 0.5, "kl": 0.5},
    {"step": 3, "reward_score": 0.9, "kl": 1.0, "gold_score": 0.60},
    {"step": 4, "reward_score": 1.4, "kl": None},
    {"step": 5, "reward_score": 2.0, "kl": 4.0, "gold_score": 0.45},
    {"step": 6, "entropy": 1.0},
]


def test_read_history_is_tolerant_of_missing_keys():
    points, key = read_history(HACKED)
    assert key == "reward_score"
    assert [p.step for p in points] == [1, 2, 3, 5]
    assert [p.gold for p in points] == [0.40, None, 0.60, 0.45]
    assert points[-1].distance == 2.0
    other_names, key = read_history([{"step": 1, "reward": 0.3, "kl_to_reference": -0.01}])
    assert key == "reward" and other_names[0].distance == 0.0  # a negative KL estimate is distance 0


def test_analyze_flags_gold_falling_while_the_proxy_rises():
    result = analyze(*read_history(HACKED))
    assert result.overoptimized
    assert (result.gold_peak, result.gold_peak_step, result.gold_peak_kl) == (0.60, 3, 1.0)
    assert (result.proxy_at_gold_peak, result.proxy_final, result.gold_final) == (0.9, 2.0, 0.45)
    healthy = [{"step": s, "reward_score": s, "kl": s / 10, "gold_score": 0.4 + s / 100} for s in range(1, 6)]
    assert not analyze(*read_history(healthy)).overoptimized
    assert "overopt_overoptimized" in result.to_metrics()


def test_overoptimization_reads_the_artifact_history_and_plots_it(tmp_path):
    reg = Registry(tmp_path / "reg")
    with reg.publishing("ppo", kind="model", stage="ppo") as pub:
        pub.metrics["history"] = HACKED
    with reg.publishing("sft", kind="model", stage="sft") as pub:
        pub.metrics["gold_score"] = 0.5
    result = overoptimization(reg, "ppo")
    assert result.overoptimized and len(result.points) == 4
    png = plot_overoptimization(result.points, tmp_path / "o.png", x="kl")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="no 'history' metric.*gold_score"):
        overoptimization(reg, "sft")


def test_best_of_n_kl_and_the_gold_of_the_reward_pick_by_brute_force():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    rewards = [[0.3, 0.9, 0.1, 0.5], [1.0, 1.0, 0.0, 0.2]]
    golds = [[0.2, 0.1, 0.8, 0.6], [0.5, 0.9, 0.3, 0.4]]
    for size in (1, 2, 3, 4):
        want = 0.0
        for r, g in zip(rewards, golds):
            subsets = list(itertools.combinations(range(4), size))
            # the reward's pick in a subset; among equal rewards the earlier sample
            want += sum(g[max(s, key=lambda j: (r[j], -j))] for s in subsets) / len(subsets)
        assert _gold_of_pick(rewards, golds, size) == pytest.approx(want / 2)
