"""alignlab.distributed.runtime in one process: what is refused with adapters, the plain copy."""

from __future__ import annotations

import pytest
import torch

from alignlab.distributed.config import DistributedGroup
from alignlab.distributed.runtime import check_distributed, plain_copy, trainable_parameters
from alignlab.errors import ConfigError
from alignlab.models.adapters import AdapterGroup

ZERO3 = DistributedGroup(zero_stage=3)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_lora_and_full_fine_tuning_run_under_zero3(method):
    check_distributed(ZERO3, AdapterGroup(method=method))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_qlora_under_zero3_names_what_this_machine_lacks():
    with pytest.raises(ConfigError, match="CUDA"):
        check_distributed(ZERO3, AdapterGroup(method="qlora"))


def test_qlora_under_zero3_is_refused_from_the_stage_config():
    from alignlab.stages.sft import SFT

    with pytest.raises(ConfigError, match="qlora"):
        SFT({"adapter": {"method": "qlora"}, "distributed": {"zero_stage": 3}})


def test_prompt_tuning_under_zero3_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="zero_stage 0-2"):
        check_distributed(ZERO3, AdapterGroup(method="prompt_tuning"))
    check_distributed(DistributedGroup(zero_stage=2), AdapterGroup(method="prompt_tuning"))


def _tiny_lora(task_type: str = "CAUSAL_LM"):
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from alignlab.models.adapters import peft_config

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=0, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    cls = LlamaForCausalLM if task_type == "CAUSAL_LM" else LlamaForSequenceClassification
    model = get_peft_model(cls(config), peft_config(AdapterGroup(method="lora", r=2), task_type=task_type))
    with torch.no_grad():  # a trained adapter: lora_B away from its zero init
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_CLS"])
def test_plain_copy_of_a_lora_model_merges_and_saves_like_the_original(tmp_path, task_type):
    model = _tiny_lora(task_type)
    copy = plain_copy(model, {k: v.clone() for k, v in model.state_dict().items()})
    assert type(copy) is type(model) and copy.active_adapter == model.active_adapter
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(copy(input_ids=ids).logits, model(input_ids=ids).logits)
    with copy.disable_adapter(), model.disable_adapter():  # the reference DPO and PPO use
        assert torch.equal(copy(input_ids=ids).logits, model(input_ids=ids).logits)
    copy.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    merged = copy.merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_trainable_parameters_counts_zero3_shards_whole():
    model = _tiny_lora()
    whole = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable_parameters(model) == whole
    for p in model.parameters():
        if p.requires_grad:
            p.ds_numel = p.numel()  # what DeepSpeed records before it empties the local tensor
            p.data = torch.empty(0)
    assert trainable_parameters(model) == whole
