"""RewardModel on the tiny pipeline: learns testbed preferences, K-way rankings, LoRA, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.errors import ConfigError, DataError
from alignlab.stages.reward import RewardModel

pytestmark = pytest.mark.integration

PAIRS = {
    "data": {"source": "testbed:preferences?n=400"},
    "train": {"epochs": 1, "lr": 3e-4, "batch_size": 16, "logging_steps": 5},
    "eval": {"gold_n": 100},
}
QUICK = {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "logging_steps": 1}
PROMPT = "What is 3 plus 4?"
GOOD, BAD = "The answer is 7.", "Um, well, the answer is 8, I think."


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def tensor(path, name):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))[name]


def test_reward_model_learns_testbed_preferences(tiny_pipeline):
    from transformers import AutoModelForSequenceClassification

    from alignlab.rewards import load_scorer
    from alignlab.stages.reward import score
    from alignlab.stages.reward_data import Ranking, collate, encode

    registry, arts = tiny_pipeline
    art = RewardModel(PAIRS).run(registry, model=arts["sft"].ref)
    m = art.metrics
    print("reward model metrics:", {k: v for k, v in m.items() if k != "train_loss_curve"})

    assert art.kind == "reward_model" and art.parents == [arts["sft"].id]
    assert all(math.isfinite(loss) for _, loss in m["train_loss_curve"])
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["metrics_split"] == "held_out" and m["eval_pairs"] >= 20
    assert m["accuracy"] > 0.6, "held-out accuracy against the data's labels"
    assert m["gold_accuracy"] > 0.6, "accuracy against the gold preference on fresh pairs"
    assert m["margin_mean"] > 0 and m["score_std"] > 0 and math.isfinite(m["score_mean"])
    assert m["dropped_identical"] == 0

    # the transformer moved away from the SFT weights it started from
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(tensor(art.path, name), tensor(arts["sft"].path, name))

    # plain transformers loads it, and alignlab's scorer (what PPO uses) reads the same rewards
    model = AutoModelForSequenceClassification.from_pretrained(art.path)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    scorer = load_scorer(art.ref, registry)
    assert model.config.pad_token_id == scorer.tokenizer.pad_token_id
    encoded, _ = encode([Ranking([{"role": "user", "content": PROMPT}], [GOOD, BAD])], scorer.tokenizer, 256)
    with torch.inference_mode():
        direct = score(model.eval(), collate(encoded, model.config.pad_token_id)).tolist()
    assert scorer([PROMPT, PROMPT], [GOOD, BAD]) == pytest.approx(direct, abs=1e-4)

    assert RewardModel(PAIRS).run(registry, model=arts["sft"].ref).id == art.id  # same fingerprint: reused


def test_kway_ranking_run_publishes(tiny_pipeline):
    registry, arts = tiny_pipeline
    cfg = {
        "data": {"kind": "ranking", "rankings": "testbed:rankings?n=40&k=4"},
        "train": {**QUICK, "batch_size": 4},
        "eval": {"gold_n": 20},
    }
    art = RewardModel(cfg).run(registry, model=arts["sft"].ref)
    m = art.metrics
    assert art.kind == "reward_model"
    assert all(math.isfinite(loss) for _, loss in m["train_loss_curve"])
    assert m["eval_pairs"] == 6 * m["eval_rankings"]  # every pair of each held-out 4-way ranking
    assert m["train_rankings"] + m["eval_rankings"] == 40
    assert {"accuracy", "gold_accuracy", "score_mean", "score_std"} <= set(m)


def test_lora_reward_model_is_merged(tiny_pipeline):
    from transformers import AutoModelForSequenceClassification

    registry, arts = tiny_pipeline
    cfg = {
        "output": "rm_lora",
        "adapter": {"method": "lora"},
        "data": {"source": "testbed:preferences?n=40"},
        "train": QUICK,
        "eval": {"gold": False},
    }
    art = RewardModel(cfg).run(registry, model=arts["sft"].ref)
    model = AutoModelForSequenceClassification.from_pretrained(art.path)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert art.metrics["trainable_parameters"] < sum(p.numel() for p in model.parameters()) / 5
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tensor(art.path, name), tensor(arts["sft"].path, name))


def test_identical_pairs_are_dropped_and_counted(tiny_pipeline, tmp_path):
    registry, arts = tiny_pipeline
    records = [
        {
            "prompt": f"What is {a} plus 1?",
            "chosen": f"The answer is {a + 1}.",
            "rejected": f"Um, the answer is {a + 1}, maybe.",
        }
        for a in range(10)
    ]
    records += [
        {"prompt": "What is 9 plus 9?", "chosen": "The answer is 18.", "rejected": "The answer is 18. "}
    ] * 2
    cfg = {
        "output": "rm_dedup",
        "data": {"source": write_jsonl(tmp_path / "pairs.jsonl", records)},
        "train": {**QUICK, "max_steps": 1},
    }
    art = RewardModel(cfg).run(registry, model=arts["sft"].ref)
    assert art.metrics["dropped_identical"] == 2
    assert art.metrics["train_rankings"] + art.metrics["eval_rankings"] == 10
    assert "gold_accuracy" not in art.metrics  # not testbed data


BAD_INPUT = {
    "missing rejected": ("preference", [{"prompt": PROMPT, "chosen": GOOD}], "'rejected': missing"),
    "missing chosen": ("preference", [{"prompt": PROMPT, "rejected": BAD}], "'chosen': missing"),
    "empty response": ("preference", [{"prompt": PROMPT, "chosen": "  ", "rejected": BAD}], "empty response"),
    "all identical": ("preference", [{"prompt": PROMPT, "chosen": GOOD, "rejected": GOOD}], "no usable"),
    "ranks not a permutation": (
        "ranking",
        [{"prompt": PROMPT, "responses": [{"text": GOOD, "rank": 1}, {"text": BAD, "rank": 3}]}],
        "permutation of 1..2",
    ),
    "tied ranks": (
        "ranking",
        [{"prompt": PROMPT, "responses": [{"text": GOOD, "rank": 1}, {"text": BAD, "rank": 1}]}],
        "ties are not allowed",
    ),
    "empty ranked response": (
        "ranking",
        [{"prompt": PROMPT, "responses": [{"text": GOOD, "rank": 1}, {"text": "", "rank": 2}]}],
        "empty response",
    ),
    "ranking repeats a response": (
        "ranking",
        [{"prompt": PROMPT, "responses": [GOOD, BAD, GOOD]}],
        "same response twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_publishes_nothing(tiny_pipeline, tmp_path, case):
    registry, arts = tiny_pipeline
    kind, records, match = BAD_INPUT[case]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    data = {"kind": kind, "source" if kind == "preference" else "rankings": path}
    before = {a.id for a in registry.list()}
    with pytest.raises(DataError, match=match):
        RewardModel({"output": "rm_bad", "data": data}).run(registry, model=arts["sft"].ref)
    assert {a.id for a in registry.list()} == before


def test_contradictory_data_config_publishes_nothing(tiny_pipeline):
    registry, arts = tiny_pipeline
    before = {a.id for a in registry.list()}
    with pytest.raises(ConfigError, match="set data.kind=ranking"):
        RewardModel({"data": {"rankings": "testbed:rankings"}}).run(registry, model=arts["sft"].ref)
    with pytest.raises(ConfigError, match="adapter.merge"):
        RewardModel({"adapter": {"method": "lora", "merge": False}}).run(registry, model=arts["sft"].ref)
    assert {a.id for a in registry.list()} == before


def test_without_a_held_out_split_the_metrics_come_from_a_sample_of_the_training_data(
    tiny_pipeline, monkeypatch
):
    monkeypatch.setattr("alignlab.stages.reward.TRAIN_METRICS_SAMPLE", 12)
    registry, arts = tiny_pipeline
    config = {"data": {"source": "testbed:preferences?n=60", "eval_share": 0.0}, "train": QUICK}
    m = RewardModel(config).run(registry, model=arts["sft"].ref).metrics
    assert m["metrics_split"] == "train" and m["eval_rankings"] == 0 and m["train_rankings"] == 60
    assert m["eval_pairs"] == 12, "one pair per sampled ranking, not the whole training set again"
    assert m["score_std"] > 0 and math.isfinite(m["score_mean"])


def test_the_reward_model_logs_through_the_shared_tracker(tiny_pipeline, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    registry, arts = tiny_pipeline
    monkeypatch.chdir(tmp_path)  # tensorboard writes runs/<run name> here
    RewardModel(
        {
            "output": "rm-tracked",
            "data": {"source": "testbed:preferences?n=32", "eval_share": 0},
            "train": QUICK,
            "eval": {"gold": False},
            "tracking": {"report_to": "tensorboard", "run_name": "rm-tb"},
        }
    ).run(registry, model=arts["sft"].ref)
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert run_dir.name == "rm-tb" and [e.step for e in events.Scalars("train/loss")] == [1, 2]
