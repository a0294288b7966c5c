"""The memory planner against DeepSpeed's estimators, transformers' models, peft and the worked example."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re

import pytest

from alignlab.distributed import model_shapes as S
from alignlab.distributed import planner as P
from alignlab.distributed.model_shapes import known_shape, resolve_model, shape_from_config
from alignlab.distributed.planner import GIB, Accounting, Setup, activation_bytes, plan, zero_model_states
from alignlab.errors import ConfigError

LLAMA7 = "meta-llama/Llama-2-7b-hf"
# (total params, largest layer): Llama-2-7B, OPT-125m, Llama-2-70B, a toy
SIZES = [(6_738_415_616, 131_072_000), (125_239_296, 38_608_896), (68_976_648_192, 262_144_000), (1000, 7)]
MACHINES = [(1, 1), (2, 1), (8, 1), (8, 4), (4, 3)]  # (GPUs per node, nodes)


# -- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_id", sorted(S.KNOWN_MODELS))
def test_known_shapes_match_the_models_transformers_builds(hub_id):
    """Parameter count and DeepSpeed's largest layer, against the model built on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**S.KNOWN_MODELS[hub_id])
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # shared weights once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    shape = known_shape(hub_id)
    assert (shape.params, shape.largest_layer) == (total, largest)


def test_published_parameter_counts():
    assert known_shape(LLAMA7).params == 6_738_415_616
    assert known_shape("meta-llama/Llama-2-70b-hf").params == 68_976_648_192
    assert known_shape("facebook/opt-1.3b").params == 1_315_758_080
    assert known_shape("gpt2").params == 124_439_808


TINY = [
    {"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
    {"model_type": "opt", "vocab_size": 300, "hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2,
     "num_attention_heads": 4, "word_embed_proj_dim": 32, "do_layer_norm_before": False, "max_position_embeddings": 128},
    {"model_type": "gpt2", "vocab_size": 300, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128,
     "bos_token_id": 0, "eos_token_id": 0},
    # no formula for qwen2: measured on the meta device
    {"model_type": "qwen2", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
]  # fmt: skip


@pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::UserWarning"
)  # peft on transformers 5, GPT-2's Conv1D
@pytest.mark.parametrize("config", TINY, ids=lambda c: c["model_type"])
def test_counts_agree_with_deepspeed_model_to_params_and_peft_lora(config):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from deepspeed.runtime.zero.stage3 import model_to_params

    shape = shape_from_config(config)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    assert (shape.params, shape.largest_layer) == model_to_params(model)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    assert shape.lora_params(4) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_resolve_model_by_size_name_and_local_config(tmp_path):
    seven = resolve_model("7B")
    assert seven.params == 7_000_000_000 and seven.hidden == 4096 and "Llama-2-7b" in seven.name
    assert resolve_model("350m").hidden == 1024 and resolve_model("350M").params == 350_000_000
    assert resolve_model("70B").layers == 80
    for alias in (
        "llama-2-7b",
        "Llama-2-7b-chat-hf",
        "meta-llama/Llama-2-7b-hf",
        "hf:meta-llama/Llama-2-7b-hf",
    ):
        assert resolve_model(alias).params == 6_738_415_616
    assert resolve_model("opt-1.3b").params == 1_315_758_080
    assert resolve_model("llama-3-8b").vocab == 128256
    (tmp_path / "config.json").write_text(json.dumps(TINY[0]))
    assert (
        resolve_model(str(tmp_path)).params == resolve_model(str(tmp_path / "config.json")).params == 100_160
    )


def test_unknown_model_says_what_to_give():
    with pytest.raises(ConfigError, match=r"llama-2-7b.*give a size"):
        resolve_model("llama-2-7")
    with pytest.raises(ConfigError, match="give a size"):
        resolve_model("org/never-heard-of")


def test_size_keeps_the_templates_non_linear_parameters():
    seven, template = resolve_model("7B"), known_shape(LLAMA7)
    assert template.params - template.quantizable_params == seven.params - seven.quantizable_params


# -- DeepSpeed's estimators ------------------------------------------------------------------------


@pytest.mark.parametrize("params,largest", SIZES)
@pytest.mark.parametrize("per_node,nodes", MACHINES)
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_equals_deepspeed_estimator(params, largest, per_node, nodes, offload):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    ds = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=offload)
    ours = zero_model_states(params, largest, zero_stage=2, gpus_per_node=per_node, nodes=nodes,
                             offload_optimizer=offload)  # fmt: skip
    assert ours == pytest.approx(ds, abs=2)  # DeepSpeed truncates to whole bytes


@pytest.mark.parametrize("params,largest", SIZES)
@pytest.mark.parametrize("per_node,nodes", MACHINES)
@pytest.mark.parametrize("offload,offload_params", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("zero_init", [True, False])
def test_zero3_equals_deepspeed_estimator(
    params, largest, per_node, nodes, offload, offload_params, zero_init
):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        params,
        largest,
        per_node,
        nodes,
        cpu_offload=offload,
        cpu_offload_params=offload_params,
        zero_init=zero_init,
    )
    ours = zero_model_states(params, largest, zero_stage=3, gpus_per_node=per_node, nodes=nodes,
                             offload_optimizer=offload, offload_params=offload_params, zero_init=zero_init)  # fmt: skip
    assert ours == pytest.approx((cpu, gpu), abs=2)


def _printed_rows(estimator, *args) -> list[tuple[float, float, str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        estimator(*args)
    rows = re.findall(r"^\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.*)$", out.getvalue(), re.MULTILINE)
    return [(float(c), float(g), opts) for c, g, opts in rows]


@pytest.mark.parametrize("per_node,nodes", [(1, 1), (8, 1), (8, 2)])
def test_agrees_with_the_all_cold_printouts(per_node, nodes):
    """The ``*_all_cold`` functions DeepSpeed documents print GiB with two decimals, one row per option."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    shape = known_shape(LLAMA7)
    args = (shape.params, per_node, nodes)
    for cpu, gpu, options in _printed_rows(estimate_zero2_model_states_mem_needs_all_cold, *args):
        ours = zero_model_states(shape.params, shape.largest_layer, zero_stage=2, gpus_per_node=per_node,
                                 nodes=nodes, offload_optimizer="offload_optimizer=none" not in options)  # fmt: skip
        assert (round(ours[0] / GIB, 2), round(ours[1] / GIB, 2)) == (cpu, gpu)
    rows = _printed_rows(
        estimate_zero3_model_states_mem_needs_all_cold, shape.params, shape.largest_layer, *args[1:]
    )
    assert len(rows) == 6
    for cpu, gpu, options in rows:
        ours = zero_model_states(
            shape.params, shape.largest_layer, zero_stage=3, gpus_per_node=per_node, nodes=nodes,
            offload_optimizer="offload_optimizer=none" not in options,
            offload_params="offload_param=none" not in options,
            zero_init="zero_init=1" in options,
        )  # fmt: skip
        assert (round(ours[0] / GIB, 2), round(ours[1] / GIB, 2)) == (cpu, gpu)


@pytest.mark.parametrize("zero,offload,offload_params", [(2, False, False), (2, True, False), (3, False, False),
                                                         (3, True, False), (3, True, True)])  # fmt: skip
def test_a_full_fine_tuning_plan_holds_deepspeeds_model_states(zero, offload, offload_params):
    shape = known_shape(LLAMA7)
    setup = Setup(
        zero_stage=zero, gpus=16, gpus_per_node=8, offload_optimizer=offload, offload_params=offload_params
    )
    p = plan(shape, "sft", setup)
    cpu, gpu = zero_model_states(shape.params, shape.largest_layer, zero_stage=zero, gpus_per_node=8, nodes=2,
                                 offload_optimizer=offload, offload_params=offload_params)  # fmt: skip
    assert p.states + p.working == pytest.approx(gpu) and p.cpu == pytest.approx(cpu)
    assert p.total == pytest.approx(gpu + activation_bytes(shape, setup, batch=1, lm_head=True))


# -- the worked example, PPO, LoRA, QLoRA ----------------------------------------------------------


def test_7b_full_fine_tuning_worked_example():
    """~80 GB = 7B x 12 bytes: 16-bit weights and gradients + fp32 Adam moments (no master copy)."""
    p = plan("7B", "sft", Setup(accounting=Accounting.NO_MASTER), gpu_memory_gib=80)
    assert (p.weights, p.gradients, p.optimizer) == (14e9, 14e9, 56e9)
    assert p.states == 84e9 and round(p.states / GIB, 1) == 78.2
    assert not p.fits  # 84 GB of states alone exceed one 80 GB GPU
    assert plan("7B", "sft", Setup(accounting="mixed")).states == 112e9  # the ZeRO paper's 16 bytes
    assert plan("7B", "sft", Setup(accounting="fp32")).states == 112e9  # 4 + 4 + 8
    assert plan("7B", "sft", Setup()).states == 140e9  # DeepSpeed keeps fp32 gradients too: 20 bytes


def test_zero_stages_shard_what_they_promise():
    shape, n = resolve_model("7B"), 8
    z = {k: plan(shape, "sft", Setup(zero_stage=k, gpus=n, accounting="mixed")) for k in range(4)}
    params = shape.params
    assert z[0].states == 16 * params
    assert z[1].states == pytest.approx((2 + 2 + 12 / n) * params)
    assert z[2].states == pytest.approx((2 + (2 + 12) / n) * params)
    assert z[3].states == pytest.approx(16 / n * params)
    assert z[3].working == 4 * shape.largest_layer


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_ppo_is_the_sum_of_its_four_models(zero):
    setup = Setup(zero_stage=zero, gpus=8)
    actor, rm = known_shape("facebook/opt-1.3b"), known_shape("facebook/opt-350m")  # DeepSpeed-Chat's pair
    p = plan(actor, "ppo", setup, reward_model=rm)
    assert [m.role for m in p.models] == ["actor", "critic", "reference", "reward"]
    sft, critic = plan(actor, "sft", setup), plan(rm, "rm", setup)
    shards = 8 if zero == 3 else 1  # frozen models: 16-bit weights, sharded only by ZeRO-3
    expected = sft.states + critic.states + 2 * actor.params / shards + 2 * rm.reward_params() / shards
    assert p.states == pytest.approx(expected)
    assert p.models[0].states == sft.states and p.models[1].states == critic.states
    assert p.activations == max(m.activations for m in p.models)


def test_reward_model_drops_the_lm_head():
    llama, opt = known_shape(LLAMA7), known_shape("facebook/opt-350m")
    assert llama.reward_params() == llama.params - 32000 * 4096 + 4096
    assert opt.reward_params() == opt.params + 1024  # OPT's head is the (kept) input embedding
    assert plan(llama, "rm", Setup()).models[0].params == llama.reward_params()


def test_lora_leaves_gradients_and_optimizer_to_the_adapter():
    shape = known_shape(LLAMA7)
    adapter = shape.lora_params(8)
    # r·(in + out) on q, k, v, o, gate, up, down in each of 32 blocks
    assert adapter == 8 * 32 * (4 * (4096 + 4096) + 3 * (4096 + 11008)) == 19_988_480
    p = plan(shape, "sft", Setup(lora_r=8))
    assert p.models[0].trainable == adapter
    assert p.gradients == (2 + 4) * adapter and p.optimizer == 12 * adapter
    assert p.weights == 2 * shape.params + 2 * adapter
    full = plan(shape, "sft", Setup())
    assert p.gradients < full.gradients / 300 and p.optimizer < full.optimizer / 300


def test_qlora_base_is_half_a_byte_plus_quantization_constants():
    shape = known_shape(LLAMA7)
    q = shape.quantizable_params
    assert q == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    constants = (8 / 64 + 32 / (64 * 256)) / 8  # double quantization: 0.127 bits per weight
    adapter = shape.lora_params(8)
    p = plan(shape, "sft", Setup(lora_r=8, qlora=True))
    assert p.weights == pytest.approx(q * (0.5 + constants) + (shape.params - q) * 2 + 2 * adapter)
    single = plan(shape, "sft", Setup(lora_r=8, qlora=True, double_quant=False))
    assert single.weights - p.weights == pytest.approx(q * (32 / 64 / 8 - constants))
    assert p.weights / GIB == pytest.approx(3.64, abs=0.01)  # vs 12.6 GiB in 16 bits
    assert p.gradients == plan(shape, "sft", Setup(lora_r=8)).gradients


def test_dpo_reference_is_a_frozen_copy_or_the_adapters_base():
    shape = known_shape(LLAMA7)
    full = plan(shape, "dpo", Setup())
    assert full.models[1].role == "reference" and full.models[1].weights == 2 * shape.params
    assert full.models[1].gradients == full.models[1].optimizer == 0
    lora = plan(shape, "dpo", Setup(lora_r=16))
    assert lora.models[1].weights == 0 and "adapter disabled" in lora.models[1].note
    assert plan(shape, "ppo", Setup(lora_r=16)).models[2].weights == 0


# -- activations -----------------------------------------------------------------------------------


def test_activations_reproduce_korthikanti_for_a_gpt_block():
    """34·s·b·h + 5·a·s²·b bytes per layer (MHA, 4h MLP, no recomputation, attention scores kept)."""
    shape = known_shape("facebook/opt-1.3b")  # MHA, 4h ReLU MLP
    s, b, h, a, layers = 1024, 2, 2048, 32, 24
    setup = Setup(seq_len=s, flash_attention=False)
    assert activation_bytes(shape, setup, batch=b, lm_head=False) == layers * (
        34 * s * b * h + 5 * a * s * s * b
    )
    flash = activation_bytes(shape, Setup(seq_len=s), batch=b, lm_head=False)
    assert flash == layers * 34 * s * b * h
    ckpt = activation_bytes(shape, Setup(seq_len=s, gradient_checkpointing=True), batch=b, lm_head=False)
    assert ckpt == layers * 2 * s * b * h + 34 * s * b * h
    logits = activation_bytes(shape, Setup(seq_len=s), batch=b, lm_head=True) - flash
    assert logits == s * b * 50272 * (2 + 4)  # 16-bit logits and the fp32 copy the loss takes


def test_pairs_double_the_activations_of_rm_and_dpo():
    shape, setup = known_shape(LLAMA7), Setup(micro_batch=2)
    assert plan(shape, "dpo", setup).activations == activation_bytes(shape, setup, batch=4, lm_head=True)
    assert plan(shape, "rm", setup).activations == activation_bytes(shape, setup, batch=4, lm_head=False)


# -- setup, fits, fewest GPUs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"zero_stage": 4}, "zero_stage"),
        ({"offload_params": True, "zero_stage": 2}, "zero_stage 3"),
        ({"offload_optimizer": True}, "zero_stage 1, 2 or 3"),
        ({"qlora": True}, "lora_r"),
        ({"gpus": 12, "gpus_per_node": 8}, "multiple"),
        ({"accounting": "fp8"}, "accounting"),
    ],
)
def test_setup_refuses_impossible_combinations(kwargs, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        Setup(**kwargs)


def test_fits_keeps_headroom_and_min_gpus_is_consistent():
    setup = Setup(zero_stage=3, gradient_checkpointing=True)
    n = P.min_gpus("70B", "sft", setup, 80)
    assert n is not None and n > 1

    def at(k: int) -> P.Plan:
        return plan(
            "70B", "sft", dataclasses.replace(setup, gpus=k, gpus_per_node=min(k, 8)), gpu_memory_gib=80
        )

    assert at(n).fits and not at(n // 2).fits
    assert at(n).total <= 0.9 * 80 * GIB
    assert P.min_gpus("70B", "sft", Setup(), 80) is None  # ZeRO-0 never shards


def test_configurations_cover_every_zero_stage_and_offload():
    plans = P.configurations("7B", "sft", Setup(gpus=8), gpu_memory_gib=80)
    keys = [(p.setup.zero_stage, p.setup.offload_optimizer, p.setup.offload_params) for p in plans]
    assert keys == list(P.ZERO_VARIANTS)
    totals = {k: p.total for k, p in zip(keys, plans)}
    assert (
        totals[(3, True, True)]
        < totals[(3, True, False)]
        < totals[(3, False, False)]
        < totals[(0, False, False)]
    )


def test_plan_to_dict_is_json():
    data = json.loads(json.dumps(plan("7B", "ppo", Setup(zero_stage=3, gpus=8), gpu_memory_gib=80).to_dict()))
    assert data["stage"] == "ppo" and len(data["models"]) == 4 and data["fits"] in (True, False)


def test_every_dataclass_field_is_documented():
    from alignlab.distributed import config, launch
    from alignlab.docs_check import field_docs

    classes = [
        S.ModelShape,
        P.StateBytes,
        P.Setup,
        P.ModelMemory,
        P.Plan,
        config.DistributedGroup,
        launch.Host,
    ]
    for cls in classes:
        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls))
        assert not missing, f"{cls.__name__}: document {sorted(missing)} in the Attributes: section"
