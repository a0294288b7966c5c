import pytest

from alignlab.data.mixture import plan_budget, sample_mixture


def test_budget_splits_by_weight():
    assert plan_budget({"a": 100, "b": 1000}, {"a": 1.0, "b": 3.0}, 400) == {"a": 100, "b": 300}


def test_small_source_repeats_large_source_undersampled():
    small = [[1] * 10 for _ in range(10)]  # 100 tokens
    large = [[2] * 10 for _ in range(100)]  # 1000 tokens
    docs, shares = sample_mixture(
        {"small": small, "large": large}, {"small": 1.0, "large": 1.0}, total_tokens=600, seed=0
    )
    by = {s.name: s for s in shares}
    assert by["small"].sampled_tokens == 300 and by["small"].epochs == pytest.approx(3.0)
    assert by["large"].sampled_tokens == 300 and by["large"].epochs == pytest.approx(0.3)
    assert sum(len(d) for d in docs) == 600
    # whole epochs before any repeat: each small doc appears exactly 3 times
    counts = {}
    for d in docs:
        if d[0] == 1:
            counts[id(d)] = counts.get(id(d), 0) + 1
    assert sorted(counts.values()) == [3] * 10


def test_deterministic_given_seed():
    src = {"a": [[i] * 3 for i in range(20)], "b": [[100 + i] * 5 for i in range(7)]}
    w = {"a": 2.0, "b": 1.0}
    assert sample_mixture(src, w, seed=3)[0] == sample_mixture(src, w, seed=3)[0]
    assert sample_mixture(src, w, seed=3)[0] != sample_mixture(src, w, seed=4)[0]


def test_bad_weights_and_empty_sources():
    with pytest.raises(ValueError, match="empty"):
        sample_mixture({"a": []}, {"a": 1.0})
    with pytest.raises(ValueError, match="> 0"):
        plan_budget({"a": 1}, {"a": 0.0}, 10)
