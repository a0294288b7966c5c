"""Recipes: an ordered list of named stage entries in YAML, validated before anything trains.

```yaml
# alignlab run recipes/sft.yaml
name: sft
stages:
  - name: base                 # the entry's name is also its artifact's name
    stage: tiny_base
    config: {size: demo}
  - name: pretrain
    stage: pretrain
    inputs: {model: base}      # an earlier entry, or any registry reference (sft:v3, org/model, ./path)
    config: {train: {epochs: 2}}
```

Overrides on the command line address an entry by name (``pretrain.train.lr=3e-4``), or every
entry with ``*`` (``*.eval.gold_n=50``).

A top-level ``distributed:`` section (DeepSpeed ZeRO and friends, docs/scaling.md) is inherited by
every entry whose stage trains; an entry's own ``distributed`` keys win. ``distributed.zero_stage=3``
on the command line sets the top-level one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, load_config, parse_override, read_yaml, set_path
from alignlab.distributed.config import with_recipe_distributed
from alignlab.errors import did_you_mean
from alignlab.registry import Artifact, Registry
from alignlab.stages import STAGES
from alignlab.stages.contract import input_roles

log = logging.getLogger("alignlab")

ENTRY_KEYS = ("name", "stage", "inputs", "config")
TOP_LEVEL_KEYS = ("name", "description", "distributed", "stages")


def map_refs(ref: str | list[str], fn: Any) -> Any:
    """``fn`` of a reference, or of each reference of a list (a role that takes several)."""
    return [fn(r) for r in ref] if isinstance(ref, list) else fn(ref)


def stage_inputs(stage_cls: type) -> list[str]:
    """The input roles a stage takes (its declared ``inputs``: alignlab.stages.contract)."""
    return input_roles(stage_cls)


@dataclass
class Entry:
    """One validated recipe entry: a stage instance and its input references."""

    name: str
    stage: str
    inputs: dict[str, str | list[str]]
    instance: Any  # the configured stage object

    @property
    def config(self) -> Any:
        return self.instance.config


@dataclass
class Recipe:
    """A validated recipe."""

    name: str
    entries: list[Entry]
    path: str = "<recipe>"
    description: str = ""

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ConfigError(
            f"{self.path}: no entry named {name!r}{did_you_mean(name, [e.name for e in self.entries])}"
        )


@dataclass
class StageResult:
    """What running one entry produced."""

    entry: str
    stage: str
    artifact: Artifact
    seconds: float
    reused: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str], where: str) -> dict[str, Any]:
    import copy

    raw = copy.deepcopy(raw)
    entries = raw.get("stages") or []
    by_name = {e.get("name"): e for e in entries if isinstance(e, dict)}
    for item in overrides:
        keys, value = parse_override(item)
        head, rest = keys[0], keys[1:]
        if head in ("name", "description"):
            raw[head] = value
            continue
        if head == "distributed" and "distributed" not in by_name:
            if not rest:
                raise ConfigError(f"override {item!r} must name a setting, e.g. distributed.zero_stage=3")
            if not isinstance(raw.get("distributed"), dict):
                raw["distributed"] = {}
            set_path(raw["distributed"], rest, value)
            continue
        targets = list(by_name.values()) if head == "*" else [by_name.get(head)]
        if targets == [None]:
            raise ConfigError(
                f"override {item!r}: {where} has no entry {head!r}{did_you_mean(head, by_name)}; "
                f"entries: {', '.join(map(str, by_name))}"
            )
        if not rest:
            raise ConfigError(
                f"override {item!r} must name a setting inside the entry, e.g. {head}.train.lr=1e-4"
            )
        for entry in targets:
            if rest[0] == "inputs":
                set_path(entry, rest, value)
            else:
                entry.setdefault("config", {})
                set_path(entry["config"], rest, value)
    return raw


def parse_recipe(raw: Any, overrides: Sequence[str] = (), where: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping (every entry's stage, inputs and config) and apply overrides."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a recipe is a mapping with 'name' and 'stages'")
    unknown = set(raw) - set(TOP_LEVEL_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"{where}: unknown top-level key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}; "
            f"valid: {', '.join(TOP_LEVEL_KEYS)}"
        )
    raw = _apply_overrides(raw, overrides, where)
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{where}: 'stages' must be a non-empty list of entries")
    entries: list[Entry] = []
    seen: set[str] = set()
    for i, item in enumerate(stages):
        at = f"{where}: stages[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: an entry is a mapping with {', '.join(ENTRY_KEYS)}")
        for key in item:
            if key not in ENTRY_KEYS:
                raise ConfigError(f"{at}: unknown key {key!r}{did_you_mean(key, ENTRY_KEYS)}")
        name, stage = item.get("name"), item.get("stage")
        if not name or not isinstance(name, str):
            raise ConfigError(f"{at}: every entry needs a 'name'")
        if name in seen:
            raise ConfigError(f"{at}: entry name {name!r} is used twice")
        at = f"{where}: stages[{i}] ({name})"
        if stage not in STAGES:
            raise ConfigError(
                f"{at}: unknown stage {stage!r}{did_you_mean(str(stage), STAGES)}; "
                f"stages: {', '.join(STAGES)}"
            )
        cls = STAGES[stage]
        inputs = item.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise ConfigError(f"{at}.inputs: expected a mapping of role: reference")
        roles = stage_inputs(cls)
        for role, ref in inputs.items():
            if role not in roles:
                raise ConfigError(
                    f"{at}.inputs: stage {stage!r} takes no input {role!r}"
                    f"{did_you_mean(role, roles)}; inputs: {', '.join(roles) or 'none'}"
                )
            several = next(i for i in cls.inputs if i.role == role).several
            if several and isinstance(ref, list) and ref and all(isinstance(r, str) and r for r in ref):
                continue
            if not isinstance(ref, str) or not ref:
                wanted = "a reference string" + (" or a list of them" if several else "")
                raise ConfigError(f"{at}.inputs.{role}: expected {wanted}, got {ref!r}")
        config = dict(item.get("config") or {})
        config.setdefault("output", name)
        if "distributed" in {f.name for f in dataclasses.fields(cls.config_cls)}:
            try:
                config = with_recipe_distributed(config, raw.get("distributed"))
            except ConfigError as err:
                raise ConfigError(f"{at}: {err}") from None
        stage_config = load_config(cls.config_cls, config, where=f"{at}.config")
        try:
            instance = cls(stage_config)
        except ConfigError as err:  # checks across groups (e.g. an adapter with ZeRO-3)
            raise ConfigError(f"{at}.config: {err}") from None
        entries.append(
            Entry(
                name=name,
                stage=stage,
                inputs={k: [str(r) for r in v] if isinstance(v, list) else str(v) for k, v in inputs.items()},
                instance=instance,
            )
        )
        seen.add(name)
    return Recipe(
        name=str(raw.get("name") or Path(where).stem),
        entries=entries,
        path=where,
        description=str(raw.get("description") or ""),
    )


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    raw = read_yaml(path)
    return parse_recipe(raw, overrides, where=str(path))


def plan(recipe: Recipe) -> list[str]:
    """Human-readable lines: what each entry will run, on what."""
    lines = [f"recipe {recipe.name} ({len(recipe.entries)} stages)"]
    names = {e.name for e in recipe.entries}
    for i, e in enumerate(recipe.entries, 1):
        ins = ", ".join(
            f"{role if j == 0 else f'{role}_{j + 1}'}={r}{' (entry)' if r in names else ''}"
            for role, ref in e.inputs.items()
            for j, r in enumerate(ref if isinstance(ref, list) else [ref])
        )
        lines.append(f"  {i}. {e.name}: {e.stage}({ins or 'no inputs'}) -> artifact '{e.config.output}'")
    return lines


def check_recipe(recipe: Recipe, registry: Registry) -> None:
    """Every check that needs no training, for every entry, before any entry trains.

    Each stage's ``check`` resolves its inputs (and checks their kinds), reads and validates its
    data and imports its reward functions. An input that an earlier entry will produce is given
    as a :class:`~alignlab.stages.contract.Planned` of the kind that entry publishes.

    Raises:
        ConfigError, DataError, ReferenceNotFound: naming the entry.
    """
    from alignlab.data.sources import HubUnreachable
    from alignlab.errors import AlignlabError
    from alignlab.stages.contract import Planned

    planned: dict[str, Planned] = {}
    for e in recipe.entries:
        inputs = {role: map_refs(ref, lambda r: planned.get(r, r)) for role, ref in e.inputs.items()}
        try:
            e.instance.check(registry, **inputs)
        except HubUnreachable as err:  # offline: neither right nor wrong, so said and passed
            log.warning(
                "%s: entry %r: its data %r can only be a hub dataset and the hub is not reachable, "
                "so it was not checked",
                recipe.path,
                e.name,
                err.name,
            )
        except AlignlabError as err:
            raise _named(err, f"{recipe.path}: entry {e.name!r} ({e.stage})") from None
        planned[e.name] = Planned(e.name, e.instance.output_kind())


def _named(err: Exception, where: str) -> Exception:
    """The same kind of error (ConfigError, DataError, ...), its message led by ``where``."""
    from alignlab.errors import (
        AlignlabError,
        ConfigError,
        DataError,
        ReferenceNotFound,
        RegistryError,
        TrainingError,
    )

    for kind in (ConfigError, DataError, ReferenceNotFound, RegistryError, TrainingError, AlignlabError):
        if isinstance(err, kind):
            return kind(f"{where}: {err}")
    return err


def run_recipe(
    recipe: Recipe,
    registry: Registry | None = None,
    *,
    force: bool | Sequence[str] = False,
    dry_run: bool = False,
) -> list[StageResult]:
    """Run the entries in order; an input naming an earlier entry gets that entry's artifact.

    Args:
        force: True retrains every entry; a list of entry names retrains those (a name that is
            no entry is an error).
        dry_run: validate and resolve references, train nothing (a run does the same checks
            first: :func:`check_recipe`).
    """
    registry = registry or Registry()
    if not isinstance(force, bool):
        names = [e.name for e in recipe.entries]
        for name in force:
            if name not in names:
                raise ConfigError(
                    f"{recipe.path}: --force {name!r} names no entry{did_you_mean(name, names)}; "
                    f"entries: {', '.join(names)}"
                )
    # every entry's references, data and rewards are checked before the first one trains, so
    # that a mistake in a late entry does not surface after the early ones spent their time
    check_recipe(recipe, registry)
    if dry_run:
        return []
    produced: dict[str, Artifact] = {}
    results: list[StageResult] = []
    for e in recipe.entries:
        inputs = {
            role: map_refs(ref, lambda r: produced[r].id if r in produced else r)
            for role, ref in e.inputs.items()
        }
        entry_force = force if isinstance(force, bool) else e.name in force
        started = time.perf_counter()
        before = {a.id for a in registry.list(e.config.output)}
        artifact = e.instance.run(registry, force=entry_force, **inputs)
        seconds = time.perf_counter() - started
        produced[e.name] = artifact
        results.append(StageResult(e.name, e.stage, artifact, seconds, reused=artifact.id in before))
        log.info(
            "%s -> %s (%s, %.1fs)",
            e.name,
            artifact.ref,
            "reused" if artifact.id in before else "trained",
            seconds,
        )
    return results
