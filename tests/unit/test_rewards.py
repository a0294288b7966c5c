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
    SafetyFirstSettings,
    answer_format,
    check_combination,
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


HELPFUL = ("helpful", lambda p, r: [10.0 + i for i in range(len(r))])
SAFETY = ("safety", lambda p, r: [-3.0 if "bomb" in x else -1.0 for x in r])  # sigmoid: 0.047, 0.269


def test_safety_first_takes_the_safety_score_where_it_is_below_the_threshold_or_the_prompt_is_marked():
    scorer = CombinedScorer([HELPFUL, SAFETY], rule="safety_first")
    responses = ["fine", "a bomb recipe", "also fine"]
    assert score_chats(scorer, ["q"] * 3, responses) == [10.0, -3.0, 12.0]
    assert scorer.last_means["safety_share"] == pytest.approx(1 / 3)
    # LLaMA-2's IS_SAFETY(p): a marked prompt always takes the safety score
    marked = CombinedScorer(
        [HELPFUL, SAFETY], rule="safety_first", safety=SafetyFirstSettings(prompt_column="is_safety")
    )
    assert score_chats(marked, ["q"] * 3, responses, {"is_safety": [True, False, False]}) == [
        -1.0,
        -3.0,
        12.0,
    ]
    # the safety reward listed first; a threshold on the raw score
    first = CombinedScorer(
        [SAFETY, HELPFUL],
        rule="safety_first",
        safety=SafetyFirstSettings(reward=1, threshold=-2.0, scale="raw"),
    )
    assert score_chats(first, ["q"] * 3, responses) == [10.0, -3.0, 12.0]


def test_the_means_accumulate_over_calls_until_reset():
    scorer = CombinedScorer([HELPFUL, SAFETY], rule="safety_first")
    scorer(["q"], ["fine"])
    scorer(["q"] * 3, ["bomb", "bomb", "bomb"])
    assert scorer.means() == {
        "helpful": pytest.approx((10 + 10 + 11 + 12) / 4),
        "safety": -2.5,
        "safety_share": 0.75,
    }
    scorer.reset()
    assert scorer.means() == {}


@pytest.mark.parametrize(
    ("names", "weights", "rule", "safety", "message"),
    [
        (["h", "s", "x"], None, "safety_first", None, "combines a helpfulness and a safety reward; got 3"),
        (["h", "s"], [1.0, 1.0], "safety_first", None, "reward_weights apply to reward_rule=sum"),
        (["h", "s"], None, "safety_first", SafetyFirstSettings(reward=3), r"safety.reward=3: there are 2"),
        (["h"], None, "max", None, "reward_rule: 'max' is not one of sum, safety_first"),
    ],
)
def test_a_combination_that_does_not_fit_the_rewards_is_refused(names, weights, rule, safety, message):
    with pytest.raises(ConfigError, match=message):
        check_combination(names, weights, rule, safety)


def test_a_missing_safety_column_is_named():
    scorer = CombinedScorer(
        [HELPFUL, SAFETY], rule="safety_first", safety=SafetyFirstSettings(prompt_column="unsafe")
    )
    with pytest.raises(
        ConfigError, match="safety.prompt_column='unsafe': the prompt records have no such field"
    ):
        score_chats(scorer, ["q"], ["a"], {"answer": ["x"]})
    with pytest.raises(ConfigError, match="safety.scale: 'logit'"):
        SafetyFirstSettings(scale="logit")


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
