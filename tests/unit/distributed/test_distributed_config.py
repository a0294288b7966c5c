"""The `distributed` group -> DeepSpeed configs, TrainingArguments and Accelerator keyword arguments."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from alignlab.config import load_config
from alignlab.distributed.config import (
    TEMPLATES,
    DistributedGroup,
    MixedPrecision,
    StageKind,
    accelerator_kwargs,
    checkpointing_argument,
    deepspeed_config,
    enable_gradient_checkpointing,
    fill_auto,
    resolve_mixed_precision,
    stage_kind,
    training_args_overrides,
    validate_deepspeed_config,
    with_recipe_distributed,
)
from alignlab.errors import ConfigError

GROUPS = list(TEMPLATES.items())
# what accelerate's DeepSpeedPlugin / Accelerator._prepare_deepspeed fill when they read "auto"
ACCELERATE_FILLS = {
    "train_micro_batch_size_per_gpu",
    "train_batch_size",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def _autos(node: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in node.items():
        if isinstance(value, dict):
            out |= _autos(value, f"{prefix}{key}.")
        elif value == "auto":
            out.add(prefix + key)
    return out


def test_no_config_for_zero0_in_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert deepspeed_config(DistributedGroup(), "sft") is None
    assert deepspeed_config(DistributedGroup(), "ppo", world_size=1) is None
    assert deepspeed_config(DistributedGroup(), "sft", world_size=4)["zero_optimization"] == {"stage": 0}
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun, deepspeed and accelerate set it
    assert deepspeed_config(DistributedGroup(), "sft") is not None
    assert deepspeed_config(DistributedGroup(zero_stage=2), "sft", world_size=1) is not None


@pytest.mark.parametrize("name,group", GROUPS, ids=[n for n, _ in GROUPS])
@pytest.mark.parametrize("kind", ["sft", "ppo", "inference"])
def test_every_stage_and_kind_is_a_valid_deepspeed_config(name, group, kind):
    config = deepspeed_config(group, kind, world_size=8)
    validate_deepspeed_config(config)  # DeepSpeed's own pydantic models, unknown keys refused
    zero = config["zero_optimization"]
    if kind == "inference":
        assert zero["stage"] == (3 if group.zero_stage == 3 else 0) and not _autos(config)
        assert "optimizer" not in config and ("offload_param" in zero) == group.offload_params
        return
    assert zero["stage"] == group.zero_stage
    assert ("offload_optimizer" in zero) == group.offload_optimizer
    assert ("offload_param" in zero) == group.offload_params
    assert {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled"} <= _autos(config)
    if group.zero_stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # to publish one safetensors model
    assert ("optimizer" in config) == (group.offload_optimizer and kind == "sft")


@pytest.mark.parametrize("name,group", GROUPS, ids=[n for n, _ in GROUPS])
def test_transformers_trainer_fills_every_auto(name, group):
    """Run transformers' own "auto" filling (what TrainingArguments + Trainer do) on the config."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    args = SimpleNamespace(
        world_size=8, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_grad_norm=1.0,
        learning_rate=1e-5, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        save_on_each_node=False, fp16=False, fp16_full_eval=False, bf16=True, bf16_full_eval=False,
        get_warmup_steps=lambda steps: 0,
    )  # fmt: skip
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    try:
        hf = HfTrainerDeepSpeedConfig(deepspeed_config(group, "sft", world_size=8))
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, num_training_steps=10)
        assert not _autos(hf.config), f"left as auto: {_autos(hf.config)}"
        assert hf.config["train_batch_size"] == 64 and hf.config["bf16"]["enabled"] is True
    finally:
        unset_hf_deepspeed_config()  # a live ZeRO-3 config would make later from_pretrained calls shard


@pytest.mark.parametrize("name,group", GROUPS, ids=[n for n, _ in GROUPS])
def test_accelerate_takes_the_config(name, group):
    config = deepspeed_config(group, "ppo", world_size=8, max_grad_norm=0.5)
    assert _autos(config) <= ACCELERATE_FILLS
    assert config["gradient_clipping"] == 0.5 and "optimizer" not in config
    assert config.get("zero_force_ds_cpu_optimizer", True) is not group.offload_optimizer
    kwargs = accelerator_kwargs(group, world_size=8)
    plugin = kwargs["deepspeed_plugin"]
    assert plugin.zero_stage == group.zero_stage
    assert plugin.hf_ds_config.is_zero3() == (group.zero_stage == 3)
    assert kwargs["mixed_precision"] in ("bf16", "fp16", "no")


def test_accelerator_kwargs_without_sharding(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert accelerator_kwargs(DistributedGroup(mixed_precision="bf16")) == {"mixed_precision": "bf16"}


def test_training_args_overrides_are_training_arguments_fields():
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    group = DistributedGroup(zero_stage=3, mixed_precision="fp16", gradient_checkpointing=True)
    out = training_args_overrides(group, world_size=8)
    assert set(out) <= fields
    name = checkpointing_argument()  # activation_checkpointing from transformers 5.2x, before it gradient_
    assert out["fp16"] is True and out["bf16"] is False and out[name] is True
    assert out[f"{name}_kwargs"] == {"use_reentrant": False}
    assert out["deepspeed"]["zero_optimization"]["stage"] == 3
    single = training_args_overrides(DistributedGroup(mixed_precision="no"), world_size=1)
    assert "deepspeed" not in single and single["bf16"] is single["fp16"] is False


@pytest.mark.parametrize("on", [False, True])
def test_overrides_win_over_trl_defaults(tmp_path, on):
    """TRL's configs default the deprecated gradient_checkpointing to True; ours decides."""
    from trl import SFTConfig

    group = DistributedGroup(mixed_precision="no", gradient_checkpointing=on)
    base = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": [], "gradient_checkpointing": False}
    args = SFTConfig(**{**base, **training_args_overrides(group, world_size=1)})
    assert getattr(args, checkpointing_argument()) is on and args.gradient_checkpointing is on
    assert args.bf16 is False and args.deepspeed is None


def test_mixed_precision_auto_follows_the_hardware():
    auto = DistributedGroup()
    assert resolve_mixed_precision(auto, cuda=True, bf16_supported=True) == "bf16"
    assert resolve_mixed_precision(auto, cuda=True, bf16_supported=False) == "fp16"  # V100, T4
    assert resolve_mixed_precision(auto, cuda=False, bf16_supported=False) == "no"
    assert (
        resolve_mixed_precision(DistributedGroup(mixed_precision="fp16"), cuda=False, bf16_supported=False)
        == "fp16"
    )


def test_inference_config_follows_the_precision():
    group = DistributedGroup(
        zero_stage=3, offload_optimizer=True, offload_params=True, mixed_precision="bf16"
    )
    config = deepspeed_config(group, StageKind.INFERENCE, world_size=8)
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_loaded_strictly_from_yaml_like_data():
    group = load_config(
        DistributedGroup, {"zero_stage": 2, "offload_optimizer": True, "mixed_precision": "bf16"}
    )
    assert group.mixed_precision is MixedPrecision.BF16
    with pytest.raises(ConfigError, match="did you mean 'zero_stage'"):
        load_config(DistributedGroup, {"zero_stag": 2}, where="distributed")
    with pytest.raises(ConfigError, match="'distributed.mixed_precision'.*did you mean 'bf16'"):
        load_config(DistributedGroup, {"mixed_precision": "bf61"}, where="distributed")
    with pytest.raises(ConfigError, match="zero_stage must be 0, 1, 2 or 3"):
        load_config(DistributedGroup, {"zero_stage": 4})
    with pytest.raises(ConfigError, match="offload_params needs distributed.zero_stage: 3"):
        load_config(DistributedGroup, {"zero_stage": 2, "offload_params": True})
    with pytest.raises(ConfigError, match="offload_optimizer needs"):
        load_config(DistributedGroup, {"offload_optimizer": True})
    with pytest.raises(ConfigError, match="config_file is used as is"):
        load_config(DistributedGroup, {"config_file": "x.json", "zero_stage": 3})


def test_config_file_is_used_as_is(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {"zero_optimization": {"stage": 3}, "gradient_clipping": "auto", "bf16": {"enabled": True}}
        )
    )
    group = DistributedGroup(config_file=str(path))
    assert deepspeed_config(group, "sft", world_size=2)["bf16"] == {"enabled": True}
    assert deepspeed_config(group, "ppo", world_size=2, max_grad_norm=0.3)["gradient_clipping"] == 0.3
    assert deepspeed_config(group, "inference", world_size=2)["zero_optimization"]["stage"] == 3
    first = deepspeed_config(group, "sft", world_size=2)
    # DeepSpeed and accelerate edit the config they are given: a fresh dict each time
    first["zero_optimization"]["stage"] = 0
    assert deepspeed_config(group, "sft", world_size=2)["zero_optimization"]["stage"] == 3
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"params": {"lr": 3e-4}}}))
    with pytest.raises(ConfigError, match="remove the 'optimizer' section"):
        deepspeed_config(group, "ppo", world_size=2)
    path.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    assert deepspeed_config(group, "inference", world_size=1) is None  # nothing to shard
    with pytest.raises(ConfigError, match="not found.*recipes/deepspeed"):
        deepspeed_config(DistributedGroup(config_file=str(tmp_path / "nope.json")), "sft")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"ds.json:1: not valid JSON"):
        deepspeed_config(group, "sft")


def test_stage_names_map_to_their_training_loop():
    assert stage_kind("sft") is stage_kind("dpo") is stage_kind("pretrain") is StageKind.TRAINER
    assert stage_kind("ppo") is stage_kind("reward_model") is StageKind.ACCELERATE
    assert stage_kind("inference") is StageKind.INFERENCE
    with pytest.raises(ConfigError, match="did you mean 'ppo'"):
        stage_kind("ppp")


def test_fill_auto_refuses_an_auto_nobody_fills():
    assert fill_auto({"gradient_clipping": "auto"}, hidden_size=8) == {"gradient_clipping": 1.0}
    with pytest.raises(ConfigError, match="'zero_optimization.stage'"):
        fill_auto({"zero_optimization": {"stage": "auto"}}, hidden_size=8)


def test_validate_names_deepspeeds_complaint():
    with pytest.raises(ConfigError, match="bogus"):
        validate_deepspeed_config({"zero_optimization": {"stage": 2, "bogus": 1}})
    with pytest.raises(ConfigError, match="did you mean 'zero_optimization'"):
        validate_deepspeed_config({"zero_optimisation": {"stage": 2}})


def test_recipe_section_is_inherited_and_entry_keys_win():
    recipe = {"zero_stage": 3, "offload_optimizer": True, "gradient_checkpointing": True}
    out = with_recipe_distributed(
        {"train": {"lr": 1e-5}, "distributed": {"offload_optimizer": False}}, recipe
    )
    assert out["distributed"] == {"zero_stage": 3, "offload_optimizer": False, "gradient_checkpointing": True}
    assert out["train"] == {"lr": 1e-5}
    own_file = with_recipe_distributed({"distributed": {"config_file": "z.json"}}, recipe)
    assert own_file["distributed"] == {"gradient_checkpointing": True, "config_file": "z.json"}
    own_zero = with_recipe_distributed({"distributed": {"zero_stage": 1}}, {"config_file": "z.json"})
    assert own_zero["distributed"] == {"zero_stage": 1}
    assert with_recipe_distributed({"a": 1}, None) == {"a": 1}
    load_config(DistributedGroup, out["distributed"])  # still a valid group


def test_gradient_checkpointing_on_a_tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config)
    enable_gradient_checkpointing(model, DistributedGroup())

    def checkpointing() -> bool:  # transformers 5.2x's name, and before it
        return getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing

    assert not checkpointing()
    enable_gradient_checkpointing(model, DistributedGroup(gradient_checkpointing=True))
    assert checkpointing() and model.config.use_cache is False
