"""The stage contract (alignlab.stages.contract) and the dry run that checks a whole recipe.

A dry run runs every check that needs no training, for every entry, before anything trains:
these are mistakes that used to surface only after earlier entries had trained and published.
"""

import inspect

import pytest

from alignlab.errors import ConfigError, DataError
from alignlab.recipe import check_recipe, parse_recipe
from alignlab.registry import Registry
from alignlab.stages import STAGE_INFO, STAGES
from alignlab.stages.contract import Stage, input_roles


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_follows_the_contract(name):
    cls = STAGES[name]
    assert cls.name == name and STAGE_INFO[name].class_name == cls.__name__
    assert isinstance(cls(), Stage)
    for method in ("run", "check"):
        params = inspect.signature(getattr(cls, method)).parameters.values()
        keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "force"]
        assert keywords == input_roles(cls), f"{name}.{method} takes {keywords}, declares {input_roles(cls)}"


BASE = {"name": "base", "stage": "tiny_base", "config": {"size": "test"}}
SFT = {
    "name": "sft",
    "stage": "sft",
    "inputs": {"model": "base"},
    "config": {"data": {"source": "testbed:sft?n=8"}},
}
RM = {"name": "rm", "stage": "reward_model", "inputs": {"model": "sft"}, "config": {}}
PPO_ENTRY = {"name": "ppo", "stage": "ppo", "inputs": {"model": "sft"}, "config": {}}


def _recipe(*entries):
    return {"name": "r", "stages": [BASE, *entries]}


def _with(entry, **config):
    return {**entry, "config": {**entry.get("config", {}), **config}}


@pytest.mark.parametrize(
    "entry, message",
    [
        (_with(PPO_ENTRY, adapter={"method": "prompt_tuning"}), "prompt_tuning is not supported by PPO"),
        (_with(RM, data={"eval_share": 1.5}), "eval_share must be in"),
        (_with(RM, adapter={"method": "lora", "merge": False}), "adapter.merge=false"),
        (_with(RM, data={"rankings": "testbed:rankings"}), "data.rankings is set but data.kind"),
    ],
)
def test_settings_that_cannot_work_fail_when_the_recipe_is_read(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(_recipe(SFT, entry))


PPO_FN = {
    "name": "ppo",
    "stage": "ppo",
    "inputs": {"model": "sft", "reward": "alignlab.testbed:gold_reward_fn"},
    "config": {"data": {"source": "testbed:prompts?n=8"}},
}


@pytest.mark.parametrize(
    "entries, error, message",
    [
        ([SFT, _with(PPO_FN, critic_init="reward")], ConfigError, "critic_init=reward needs a reward model"),
        (
            [SFT, PPO_FN | {"inputs": {"model": "sft", "reward": "no_such_mod_xyz:fn"}}],
            ConfigError,
            "cannot import",
        ),
        ([SFT, PPO_FN | {"inputs": {"model": "sft", "reward": "sft"}}], ConfigError, "not a reward model"),
        ([_with(SFT, data={"source": "./missing.jsonl"})], DataError, "missing.jsonl"),
        ([_with(SFT, data={"source": "testbed:prompts?n=4"})], DataError, "cannot be used as 'sft' data"),
        (
            [SFT, RM, _with(SFT, output="sft2") | {"name": "sft2", "inputs": {"model": "rm"}}],
            ConfigError,
            "reward_model artifact",
        ),
        (
            [SFT, _with(PPO_FN, reward_normalization="reward_model")],
            ConfigError,
            "needs a reward-model artifact",
        ),
    ],
    ids=[
        "critic-without-rm",
        "reward-import",
        "reward-not-rm",
        "missing-file",
        "wrong-kind",
        "sft-on-rm",
        "normalisation",
    ],
)
def test_a_dry_run_finds_what_would_fail_mid_pipeline_and_trains_nothing(tmp_path, entries, error, message):
    registry = Registry(tmp_path)
    recipe = parse_recipe(_recipe(*entries), where="r.yaml")
    with pytest.raises(error, match=message) as err:
        check_recipe(recipe, registry)
    assert "r.yaml: entry" in str(err.value)
    assert registry.list() == []


def test_a_dry_run_of_a_good_recipe_passes_and_plans_each_entry_s_kind(tmp_path):
    registry = Registry(tmp_path)
    ppo = PPO_FN | {"inputs": {"model": "sft", "reward": "rm"}}
    check_recipe(parse_recipe(_recipe(SFT, RM, ppo)), registry)
    assert registry.list() == []
