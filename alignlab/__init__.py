"""alignlab: the whole alignment pipeline of a language model, one swappable stage at a time."""

import os

# Tracking must never need the network unless the user asks for it.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

from alignlab.errors import AlignlabError, ConfigError, DataError, ReferenceNotFound  # noqa: E402
from alignlab.registry import Artifact, Registry  # noqa: E402

_LAZY = {
    "TinyBase": "alignlab.stages.base",
    "ImportModel": "alignlab.stages.import_model",
    "Pretrain": "alignlab.stages.pretrain",
    "SFT": "alignlab.stages.sft",
    "RewardModel": "alignlab.stages.reward",
    "DPO": "alignlab.stages.dpo",
    "RejectionSampling": "alignlab.stages.rejection",
    "PPO": "alignlab.stages.ppo",
    "run_recipe": "alignlab.recipe",
    "load_recipe": "alignlab.recipe",
}


def __getattr__(name: str):
    """Stage classes import on first use, so `import alignlab` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alignlab' has no attribute {name!r}")


__all__ = [
    "DPO",
    "PPO",
    "SFT",
    "AlignlabError",
    "Artifact",
    "ConfigError",
    "DataError",
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
