"""The LLM judge: expected score from next-token probabilities, pair order swap, the judge step."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignlab.data.cleaning import CleaningConfig, clean
from alignlab.data.judge import (
    JudgeFilter,
    JudgeSettings,
    RubricJudge,
    judge_item,
    pair_prompt,
    single_prompt,
)
from alignlab.models import train_bpe_tokenizer

JUDGE_TEXTS = ["Rate the response from 1 to 5.", "good answer", "bad answer"]


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(JUDGE_TEXTS * 3, vocab_size=300)


class FakeJudge(torch.nn.Module):
    """A judge model whose logits put ``margin`` on the digit ``rate(prompt)`` returns, at every position."""

    def __init__(self, tok, rate, margin: float = 12.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.tok, self.rate, self.margin = tok, rate, margin
        self.digit = {d: tok.encode(d, add_special_tokens=False)[0] for d in "12345"}

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            prompt = self.tok.decode(ids[mask.bool()], skip_special_tokens=True)
            logits[row, :, self.digit[str(self.rate(prompt))]] = self.margin
        return SimpleNamespace(logits=logits)


def rated_response(prompt: str) -> tuple[int | None, str]:
    """(position asked about, that response's text); position None for a single response."""
    asked = re.search(r"Rate Response (\d)", prompt)
    if asked is None:
        return None, prompt.split("Response:\n", 1)[-1].split("\n\nCriterion", 1)[0]
    k = int(asked.group(1))
    block = prompt.split(f"Response {k}:\n", 1)[1]
    return k, re.split(r"\n\n(?:Response 2:|Criterion)", block, maxsplit=1)[0]


def position_one_bias(prompt: str) -> int:
    """Rigged: whatever sits in position one gets 5, position two gets 1, whatever the content."""
    return 5 if rated_response(prompt)[0] == 1 else 1


def content_with_bias(prompt: str) -> int:
    """Prefers responses saying 'good' (4 vs 2), plus one point for position one."""
    position, text = rated_response(prompt)
    return (4 if "good" in text else 2) + (1 if position == 1 else 0)


def test_expected_value_of_the_digit_distribution(tok):
    judge = RubricJudge(FakeJudge(tok, lambda p: 4, margin=50.0), tok)
    assert judge.expected_scores(["x", "y"]) == pytest.approx([4.0, 4.0], abs=1e-4)
    judge = RubricJudge(FakeJudge(tok, lambda p: 4, margin=0.0), tok)  # flat: the mean of 1..5
    assert judge.expected_scores(["x"]) == pytest.approx([3.0], abs=1e-4)


def test_rigged_judge_position_bias_cancels_when_both_orders_are_averaged(tok):
    judge = RubricJudge(FakeJudge(tok, position_one_bias), tok, batch_size=3)
    items = [("User: which is better?", "first answer", "second answer")]
    [(a, b)] = judge.score_pairs(items, both_orders=False)
    assert a["mean"] == pytest.approx(5.0, abs=1e-3) and b["mean"] == pytest.approx(1.0, abs=1e-3)  # biased
    [(a, b)] = judge.score_pairs(items, both_orders=True)
    assert a["mean"] == pytest.approx(b["mean"], abs=1e-6) == pytest.approx(3.0, abs=1e-3)  # cancelled
    assert set(a) == {"relevance", "clarity", "completeness", "accuracy", "mean"}


def test_averaged_pair_verdict_keeps_the_content_preference(tok):
    judge = RubricJudge(FakeJudge(tok, content_with_bias), tok)
    # one order, good answer second: 4 vs 3 (the bias eats half the gap); both orders: 4.5 vs 2.5
    [(bad, good)] = judge.score_pairs([("User: q", "a bad answer", "a good answer")], both_orders=True)
    assert good["mean"] == pytest.approx(4.5, abs=1e-3) and bad["mean"] == pytest.approx(2.5, abs=1e-3)


def test_judge_step_keeps_by_threshold_and_margin(tok):
    settings = JudgeSettings(model="unused", threshold=3.5, min_margin=0.5, batch_size=4)
    check = JudgeFilter(settings, judge=RubricJudge(FakeJudge(tok, content_with_bias), tok))
    records = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a good answer"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a poor one"}]},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "meh", "margin": None},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "meh", "rejected": "good", "margin": None},
        {"text": "some good text"},
    ]
    verdicts = check.check_batch(records)
    assert verdicts[0] is None and verdicts[2] is None and verdicts[4] is None
    assert verdicts[1][0] == "low judge score" and "score 2.00 (relevance 2.00" in verdicts[1][1]
    assert verdicts[3][0] == "low judge score"  # the chosen 'meh' scores 2.5
    check.settings.threshold = 2.0
    assert check.check_batch(records[3:4])[0][0] == "judge disagrees with the label"
    assert check.stats["scored"] == 6 and 1.0 <= check.stats["mean_score"] <= 5.0


def test_what_the_judge_sees_of_each_record_kind():
    user = [{"role": "user", "content": "2+2?"}]
    assert judge_item({"messages": [*user, {"role": "assistant", "content": "4"}]}) == (
        "single",
        "User: 2+2?",
        "4",
    )
    assert judge_item({"prompt": user, "chosen": "4", "rejected": "5"}) == ("pair", "User: 2+2?", "4", "5")
    assert judge_item({"prompt": user, "responses": ["4", "5"]}) == ("single", "User: 2+2?", "4")
    assert judge_item({"prompt": user}) == ("single", "", "User: 2+2?")
    assert judge_item({"text": "doc"}) == ("single", "", "doc")
    assert "Rate Response 2" in pair_prompt("c", "a", "b", 2, "clarity")
    text_prompt = single_prompt("", "doc", "accuracy")
    assert "Rate the text" in text_prompt and "is what it says correct" in text_prompt
    assert "Conversation:\n[…] " + "x" * 10 + "\n" in single_prompt("x" * 50, "r", "relevance", max_chars=10)


def test_judge_step_with_a_real_tiny_model_loaded_by_reference(tmp_path: Path, tiny_lm):
    tiny_lm(JUDGE_TEXTS, "judge")
    records = [{"text": f"document number {i}"} for i in range(3)]
    keep_all = CleaningConfig(
        steps=["judge"],
        judge=JudgeSettings(model=str(tmp_path / "judge"), threshold=1.0, criteria=["clarity"]),
    )
    kept, report = clean(records, keep_all)
    assert kept == records and report.steps[0].stats["scored"] == 3
    assert 1.0 <= report.steps[0].stats["mean_score"] <= 5.0
    keep_none = CleaningConfig(
        steps=["judge"],
        judge=JudgeSettings(model=str(tmp_path / "judge"), threshold=5.0, criteria=["clarity"]),
    )
    kept, report = clean(records, keep_none)
    assert kept == [] and report.steps[0].reasons == {"low judge score": 3}


def test_the_default_threshold_is_alpagasus_4_5():
    assert JudgeSettings().threshold == 4.5


def test_a_dropped_record_carries_the_judges_justification_in_the_report(tmp_path: Path, tiny_lm):
    tiny_lm(JUDGE_TEXTS, "judge")
    records = [{"text": f"document number {i}"} for i in range(2)]
    settings = JudgeSettings(
        model=str(tmp_path / "judge"), threshold=5.0, criteria=["clarity"], explain=True, explain_tokens=6
    )
    kept, report = clean(records, CleaningConfig(steps=["judge"], judge=settings))
    assert kept == []
    examples = report.steps[0].examples["low judge score"]
    assert len(examples) == 2 and all(re.search(r"score \d\.\d\d .*; judge says: \S", e) for e in examples)
