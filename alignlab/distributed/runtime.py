"""What a stage does at run time when it runs in several processes under DeepSpeed.

:mod:`alignlab.distributed.config` turns the ``distributed`` group into configs; this module
uses them in a running process:

- :func:`init_process_group` — one process-wide accelerate state for the whole run, flagged for
  DeepSpeed (on CPU too, where accelerate would otherwise count one process; see below).
- :func:`trainer_overrides` / :func:`make_accelerator` — what Trainer stages and alignlab's own
  loops build from the group.
- :func:`main_process_model` — the trained model, whole and plain, on the main process only
  (ZeRO-3 shards are gathered one submodule at a time; a LoRA model keeps its adapter, to be
  merged or saved alone); the stage evaluates and publishes it
  there while the other processes wait (:func:`alignlab.stages.lifecycle.run_stage`).
- :func:`gathered_for_generation` — ZeRO-3 weights gathered once for a whole rollout, instead of
  layer by layer for every generated token.

In one process with ``zero_stage: 0`` every function here is a no-op and DeepSpeed is not imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from alignlab.distributed.config import (
    DistributedGroup,
    StageKind,
    accelerator_kwargs,
    current_world_size,
    deepspeed_config,
    load_deepspeed_file,
    training_args_overrides,
)
from alignlab.errors import ConfigError

log = logging.getLogger("alignlab")


def is_distributed() -> bool:
    """More than one process in this run (``WORLD_SIZE`` > 1)."""
    return current_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """Rank 0: the process that evaluates and publishes."""
    return rank() == 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


#: How long a collective waits for the other processes before it fails, in seconds, unless
#: ``ALIGNLAB_COLLECTIVE_TIMEOUT_S`` says otherwise. torch's own default is 10 minutes (accelerate
#: and DeepSpeed pass 30 for NCCL). Ours is shorter because the long phases in which one process
#: works alone (evaluation, publication) wait outside collectives (see
#: :func:`wait_for_main`), so a collective only ever waits for the others' share of the same
#: work; raise it when loading a very large model takes the processes minutes apart.
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0


def collective_timeout_s() -> float:
    """The collective timeout for this run: ``ALIGNLAB_COLLECTIVE_TIMEOUT_S`` or the default."""
    raw = os.environ.get("ALIGNLAB_COLLECTIVE_TIMEOUT_S", "").strip()
    if not raw:
        return DEFAULT_COLLECTIVE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"ALIGNLAB_COLLECTIVE_TIMEOUT_S={raw!r}: give a number of seconds above 0")
    return value


def init_process_group() -> None:
    """Set up the process-wide accelerate state for a multi-process run (idempotent).

    Multi-process runs always train through DeepSpeed (ZeRO-0 is its data parallelism), so the
    state is created flagged for it. On a machine without CUDA, accelerate (1.x) sets DeepSpeed
    up with no backend and then believes it runs in one process; naming ``gloo`` (DeepSpeed's
    CPU accelerator's backend without oneCCL) gives it the real world size.
    """
    if not is_distributed():
        return
    from accelerate.state import PartialState

    if PartialState._shared_state:
        return
    from datetime import timedelta

    timeout = {"timeout": timedelta(seconds=collective_timeout_s())}
    backend = None if _cuda() else "gloo"
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend=backend, **timeout) if backend else PartialState(**timeout)
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous


def barrier() -> None:
    """Wait for every process (nothing in one process)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    init_process_group()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any of them (``flag`` itself in one process);
    every process must call it, like :func:`barrier`."""
    if not is_distributed():
        return flag
    import torch
    import torch.distributed as dist

    init_process_group()
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _store() -> Any | None:
    """The process group's key-value store (torchrun's rendezvous store), None outside a run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except (ImportError, RuntimeError, ValueError):
        return None


_PHASE_KEY = "alignlab/doing/rank-{}"
_current = {"stage": ""}


def doing(what: str, stage: str | None = None) -> None:
    """Record what this process is doing now (in ``stage``, by default the one it is in), for the
    message of a collective that fails (:func:`collective_failure`); nothing in one process."""
    if stage is not None:
        _current["stage"] = stage
    if not is_distributed():
        return
    store = _store()
    if store is not None:
        store.set(_PHASE_KEY.format(rank()), f"{_current['stage']}: {what}" if _current["stage"] else what)


def what_each_rank_is_doing() -> dict[int, str]:
    """The last :func:`doing` of every process (those that recorded one)."""
    store = _store()
    if store is None:
        return {}
    out: dict[int, str] = {}
    for r in range(current_world_size()):
        key = _PHASE_KEY.format(r)
        try:
            if store.check([key]):
                out[r] = store.get(key).decode("utf-8", "replace")
        except RuntimeError:  # the store went away with the launcher
            break
    return out


def is_collective_failure(error: BaseException) -> bool:
    """A collective that timed out, or whose peer went away (gloo's and NCCL's messages)."""
    from alignlab.errors import AlignlabError

    if isinstance(error, AlignlabError):
        return False
    text = str(error).lower()
    names = ("DistBackendError", "DistNetworkError", "DistStoreError")
    return type(error).__name__ in names or (
        isinstance(error, RuntimeError)
        and any(m in text for m in ("timed out", "timeout", "connection closed by peer", "connection reset"))
    )


def collective_failure(stage: str, error: BaseException) -> Exception:
    """The error to raise for a collective failure in ``stage``: what each process was doing."""
    from alignlab.errors import TrainingError

    ranks = what_each_rank_is_doing()
    listed = "; ".join(f"rank {r}: {what}" for r, what in sorted(ranks.items())) or "unknown"
    return TrainingError(
        f"{stage}: rank {rank()} gave up on a collective after at most {collective_timeout_s():.0f} s "
        f"(ALIGNLAB_COLLECTIVE_TIMEOUT_S): the processes were not in the same step. Last recorded: "
        f"{listed}. Cause: {str(error).splitlines()[0][:300] if str(error) else type(error).__name__}"
    )


def check_in(stage: str, fingerprint: str) -> None:
    """Every process confirms it starts the same stage, with the same fingerprint and the same
    distributed state (an error naming each process's view otherwise, before any collective of
    the stage can hang on the difference)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    init_process_group()
    if not (dist.is_available() and dist.is_initialized()):
        return
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    mine = (stage, fingerprint, bool(is_deepspeed_zero3_enabled()))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if any(view != everyone[0] for view in everyone):
        from alignlab.errors import TrainingError

        listed = "; ".join(
            f"rank {r}: {s} (fingerprint {f}, ZeRO-3 model construction {'on' if z else 'off'})"
            for r, (s, f, z) in enumerate(everyone)
        )
        raise TrainingError(f"{stage}: the processes disagree on what runs next: {listed}")


def reset_stage_state() -> None:
    """Forget what a stage left in process-wide state, on every process alike: transformers'
    DeepSpeed config (with it set, ``from_pretrained`` builds models ZeRO-3-partitioned, a
    collective), and accelerate's accelerator and gradient state (the process group stays).
    Called as each stage starts and ends (:func:`alignlab.stages.lifecycle.run_stage`); nothing
    in one process, where a caller's own accelerate state is left alone."""
    import sys

    if not is_distributed():
        return
    if "transformers" in sys.modules:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()


_PUBLISHED_KEY = "alignlab/published/{}"


def announce(key: str, value: str) -> None:
    """Main process: tell the others waiting in :func:`wait_for_main` (nothing in one process)."""
    if is_distributed() and (store := _store()) is not None:
        store.set(_PUBLISHED_KEY.format(key), value)


def wait_for_main(key: str, poll_s: float = 0.5) -> str | None:
    """Other processes: wait, outside any collective and for as long as it takes, for the main
    process to :func:`announce` ``key``; its value. None when there is no store to wait on (the
    caller falls back to a barrier). The main process failing ends the run through the launcher."""
    import time

    store = _store()
    if store is None:
        return None
    name = _PUBLISHED_KEY.format(key)
    while not store.check([name]):
        time.sleep(poll_s)
    return store.get(name).decode("utf-8")


def zero_stage_of(group: DistributedGroup) -> int:
    """The ZeRO stage the group trains with (read from ``config_file`` when it names one)."""
    if group.config_file is not None:
        return int(load_deepspeed_file(group.config_file)["zero_optimization"].get("stage", 0))
    return group.zero_stage


def check_distributed(group: DistributedGroup, adapter: Any = None) -> None:
    """Refuse what a stage cannot run, before anything loads.

    Raises:
        ConfigError: DeepSpeed settings without deepspeed installed, or QLoRA / prompt tuning with
            ZeRO-3 (LoRA and full fine-tuning are supported; QLoRA names CUDA and bitsandbytes
            first where they are missing).
    """
    wants_deepspeed = (
        group.zero_stage > 0 or group.offload_optimizer or group.offload_params or group.config_file
    )
    if wants_deepspeed:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            key = "config_file" if group.config_file else "zero_stage"
            raise ConfigError(
                f"distributed.{key} asks for DeepSpeed, which is not installed: pip install deepspeed "
                "(or set distributed.zero_stage: 0)"
            )
    method = str(getattr(adapter, "method", "full"))
    if zero_stage_of(group) != 3 or method in ("full", "lora"):
        return
    if method == "qlora":
        from alignlab.models.adapters import check_qlora_available

        check_qlora_available()  # on CPU: names what is missing (CUDA, bitsandbytes) first
    raise ConfigError(
        f"adapter.method={method} with distributed.zero_stage: 3 is not supported yet (only lora and full "
        "are, docs/scaling.md); use distributed.zero_stage 0-2 with this adapter (the frozen base is then "
        "replicated), or adapter.method: lora"
    )


def trainer_overrides(group: DistributedGroup) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments for a Trainer stage: merge them last.

    :func:`training_args_overrides`, plus, in a multi-process run, the process state set up by
    :func:`init_process_group` (``use_configured_state``) and ``use_cpu=False`` (the Trainer
    leaves DeepSpeed out when told to use the CPU).
    """
    out = training_args_overrides(group)
    if "deepspeed" in out and is_distributed():
        init_process_group()
        out["use_cpu"] = False
        out["accelerator_config"] = {"use_configured_state": True}
    return out


def make_accelerator(
    group: DistributedGroup,
    *,
    max_grad_norm: float | None = None,
    micro_batch_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """A fresh ``accelerate.Accelerator`` for alignlab's own loops, on DeepSpeed when the group asks.

    Args:
        group: the stage's ``distributed`` settings.
        max_grad_norm: DeepSpeed's ``gradient_clipping`` (DeepSpeed clips, not the loop).
        micro_batch_size: ``train_micro_batch_size_per_gpu`` for loops that prepare no
            DataLoader (PPO); DeepSpeed only books it.
        kwargs: more ``Accelerator`` arguments (``gradient_accumulation_steps``, ``log_with``, ...).
    """
    from alignlab.models.accelerator import fresh_accelerator

    acc_kwargs = accelerator_kwargs(group, max_grad_norm=max_grad_norm)
    plugin = acc_kwargs.get("deepspeed_plugin")
    if plugin is None:
        return fresh_accelerator(cpu=not _cuda(), **acc_kwargs, **kwargs)
    init_process_group()
    # no zero.Init while models load: the frozen ones loaded beside the trained ones (PPO's
    # reference and reward model) would be sharded too, with no engine to gather them. The trained
    # ones are sharded when prepared; each process holds one whole copy until then.
    plugin.zero3_init_flag = False
    if micro_batch_size is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    accelerator = fresh_accelerator(**acc_kwargs, **kwargs)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # accelerate registers the config with transformers whatever the flag
    return accelerator


def uses_deepspeed(group: DistributedGroup, stage: str | StageKind) -> bool:
    """Whether the stage trains through DeepSpeed in this run."""
    return deepspeed_config(group, stage) is not None


def is_zero3(model: Any) -> bool:
    """Whether the model's weights are ZeRO-3 shards (DeepSpeed marks such parameters with ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def trainable_parameters(model: Any) -> int:
    """How many parameters train, whole: a ZeRO-3 shard counts for its full size (``ds_numel``)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def consolidated_state_dict(model: Any) -> dict[str, Any] | None:
    """The full state dict on the main process, None on the others (every process must call it).

    ZeRO-3 shards are gathered one submodule at a time (as DeepSpeed's own
    ``_zero3_consolidated_16bit_state_dict``), so the peak is one layer beyond the copy being built.
    """
    if not is_zero3(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()} if is_main_process() else None
    import deepspeed

    keys = set(model.state_dict().keys())
    out: dict[str, Any] = {}

    def walk(module: Any, prefix: str) -> None:
        own = list(module.parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(own, modifier_rank=None):
            if is_main_process():
                for name, param in module.named_parameters(recurse=False):
                    out[prefix + name] = param.detach().clone().cpu()
                for name, buf in module.named_buffers(recurse=False):
                    if buf is not None and name not in module._non_persistent_buffers_set:
                        out[prefix + name] = buf.detach().clone().cpu()
        for name, child in module.named_children():
            walk(child, f"{prefix}{name}.")

    walk(model, "")
    if not is_main_process():
        return None
    missing = keys - out.keys()
    if missing:
        raise RuntimeError(f"ZeRO-3 consolidation missed {sorted(missing)[:5]}")
    return {k: v for k, v in out.items() if k in keys}


def main_process_model(model: Any) -> Any | None:
    """The trained model, whole and free of DeepSpeed, on the main process; None on the others.

    Every process must call it (under ZeRO-3 the shards are gathered collectively). In one
    process, or when every process holds the whole model (ZeRO 0-2), the model itself comes back
    on the main process; under ZeRO-3 a plain copy of the same class is built from the gathered
    weights (:func:`plain_copy`; a LoRA model keeps its adapter, frozen base included), so that
    evaluation, ``merge_and_unload`` and ``save_pretrained`` see ordinary tensors.
    """
    if not is_distributed():
        return model
    if not is_zero3(model):
        barrier()  # the others' training is finished too before the main process goes on alone
        return model if is_main_process() else None
    state = consolidated_state_dict(model)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # else transformers builds the copy ZeRO-3-sharded again (every
    # process alike: one left with it set would build its next model under zero.Init, issue 19)
    if state is None:
        return None
    copy = plain_copy(model, state)
    if getattr(model, "generation_config", None) is not None:
        copy.generation_config = model.generation_config
    return copy.eval()


def plain_copy(model: Any, state: dict[str, Any]) -> Any:
    """A fresh, unsharded model of ``model``'s architecture holding ``state`` (its full state dict).

    A peft model (LoRA) is rebuilt the same way it was made, ``get_peft_model`` on a fresh base
    with the same adapter config, so the copy can still merge (``merge_and_unload``) or save its
    adapter alone (``save_pretrained``): both then see whole weights.
    """
    import torch

    dtype = next(iter(state.values())).dtype if state else torch.float32
    peft_configs = getattr(model, "peft_config", None)
    if not peft_configs:
        copy = type(model)(model.config).to(dtype)
    else:
        from peft import get_peft_model

        base = model.get_base_model()
        name, *others = list(peft_configs)
        copy = get_peft_model(type(base)(base.config).to(dtype), peft_configs[name], adapter_name=name)
        for other in others:
            copy.add_adapter(other, peft_configs[other])
        copy.set_adapter(model.active_adapter)
    copy.load_state_dict(state)
    return copy


@contextlib.contextmanager
def gathered_for_generation(engine: Any, accelerator: Any) -> Iterator[Any]:
    """The unwrapped model with its ZeRO-3 weights gathered once, for a whole rollout.

    Without this, every forward pass of ``generate`` (one per token) gathers every layer's
    shards from the other processes. As TRL's ``unwrap_model_for_generation``: gather every
    weight (``deepspeed.zero.GatheredParameters``) and take DeepSpeed's fetch hooks off while the
    context lasts, put them back after. Outside ZeRO-3 it only unwraps.
    """
    if accelerator.distributed_type != "DEEPSPEED" or not is_zero3(engine):
        yield accelerator.unwrap_model(engine)
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(engine.parameters())):
        remove_hooks(engine)
        try:
            yield accelerator.unwrap_model(engine)
        finally:
            add_hooks(engine)
