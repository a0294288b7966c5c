"""DPO on the tiny test pipeline: trains, publishes, loads with plain transformers, measures KL and gold."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.errors import DataError
from alignlab.stages.dpo import DPO

pytestmark = pytest.mark.integration

# RPO (DPO + NLL of the chosen answer): on the test-size pipeline plain DPO (sigmoid) at this lr
# learns to leave the answer out ("The answer is.") and loses most of its gold score.
FULL = {
    "output": "dpo_full",
    "loss_type": "rpo",
    "data": {"source": "testbed:preferences?n=512"},
    "train": {"epochs": 1, "lr": 2e-4, "batch_size": 16, "logging_steps": 8},
    "kl": {"n": 16},
    "eval": {"gold_n": 40},  # the SFT fixture's gold_n: the same 40 held-out prompts
}
LORA = {
    "output": "dpo_lora",
    "data": {"source": "testbed:preferences?n=48"},
    "train": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "logging_steps": 1},
    "adapter": {"method": "lora", "r": 4, "alpha": 8},
    "kl": {"n": 4, "max_new_tokens": 8},
    "eval": {"gold": False},
}


def _parameters_changed(path_a, path_b) -> bool:
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(path_a).state_dict()
    b = AutoModelForCausalLM.from_pretrained(path_b).state_dict()
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_dpo_full_finetune_publishes_and_measures(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    sft = arts["sft"]
    art = DPO(FULL).run(registry, model=sft.ref)

    assert art.kind == "model" and art.stage == "dpo" and sft.id in art.parents
    assert registry.verify(art.ref) == []
    assert _parameters_changed(art.path, sft.path)  # loads with AutoModelForCausalLM.from_pretrained
    m = art.metrics
    assert math.isfinite(m["train_loss_first"]) and math.isfinite(m["train_loss_last"])
    assert 0.0 <= m["reward_accuracy"] <= 1.0 and math.isfinite(m["reward_margin"])
    assert math.isfinite(m["kl_to_reference"]) and m["kl_to_reference_k3"] >= 0.0
    assert 0.0 <= m["gold_score"] <= 1.0
    print(
        "\nSFT vs DPO on the test pipeline:",
        json.dumps(
            {
                "sft_gold_score": sft.metrics["gold_score"],
                "dpo_gold_score": m["gold_score"],
                "sft_gold_accuracy": sft.metrics["gold_accuracy"],
                "dpo_gold_accuracy": m["gold_accuracy"],
                "reward_accuracy": m["reward_accuracy"],
                "reward_margin": m["reward_margin"],
                "kl_to_reference": m["kl_to_reference"],
                "kl_to_reference_k3": m["kl_to_reference_k3"],
            }
        ),
    )
    # 40 prompts and a 0.9M-parameter model: DPO's gain over SFT is within noise here (see
    # docs/stages/dpo.md), so this only guards against the collapse plain DPO shows (gold ~0.1)
    assert m["gold_score"] > sft.metrics["gold_score"] - 0.1


def test_dpo_lora_uses_the_adapter_free_model_as_reference(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    sft = arts["sft"]
    merged = DPO(LORA).run(registry, model=sft.ref)
    assert merged.kind == "model" and _parameters_changed(merged.path, sft.path)
    assert merged.metrics["trainable_parameters"] < 100_000  # only the LoRA matrices
    assert math.isfinite(merged.metrics["train_loss_last"]) and "kl_to_reference" in merged.metrics

    adapter = DPO(
        {**LORA, "output": "dpo_adapter", "adapter": {**LORA["adapter"], "merge": False}, "kl": {"n": 0}}
    ).run(registry, model=sft.ref)
    assert adapter.kind == "adapter" and (adapter.path / "adapter_config.json").exists()


def test_bad_pairs_publish_nothing(tiny_pipeline, tmp_path) -> None:
    registry, arts = tiny_pipeline
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
        + "\n"
        + json.dumps({"prompt": "3+3?", "chosen": "6"})
        + "\n"
    )
    with pytest.raises(DataError, match="rejected"):
        DPO({"output": "dpo_bad", "data": {"source": str(path)}}).run(registry, model=arts["sft"].ref)
    assert registry.list("dpo_bad") == []
