"""The stages: one class each, its typed config beside it in the same file.

``STAGES`` maps the name used in recipes to the class. Classes are imported on first use (so
`alignlab --help` stays fast); registering a name twice is an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
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


def register_stage(name: str, target: str | type) -> None:
    """Make a stage usable as ``stage: name`` in recipes (a class or a ``"module:Class"`` path)."""
    STAGES.register(name, target)


for _name, _path in {
    "tiny_base": "alignlab.stages.base:TinyBase",
    "import_model": "alignlab.stages.import_model:ImportModel",
    "pretrain": "alignlab.stages.pretrain:Pretrain",
    "sft": "alignlab.stages.sft:SFT",
    "reward_model": "alignlab.stages.reward:RewardModel",
    "dpo": "alignlab.stages.dpo:DPO",
    "rejection_sampling": "alignlab.stages.rejection:RejectionSampling",
    "ppo": "alignlab.stages.ppo:PPO",
}.items():
    register_stage(_name, _path)
