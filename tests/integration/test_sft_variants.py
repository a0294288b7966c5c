"""SFT with peft adapters, packing and the QLoRA guard (issue 2, section 4)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.errors import ConfigError
from alignlab.models import generate, load_causal_lm
from alignlab.stages.sft import SFT

pytestmark = pytest.mark.integration

SHORT = {
    "train": {"max_steps": 6, "batch_size": 16, "lr": 1e-3, "logging_steps": 2},
    "data": {"source": "testbed:sft?n=96"},
    "eval": {"gold": False},
}


def _cfg(**extra):
    cfg = {k: dict(v) for k, v in SHORT.items()}
    for key, value in extra.items():
        cfg[key] = value
    return cfg


def test_lora_unmerged_publishes_an_adapter_that_composes_with_its_base(tiny_pipeline):
    registry, arts = tiny_pipeline
    art = SFT(_cfg(output="sft-lora", adapter={"method": "lora", "r": 4, "merge": False})).run(
        registry, model=arts["pretrain"].ref
    )
    assert art.kind == "adapter"
    assert (art.path / "adapter_model.safetensors").exists()
    assert art.parents == [arts["pretrain"].id]
    model, tok = load_causal_lm(art.ref, registry)  # base + adapter, composed
    base, _ = load_causal_lm(arts["pretrain"].ref, registry)
    x = tok("What is 2 plus 3?", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**x).logits, base(**x).logits)
    assert len(generate(model, tok, ["What is 2 plus 3?"], max_new_tokens=4)) == 1
    assert 0 < art.metrics["trainable_parameters"] < sum(p.numel() for p in base.parameters()) / 5


def test_an_adapter_trained_on_an_adapter_loads_on_the_merged_parent(tiny_pipeline):
    from peft import PeftModel

    registry, arts = tiny_pipeline
    lora = {"method": "lora", "r": 4, "merge": False}
    first = SFT(_cfg(output="sft-lora-a", adapter=lora)).run(registry, model=arts["pretrain"].ref)
    second = SFT(_cfg(output="sft-lora-b", adapter=lora, train={**SHORT["train"], "seed": 1})).run(
        registry, model=first.ref
    )
    assert second.kind == "adapter" and second.parents == [first.id]
    model, tok = load_causal_lm(second.ref, registry)
    # what the second adapter was trained on: the pretrained model with the first adapter folded in
    parent, _ = load_causal_lm(first.ref, registry, merge_adapter=True)
    x = tok("What is 2 plus 3?", return_tensors="pt")
    with torch.no_grad():
        parent_logits = parent(**x).logits
        expected = PeftModel.from_pretrained(parent, str(second.path))  # wraps `parent` in place
        torch.testing.assert_close(model(**x).logits, expected(**x).logits)
        assert not torch.allclose(model(**x).logits, parent_logits)


def test_lora_merged_publishes_a_plain_model(tiny_pipeline):
    registry, arts = tiny_pipeline
    art = SFT(_cfg(output="sft-merged", adapter={"method": "lora", "r": 4})).run(
        registry, model=arts["pretrain"].ref
    )
    assert art.kind == "model"
    model = AutoModelForCausalLM.from_pretrained(art.path)
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_prompt_tuning_trains_only_virtual_tokens(tiny_pipeline):
    registry, arts = tiny_pipeline
    art = SFT(_cfg(output="sft-prompt", adapter={"method": "prompt_tuning", "num_virtual_tokens": 4})).run(
        registry, model=arts["pretrain"].ref
    )
    assert art.kind == "adapter"
    hidden = AutoModelForCausalLM.from_pretrained(arts["pretrain"].path).config.hidden_size
    assert art.metrics["trainable_parameters"] == 4 * hidden
    model, tok = load_causal_lm(art.ref, registry)
    assert len(generate(model, tok, ["Add 1 and 2."], max_new_tokens=4)) == 1


def test_packing_runs(tiny_pipeline):
    registry, arts = tiny_pipeline
    art = SFT(_cfg(output="sft-packed", packing=True, loss_on="all")).run(
        registry, model=arts["pretrain"].ref
    )
    assert torch.isfinite(torch.tensor(art.metrics["train_loss_last"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for machines without CUDA")
def test_qlora_says_why_it_cannot_run_here(tiny_pipeline):
    registry, arts = tiny_pipeline
    before = len(registry.list())
    with pytest.raises(ConfigError, match="CUDA"):
        SFT(_cfg(adapter={"method": "qlora"})).run(registry, model=arts["pretrain"].ref)
    assert len(registry.list()) == before
