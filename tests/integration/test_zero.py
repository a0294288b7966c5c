"""DeepSpeed ZeRO on CPU with 2 processes (``alignlab run --nproc 2``), against one process.

Each test runs the same recipe entry twice on the same tiny base (``test`` size, ~0.9M
parameters): once in one process with batch size 2B, once in 2 processes under ZeRO with batch
size B per process (the same global batch, the same samples in the same order). DeepSpeed's CPU
accelerator communicates through gloo here (no oneCCL installed).

Tolerance: the loss curves agree to a relative 1e-3. Both runs compute in fp32 on the same data;
what differs is how the gradients are summed (gloo's all-reduce / reduce-scatter across the two
halves of the batch instead of one batched sum) and the order of float additions that brings,
about 1e-7 relative per step here; 1e-3 leaves room for that to compound over the steps while
still catching any real difference (a wrong learning-rate schedule, an unscaled gradient, a
skipped step: each moved these curves by 1e-2 or more while this was written).

PPO samples its responses: each process samples for its own half of the prompts, so its curve
cannot equal the single-process one step by step. Its ZeRO-3 curve is compared to the same
2-process run under ZeRO-0 (DeepSpeed's plain data parallelism), where only the sharding differs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.registry import Registry

pytestmark = pytest.mark.integration

REL_TOL = 1e-3  # see the module docstring
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny base, built once in this process; both runs of a test start from its folder."""
    from alignlab.stages.tiny_base import TinyBase

    registry = Registry(tmp_path_factory.mktemp("base-registry"))
    return TinyBase({"size": "test", "eval": {"gold": False}}).run(registry)


def run_entry(tmp_path: Path, name: str, entry: str, nproc: int) -> Registry:
    """Run a one-entry recipe (``entry`` is its YAML) in ``nproc`` processes; its registry."""
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(f"name: {name}\nstages:\n{entry}")
    registry = tmp_path / f"registry-{name}"
    command = [sys.executable, "-m", "alignlab.cli", "run", str(recipe), "--registry", str(registry)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return Registry(registry)


def curve(artifact, key: str = "train_loss_curve") -> list[float]:
    return [loss for _, loss in artifact.metrics[key]]


def assert_same_curve(single: list[float], zero: list[float]) -> None:
    assert len(single) == len(zero) and single
    assert all(math.isfinite(x) for x in zero)
    for step, (a, b) in enumerate(zip(single, zero), 1):
        assert b == pytest.approx(a, rel=REL_TOL), f"step {step}: one process {a}, ZeRO {b}"


def assert_trained_and_whole(artifact, base, auto_cls) -> None:
    """Published by the main process, consolidated: loads with plain transformers, every weight whole."""
    import torch
    from transformers import AutoModelForCausalLM

    assert artifact.metrics["world_size"] == 2
    model = auto_cls.from_pretrained(artifact.path)
    reference = AutoModelForCausalLM.from_pretrained(base.path)
    assert sum(p.numel() for p in model.parameters()) >= base.metrics["parameters"] - 1
    name = "model.layers.0.mlp.down_proj.weight"
    trained, start = model.state_dict()[name], reference.state_dict()[name]
    assert trained.shape == start.shape and not torch.equal(trained, start), "weights did not change"
    assert sorted(p.name for p in artifact.path.glob("*.safetensors")) == ["model.safetensors"]


SFT = """  - name: sft
    stage: sft
    inputs: {{model: "{base}"}}
    config:
      data: {{source: "testbed:sft", limit: 96}}
      train: {{max_steps: 5, lr: 1.0e-3, batch_size: {batch}, logging_steps: 1, warmup_ratio: 0.0}}
      eval: {{gold: false}}
      distributed: {{zero_stage: {zero}}}
"""


@pytest.mark.parametrize("zero", [3, pytest.param(2, marks=pytest.mark.slow)])
def test_sft_under_zero_matches_one_process(tmp_path, base, zero):
    from transformers import AutoModelForCausalLM

    single = run_entry(tmp_path, "one", SFT.format(base=base.path, batch=8, zero=0), nproc=1).get("sft")
    zero_run = run_entry(tmp_path, "zero", SFT.format(base=base.path, batch=4, zero=zero), nproc=2).get("sft")
    assert zero_run.config["distributed"]["zero_stage"] == zero
    assert_same_curve(curve(single), curve(zero_run))
    assert_trained_and_whole(zero_run, base, AutoModelForCausalLM)


REWARD = """  - name: rm
    stage: reward_model
    inputs: {{model: "{base}"}}
    config:
      data: {{source: "testbed:preferences?n=120", eval_share: 0.1}}
      train: {{max_steps: 5, lr: 1.0e-3, batch_size: {batch}, logging_steps: 1, warmup_ratio: 0.0}}
      eval: {{gold_n: 20}}
      distributed: {{zero_stage: {zero}}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_reward_model_under_zero_matches_one_process(tmp_path, base, zero):
    from transformers import AutoModelForSequenceClassification

    single = run_entry(tmp_path, "one", REWARD.format(base=base.path, batch=8, zero=0), nproc=1).get("rm")
    zero_run = run_entry(tmp_path, "zero", REWARD.format(base=base.path, batch=4, zero=zero), nproc=2).get(
        "rm"
    )
    assert_same_curve(curve(single), curve(zero_run))
    assert zero_run.metrics["accuracy"] == pytest.approx(single.metrics["accuracy"], abs=1e-6)
    assert_trained_and_whole(zero_run, base, AutoModelForSequenceClassification)
    scored = AutoModelForSequenceClassification.from_pretrained(zero_run.path)
    assert scored.config.num_labels == 1


PPO = """  - name: ppo
    stage: ppo
    inputs: {{model: "{base}", reward: "alignlab.testbed:gold_reward_fn"}}
    config:
      train: {{max_steps: 3, batch_size: 8, lr: 1.0e-4}}
      ppo: {{mini_batch_size: 8}}
      generation: {{max_new_tokens: 12}}
      checkpoint_every: 0
      eval: {{gold: false}}
      distributed: {{zero_stage: {zero}}}
"""


@pytest.mark.slow
def test_ppo_under_zero3(tmp_path, base):
    from transformers import AutoModelForCausalLM

    zero0 = run_entry(tmp_path, "zero0", PPO.format(base=base.path, zero=0), nproc=2).get("ppo")
    zero3 = run_entry(tmp_path, "zero3", PPO.format(base=base.path, zero=3), nproc=2).get("ppo")
    for key in ("value_loss", "kl", "reward_score"):
        ours = [h[key] for h in zero3.metrics["history"]]
        theirs = [h[key] for h in zero0.metrics["history"]]
        assert all(math.isfinite(x) for x in ours)
        assert ours == pytest.approx(theirs, rel=REL_TOL, abs=1e-6), key
    assert_trained_and_whole(zero3, base, AutoModelForCausalLM)


# LoRA under ZeRO-3 (issue 6 §3). The frozen base is sharded like every other weight; at
# publication the main process gathers base and adapter and either merges them (a plain model) or
# saves the adapter alone (adapter_model.safetensors). Same comparison and tolerance as above:
# the same global batch in one process and in two, fp32 throughout.

LORA = "{{method: lora, r: 4, alpha: 8, merge: {merge}}}"


def assert_same_weights(single_path: Path, zero_path: Path, auto_cls) -> None:
    """The two runs' published weights agree (to REL_TOL of the largest change from the base)."""
    one = auto_cls.from_pretrained(single_path).state_dict()
    zero = auto_cls.from_pretrained(zero_path).state_dict()
    assert one.keys() == zero.keys()
    for name in one:
        scale = float(one[name].abs().max()) or 1.0
        assert float((one[name] - zero[name]).abs().max()) <= REL_TOL * scale, name


def assert_merged_lora(artifact, base, auto_cls) -> None:
    """A merged LoRA artifact: a plain model (no lora weights), the adapted weights moved."""
    assert artifact.kind != "adapter"
    assert_trained_and_whole(artifact, base, auto_cls)
    model = auto_cls.from_pretrained(artifact.path)
    assert not any("lora" in name for name, _ in model.named_parameters())


def assert_lora_adapter(artifact, base) -> None:
    """An adapter artifact: adapter_model.safetensors, whole, loads onto the base with plain peft."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert artifact.kind == "adapter" and artifact.metrics["world_size"] == 2
    weights = load_file(artifact.path / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.numel() > 0 for w in weights.values()), "adapter weights not consolidated"
    assert any(bool(w.abs().sum() > 0) for w in lora_b), "lora_B is still zero: the adapter did not train"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path), str(artifact.path))
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert loaded and any(bool(p.abs().sum() > 0) for p in loaded.values())
    assert not any(torch.isnan(p).any() for p in loaded.values())


def adapter_path_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


SFT_LORA = SFT.replace("distributed:", f"adapter: {LORA}\n      distributed:")


@pytest.mark.slow
@pytest.mark.parametrize("merge", ["true", "false"])
def test_lora_sft_under_zero3_matches_one_process(tmp_path, base, merge):
    from transformers import AutoModelForCausalLM

    entry = SFT_LORA.replace("{merge}", merge)
    single = run_entry(tmp_path, "one", entry.format(base=base.path, batch=8, zero=0), nproc=1).get("sft")
    zero3 = run_entry(tmp_path, "zero", entry.format(base=base.path, batch=4, zero=3), nproc=2).get("sft")
    assert_same_curve(curve(single), curve(zero3))
    assert zero3.metrics["trainable_parameters"] == single.metrics["trainable_parameters"]
    if merge == "true":
        assert_merged_lora(zero3, base, AutoModelForCausalLM)
        assert_same_weights(single.path, zero3.path, AutoModelForCausalLM)
    else:
        assert_lora_adapter(zero3, base)
        one, zero = adapter_path_weights(single.path), adapter_path_weights(zero3.path)
        assert one.keys() == zero.keys()
        for name in one:
            assert zero[name] == pytest.approx(
                one[name], rel=REL_TOL, abs=REL_TOL * float(one[name].abs().max())
            )


@pytest.mark.slow
def test_lora_reward_model_under_zero3_matches_one_process(tmp_path, base):
    from transformers import AutoModelForSequenceClassification

    entry = REWARD.replace("distributed:", f"adapter: {LORA}\n      distributed:").replace("{merge}", "true")
    single = run_entry(tmp_path, "one", entry.format(base=base.path, batch=8, zero=0), nproc=1).get("rm")
    zero3 = run_entry(tmp_path, "zero", entry.format(base=base.path, batch=4, zero=3), nproc=2).get("rm")
    assert_same_curve(curve(single), curve(zero3))
    assert zero3.metrics["accuracy"] == pytest.approx(single.metrics["accuracy"], abs=1e-6)
    assert_merged_lora(zero3, base, AutoModelForSequenceClassification)
    assert_same_weights(single.path, zero3.path, AutoModelForSequenceClassification)


DPO_LORA = """  - name: dpo
    stage: dpo
    inputs: {{model: "{base}"}}
    config:
      data: {{source: "testbed:preferences?n=48"}}
      train: {{max_steps: 4, lr: 1.0e-3, batch_size: {batch}, logging_steps: 1, warmup_ratio: 0.0}}
      adapter: {{method: lora, r: 4, alpha: 8, merge: false}}
      kl: {{n: 4, max_new_tokens: 8}}
      eval: {{gold: false}}
      distributed: {{zero_stage: {zero}}}
"""


@pytest.mark.slow
def test_lora_dpo_under_zero3_matches_one_process(tmp_path, base):
    single = run_entry(tmp_path, "one", DPO_LORA.format(base=base.path, batch=8, zero=0), nproc=1).get("dpo")
    zero3 = run_entry(tmp_path, "zero", DPO_LORA.format(base=base.path, batch=4, zero=3), nproc=2).get("dpo")
    losses = curve(zero3)
    # the reference is the adapter-free policy: at the first step (lora_B = 0) the two agree exactly
    assert losses[0] == pytest.approx(math.log(2), rel=1e-6)
    assert_same_curve(curve(single), losses)
    assert_lora_adapter(zero3, base)
    assert math.isfinite(zero3.metrics["kl_to_reference"]) and zero3.metrics["kl_to_reference_k3"] > 0


@pytest.mark.slow
def test_lora_ppo_under_zero3(tmp_path, base):
    """LoRA on policy and critic, one engine; the reference is the policy with its adapter off.

    As for full PPO above, each process samples its own half of the prompts, so the ZeRO-3 run is
    compared to the same 2-process LoRA run under ZeRO-0, where only the sharding differs.
    """
    from transformers import AutoModelForCausalLM

    entry = PPO.replace("distributed:", f"adapter: {LORA}\n      distributed:").replace("{merge}", "true")
    zero0 = run_entry(tmp_path, "zero0", entry.format(base=base.path, zero=0), nproc=2).get("ppo")
    zero3 = run_entry(tmp_path, "zero3", entry.format(base=base.path, zero=3), nproc=2).get("ppo")
    history = zero3.metrics["history"]
    # before the first update the adapter-free policy is the policy (up to generate's rounding)
    assert abs(history[0]["kl"]) < 1e-4
    for key in ("value_loss", "kl", "reward_score"):
        ours = [h[key] for h in history]
        theirs = [h[key] for h in zero0.metrics["history"]]
        assert all(math.isfinite(x) for x in ours)
        assert ours == pytest.approx(theirs, rel=REL_TOL, abs=1e-6), key
    assert zero3.metrics["trainable_parameters"] == zero0.metrics["trainable_parameters"]
    assert_merged_lora(zero3, base, AutoModelForCausalLM)
    assert_same_weights(zero0.path, zero3.path, AutoModelForCausalLM)


# Whole recipes under ZeRO (issue 19). A recipe chains its entries in the same processes, so
# whatever one stage leaves in process-wide state (transformers' DeepSpeed config, accelerate's
# state) meets the next one: left set on one rank only, it made that rank build the next model
# under zero.Init, a collective the other rank never joined, and the run hung until the timeout.
# Each entry's curve is compared with a one-process run of the same recipe, as above.

RECIPE_ENTRIES = {
    "base": """  - name: base
    stage: tiny_base
    config: {{size: test, eval: {{gold: false}}}}
""",
    "pretrain": """  - name: pretrain
    stage: pretrain
    inputs: {{model: base}}
    config:
      data: {{sources: [{{source: "testbed:pretrain", weight: 1.0}}], seq_len: 64}}
      train: {{max_steps: 3, lr: 1.0e-3, batch_size: {batch}, logging_steps: 1, warmup_ratio: 0.0}}
      eval: {{gold: false}}
      distributed: {{zero_stage: {zero}}}
""",
    "sft": SFT.replace('"{base}"', "pretrain").replace("max_steps: 5", "max_steps: 3"),
    "rm": REWARD.replace('"{base}"', "sft").replace("max_steps: 5", "max_steps: 3"),
    "dpo": DPO_LORA.replace('"{base}"', "sft").replace("max_steps: 4", "max_steps: 3"),
    "ppo": PPO.replace('"{base}", reward: "alignlab.testbed:gold_reward_fn"', "sft, reward: rm").replace(
        "max_steps: 3", "max_steps: 2"
    ),
}


def run_recipe(
    tmp_path: Path, name: str, entries: list[str], *, zero: int, nproc: int, batch: int
) -> Registry:
    text = "".join(RECIPE_ENTRIES[e].format(base="unused", batch=batch, zero=zero) for e in entries)
    return run_entry(tmp_path, name, text, nproc=nproc)


def assert_recipe_matches(single: Registry, zero: Registry, entries: list[str]) -> None:
    for entry in entries:
        one, two = single.get(entry), zero.get(entry)
        assert two.metrics["world_size"] == 2 or entry == "base", entry
        if "train_loss_curve" in one.metrics:
            assert_same_curve(curve(one), curve(two))


@pytest.mark.parametrize("zero", [3, pytest.param(2, marks=pytest.mark.slow)])
def test_a_three_entry_recipe_under_zero_matches_one_process(tmp_path, zero):
    entries = ["base", "pretrain", "sft"]
    single = run_recipe(tmp_path, "one", entries, zero=0, nproc=1, batch=8)
    zero_run = run_recipe(tmp_path, "zero", entries, zero=zero, nproc=2, batch=4)
    assert_recipe_matches(single, zero_run, entries)
    assert [a.name for a in zero_run.list()] == sorted(entries)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_the_whole_offline_recipe_under_zero_matches_one_process(tmp_path, zero):
    entries = ["base", "pretrain", "sft", "rm", "dpo"]
    single = run_recipe(tmp_path, "one", entries, zero=0, nproc=1, batch=8)
    zero_run = run_recipe(tmp_path, "zero", entries, zero=zero, nproc=2, batch=4)
    assert_recipe_matches(single, zero_run, entries)
    assert zero_run.get("rm").metrics["accuracy"] == pytest.approx(
        single.get("rm").metrics["accuracy"], abs=1e-6
    )


@pytest.mark.slow
def test_a_recipe_ending_in_ppo_under_zero3_matches_zero0(tmp_path):
    """PPO samples per process: the ZeRO-3 chain is compared with the same chain in 2 processes
    under ZeRO-0 (every entry), as ``test_ppo_under_zero3`` does for the stage alone."""
    entries = ["base", "pretrain", "sft", "rm", "ppo"]
    zero0 = run_recipe(tmp_path, "zero0", entries, zero=0, nproc=2, batch=4)
    zero3 = run_recipe(tmp_path, "zero3", entries, zero=3, nproc=2, batch=4)
    assert_recipe_matches(zero0, zero3, ["pretrain", "sft", "rm"])
    for key in ("value_loss", "kl", "reward_score"):
        ours = [h[key] for h in zero3.get("ppo").metrics["history"]]
        theirs = [h[key] for h in zero0.get("ppo").metrics["history"]]
        assert all(math.isfinite(x) for x in ours)
        assert ours == pytest.approx(theirs, rel=REL_TOL, abs=1e-6), key


STRAY_COLLECTIVE = """
import os, sys, time
os.environ["ALIGNLAB_COLLECTIVE_TIMEOUT_S"] = "3"
import torch.distributed as dist
from alignlab.distributed import runtime
from alignlab.errors import TrainingError
from alignlab.registry import Registry
from alignlab.stages.lifecycle import run_stage
from alignlab.stages.tiny_base import TinyBaseConfig

def body(run):
    if runtime.is_main_process():
        runtime.doing("busy alone")
        time.sleep(20)
    else:
        runtime.doing("in a barrier rank 0 skips")
        dist.barrier()

try:
    run_stage(stage="test", name="x", kind="dataset", config=TinyBaseConfig(), registry=Registry(sys.argv[1]),
              inputs={}, data={}, force=False, body=body)
except TrainingError as error:
    print("ERROR", error, flush=True)
    sys.exit(3)
"""


def test_a_collective_only_one_process_reaches_fails_fast_naming_what_each_was_doing(tmp_path):
    script = tmp_path / "stray.py"
    script.write_text(STRAY_COLLECTIVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path / "reg"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # both ranks print to one pipe, so lines can interleave: split on the marker, not on newlines
    errors = ["ERROR" + part for part in done.stdout.split("ERROR")[1:]]
    assert done.returncode != 0 and errors, done.stdout[-2000:] + done.stderr[-3000:]
    assert "test: rank 1 gave up on a collective after at most 3 s" in errors[0]
    assert "rank 0: test: busy alone; rank 1: test: in a barrier rank 0 skips" in errors[0]
    assert Registry(tmp_path / "reg").list() == []  # nothing published
