"""The stages: one class each, its typed config beside it in the same file.

``STAGES`` maps the name used in recipes to the class, and ``STAGE_INFO`` to what is known of it
without importing it. Classes are imported on first use (so `alignlab --help` stays fast);
registering a name twice is an error. Every class follows the contract of
:mod:`alignlab.stages.contract`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


class StageRegistry(Mapping[str, Any]):
    """Stage name -> class, from ``"module:Class"`` paths imported lazily."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}

    def register(self, name: str, target: str | type) -> None:
        if name in self._paths or name in self._loaded:
            raise ValueError(f"stage name {name!r} is already registered")
        if isinstance(target, str):
            self._paths[name] = target
        else:
            self._loaded[name] = target

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            module, _, attr = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._paths
        yield from (n for n in self._loaded if n not in self._paths)

    def __len__(self) -> int:
        return len(set(self._paths) | set(self._loaded))


STAGES = StageRegistry()


@dataclass(frozen=True)
class StageInfo:
    """What is known of a stage without importing it (its module imports torch and friends).

    Attributes:
        name: the recipe name (``stage: sft``).
        target: ``"module:Class"``.
        plan_as: the memory planner's shape of its training run (sft | rm | dpo | ppo), or None
            when it trains nothing (``alignlab plan`` accepts the recipe name for it).
    """

    name: str
    target: str
    plan_as: str | None = None

    @property
    def class_name(self) -> str:
        return self.target.partition(":")[2]


STAGE_INFO: dict[str, StageInfo] = {}


def register_stage(name: str, target: str | type, *, plan_as: str | None = None) -> None:
    """Make a stage usable as ``stage: name`` in recipes (a class or a ``"module:Class"`` path).

    The class follows :class:`alignlab.stages.contract.Stage`.
    """
    STAGES.register(name, target)
    path = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    STAGE_INFO[name] = StageInfo(name, path, plan_as)


for _info in (
    StageInfo("tiny_base", "alignlab.stages.tiny_base:TinyBase"),
    StageInfo("import_model", "alignlab.stages.import_model:ImportModel"),
    StageInfo("generate_data", "alignlab.stages.generate_data:GenerateData"),
    StageInfo("pretrain", "alignlab.stages.pretrain:Pretrain", plan_as="sft"),
    StageInfo("sft", "alignlab.stages.sft:SFT", plan_as="sft"),
    StageInfo("reward_model", "alignlab.stages.reward:RewardModel", plan_as="rm"),
    StageInfo("dpo", "alignlab.stages.dpo:DPO", plan_as="dpo"),
    StageInfo("rejection_sampling", "alignlab.stages.rejection:RejectionSampling", plan_as="sft"),
    StageInfo("ppo", "alignlab.stages.ppo:PPO", plan_as="ppo"),
    StageInfo("grpo", "alignlab.stages.grpo:GRPO", plan_as="dpo"),  # policy + reference, no critic
):
    register_stage(_info.name, _info.target, plan_as=_info.plan_as)
