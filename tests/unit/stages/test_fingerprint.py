"""Fingerprints: run-control settings (evaluation, tracking, logging, checkpoints, resume) are left
out, so toggling them reuses the artifact; anything that changes the weights is in."""

import dataclasses

import pytest

from alignlab.config import apply_overrides, is_run_control, load_config
from alignlab.registry import ExternalRef
from alignlab.stages import STAGES
from alignlab.stages.lifecycle import stage_fingerprint

INPUTS = {"model": ExternalRef("m", "/tmp/m", is_local=True)}
RUN_CONTROL = {
    "*": ["tracking.report_to=wandb", "tracking.run_name=x", "eval.gold_n=7", "eval.gold=false"],
    "train": ["train.logging_steps=3"],
    "ppo": ["checkpoint_every=3", "checkpoint_dir=/tmp/ck", "resume=false", "eval.gold_every=2"],
    "dpo": ["kl.n=3", "kl.max_new_tokens=4"],
}
WEIGHTS = {"train": ["train.lr=0.123", "train.seed=5"], "adapter": ["adapter.method=lora"]}
RUN_CONTROL_NAMES = {
    "eval",
    "tracking",
    "logging_steps",
    "checkpoint_every",
    "checkpoint_dir",
    "resume",
    "kl",
}


def _fp(cls, overrides=()):
    config = load_config(cls.config_cls, apply_overrides({}, list(overrides)))
    return stage_fingerprint(cls.name, config, INPUTS, {})


def _has(cls, group):
    return group in {f.name for f in dataclasses.fields(cls.config_cls)}


@pytest.mark.parametrize("name", list(STAGES))
def test_run_control_settings_reuse_and_weight_settings_do_not(name):
    cls = STAGES[name]
    base = _fp(cls)
    toggles = [o for o in RUN_CONTROL["*"] if _has(cls, o.split(".")[0])]
    toggles += RUN_CONTROL["train"] if _has(cls, "train") else []
    toggles += RUN_CONTROL.get(name, [])
    for override in toggles:
        assert _fp(cls, [override]) == base, f"{name}: {override} changed the fingerprint"
    for group, overrides in WEIGHTS.items():
        for override in overrides if _has(cls, group) else []:
            assert _fp(cls, [override]) != base, f"{name}: {override} did not change the fingerprint"


def _fields(cls, path=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield f"{path}{f.name}", f, default
        if dataclasses.is_dataclass(default) and not is_run_control(f, default):
            yield from _fields(type(default), f"{path}{f.name}.")


@pytest.mark.parametrize("name", list(STAGES))
def test_every_run_control_setting_is_marked_in_every_stage(name):
    """A subclass that redefines such a field (PPO's logging_steps) must mark it again."""
    for path, f, default in _fields(STAGES[name].config_cls):
        if path.rsplit(".", 1)[-1] in RUN_CONTROL_NAMES and not (name == "ppo" and path == "kl"):
            assert is_run_control(f, default), f"{name}: {path} is run control but not marked"


def test_ppo_batch_sizes_are_derived_in_one_place():
    from alignlab.stages.ppo import PPOConfig, batch_sizes

    cfg = load_config(
        PPOConfig, {"train": {"max_steps": 10, "batch_size": 16, "grad_accum": 2}, "ppo": {"epochs": 2}}
    )
    one, two = batch_sizes(cfg, prompts=100), batch_sizes(cfg, prompts=100, processes=2)
    assert one == {
        "prompts_per_rollout": 16,
        "prompts_per_process": 16,
        "sequences_per_minibatch": 8,
        "sequences_per_micro_batch": 4,
        "optimizer_steps_per_rollout": 4,
        "ppo_steps": 10,
        "optimizer_steps": 40,
    }
    assert (
        two["prompts_per_process"] == 8
        and two["optimizer_steps_per_rollout"] == 2
        and two["optimizer_steps"] == 20
    )
    by_epochs = load_config(PPOConfig, {"train": {"max_steps": -1, "epochs": 2, "batch_size": 16}})
    assert batch_sizes(by_epochs, prompts=100)["ppo_steps"] == 13  # ceil(2 * 100 / 16)
