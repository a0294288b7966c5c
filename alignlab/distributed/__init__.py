"""Multi-GPU training: the ``distributed`` config group, DeepSpeed configs, launch, memory planning.

- :mod:`alignlab.distributed.config` — :class:`DistributedGroup` and what a stage builds from it
  (:func:`deepspeed_config`, :func:`training_args_overrides`, :func:`accelerator_kwargs`).
- :mod:`alignlab.distributed.launch` — ``alignlab run --nproc N [--hostfile H]`` through torchrun,
  deepspeed or accelerate (:func:`build_launch_command`).
- :mod:`alignlab.distributed.planner` — per-GPU memory of a stage (``alignlab plan``).

Guides: docs/scaling.md and docs/memory_planner.md.
"""

from alignlab.distributed.config import (
    DistributedGroup,
    MixedPrecision,
    StageKind,
    accelerator_kwargs,
    current_world_size,
    deepspeed_config,
    enable_gradient_checkpointing,
    resolve_mixed_precision,
    training_args_overrides,
    validate_deepspeed_config,
    with_recipe_distributed,
)
from alignlab.distributed.launch import Launcher, build_launch_command, needs_launch, read_hostfile
from alignlab.distributed.model_shapes import resolve_model
from alignlab.distributed.planner import Accounting, Plan, PlanStage, Setup, plan

__all__ = [
    "Accounting",
    "DistributedGroup",
    "Launcher",
    "MixedPrecision",
    "Plan",
    "PlanStage",
    "Setup",
    "StageKind",
    "accelerator_kwargs",
    "build_launch_command",
    "current_world_size",
    "deepspeed_config",
    "enable_gradient_checkpointing",
    "needs_launch",
    "plan",
    "read_hostfile",
    "resolve_mixed_precision",
    "resolve_model",
    "training_args_overrides",
    "validate_deepspeed_config",
    "with_recipe_distributed",
]
