"""Typed configs: dataclasses loaded strictly from YAML/dicts.

Every stage config is a dataclass whose fields are documented once (in the class docstring) and
nested by topic (``model``, ``data``, ``train``, ``lora`` ...). ``load_config`` builds one from a
plain mapping and refuses unknown keys (naming the closest valid one) and wrong types (naming the
key and the expected type), so a typo in a recipe fails before any training starts.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from alignlab.errors import ConfigError, did_you_mean

T = TypeVar("T")


def load_config(cls: type[T], data: Mapping[str, Any] | T | None = None, where: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, strictly.

    Args:
        cls: a dataclass type.
        data: a mapping (e.g. parsed YAML), an instance of ``cls`` (returned as is) or None.
        where: dotted prefix for error messages, e.g. ``"stages.sft.config"``.

    Raises:
        ConfigError: an unknown key (with the closest valid one) or a value of the wrong type.
    """
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where or cls.__name__}: expected a mapping of settings, got {type(data).__name__}"
        )
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{path}'{did_you_mean(str(key), fields)}; "
                f"valid keys here: {', '.join(sorted(fields))}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # a partial group overlays this config's own default for it (e.g. SFT's train group
            # with epochs=2), not the group class's bare defaults
            default = _field_default(fields[key])
            if isinstance(default, tp):
                value = _overlay(default, value)
        kwargs[key] = _convert(tp, value, path)
        if key == "output" and isinstance(kwargs[key], str):  # every stage's artifact name
            from alignlab.registry.records import check_name

            check_name(kwargs[key], what=f"'{path}' (the artifact name)")
    try:
        return cls(**kwargs)
    except FieldRangeError as err:
        raise ConfigError(f"'{where + '.' if where else ''}{err.field}': {err.message}") from None
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def read_yaml(path: Any) -> Any:
    """A YAML file, parsed with ``yaml.safe_load``; a syntax error is a ConfigError naming
    ``file:line:column`` and what is wrong there, as is a file that is not UTF-8 text."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigError(
            f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")
        ) from None


class FieldRangeError(ValueError):
    """A config value of the right type outside its range; ``load_config`` names the dotted key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"'{field}': {message}")
        self.field, self.message = field, message


def check_range(
    obj: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> None:
    """Refuse ``obj.name`` unless it is finite and ``>= low``, ``<= high``, ``> above`` (each when
    given); None values pass (they mean "off" or "all"). For a dataclass's ``__post_init__``."""
    import math

    value = getattr(obj, name)
    if value is None:
        return
    bounds = []
    if low is not None:
        bounds.append(f">= {low:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    if (
        not math.isfinite(value)
        or (low is not None and value < low)
        or (above is not None and value <= above)
        or (high is not None and value > high)
    ):
        raise FieldRangeError(name, f"must be a finite number {' and '.join(bounds)}, got {value!r}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _overlay(instance: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a dataclass instance, with ``values`` laid over them (recursively for groups)."""
    names = {f.name for f in dataclasses.fields(instance) if f.init}
    merged: dict[str, Any] = {name: getattr(instance, name) for name in names}
    for key, value in values.items():
        current = merged.get(key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            merged[key] = _overlay(current, value)
        else:
            merged[key] = value  # unknown keys stay, so load_config reports them
    return merged


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in tp)
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"'{path}': expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in get_args(tp):
            return value
        choices = [str(a) for a in get_args(tp)]
        raise ConfigError(
            f"'{path}': expected one of {', '.join(map(repr, get_args(tp)))}, got {value!r}"
            f"{did_you_mean(str(value), choices)}"
        )
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}': expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{path}': expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {k: _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return load_config(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = [str(m.value) for m in tp]
            raise ConfigError(
                f"'{path}': expected {_type_name(tp)}, got {value!r}{did_you_mean(str(value), choices)}"
            ) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{path}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{path}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{path}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{path}': expected a string, got {value!r}")
    return value


# ---- run control: settings that change how a run is watched, never what it computes -----------

RUN_CONTROL = "run_control"


def run_control(**kwargs: Any) -> Any:
    """A dataclass field that controls the run (logging, checkpoints, resume), not its result.

    Fingerprints leave such fields out (:func:`weights_config`): changing them reuses the artifact.
    ``kwargs`` are those of ``dataclasses.field`` (``default=`` or ``default_factory=``).
    """
    return dataclasses.field(metadata={RUN_CONTROL: True}, **kwargs)


def run_control_group(cls: type[T]) -> type[T]:
    """Mark a whole config group as run control (evaluation, tracking): every field of that type is."""
    cls.__run_control__ = True  # type: ignore[attr-defined]
    return cls


def is_run_control(f: dataclasses.Field, value: Any) -> bool:
    """Whether the field ``f`` (holding ``value``) is marked as run control, itself or by its group."""
    return bool(f.metadata.get(RUN_CONTROL)) or getattr(type(value), "__run_control__", False)


def weights_config(config: Any) -> dict[str, Any]:
    """The config as :func:`to_dict` gives it, without its run-control fields (recursively): what
    decides the artifact's weights, and so its fingerprint."""

    def strip(value: Any) -> Any:
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            return value
        return {
            f.name: strip(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not is_run_control(f, getattr(value, f.name))
        }

    return to_dict_plain(strip(config))


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (enums by value)."""
    return to_dict_plain(dataclasses.asdict(config))


def to_dict_plain(value: Any) -> Any:
    """Enums by value, tuples as lists, in nested dicts and lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: to_dict_plain(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict_plain(x) for x in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict_plain(dataclasses.asdict(value))
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML: ``3`` is an int, ``true`` a bool)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``data[k1][k2]...[kn] = value``, creating mappings on the way."""
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{'.'.join(keys)}': '{k}' is not a mapping")
        node = nxt
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` override applied."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        set_path(out, keys, value)
    return out
