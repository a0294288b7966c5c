"""Reward-model accuracy on preference pairs: ties, margins, whole chats for a reward model."""

import json

import pytest

from alignlab.errors import DataError
from alignlab.eval.reward_accuracy import evaluate_reward_accuracy, reward_accuracy
from alignlab.models import train_bpe_tokenizer
from alignlab.rewards import RewardModelScorer


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def test_accuracy_counts_a_tie_as_half_and_averages_the_margin():
    chat = [{"role": "user", "content": "q"}]
    records = [
        {"prompt": chat, "chosen": "long answer", "rejected": "short"},
        {"prompt": chat, "chosen": "tiny", "rejected": "much longer"},
        {"prompt": chat, "chosen": "same", "rejected": "size"},
    ]
    result = reward_accuracy(length_reward, records, source="mem")
    assert (result.accuracy, result.pairs, result.ties) == (pytest.approx(1.5 / 3), 3, 1)
    assert result.margin_mean == pytest.approx((6 - 7 + 0) / 3)
    assert result.to_metrics()["rm_data"] == "mem"
    with pytest.raises(DataError, match="no preference pairs"):
        reward_accuracy(length_reward, [])


def test_evaluate_reads_a_preference_file_with_an_import_path_scorer(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "What is 3 plus 4?", "chosen": "The answer is 7.", "rejected": "The answer is 9."},
        {"prompt": "What is 3 plus 4?", "chosen": "The answer is 8.", "rejected": "The answer is 7."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result = evaluate_reward_accuracy("alignlab.testbed:gold_reward_fn", str(path))
    assert result.accuracy == 0.5 and result.pairs == 2


def test_a_reward_model_sees_every_turn_of_the_chat():
    tok = train_bpe_tokenizer(["first question second question answer"], vocab_size=280)
    scorer = RewardModelScorer(model=_NoModel(), tokenizer=tok)
    chat = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second question"},
    ]
    text = scorer.texts([chat], ["answer"])[0]
    assert text == "<|user|>first question<|assistant|>ok</s><|user|>second question<|assistant|>answer</s>"


class _NoModel:
    def eval(self):
        return self
