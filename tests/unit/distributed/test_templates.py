"""recipes/deepspeed/*.json: what the generator writes, valid for DeepSpeed, usable as config_file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.distributed.config import (
    TEMPLATES,
    DistributedGroup,
    deepspeed_config,
    fill_auto,
    template_configs,
    validate_deepspeed_config,
)

FOLDER = Path(__file__).resolve().parents[3] / "recipes" / "deepspeed"
FILES = sorted(FOLDER.glob("*.json"))


def test_the_folder_holds_exactly_the_templates():
    assert sorted(p.stem for p in FILES) == sorted(TEMPLATES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_template_is_what_the_generator_writes(path):
    """Regenerate with: python -m alignlab.distributed.config recipes/deepspeed"""
    assert json.loads(path.read_text()) == template_configs()[path.stem]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_template_validates_against_deepspeeds_config_models(path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    config = json.loads(path.read_text())
    validate_deepspeed_config(config)  # the whole config, as DeepSpeedConfig reads it
    zero = fill_auto(config, hidden_size=4096)["zero_optimization"]
    parsed = DeepSpeedZeroConfig(**zero)  # extra="forbid": every key is one DeepSpeed knows
    group = TEMPLATES[path.stem]
    assert parsed.stage == group.zero_stage
    assert (parsed.offload_optimizer is not None) == group.offload_optimizer
    assert (parsed.offload_param is not None) == group.offload_params


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_template_works_as_config_file(path):
    group = DistributedGroup(config_file=str(path))
    assert deepspeed_config(group, "sft", world_size=2) == json.loads(path.read_text())
    # alignlab's own loops: the template's all-"auto" optimizer is dropped, as the generator does
    name = path.stem
    assert deepspeed_config(group, "ppo", world_size=2) == deepspeed_config(
        TEMPLATES[name], "ppo", world_size=2
    )
