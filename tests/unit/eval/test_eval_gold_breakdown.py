"""gold_breakdown and reward_sees_correctness on canned answers (generation replaced by a table)."""

from __future__ import annotations

import pytest

import alignlab.models
from alignlab.errors import ConfigError
from alignlab.eval.gold_breakdown import gold_breakdown, reward_sees_correctness
from alignlab.testbed.data import eval_prompts
from alignlab.testbed.gold import gold_score, judge

# The first four held-out prompts and their answers (see alignlab.testbed.data.eval_prompts).
PROMPTS = eval_prompts(4)
CLEAN_RIGHT = ["The answer is 11.", "The answer is 1.", "The answer is 1.", "The answer is 15."]
SLOPPY_RIGHT = ["Um, well, the answer is 11.", "The answer is 1.", "The answer is 1.", "The answer is 15."]
SLOPPY_ALL = [f"Um, well, {r[0].lower()}{r[1:]}" for r in CLEAN_RIGHT]
CLEAN_WRONG = ["The answer is 12.", "The answer is 3.", "The answer is 18.", "The answer is 14."]


def fake_generate(table):
    """A generate() that answers from ``table``: a list of response lists, one per call."""
    calls = iter(table)

    def generate(model, tokenizer, prompts, **kwargs):
        assert list(prompts) == PROMPTS
        return list(next(calls))

    return generate


def test_headroom_is_what_a_perfect_format_would_add(monkeypatch):
    monkeypatch.setattr(alignlab.models, "generate", fake_generate([SLOPPY_RIGHT]))
    result = gold_breakdown(object(), n=4, tokenizer=object())
    scores = [judge(p, r).score for p, r in zip(PROMPTS, SLOPPY_RIGHT)]
    assert result.gold_score == pytest.approx(sum(scores) / 4)
    assert result.gold_accuracy == 1.0
    # only the first answer is sloppy; with a clean format it would score 1.0
    assert result.format_headroom == pytest.approx((1.0 - scores[0]) / 4)
    assert result.format_headroom > 0
    assert result.families["addition"].format_headroom == pytest.approx(1.0 - scores[0])
    assert result.families["comparison"].format_headroom == 0.0
    assert set(result.to_metrics()) >= {"gold_score", "format_headroom", "gold_accuracy/addition"}


def test_overall_numbers_equal_gold_score(monkeypatch):
    monkeypatch.setattr(alignlab.models, "generate", fake_generate([CLEAN_WRONG, CLEAN_WRONG]))
    breakdown = gold_breakdown(object(), n=4, tokenizer=object())
    reference = gold_score(object(), n=4, tokenizer=object())
    assert breakdown.gold_score == pytest.approx(reference["gold_score"])
    assert breakdown.gold_accuracy == reference["gold_accuracy"] == 0.0


@pytest.mark.parametrize(
    ("reward", "share"),
    [
        (lambda prompts, responses: [float(judge(p, r).correct) for p, r in zip(prompts, responses)], 1.0),
        (
            lambda prompts, responses: [float(not judge(p, r).correct) for p, r in zip(prompts, responses)],
            0.0,
        ),
        (lambda prompts, responses: [0.0] * len(responses), 0.5),
    ],
)
def test_probe_counts_clean_correct_wrong_pairs(monkeypatch, reward, share):
    # per prompt one clean right and one clean wrong sample -> 4 pairs; the sloppy third adds none
    monkeypatch.setattr(alignlab.models, "generate", fake_generate([CLEAN_RIGHT, CLEAN_WRONG, SLOPPY_ALL]))
    monkeypatch.setattr("alignlab.eval.gold_breakdown._load_policy", lambda *a: (object(), object()))
    probe = reward_sees_correctness("policy", reward, n=4, k=3)
    assert probe.pairs == 4
    assert probe.sampled_accuracy == pytest.approx(8 / 12)
    assert probe.share == share


def test_probe_needs_two_samples():
    with pytest.raises(ConfigError, match="k must be at least 2"):
        reward_sees_correctness("policy", lambda p, r: [0.0] * len(r), n=4, k=1)
