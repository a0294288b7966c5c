"""The ``distributed`` config group and the DeepSpeed configs generated from it.

A stage holds ``distributed: DistributedGroup``; a recipe may set a top-level ``distributed:``
section that every entry inherits (:func:`with_recipe_distributed`). From the group:

- :func:`deepspeed_config` — the DeepSpeed JSON (a dict) for a stage, or None when there is
  nothing to shard (ZeRO-0 in a single process). Values that transformers' Trainer or accelerate
  fill at run time (batch sizes, clipping, bucket sizes, bf16/fp16) are ``"auto"``.
- :func:`training_args_overrides` — keyword arguments for ``transformers.TrainingArguments``
  (and TRL configs): ``deepspeed``, ``bf16``/``fp16``, ``activation_checkpointing``.
- :func:`accelerator_kwargs` — keyword arguments for ``accelerate.Accelerator`` in alignlab's
  own loops: ``mixed_precision`` and a ``DeepSpeedPlugin``.

The templates in recipes/deepspeed/ are :func:`template_configs` written out
(``python -m alignlab.distributed.config recipes/deepspeed``); a test keeps them identical.

Example:
    >>> from alignlab.distributed import DistributedGroup, deepspeed_config
    >>> cfg = deepspeed_config(DistributedGroup(zero_stage=3, offload_optimizer=True), "sft", world_size=8)
    >>> cfg["zero_optimization"]["stage"], cfg["zero_optimization"]["offload_optimizer"]["device"]
    (3, 'cpu')
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean


class MixedPrecision(StrEnum):
    """Precision of weights, activations and gradients during training."""

    AUTO = "auto"  # bf16 where the GPU has it, else fp16 on CUDA, else fp32 (CPU)
    BF16 = "bf16"
    FP16 = "fp16"  # with DeepSpeed's dynamic loss scaling
    NO = "no"  # fp32


class StageKind(StrEnum):
    """Who consumes the DeepSpeed config, which decides what it may leave as ``"auto"``."""

    TRAINER = "trainer"  # transformers / TRL Trainer: pretrain, sft, dpo
    ACCELERATE = "accelerate"  # alignlab's loops on accelerate: reward_model, ppo, rejection_sampling
    INFERENCE = "inference"  # frozen models beside a trained one (PPO's reference and reward model)


STAGE_KINDS: dict[str, StageKind] = {
    "pretrain": StageKind.TRAINER,
    "sft": StageKind.TRAINER,
    "dpo": StageKind.TRAINER,
    "reward_model": StageKind.ACCELERATE,
    "ppo": StageKind.ACCELERATE,
    "rejection_sampling": StageKind.ACCELERATE,
}


@dataclass
class DistributedGroup:
    """Multi-GPU training: DeepSpeed ZeRO, offload, mixed precision, gradient checkpointing.

    Attributes:
        zero_stage: ZeRO stage. 0 = plain data parallelism (every GPU holds everything);
            1 = optimizer states sharded across GPUs; 2 = gradients too; 3 = weights too.
        offload_optimizer: keep optimizer states in CPU memory and step there (ZeRO 1-3; slower,
            frees 12+ bytes per parameter on the GPU).
        offload_params: keep the weights in CPU memory too and fetch each layer when needed
            (ZeRO-3 only).
        mixed_precision: auto | bf16 | fp16 | no. auto = bf16 where the GPU has it (Ampere and
            newer), fp16 on older GPUs, fp32 on CPU.
        gradient_checkpointing: recompute activations in backward instead of keeping them (about
            a third more compute for a fraction of the activation memory).
        config_file: a DeepSpeed JSON to use as is (e.g. recipes/deepspeed/zero3.json) instead of
            generating one; leave zero_stage and the offload keys unset with it.
    """

    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    mixed_precision: MixedPrecision = MixedPrecision.AUTO
    gradient_checkpointing: bool = False
    config_file: str | None = None

    def __post_init__(self) -> None:
        self.mixed_precision = MixedPrecision(self.mixed_precision)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"distributed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.config_file is not None:
            if self.zero_stage or self.offload_optimizer or self.offload_params:
                raise ConfigError(
                    "distributed.config_file is used as is: take zero_stage, offload_optimizer and "
                    "offload_params out of the distributed section, or drop config_file"
                )
            return
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(
                f"distributed.offload_params needs distributed.zero_stage: 3 (got {self.zero_stage}); "
                "only ZeRO-3 partitions the weights"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("distributed.offload_optimizer needs distributed.zero_stage 1, 2 or 3 (got 0)")


def current_world_size() -> int:
    """Processes in this run: ``WORLD_SIZE`` as torchrun, deepspeed and accelerate set it (else 1)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def stage_kind(stage: str | StageKind) -> StageKind:
    """A stage name (``sft``, ``ppo``, ...) or a kind (``trainer``, ...) -> :class:`StageKind`."""
    if isinstance(stage, StageKind):
        return stage
    if stage in STAGE_KINDS:
        return STAGE_KINDS[stage]
    try:
        return StageKind(stage)
    except ValueError:
        names = [*STAGE_KINDS, *(k.value for k in StageKind)]
        raise ConfigError(
            f"no DeepSpeed config for stage {stage!r}{did_you_mean(stage, names)}; known: {', '.join(names)}"
        ) from None


def resolve_mixed_precision(
    group: DistributedGroup, *, cuda: bool | None = None, bf16_supported: bool | None = None
) -> str:
    """``"bf16"``, ``"fp16"`` or ``"no"``; ``auto`` asks torch what this machine has."""
    if group.mixed_precision is not MixedPrecision.AUTO:
        return group.mixed_precision.value
    if cuda is None or bf16_supported is None:
        import torch

        cuda = torch.cuda.is_available() if cuda is None else cuda
        if bf16_supported is None:
            bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    if not cuda:
        return "no"
    return "bf16" if bf16_supported else "fp16"


def deepspeed_config(
    group: DistributedGroup,
    stage: str | StageKind,
    *,
    world_size: int | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, Any] | None:
    """The DeepSpeed config for a stage, or None when ZeRO-0 runs in a single process.

    Args:
        group: the stage's ``distributed`` settings.
        stage: a stage name (``sft``, ``ppo``, ...) or a :class:`StageKind`.
        world_size: processes in the run (default: ``WORLD_SIZE``, else 1).
        max_grad_norm: written as ``gradient_clipping`` instead of ``"auto"`` (accelerate fills
            ``"auto"`` with 1.0, not with the stage's setting).

    Raises:
        ConfigError: ``config_file`` is missing or not JSON, or sets an optimizer that alignlab's
            own loops cannot take.
    """
    kind = stage_kind(stage)
    world = current_world_size() if world_size is None else world_size
    if group.config_file is not None:
        config = load_deepspeed_file(group.config_file)
        zero = config["zero_optimization"]
        if zero.get("stage", 0) == 0 and world <= 1:
            return None
        if kind is StageKind.INFERENCE:
            offload = zero.get("offload_param", {}).get("device", "none") not in ("none", None)
            return _inference_config(zero.get("stage", 0), offload, resolve_mixed_precision(group))
        if kind is StageKind.ACCELERATE:
            _drop_trainer_optimizer(config, group.config_file)
        if max_grad_norm is not None and config.get("gradient_clipping") == "auto":
            config["gradient_clipping"] = max_grad_norm
        return config
    if group.zero_stage == 0 and world <= 1:
        return None
    if kind is StageKind.INFERENCE:
        return _inference_config(group.zero_stage, group.offload_params, resolve_mixed_precision(group))
    return _training_config(group, kind, max_grad_norm)


def _training_config(group: DistributedGroup, kind: StageKind, max_grad_norm: float | None) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": group.zero_stage}
    if group.zero_stage >= 1:
        zero["reduce_bucket_size"] = "auto"  # hidden_size², filled from the model
    if group.zero_stage >= 2:
        zero["overlap_comm"] = True
        zero["contiguous_gradients"] = True
    if group.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",  # 0.9 · hidden_size²
            stage3_param_persistence_threshold="auto",  # 10 · hidden_size
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            sub_group_size=1_000_000_000,
            # alignlab publishes safetensors: gather the shards into one 16-bit state dict on save
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if group.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if group.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto" if max_grad_norm is None else max_grad_norm,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "wall_clock_breakdown": False,
    }
    if group.offload_optimizer and kind is StageKind.TRAINER:
        # DeepSpeed's CPU Adam steps the offloaded states several times faster than torch's AdamW;
        # the Trainer keeps its own learning-rate scheduler (TrainGroup.lr_scheduler)
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    if group.offload_optimizer and kind is StageKind.ACCELERATE:
        # alignlab's loops build a torch optimizer; DeepSpeed refuses it with offload unless told
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def _drop_trainer_optimizer(config: dict[str, Any], path: str) -> None:
    """alignlab's own loops build a torch optimizer: drop an all-"auto" DeepSpeed optimizer section.

    A template's ``optimizer`` only asks the Trainer for DeepSpeed's Adam with its own settings;
    a section with real values is a choice alignlab's loops cannot honour, so it is an error.
    """
    for key in ("optimizer", "scheduler"):
        section = config.get(key)
        if section is None:
            continue
        params = section.get("params", {}) if isinstance(section, dict) else {}
        if any(v != "auto" for v in params.values()):
            raise ConfigError(
                f"{path}: alignlab's own training loops (reward model, PPO, rejection sampling) build their "
                f"optimizer and scheduler; remove the '{key}' section or leave its params as \"auto\""
            )
        del config[key]
    offload = config["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    if offload not in ("none", None):
        config.setdefault("zero_force_ds_cpu_optimizer", False)


def _inference_config(zero_stage: int, offload_params: bool, precision: str) -> dict[str, Any]:
    """A frozen model: sharded only under ZeRO-3 (as DeepSpeed-Chat's reference and reward model)."""
    zero: dict[str, Any] = {"stage": 3 if zero_stage == 3 else 0}
    if zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 10_000
        if offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": zero,
        "wall_clock_breakdown": False,
    }


def load_deepspeed_file(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON config (a fresh dict each call: DeepSpeed and accelerate edit it)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"distributed.config_file: {file} not found; the templates are in recipes/deepspeed/ "
            f"({', '.join(f'{n}.json' for n in TEMPLATES)})"
        )
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(config, dict) or "zero_optimization" not in config:
        raise ConfigError(f"{file}: a DeepSpeed config is a JSON object with a 'zero_optimization' section")
    return config


def training_args_overrides(group: DistributedGroup, *, world_size: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments`` (and TRL configs built on it).

    Merge them last (``{**hf_training_args(...), **training_args_overrides(group)}``). Under ZeRO-3
    the TrainingArguments must exist before the model is loaded, so that transformers builds it
    already partitioned.
    """
    precision = resolve_mixed_precision(group)
    # transformers 5.2x renamed gradient_checkpointing (then a deprecated alias, and TRL's configs
    # default it to True): the new name wins over the old one whatever the old one says; the
    # releases vLLM pins (5.19) know only the old name
    name = checkpointing_argument()
    out: dict[str, Any] = {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        name: group.gradient_checkpointing,
    }
    if group.gradient_checkpointing:
        out[f"{name}_kwargs"] = {"use_reentrant": False}
    config = deepspeed_config(group, StageKind.TRAINER, world_size=world_size)
    if config is not None:
        out["deepspeed"] = config
    return out


def checkpointing_argument() -> str:
    """TrainingArguments' name for gradient checkpointing in the installed transformers."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def accelerator_kwargs(
    group: DistributedGroup, *, world_size: int | None = None, max_grad_norm: float | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``accelerate.Accelerator`` in alignlab's own loops.

    ``mixed_precision`` always; ``deepspeed_plugin`` (a ``DeepSpeedPlugin`` on the generated
    config) when there is something to shard. Gradient checkpointing is the model's business:
    :func:`enable_gradient_checkpointing`.
    """
    out: dict[str, Any] = {"mixed_precision": resolve_mixed_precision(group)}
    config = deepspeed_config(group, StageKind.ACCELERATE, world_size=world_size, max_grad_norm=max_grad_norm)
    if config is not None:
        from accelerate.utils import DeepSpeedPlugin

        out["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=config)
    return out


def enable_gradient_checkpointing(model: Any, group: DistributedGroup) -> Any:
    """Turn on a transformers model's gradient (activation) checkpointing when the group asks for it."""
    if group.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False  # the KV cache is useless in training and conflicts with it
    return model


def with_recipe_distributed(
    entry_config: Mapping[str, Any], recipe_distributed: Mapping[str, Any] | None
) -> dict[str, Any]:
    """An entry's config with the recipe's top-level ``distributed`` section under its own.

    Keys the entry sets win; a ``config_file`` on either side replaces the other's ZeRO keys.
    """
    out = dict(entry_config)
    if not recipe_distributed:
        return out
    if not isinstance(recipe_distributed, Mapping):
        raise ConfigError(f"recipe 'distributed': expected a mapping of settings, got {recipe_distributed!r}")
    own = out.get("distributed") or {}
    if not isinstance(own, Mapping):
        raise ConfigError(f"'distributed': expected a mapping of settings, got {own!r}")
    inherited = dict(recipe_distributed)
    zero_keys = {"zero_stage", "offload_optimizer", "offload_params"}
    if "config_file" in own:
        inherited = {k: v for k, v in inherited.items() if k not in zero_keys}
    elif zero_keys & own.keys():
        inherited.pop("config_file", None)
    out["distributed"] = {**inherited, **own}
    return out


def fill_auto(
    config: Mapping[str, Any],
    *,
    hidden_size: int,
    micro_batch_size: int = 1,
    grad_accum: int = 1,
    world_size: int = 1,
    max_grad_norm: float = 1.0,
    mixed_precision: str = "bf16",
    lr: float = 1e-5,
    weight_decay: float = 0.0,
) -> dict[str, Any]:
    """``config`` with every ``"auto"`` replaced as transformers' Trainer would fill it.

    For launching with DeepSpeed directly, and for validating a config here.

    Raises:
        ConfigError: an ``"auto"`` at a key no one fills.
    """
    values: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": max_grad_norm,
        "bf16.enabled": mixed_precision == "bf16",
        "fp16.enabled": mixed_precision == "fp16",
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
        "optimizer.params.lr": lr,
        "optimizer.params.betas": [0.9, 0.999],
        "optimizer.params.eps": 1e-8,
        "optimizer.params.weight_decay": weight_decay,
    }

    def fill(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                out[key] = fill(value, f"{path}.")
            elif value == "auto":
                if path not in values:
                    raise ConfigError(f"DeepSpeed config: no one fills 'auto' at '{path}'; give a value")
                out[key] = values[path]
            else:
                out[key] = copy.deepcopy(value)
        return out

    return fill(config, "")


def validate_deepspeed_config(config: Mapping[str, Any], *, hidden_size: int = 4096) -> None:
    """Check a DeepSpeed config against DeepSpeed's own config classes (no GPU needed).

    ``"auto"`` values are filled as the Trainer would (for one process: DeepSpeed checks the batch
    sizes against its own world size); the ``zero_optimization``, ``bf16`` and
    ``fp16`` sections are validated by DeepSpeed's pydantic models, which refuse unknown keys;
    top-level keys must be ones DeepSpeed reads.

    Raises:
        ConfigError: with DeepSpeed's message.
    """
    import deepspeed.runtime.constants as ds_constants
    from deepspeed.runtime.config import DeepSpeedConfig

    known = {v for k, v in vars(ds_constants).items() if k.isupper() and isinstance(v, str)}
    known.add("zero_optimization")
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(
            f"DeepSpeed config: unknown top-level key(s) {', '.join(map(repr, unknown))}"
            f"{did_you_mean(unknown[0], known)}"
        )
    filled = fill_auto(config, hidden_size=hidden_size)
    try:
        DeepSpeedConfig(filled)
    except Exception as err:  # pydantic.ValidationError, AssertionError, ValueError from DeepSpeed
        raise ConfigError(f"DeepSpeed config rejected by deepspeed: {err}") from err


TEMPLATES: dict[str, DistributedGroup] = {
    "zero0": DistributedGroup(zero_stage=0),
    "zero1": DistributedGroup(zero_stage=1),
    "zero2": DistributedGroup(zero_stage=2),
    "zero2_offload": DistributedGroup(zero_stage=2, offload_optimizer=True),
    "zero3": DistributedGroup(zero_stage=3),
    "zero3_offload": DistributedGroup(zero_stage=3, offload_optimizer=True, offload_params=True),
}


def template_configs() -> dict[str, dict[str, Any]]:
    """The configs shipped in recipes/deepspeed/ (for the Trainer; multi-process)."""
    return {name: _training_config(group, StageKind.TRAINER, None) for name, group in TEMPLATES.items()}


def write_templates(folder: str | Path) -> list[Path]:
    """Write :func:`template_configs` as ``<name>.json`` files into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, config in template_configs().items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_templates(sys.argv[1] if len(sys.argv) > 1 else "recipes/deepspeed"):
        print(f"wrote {written}")
