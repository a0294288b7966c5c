from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import pytest

from alignlab.config import apply_overrides, load_config, to_dict
from alignlab.errors import ConfigError


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    color: Color = Color.RED
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    flag: bool = False


def test_loads_nested_and_converts():
    cfg = load_config(
        Outer, {"inner": {"lr": "3e-4", "steps": 5}, "color": "blue", "tags": ["a"], "limit": None}
    )
    assert cfg.inner.lr == pytest.approx(3e-4) and cfg.inner.steps == 5
    assert cfg.color is Color.BLUE and cfg.tags == ["a"] and cfg.limit is None
    assert to_dict(cfg)["color"] == "blue"


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'sft.inner.stesp'.*did you mean 'steps'"):
        load_config(Outer, {"inner": {"stesp": 3}}, where="sft")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"steps": "ten"}}, r"'inner.steps': expected an integer"),
        ({"inner": {"steps": 1.5}}, r"'inner.steps': expected an integer"),
        ({"flag": "yes"}, r"'flag': expected true or false"),
        ({"mode": "c"}, r"'mode': expected one of 'a', 'b'"),
        ({"color": "rde"}, r"did you mean 'red'"),
        ({"tags": "a"}, r"'tags': expected a list"),
        ({"inner": 3}, r"inner: expected a mapping"),
    ],
)
def test_wrong_types_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, data)


def test_overrides_parse_values_as_yaml():
    out = apply_overrides(
        {"inner": {"steps": 1}}, ["inner.steps=7", "inner.lr=1e-5", "flag=true", "name=abc"]
    )
    cfg = load_config(Outer, out)
    assert (cfg.inner.steps, cfg.inner.lr, cfg.flag, cfg.name) == (7, 1e-5, True, "abc")
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["nonsense"])


@dataclass
class WithGroupDefault:
    inner: Inner = field(default_factory=lambda: Inner(lr=5e-4, steps=99))


def test_partial_group_keeps_the_configs_own_defaults():
    cfg = load_config(WithGroupDefault, {"inner": {"lr": 1e-2}})
    assert cfg.inner.lr == 1e-2 and cfg.inner.steps == 99  # not Inner's bare default of 10
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load_config(WithGroupDefault, {"inner": {"stpes": 1}})
