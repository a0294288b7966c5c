"""alignlab: the whole alignment pipeline of a language model, one swappable stage at a time."""

import os

# Tracking and model/data loading never need the network unless the user asks for it:
# WANDB_MODE=online, HF_HUB_OFFLINE=0 (docs/models.md). Set before huggingface_hub is imported,
# which reads it once.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

from alignlab.errors import AlignlabError, ConfigError, DataError, ReferenceNotFound  # noqa: E402
from alignlab.registry import Artifact, Registry  # noqa: E402

_LAZY = {"run_recipe": "alignlab.recipe", "load_recipe": "alignlab.recipe"}


def _stage_classes() -> dict[str, str]:
    """Public stage class name -> module, from the stage table (alignlab.stages.STAGE_INFO)."""
    from alignlab.stages import STAGE_INFO

    return {info.class_name: info.target.partition(":")[0] for info in STAGE_INFO.values()}


def __getattr__(name: str):
    """Stage classes import on first use, so `import alignlab` stays light."""
    import importlib

    modules = {**_LAZY, **_stage_classes()}
    if name in modules:
        return getattr(importlib.import_module(modules[name]), name)
    raise AttributeError(f"module 'alignlab' has no attribute {name!r}")


__all__ = [
    "DPO",
    "PPO",
    "SFT",
    "AlignlabError",
    "Artifact",
    "ConfigError",
    "DataError",
    "GenerateData",
    "ImportModel",
    "Pretrain",
    "ReferenceNotFound",
    "Registry",
    "RejectionSampling",
    "RewardModel",
    "TinyBase",
    "load_recipe",
    "run_recipe",
]
