"""Every stage on SmolLM2-135M-Instruct (a real checkpoint, its tokenizer and chat template).

Each test runs one to three optimiser steps and checks what every stage test checks: the
parameters changed, the loss is finite, and the published artifact loads with plain transformers
(or peft) and generates.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.models import generate, load_causal_lm

LORA = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
STEPS = {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "logging_steps": 1, "warmup_ratio": 0.0}
NO_GOLD = {"gold": False}
PROMPT = [{"role": "user", "content": "What is the sum of 6 and 5?"}]


def _changed(before: dict[str, torch.Tensor], model) -> int:
    """How many tensors of ``model`` differ from ``before`` (same names)."""
    after = model.state_dict()
    return sum(not torch.equal(before[k], after[k]) for k in before if k in after)


@pytest.fixture(scope="module")
def base_state(smollm2):
    registry, art = smollm2
    model, _ = load_causal_lm(art.ref, registry)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _generates(model, tok) -> None:
    out = generate(model, tok, [PROMPT], max_new_tokens=8)
    assert len(out) == 1 and out[0].strip()


def _lora_trained(out, registry, base_state) -> None:
    """The published policy loads, generates, and differs from the base exactly where LoRA was:
    q_proj and v_proj of SmolLM2's 30 layers, merged."""
    model, tok = load_causal_lm(out.ref, registry)
    assert _changed(base_state, model) == 2 * 30
    _generates(model, tok)


def test_import_publishes_the_gguf_as_plain_safetensors_with_its_sha256(smollm2, smollm2_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.registry import sha256_of
    from alignlab.stages.import_model import ImportModel

    registry, art = smollm2
    assert art.kind == "model" and art.stage == "import_model"
    assert art.parents == [f"path:{smollm2_file}"]
    assert art.data[0]["fingerprint"] == sha256_of(smollm2_file)
    assert (art.path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((art.path / "config.json").read_text())
    assert art.metrics["parameters"] == 134_515_008
    # the same bytes again: reused, not converted or published twice
    again = ImportModel({"output": "smollm2"}).run(registry, model=str(smollm2_file))
    assert again.id == art.id

    # plain transformers reads it, and it computes what transformers' own GGUF loader computes
    model = AutoModelForCausalLM.from_pretrained(art.path)
    tok = AutoTokenizer.from_pretrained(art.path)
    direct = AutoModelForCausalLM.from_pretrained(
        str(smollm2_file.parent), gguf_file=smollm2_file.name, dtype=torch.float32
    )
    x = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, direct(**x).logits)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    _generates(model, tok)


def test_pretrain_continues_pretraining_through_lora(smollm2, base_state):
    from alignlab.stages.pretrain import Pretrain

    registry, art = smollm2
    out = Pretrain(
        {
            "output": "smol-pretrain",
            "data": {"sources": [{"source": "testbed:pretrain?n=40"}], "seq_len": 32, "eval_share": 0.1},
            "train": {**STEPS, "batch_size": 4},
            "adapter": LORA,
            "eval": NO_GOLD,
        }
    ).run(registry, model=art.ref)
    assert out.kind == "model"  # merged
    assert math.isfinite(out.metrics["train_loss_last"]) and math.isfinite(out.metrics["perplexity"])
    _lora_trained(out, registry, base_state)


def test_sft_lora_trains_the_assistant_turns_and_publishes_an_adapter(smollm2, base_state):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignlab.stages.sft import SFT

    registry, art = smollm2
    out = SFT(
        {
            "output": "smol-sft-lora",
            "data": {"source": "testbed:sft?n=8", "max_length": 96},
            "train": STEPS,
            "adapter": {**LORA, "merge": False},
            "eval": {"gold_n": 4, "max_new_tokens": 8},
        }
    ).run(registry, model=art.ref)
    assert out.kind == "adapter" and out.parents == [art.id]
    assert math.isfinite(out.metrics["train_loss_last"])
    assert 0 <= out.metrics["gold_score"] <= 1  # the gold evaluation ran on the real model
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(art.path), str(out.path))
    assert _changed(base_state, model.merge_and_unload()) == 2 * 30
    composed, tok = load_causal_lm(out.ref, registry)
    _generates(composed, tok)


def test_sft_full_fine_tunes_every_weight(smollm2, base_state):
    from alignlab.stages.sft import SFT

    registry, art = smollm2
    out = SFT(
        {
            "output": "smol-sft-full",
            "data": {"source": "testbed:sft?n=4", "max_length": 64},
            "train": {**STEPS, "max_steps": 1, "lr": 1e-5},
            "eval": NO_GOLD,
        }
    ).run(registry, model=art.ref)
    model, tok = load_causal_lm(out.ref, registry)
    assert math.isfinite(out.metrics["train_loss_last"])
    assert _changed(base_state, model) >= 0.9 * len(base_state)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    _generates(model, tok)


def test_reward_model_on_the_real_model_scores_with_plain_transformers(smollm2):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.stages.reward import RewardModel

    registry, art = smollm2
    out = RewardModel(
        {
            "output": "smol-rm",
            "data": {"source": "testbed:preferences?n=8", "max_length": 96, "eval_share": 0},
            "train": STEPS,
            "adapter": LORA,
            "eval": NO_GOLD,
        }
    ).run(registry, model=art.ref)
    assert out.kind == "reward_model"
    assert math.isfinite(out.metrics["train_loss_last"]) and math.isfinite(out.metrics["score_std"])
    rm = AutoModelForSequenceClassification.from_pretrained(out.path)
    tok = AutoTokenizer.from_pretrained(out.path)
    assert rm.config.pad_token_id == tok.pad_token_id == tok.eos_token_id  # pad == EOS on SmolLM2
    text = tok.apply_chat_template([*PROMPT, {"role": "assistant", "content": "11"}], tokenize=False)
    with torch.no_grad():
        assert torch.isfinite(rm(**tok(text, return_tensors="pt", add_special_tokens=False)).logits).all()


def test_dpo_lora_on_the_real_model(smollm2, base_state):
    from alignlab.stages.dpo import DPO

    registry, art = smollm2
    out = DPO(
        {
            "output": "smol-dpo",
            "data": {"source": "testbed:preferences?n=8", "max_length": 96},
            "train": STEPS,
            "adapter": LORA,
            "kl": {"n": 2, "max_new_tokens": 8},
            "eval": NO_GOLD,
        }
    ).run(registry, model=art.ref)
    assert math.isfinite(out.metrics["train_loss_last"]) and math.isfinite(out.metrics["kl_to_reference"])
    _lora_trained(out, registry, base_state)


def test_rejection_sampling_on_the_real_model(smollm2, base_state):
    from alignlab.stages.rejection import RejectionSampling

    registry, art = smollm2
    out = RejectionSampling(
        {
            "output": "smol-rs",
            "data": {"source": "testbed:prompts?n=4", "max_length": 96},
            "sampling": {"k": 2, "max_new_tokens": 8},
            "train": STEPS,
            "adapter": LORA,
            "eval": NO_GOLD,
        }
    ).run(registry, model=art.ref, reward="alignlab.testbed:gold_reward_fn")
    assert math.isfinite(out.metrics["train_loss_last"])
    _lora_trained(out, registry, base_state)


def digit_safety(prompts: list[str], responses: list[str]) -> list[float]:
    """A stand-in safety reward: logit +4 without digits, -4 (sigmoid 0.02 < 0.15) with them."""
    return [-4.0 if any(c.isdigit() for c in r) else 4.0 for r in responses]


def test_ppo_lora_on_the_real_model_under_llama2s_safety_first_rule(smollm2, base_state):
    from alignlab.stages.ppo import PPO

    registry, art = smollm2
    out = PPO(
        {
            "output": "smol-ppo",
            "data": {"source": "testbed:prompts?n=8"},
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-4},
            "ppo": {"mini_batch_size": 4},
            "generation": {"max_new_tokens": 8, "batch_size": 4},
            "adapter": LORA,
            "checkpoint_every": 0,
            "eval": {"gold": False},
            "reward_rule": "safety_first",
        }
    ).run(registry, model=art.ref, reward=["alignlab.testbed:gold_reward_fn", digit_safety])
    history = out.metrics["history"]
    assert len(history) == 2 and math.isfinite(out.metrics["kl_to_reference"])
    assert all(0.0 <= h["reward/safety_share"] <= 1.0 for h in history)
    assert all(math.isfinite(h["policy_loss"]) and math.isfinite(h["value_loss"]) for h in history)
    _lora_trained(out, registry, base_state)


def test_grpo_lora_on_the_real_model(smollm2, base_state):
    from alignlab.stages.grpo import GRPO

    registry, art = smollm2
    out = GRPO(
        {
            "output": "smol-grpo",
            "data": {"source": "testbed:prompts?n=8"},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-4},
            "grpo": {"num_generations": 4, "kl_coef": 0.05},
            "generation": {"max_new_tokens": 8, "batch_size": 8},
            "adapter": LORA,
            "checkpoint_every": 0,
            "eval": {"gold": False},
        }
    ).run(registry, model=art.ref, reward=["alignlab.testbed:gold_reward_fn", "alignlab.testbed:correctness"])
    history = out.metrics["history"]
    assert len(history) == 2 and all(math.isfinite(h["policy_loss"]) for h in history)
    # the reference is the base with the adapter off: the first step samples from it exactly
    assert abs(history[0]["kl"]) < 1e-3 and math.isfinite(history[1]["kl"])
    assert len([k for k in history[0] if k.startswith("reward/")]) == 2
    _lora_trained(out, registry, base_state)
