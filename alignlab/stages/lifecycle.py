"""What every stage does around its training: resolve inputs, fingerprint, reuse or publish.

Stages compose these functions (no base class): a stage's ``run`` loads and validates its data,
then calls :func:`run_stage` with a ``body`` that trains and writes into the staging folder.
Nothing is published unless ``body`` returns normally.

In a multi-process run (``alignlab run --nproc N``) every process runs ``body`` (training is
collective), but only the main process publishes: the others write into a scratch folder, wait,
and return the artifact the main process published (found by its fingerprint).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.config import to_dict, weights_config
from alignlab.errors import ConfigError, ReferenceNotFound, RegistryError, TrainingError
from alignlab.registry import Artifact, ExternalRef, Publication, Registry, fingerprint
from alignlab.stages.groups import TrackingGroup, TrainGroup

if TYPE_CHECKING:
    from alignlab.distributed.config import DistributedGroup

log = logging.getLogger("alignlab")

Resolved = Artifact | ExternalRef


@dataclass
class StageRun:
    """What a stage body gets: resolved inputs, loaded data, and the publication to fill."""

    registry: Registry
    inputs: dict[str, Resolved]
    data: dict[str, Any]
    out: Publication

    @property
    def dir(self) -> Path:
        return self.out.dir

    @property
    def metrics(self) -> dict[str, Any]:
        return self.out.metrics


def resolve_inputs(registry: Registry, stage: Any, refs: Mapping[str, Any]) -> dict[str, Resolved]:
    """Resolve a stage's input references (``stage.inputs`` says which roles it takes and of what kind;
    a role that also takes a reward function is :func:`alignlab.rewards.resolve_reward`'s).

    A :class:`~alignlab.stages.contract.Planned` input (a dry run's stand-in for an earlier recipe
    entry) is kept as it is, its kind checked.

    Raises:
        ConfigError: a required input missing, or an artifact of a kind the role does not take.
        ReferenceNotFound: a reference that resolves to nothing, or a local path holding no model.
    """
    from alignlab.models.loading import check_local_model
    from alignlab.stages.contract import Planned, check_kind

    resolved: dict[str, Resolved] = {}
    for spec in stage.inputs:
        if spec.function:  # a reward model or function: alignlab.rewards.resolve_reward
            continue
        ref = refs.get(spec.role)
        if ref is None or (isinstance(ref, str) and not ref.strip()):
            if spec.required:
                raise ConfigError(
                    f"{stage.name}: input '{spec.role}' is required: pass {spec.role}=REFERENCE "
                    f"(e.g. {spec.role}=sft)"
                )
            continue
        target = ref if isinstance(ref, Planned) else registry.resolve(ref)
        if isinstance(target, ExternalRef) and target.is_local:
            try:
                check_local_model(target)
            except (ReferenceNotFound, ConfigError) as err:
                raise type(err)(f"input '{spec.role}': {err}") from None
        check_kind(stage.name, spec, target)
        resolved[spec.role] = target
    return resolved


def load_data(data: Any, kind: str, registry: Registry, source: str | None = None) -> Any:
    """Read a stage's ``data`` group (:class:`alignlab.stages.groups.DataSource`: source, format,
    strict, limit) as validated records of ``kind``; ``source`` overrides ``data.source``."""
    from alignlab.data import load_records

    return load_records(
        source or data.source,
        kind=kind,
        registry=registry,
        format=data.format,
        strict=data.strict,
        limit=data.limit,
    )


@dataclass(frozen=True)
class SourceRecord:
    """A file (or an endpoint) as a source of a run (``Artifact.data``), beside loaded records:
    named by ``source`` and fingerprinted (a file's sha256), with no records of its own."""

    source: str
    fingerprint: str
    records: tuple[()] = ()
    artifact: None = None


def data_entry(role: str, records: Any) -> dict[str, Any]:
    """The lineage record of one loaded data source (alignlab.data.Records)."""
    return {
        "role": role,
        "source": records.source,
        "fingerprint": records.fingerprint,
        "records": len(records.records),
    }


@dataclass
class PolicyPlan:
    """What a policy stage (SFT, DPO) has checked and loaded before it trains."""

    registry: Registry
    inputs: dict[str, Resolved]
    records: Any


def prepare_policy_stage(stage: Any, registry: Registry | None, model: Any, *, data_kind: str) -> PolicyPlan:
    """Everything before a policy stage trains: QLoRA can run here, the input resolves to a model,
    and ``stage.config.data`` reads as records of ``data_kind``."""
    from alignlab.models.adapters import quantization_kwargs

    cfg = stage.config
    registry = registry or Registry()
    quantization_kwargs(cfg.adapter)  # fail early when QLoRA cannot run here
    inputs = resolve_inputs(registry, stage, {"model": model})
    return PolicyPlan(registry, inputs, load_data(cfg.data, data_kind, registry))


def run_policy_stage(
    stage: Any,
    registry: Registry | None,
    model: str | None,
    *,
    data_kind: str,
    force: bool,
    body: Callable[[StageRun, Any], None],
) -> Artifact:
    """Run a stage that fine-tunes one policy (``model``) on one data set (SFT, DPO).

    :func:`prepare_policy_stage` checks and loads (its records become ``run.data["train"]``), then
    the stage publishes a model, or an adapter when ``stage.config.adapter`` keeps one;
    ``body(run, config)`` trains and saves into ``run.dir``.
    """
    plan = prepare_policy_stage(stage, registry, model, data_kind=data_kind)
    return publish_stage(
        stage,
        plan.registry,
        inputs=plan.inputs,
        data={"train": plan.records},
        force=force,
        body=lambda run: body(run, stage.config),
    )


def policy_output_kind(adapter: Any) -> str:
    """``adapter`` when the stage keeps its adapter unmerged (or prompt-tunes), else ``model``."""
    from alignlab.models.adapters import publishes_adapter

    return "adapter" if publishes_adapter(adapter) else "model"


def recorded_sources(
    inputs: Mapping[str, Any], data: Mapping[str, Any]
) -> tuple[dict[str, Resolved], dict[str, Any]]:
    """Inputs and data as the registry records them. A reward input
    (:class:`alignlab.rewards.RewardInput`) travels to the stage as one input; here its reward
    model becomes an input artifact (a parent) and its reward function a data source named by
    its code (``reward_fn``), so either changes the fingerprint."""
    from alignlab.rewards import RewardInput

    out_inputs: dict[str, Resolved] = {}
    out_data = dict(data)
    for role, target in inputs.items():
        if not isinstance(target, RewardInput):
            out_inputs[role] = target
        elif target.target is not None:
            out_inputs[role] = target.target
        else:
            out_data[f"{role}_fn"] = target.source
    return out_inputs, out_data


def stage_fingerprint(
    stage: str, config: Any, inputs: Mapping[str, Resolved], data: Mapping[str, Any]
) -> str:
    """What decides a stage's result: its name, its config without run-control fields
    (:func:`alignlab.config.weights_config`: evaluation, tracking, logging, checkpoints and
    resume are left out), its input artifacts and its data. Equal fingerprints reuse the artifact."""
    inputs, data = recorded_sources(inputs, data)
    return fingerprint(
        stage,
        weights_config(config),
        {role: target.id for role, target in inputs.items()},
        sorted(f"{role}:{rec.fingerprint}" for role, rec in data.items()),
    )


def publish_stage(
    stage: Any,
    registry: Registry,
    *,
    inputs: Mapping[str, Any],
    data: Mapping[str, Any],
    force: bool,
    body: Callable[[StageRun], None],
) -> Artifact:
    """:func:`run_stage` for a stage object: its recipe name, ``config.output``, ``output_kind()``
    and config."""
    return run_stage(
        stage=stage.name,
        name=stage.config.output,
        kind=stage.output_kind(),
        config=stage.config,
        registry=registry,
        inputs=inputs,
        data=data,
        force=force,
        body=body,
    )


def run_stage(
    *,
    stage: str,
    name: str,
    kind: str,
    config: Any,
    registry: Registry,
    inputs: Mapping[str, Resolved],
    data: Mapping[str, Any],
    force: bool,
    body: Callable[[StageRun], None],
) -> Artifact:
    """Reuse the artifact with the same fingerprint, or run ``body`` and publish what it wrote."""
    resolved_config = to_dict(config)
    fp = stage_fingerprint(stage, config, inputs, data)
    from alignlab.distributed import runtime

    runtime.reset_stage_state()  # every process starts the stage alike (issue 19)
    runtime.doing("waiting for an identical run", stage=stage)
    try:
        with ExitStack() as held:
            _hold_fingerprint(held, registry, fp, stage)
            runtime.check_in(stage, fp)
            hit = None if force else reusable(registry, fp, stage)
            runtime.barrier()  # every process has looked before any publishes
            if hit is not None:
                log.info("%s: reusing %s (same fingerprint %s; --force retrains)", stage, hit.ref, fp)
                return hit
            for target in inputs.values():  # a running stage's inputs cannot be removed under it
                if isinstance(target, Artifact):
                    held.enter_context(registry.in_use(target))
            return _train_and_publish(registry, stage, name, kind, inputs, data, resolved_config, fp, body)
    except Exception as error:
        if runtime.is_distributed() and runtime.is_collective_failure(error):
            raise runtime.collective_failure(stage, error) from error
        raise
    finally:
        runtime.reset_stage_state()  # ... and leaves nothing behind for the next


#: Seconds between looks at an identical run's lock (every process takes part in each look).
FINGERPRINT_POLL_S = 1.0


def _hold_fingerprint(held: ExitStack, registry: Registry, fp: str, stage: str) -> None:
    """Take the fingerprint's lock on the main process, waiting while an identical run trains.

    The wait polls instead of blocking so that, in a multi-process run, the other processes wait
    with it in short collectives rather than in one barrier that the process group's timeout
    would cut short when the other run trains for longer than that.
    """
    from alignlab.distributed.runtime import any_process, is_main_process

    told = False
    while True:
        busy = False
        if is_main_process():
            try:
                held.enter_context(registry.fingerprint_lock(fp))
            except BlockingIOError:
                busy = True
        if not any_process(busy):
            return
        if not told:
            log.info(
                "%s: another run with fingerprint %s is training; waiting to reuse its artifact", stage, fp
            )
            told = True
        time.sleep(FINGERPRINT_POLL_S)


def reusable(registry: Registry, fp: str, stage: str) -> Artifact | None:
    """The artifact a re-run would reuse, checked first: a changed or missing file is an error
    that says so, never a silent reuse of tampered weights."""
    hit = registry.find_fingerprint(fp)
    if hit is not None and (problems := registry.verify(hit)):
        raise RegistryError(
            f"{stage}: {hit.ref} has this run's fingerprint but does not match its checksums "
            f"({'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}); run `alignlab artifacts "
            f"verify {hit.ref}`, then remove it (or pass --force to train a new version)"
        )
    return hit


def _train_and_publish(
    registry: Registry,
    stage: str,
    name: str,
    kind: str,
    inputs: dict[str, Any],
    data: dict[str, Any],
    resolved_config: dict[str, Any],
    fp: str,
    body: Callable[[StageRun], None],
) -> Artifact:
    from alignlab.distributed import runtime

    done_key = f"{fp}-{next(_STAGE_RUNS)}"  # the same on every process: they run the same stages in order
    runtime.doing("training")
    if not runtime.is_main_process():
        with tempfile.TemporaryDirectory(prefix=f"alignlab-{stage}-rank{runtime.rank()}-") as scratch:
            body(StageRun(registry, dict(inputs), dict(data), Publication(dir=Path(scratch))))
        # the main process evaluates and publishes, for as long as that takes: wait outside any
        # collective, whose timeout is meant for the processes' shared work
        runtime.doing("waiting for rank 0 to evaluate and publish")
        announced = runtime.wait_for_main(done_key)
        if announced is None:
            runtime.barrier()
        elif announced.startswith("!"):
            raise TrainingError(f"{stage}: the main process (rank 0) failed: {announced[1:]}")
        published = registry.find_fingerprint(fp) if announced is None else registry.get(announced)
        if published is None:
            raise RegistryError(
                f"{stage}: rank {runtime.rank()} cannot find the artifact the main process published "
                f"(fingerprint {fp}); every process must see the same registry (ALIGNLAB_HOME on shared storage)"
            )
        return published
    try:
        artifact = _publish_on_main(registry, stage, name, kind, inputs, data, resolved_config, fp, body)
    except BaseException as error:
        runtime.announce(done_key, f"!{type(error).__name__}: {str(error)[:500]}")
        raise
    runtime.announce(done_key, artifact.id)
    return artifact


_STAGE_RUNS = itertools.count()


def _publish_on_main(
    registry: Registry,
    stage: str,
    name: str,
    kind: str,
    inputs: dict[str, Any],
    data: dict[str, Any],
    resolved_config: dict[str, Any],
    fp: str,
    body: Callable[[StageRun], None],
) -> Artifact:
    from alignlab.distributed.config import current_world_size

    stage_inputs, stage_data = inputs, data
    inputs, data = recorded_sources(inputs, data)
    parents = [target.id for target in inputs.values()]
    for rec in data.values():  # a dataset artifact used as data is a parent too
        artifact = getattr(rec, "artifact", None)
        if artifact is not None:
            parents.append(artifact.id)
    with registry.publishing(
        name,
        kind=kind,
        stage=stage,
        parents=parents,
        inputs={role: getattr(t, "ref", None) or t.id for role, t in inputs.items()},
        data=[data_entry(role, rec) for role, rec in data.items()],
        config=resolved_config,
        fingerprint=fp,
    ) as pub:
        body(StageRun(registry=registry, inputs=dict(stage_inputs), data=dict(stage_data), out=pub))
        if current_world_size() > 1:
            pub.metrics["world_size"] = current_world_size()
    log.info("%s: published %s", stage, pub.artifact.ref)
    return pub.artifact


# TRL's configs still name the field `gradient_checkpointing` (default True), which transformers 5
# deprecates in favour of `activation_checkpointing`; we must set it under TRL's name to turn it off.
warnings.filterwarnings("ignore", message=r"`gradient_checkpointing` is deprecated", category=FutureWarning)


def trainer_scratch(run_name: str) -> str:
    """A Trainer's ``output_dir`` (it saves nothing there: ``save_strategy="no"``), in the system
    temp folder and removed when the process exits (a SIGKILLed process leaves it)."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=f"alignlab-{run_name}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def hf_training_args(
    train: TrainGroup,
    tracking: TrackingGroup,
    run_name: str,
    distributed: DistributedGroup | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Keyword arguments for transformers' TrainingArguments (and TRL configs built on it).

    ``distributed`` (the stage's group) adds DeepSpeed, precision and checkpointing on top
    (:func:`alignlab.distributed.runtime.trainer_overrides`).
    """
    report_to = [] if tracking.report_to == "none" else [str(tracking.report_to)]
    if tracking.report_to == "wandb":
        import os

        os.environ.setdefault("WANDB_PROJECT", tracking.project)
    args = dict(
        output_dir=trainer_scratch(run_name),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.lr,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        save_strategy="no",
        report_to=report_to,
        run_name=tracking.run_name or run_name,
        use_cpu=not _has_accelerator(),
        dataloader_num_workers=0,
        disable_tqdm=False,
        # off by default: on small models recomputation costs more than the memory it saves
        # (TRL turns it on by default); the distributed group turns it on for large models
        gradient_checkpointing=False,
        # TRL's configs turn bf16 on by default, even on CPU (autocast there silently); use it only
        # where the GPU supports it
        bf16=_bf16_supported(),
    )
    if distributed is not None:
        from alignlab.distributed.runtime import trainer_overrides

        args.update(trainer_overrides(distributed))
    args.update(extra)
    return args


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def log_history_metrics(history: list[dict[str, Any]], prefix: str = "train") -> dict[str, Any]:
    """Loss curve and final loss from a transformers Trainer's ``state.log_history``."""
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    out: dict[str, Any] = {f"{prefix}_loss_curve": losses}
    if losses:
        out[f"{prefix}_loss_first"] = losses[0][1]
        out[f"{prefix}_loss_last"] = losses[-1][1]
    return out
