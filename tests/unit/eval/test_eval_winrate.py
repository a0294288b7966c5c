"""Win rate and the LLM judge: judging both orders cancels a judge biased to position one."""

import math
import re
from types import SimpleNamespace

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.eval.judge import LLMJudge, PairVerdict, parse_labels
from alignlab.eval.winrate import JudgeKind, JudgeSpec, judge_responses, pointwise_preferences, summarize
from alignlab.models import train_bpe_tokenizer

BIAS = 3.0  # extra logit the judge gives the first label, whatever the answers


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(
        ["Which answer is better? Answer 1: good. Answer 2: bad. Reply with 1 or 2."] * 4, vocab_size=300
    )


class PositionBiasedJudge:
    """A judge LM: logit(label 1) = BIAS + quality(first answer), logit(label 2) = quality(second)."""

    training = False

    def __init__(self, tok, labels="12", quality=None):
        self.tok = tok
        self.labels = labels
        self.ids = [tok(label, add_special_tokens=False).input_ids[0] for label in labels]
        self.quality = quality or (lambda answer: 0.0)

    def __call__(self, input_ids, attention_mask, **_):
        logits = torch.zeros(*input_ids.shape, len(self.tok))  # (B, T, V)
        for i in range(input_ids.shape[0]):
            end = int(attention_mask[i].sum())
            text = self.tok.decode(input_ids[i, :end], skip_special_tokens=True)
            first, second = self.labels
            found = re.search(rf"Answer {first}: (.*?)\n\nAnswer {second}: (.*?)\n\n", text, re.S)
            logits[i, end - 1, self.ids[0]] = BIAS + self.quality(found[1])
            logits[i, end - 1, self.ids[1]] = self.quality(found[2])
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("labels", ["12", "AB"])
def test_judging_both_orders_cancels_a_pure_position_bias(tok, labels):
    judge = LLMJudge(PositionBiasedJudge(tok, labels), tok, labels=labels)
    one_order = judge.p_first(["q1", "q2"], ["same", "x"], ["same", "y"])
    assert one_order == pytest.approx([sigmoid(BIAS)] * 2, abs=1e-5)  # read once: the first always wins
    result = judge_responses(
        JudgeSpec(JudgeKind.LLM, "stub"), ["q1", "q2"], ["same", "x"], ["same", "y"], judge_obj=judge
    )
    assert result.preferences == pytest.approx((0.5, 0.5), abs=1e-6)
    assert result.ties == 2 and result.win_rate == 0.5
    assert result.position_bias == pytest.approx(sigmoid(BIAS) - 0.5, abs=1e-5)


def test_the_better_answer_wins_despite_the_bias_whichever_slot_it_is_in(tok):
    quality = {"good": 1.0, "bad": 0.0}
    judge = LLMJudge(PositionBiasedJudge(tok, quality=quality.get), tok)
    verdicts = judge.compare(["q", "q"], ["good", "bad"], ["bad", "good"])
    p_good_first = (sigmoid(BIAS + 1) + 1 - sigmoid(BIAS - 1)) / 2
    assert verdicts[0].p_a == pytest.approx(p_good_first, abs=1e-5) and verdicts[0].p_a > 0.5
    assert verdicts[1].p_a == pytest.approx(1 - p_good_first, abs=1e-5)
    result = judge_responses("llm:stub", ["q", "q"], ["good", "bad"], ["bad", "good"], judge_obj=judge)
    assert (result.wins, result.losses, result.ties) == (1, 1, 0)


def test_gold_and_reward_function_judges_score_each_answer():
    prompts = ["What is 3 plus 4?"] * 3
    a = ["The answer is 7.", "The answer is 8.", "The answer is 7."]
    b = ["The answer is 8.", "The answer is 7.", "The answer is 7."]
    for judge in ("gold", "alignlab.testbed:gold_reward_fn"):
        result = judge_responses(judge, prompts, a, b)
        assert (result.wins, result.losses, result.ties, result.win_rate) == (1, 1, 1, 0.5)
        assert result.score_a_mean == pytest.approx(result.score_b_mean)
        assert result.position_bias is None
    chat = [[{"role": "user", "content": "What is 3 plus 4?"}]]
    assert judge_responses("gold", chat, ["The answer is 7."], ["no"]).win_rate == 1.0


def test_summaries_and_specs():
    assert pointwise_preferences([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == [1.0, 0.0, 0.5]
    result = summarize([0.9, 0.2, 0.5, 0.7], "gold")
    assert (result.wins, result.losses, result.ties, result.win_rate) == (2, 1, 1, 0.625)
    assert result.to_metrics()["win_rate"] == 0.625
    assert JudgeSpec.parse("llm:sft:v2") == JudgeSpec(JudgeKind.LLM, "sft:v2")
    assert JudgeSpec.parse("reward_model@best").kind is JudgeKind.REWARD
    assert str(JudgeSpec.parse("gold")) == "gold"
    with pytest.raises(ConfigError, match="needs a model reference"):
        JudgeSpec.parse("llm:")
    with pytest.raises(ConfigError, match="two distinct"):
        parse_labels("11")
    assert PairVerdict(0.8, 0.4).position_bias == pytest.approx(0.2)
