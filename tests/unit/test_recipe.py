from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.recipe import load_recipe, parse_recipe, plan, stage_inputs
from alignlab.stages import STAGES

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").rglob("*.yaml"))
# recipes/data/ holds `alignlab data prepare` configs and recipes/deepspeed/ DeepSpeed templates
RECIPES = [p for p in RECIPES if not {"deepspeed", "data"} & set(p.parts)]


def test_there_are_recipes():
    assert any(p.name == "sft.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# alignlab run "), f"{path.name} must start with the command that runs it"
    recipe = load_recipe(path)
    assert recipe.entries and plan(recipe)


def _raw(**sft_config):
    return {
        "name": "t",
        "stages": [
            {"name": "base", "stage": "tiny_base", "config": {"size": "test"}},
            {"name": "sft", "stage": "sft", "inputs": {"model": "base"}, "config": sft_config},
        ],
    }


def test_overrides_reach_the_entry_config_and_inputs():
    r = parse_recipe(_raw(), ["sft.train.lr=3e-4", "*.eval.gold_n=7", "sft.inputs.model=other:v2"])
    sft = r.entry("sft")
    assert sft.config.train.lr == pytest.approx(3e-4)
    assert sft.config.eval.gold_n == 7 and r.entry("base").config.eval.gold_n == 7
    assert sft.inputs == {"model": "other:v2"}
    assert sft.config.output == "sft"  # entry name is the artifact name


@pytest.mark.parametrize(
    "raw, overrides, message",
    [
        (_raw(trian={}), (), r"stages\[1\] \(sft\)\.config\.trian'.*did you mean 'train'"),
        (_raw(train={"lr": "fast"}), (), r"config\.train\.lr': expected a number"),
        (_raw(), ["sfft.train.lr=1"], r"no entry 'sfft'.*did you mean 'sft'"),
        (
            {"name": "t", "stages": [{"name": "a", "stage": "sfft"}]},
            (),
            r"unknown stage 'sfft'.*did you mean 'sft'",
        ),
        (
            {"name": "t", "stages": [{"name": "a", "stage": "sft", "inputs": {"modle": "x"}}]},
            (),
            r"takes no input 'modle'.*did you mean 'model'",
        ),
        ({"name": "t", "stages": []}, (), r"non-empty list"),
        ({"name": "t", "stagez": []}, (), r"unknown top-level key 'stagez'"),
        (
            {"name": "t", "stages": [{"name": "a", "stage": "sft"}, {"name": "a", "stage": "sft"}]},
            (),
            r"used twice",
        ),
        (
            {
                "name": "t",
                "stages": [{"name": "a", "stage": "ppo", "inputs": {"model": ["x", "y"], "reward": "r"}}],
            },
            (),
            r"inputs\.model: expected a reference string, got \['x', 'y'\]",  # reward takes a list
        ),
    ],
)
def test_bad_recipes_fail_before_training_with_the_key_named(raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(raw, overrides, where="r.yaml")


@pytest.mark.parametrize("path", [p for p in RECIPES if "real" in p.parts], ids=lambda p: p.name)
def test_real_model_recipes_dry_run(path, tmp_path, capsys):
    """Recipes for real models validate, resolve and print a plan without training (hub models
    cannot train here; smollm2.yaml trains in `make real`)."""
    from alignlab.cli import main
    from alignlab.registry import ExternalRef, Registry

    recipe = load_recipe(path)
    registry = Registry(tmp_path)
    entries = {e.name for e in recipe.entries}
    for e in recipe.entries:
        for ref in e.inputs.values():
            if ref not in entries:
                assert isinstance(registry.resolve(ref), ExternalRef)  # a hub id, never fetched here
    assert main(["run", str(path), "--dry-run", "--registry", str(tmp_path)]) == 0
    assert "nothing trained" in capsys.readouterr().out
    assert registry.list() == []


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_stage_inputs_come_from_run_signatures():
    assert stage_inputs(STAGES["sft"]) == ["model"]
    assert stage_inputs(STAGES["tiny_base"]) == []


def test_cli_logs_go_to_stderr_not_stdout(capsys):
    import logging

    from alignlab.cli import setup_logging

    setup_logging()
    logging.getLogger("alignlab").info("a log line")
    out, err = capsys.readouterr()
    assert "a log line" not in out and "a log line" in err


def test_a_role_that_takes_several_references_takes_a_list():
    raw = {
        "name": "t",
        "stages": [{"name": "g", "stage": "grpo", "inputs": {"model": "sft", "reward": ["a:fn", "reward"]}}],
    }
    assert parse_recipe(raw).entry("g").inputs == {"model": "sft", "reward": ["a:fn", "reward"]}
