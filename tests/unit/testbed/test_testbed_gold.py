"""The gold scorer: ordering of styles, bounds, prompt dependence, preference, batch metrics."""

from __future__ import annotations

import random
import sys
import types

import pytest

from alignlab.errors import ConfigError, DataError
from alignlab.testbed import (
    eval_prompts,
    gold_preference,
    gold_response_score,
    gold_reward_fn,
    gold_score,
    judge,
    score_responses,
)
from alignlab.testbed.styles import Defect, clean_response, render
from alignlab.testbed.world import sample_task

PROMPT = "What is 3 plus 4?"


def test_clean_correct_scores_one():
    assert gold_response_score(PROMPT, "The answer is 7.") == pytest.approx(1.0)


def test_ordering_clean_correct_sloppy_correct_clean_wrong_garbage():
    clean = gold_response_score(PROMPT, "The answer is 7.")
    sloppy = [
        gold_response_score(PROMPT, "Um, well, the answer is 7."),
        gold_response_score(PROMPT, "The answer is 7, I think, maybe."),
        gold_response_score(PROMPT, "The answer is 7. Yes, the answer is 7. So it is 7."),
    ]
    wrong = gold_response_score(PROMPT, "The answer is 12.")
    garbage = [gold_response_score(PROMPT, g) for g in ("", "asdf qwer zxcv", "the the the the the")]
    assert all(clean - 0.1 > s > wrong + 0.1 for s in sloppy)
    assert wrong > max(garbage)
    assert max(garbage) <= 0.05


def test_every_correct_answer_beats_every_wrong_one_on_random_tasks():
    rng = random.Random(0)
    for _ in range(300):
        task = sample_task(rng)
        defects = set(rng.sample([Defect.FILLER, Defect.HEDGE, Defect.RAMBLE], rng.randint(0, 2)))
        right = gold_response_score(task.prompt, render(task.answer, defects, rng))
        wrong = gold_response_score(task.prompt, clean_response(task.mistake(rng)))
        assert 0.6 <= right <= 1.0
        assert 0.0 <= wrong <= 0.55
        if defects:
            assert right <= 0.85


def test_near_misses_earn_partial_credit():
    exact, off_one, off_two, far = (gold_response_score(PROMPT, f"The answer is {x}.") for x in (7, 8, 9, 15))
    assert exact > off_one > off_two > far == pytest.approx(0.4)


def test_format_penalties_are_graded():
    scores = [
        gold_response_score(PROMPT, r)
        for r in (
            "The answer is 7.",
            "The answer is 7",
            "7",
            "Um, 7",
            "Um, well, uh, 7, I think, maybe 7 7 7",
        )
    ]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_response_that_ignores_the_prompt_scores_low():
    rng = random.Random(1)
    ignored, answered = [], []
    for _ in range(300):
        task, other = sample_task(rng), sample_task(rng)
        if other.answer == task.answer:
            continue
        ignored.append(gold_response_score(task.prompt, clean_response(other.answer)))
        answered.append(gold_response_score(task.prompt, clean_response(task.answer)))
    assert sum(ignored) / len(ignored) < 0.4
    assert sum(answered) / len(answered) == pytest.approx(1.0)


def test_wrong_type_of_answer_earns_less_format_credit():
    assert gold_response_score(PROMPT, "The answer is blue.") < gold_response_score(
        PROMPT, "The answer is 12."
    )
    assert gold_response_score("Where does Mira live?", "The answer is owl.") == pytest.approx(0.2)


def test_hedging_between_alternatives_is_not_correct():
    assert not judge(PROMPT, "The answer is 7 or 8.").correct
    assert gold_response_score(PROMPT, "The answer is 7 or 8.") < 0.3


def test_judgement_names_penalties():
    j = judge(PROMPT, "Um, well, the answer is 7, I think, maybe.")
    assert j.correct and {"filler", "hedge", "extra_words"} <= set(j.penalties)


def test_gold_preference_is_a_probability_from_score_difference():
    good, bad = "The answer is 7.", "Um, well, the answer is 8."
    assert gold_preference(PROMPT, good, bad) > 0.99
    assert gold_preference(PROMPT, bad, good) < 0.01
    assert gold_preference(PROMPT, good, good) == pytest.approx(0.5)
    assert gold_preference(PROMPT, good, bad) + gold_preference(PROMPT, bad, good) == pytest.approx(1.0)


def test_gold_reward_fn_accepts_text_and_chat_prompts():
    chat = [{"role": "user", "content": PROMPT}]
    rewards = gold_reward_fn([PROMPT, chat], ["The answer is 7.", "The answer is 12."])
    assert rewards == pytest.approx([1.0, 0.4])
    with pytest.raises(ConfigError):
        gold_reward_fn([PROMPT], [])


def test_foreign_prompt_is_refused():
    with pytest.raises(DataError):
        gold_response_score("Write a poem.", "The answer is 7.")


def test_score_responses():
    prompts = [PROMPT, PROMPT, "Where does Mira live?", "Reverse the list cat, owl, fox."]
    responses = ["The answer is 7.", "Um, well, the answer is 7.", "The answer is Pinehill.", ""]
    metrics = score_responses(prompts, responses)
    assert metrics["n"] == 4
    assert metrics["gold_accuracy"] == pytest.approx(0.5)
    expected = sum(gold_response_score(p, r) for p, r in zip(prompts, responses)) / 4
    assert metrics["gold_score"] == pytest.approx(expected)
    assert 0.0 < metrics["gold_format"] < 1.0
    assert score_responses([], [])["gold_score"] == 0.0


def _fake_models(monkeypatch, answer_fn):
    """Install a stand-in for alignlab.models (generate and load_causal_lm) and record the calls."""
    calls: dict = {}

    def generate(model, tokenizer, prompts, *, max_new_tokens=48, do_sample=False, batch_size=32, **kw):
        calls["generate"] = dict(
            model=model,
            tokenizer=tokenizer,
            n=len(prompts),
            do_sample=do_sample,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        return [answer_fn(p) for p in prompts]

    def load_causal_lm(ref, registry=None, **kw):
        calls["load"] = (ref, registry)
        return "loaded-model", "loaded-tokenizer"

    fake = types.ModuleType("alignlab.models")
    fake.generate = generate
    fake.load_causal_lm = load_causal_lm
    monkeypatch.setitem(sys.modules, "alignlab.models", fake)
    return calls


def test_gold_score_with_a_perfect_fake_model(monkeypatch):
    from alignlab.testbed.world import parse_prompt

    calls = _fake_models(monkeypatch, lambda p: clean_response(parse_prompt(p).answer))
    result = gold_score(object(), n=50, tokenizer="tok", batch_size=8, max_new_tokens=20)
    assert result == {"gold_score": pytest.approx(1.0), "gold_accuracy": pytest.approx(1.0)}
    assert calls["generate"]["n"] == 50 and calls["generate"]["do_sample"] is False
    assert calls["generate"]["batch_size"] == 8 and calls["generate"]["max_new_tokens"] == 20


def test_gold_score_loads_a_reference(monkeypatch):
    calls = _fake_models(monkeypatch, lambda p: "The answer is 7.")
    result = gold_score("sft:v1", n=30, registry="reg")
    assert calls["load"] == ("sft:v1", "reg")
    assert calls["generate"]["model"] == "loaded-model"
    assert calls["generate"]["tokenizer"] == "loaded-tokenizer"
    expected = score_responses(eval_prompts(30), ["The answer is 7."] * 30)
    assert result["gold_score"] == pytest.approx(expected["gold_score"])
    assert result["gold_accuracy"] < 0.2


def test_gold_score_needs_a_tokenizer_with_a_model(monkeypatch):
    _fake_models(monkeypatch, lambda p: "")
    with pytest.raises(ConfigError, match="tokenizer"):
        gold_score(object(), n=5)
