"""Verifiable rewards, reward functions that read prompt columns, several rewards as one, and the
signature check that refuses a wrong reward function before anything trains."""

from __future__ import annotations

import pytest

from alignlab.errors import ConfigError
from alignlab.registry import Registry
from alignlab.rewards import (
    CombinedScorer,
    FunctionScorer,
    LengthPenalty,
    RegexFormat,
    answer_format,
    columns_read,
    exact_match,
    extract_answer,
    function_source,
    numeric_match,
    resolve_reward,
    score_chats,
    think_answer_format,
)
from alignlab.testbed import correctness, gold_reward_fn


def test_extract_answer_reads_boxed_then_the_answer_frame_then_the_whole_response() -> None:
    assert extract_answer(r"so it is \boxed{12} and then \boxed{14}") == "14"
    assert extract_answer("work...\n#### 72") == "72"
    assert extract_answer("Well, the answer is Red.\nMore text") == "Red"
    assert extract_answer("  blue. ") == "blue"


def test_exact_and_numeric_match() -> None:
    responses = ["The answer is Oakvale.", "the answer is oak vale", r"\boxed{1,024}", "7 or 8"]
    assert exact_match([""] * 4, responses, answer=["oakvale", "oakvale", "1,024", "8"]) == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]
    assert numeric_match([""] * 4, responses, answer=["1", "2", "1024", "8"]) == [0.0, 0.0, 1.0, 1.0]


def test_format_and_length_rewards() -> None:
    assert answer_format([""] * 2, ["The answer is 7.", "7"]) == [1.0, 0.0]
    assert think_answer_format([""] * 2, ["<think>a</think> <answer>7</answer>", "<answer>7</answer>"]) == [
        1.0,
        0.0,
    ]
    assert RegexFormat(r"^\d+$", full=True)([""] * 2, ["42", "42!"]) == [1.0, 0.0]
    assert LengthPenalty(4)([""] * 3, ["a b", "a b c d e f", "a " * 20]) == [0.0, -0.5, -1.0]


def test_the_testbed_correctness_reward_is_exactly_right_or_nothing() -> None:
    prompt = "What is 3 plus 4?"
    responses = ["The answer is 7.", "Um, the answer is 7, I think.", "The answer is 8."]
    assert correctness([prompt] * 3, responses) == [1.0, 1.0, 0.0]
    gold = gold_reward_fn([prompt] * 3, responses)
    assert gold[0] == 1.0 and 0.0 < gold[1] < 1.0  # the gold score also weighs format


def test_a_reward_function_gets_the_columns_it_names() -> None:
    def with_answer(prompts, responses, answer):
        return [float(r == a) for r, a in zip(responses, answer)]

    assert columns_read(with_answer) == {"answer"}
    assert columns_read(lambda p, r, **kw: []) is None  # **kwargs: every column
    scorer = FunctionScorer(with_answer)
    assert score_chats(scorer, ["q", "q"], ["a", "b"], {"answer": ["a", "a"], "other": [1, 2]}) == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"reads the prompt column\(s\) \['answer'\]"):
        score_chats(scorer, ["q"], ["a"], {})


def test_several_rewards_are_weighted_and_remembered_each() -> None:
    scorer = CombinedScorer(
        [("len", lambda p, r: [len(x) for x in r]), ("one", lambda p, r: [1.0] * len(r))], [1.0, 0.5]
    )
    assert score_chats(scorer, ["q", "q"], ["ab", "abcd"]) == [2.5, 4.5]
    assert scorer.last_means == {"len": 3.0, "one": 1.0}
    with pytest.raises(ConfigError, match="2 weights for 1 rewards"):
        CombinedScorer([("a", lambda p, r: r)], [1.0, 2.0])


@pytest.mark.parametrize("fn", [lambda prompts: [0.0], lambda: [], lambda p, r, q: []])
def test_a_reward_function_with_the_wrong_signature_is_refused_when_resolved(tmp_path, fn) -> None:
    if fn.__code__.co_argcount == 3:  # a third required parameter is read as a prompt column: allowed
        assert resolve_reward(Registry(tmp_path), fn).fn is fn
        return
    with pytest.raises(
        ConfigError, match=r"is called as\s+fn\(prompts: list\[str\], responses: list\[str\]\)"
    ):
        resolve_reward(Registry(tmp_path), fn)


def test_a_shipped_reward_resolves_by_its_import_path(tmp_path) -> None:
    got = resolve_reward(Registry(tmp_path), "alignlab.rewards:answer_format")
    assert got.fn is answer_format and got.ref == "py:alignlab.rewards:answer_format"  # logged as written
    assert got.source == function_source(answer_format)  # recorded by its code, as the object itself
