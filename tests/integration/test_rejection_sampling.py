"""RejectionSampling on the tiny pipeline: best of 8 on 96 testbed prompts, one round, 12 SFT steps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.errors import ConfigError, ReferenceNotFound
from alignlab.stages.rejection import PLOT_FILE, RejectionSampling
from alignlab.testbed import gold_reward_fn

pytestmark = pytest.mark.integration

RS_CFG = {
    "data": {"limit": 96},
    "sampling": {"k": 8, "temperature": 0.7, "max_new_tokens": 24, "batch_size": 192},
    "train": {"epochs": 2, "lr": 1e-3, "batch_size": 16, "logging_steps": 1},
    "eval": {"gold_n": 40},  # the same 40 held-out prompts as the SFT fixture's gold score
}


@pytest.fixture(scope="module")
def rs_run(tiny_pipeline):
    registry, arts = tiny_pipeline
    art = RejectionSampling(RS_CFG).run(registry, model=arts["sft"].ref, reward=gold_reward_fn)
    return registry, arts, art


def test_fine_tunes_on_best_samples_and_publishes_model_and_dataset(rs_run):
    from transformers import AutoModelForCausalLM

    from alignlab.data import load_records

    registry, arts, art = rs_run
    assert art.kind == "model" and art.stage == "rejection_sampling"
    assert math.isfinite(art.metrics["train_loss_last"])

    before = AutoModelForCausalLM.from_pretrained(arts["sft"].path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(art.path).state_dict()  # plain transformers loads it
    assert any(not torch.equal(before[k], after[k]) for k in before)

    datasets = [registry.get(p) for p in art.parents if registry.get(p).kind == "dataset"]
    assert len(datasets) == 1
    samples = datasets[0]
    assert arts["sft"].id in samples.parents
    assert samples.id in {node.id for _, node in registry.lineage(art)}
    selected = load_records(samples.ref, kind="sft", registry=registry)
    assert len(selected) == samples.metrics["selected"] == 96  # no threshold: one per prompt

    curve = art.metrics["best_of_n"]
    assert list(curve) == ["1", "2", "4", "8"]
    values = list(curve.values())
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    assert (art.path / PLOT_FILE).stat().st_size > 0 and (samples.path / PLOT_FILE).exists()

    sft_gold, rs_gold = arts["sft"].metrics["gold_score"], art.metrics["gold_score"]
    print(
        f"\ngold score: SFT {sft_gold:.3f} -> RS {rs_gold:.3f}; best of N: {curve}; "
        f"gold best of N: {art.metrics['best_of_n_gold']}"
    )
    assert rs_gold > sft_gold


def test_an_import_path_names_the_same_reward_function(rs_run):
    registry, arts, art = rs_run
    again = RejectionSampling(RS_CFG).run(
        registry, model=arts["sft"].ref, reward="alignlab.testbed:gold_reward_fn"
    )
    assert again.id == art.id  # same function, same fingerprint: reused, not re-sampled


def test_an_unknown_reward_is_a_clear_error_and_publishes_nothing(tiny_pipeline):
    registry, arts = tiny_pipeline
    before = {a.id for a in registry.list()}
    stage = RejectionSampling(RS_CFG)
    with pytest.raises(ReferenceNotFound, match="no_such_reward"):
        stage.run(registry, model=arts["sft"].ref, reward="no_such_reward")
    with pytest.raises(ConfigError, match="cannot import module 'alignlab.no_such_module'"):
        stage.run(registry, model=arts["sft"].ref, reward="alignlab.no_such_module:score")
    with pytest.raises(ConfigError, match="not a reward model"):
        stage.run(registry, model=arts["sft"].ref, reward=arts["sft"].ref)
    assert {a.id for a in registry.list()} == before


def test_each_round_samples_from_the_previous_rounds_policy(tiny_pipeline):
    registry, arts = tiny_pipeline
    cfg = {
        "output": "rs2",
        "rounds": 2,
        "data": {"limit": 8},
        "sampling": {"k": 2, "max_new_tokens": 8},
        "train": {"max_steps": 1, "batch_size": 8},
        "eval": {"gold": False},
    }
    last = RejectionSampling(cfg).run(registry, model=arts["sft"].ref, reward=gold_reward_fn)
    samples_2 = next(registry.get(p) for p in last.parents if registry.get(p).kind == "dataset")
    first = registry.get("rs2:v1")
    assert last.ref == "rs2:v2" and first.id in samples_2.parents
    assert samples_2.metrics["round"] == 2 and samples_2.config["round"] == 2


def digit_safety(prompts: list[str], responses: list[str]) -> list[float]:
    """A stand-in safety reward: logit +4 without digits, -4 (sigmoid 0.02 < 0.15) with them."""
    return [-4.0 if any(c.isdigit() for c in r) else 4.0 for r in responses]


def test_rejection_sampling_selects_by_the_combined_reward_and_logs_each(tiny_pipeline):
    from alignlab.data import load_records

    registry, arts = tiny_pipeline
    cfg = {
        "output": "rs_safety",
        "data": {"limit": 24},
        "sampling": {"k": 4, "max_new_tokens": 16, "batch_size": 96},
        "train": {"max_steps": 1, "batch_size": 8},
        "eval": {"gold": False},
        "reward_rule": "safety_first",
    }
    art = RejectionSampling(cfg).run(registry, model=arts["sft"].ref, reward=[gold_reward_fn, digit_safety])
    samples = next(registry.get(p) for p in art.parents if registry.get(p).kind == "dataset")
    logged = {k for k in samples.metrics if k.startswith("reward/")}
    assert "reward/safety_share" in logged and any(k.endswith("digit_safety") for k in logged), logged
    assert {"reward_fn", "reward_2_fn"} <= {d["role"] for d in samples.data}
    selected = load_records(samples.ref, kind="sft", registry=registry)
    rows = [json.loads(line) for line in (samples.path / "samples.jsonl").read_text().splitlines()]
    for row in rows:  # a safe sample, when there is one, beats every flagged one
        safe = [r for r in row["responses"] if not any(c.isdigit() for c in r)]
        best = row["responses"][row["rewards"].index(max(row["rewards"]))]
        if safe:
            assert not any(c.isdigit() for c in best), row
    assert len(selected) == len(rows) == 24
