"""The RL loop PPO and the critic-free stage (GRPO and its relatives) share.

An RL stage provides one :class:`RLAlgorithm`: what a step does (rollout → score → advantages →
guard → update) and the state that step carries (KL controller, running score moments, the
prompt cursor). Everything around the steps is here and the same for both families:

1. resume — the latest checkpoint of the same run (same :func:`checkpoint key
   <alignlab.stages.lifecycle.stage_fingerprint>`), its models, optimiser, state and RNG;
2. steps — each returns its history entry; a ``TrainingError`` names the last good checkpoint;
3. log — gold evaluation every ``eval.gold_every`` steps on the testbed, the history, the
   tracker (every ``train.logging_steps``), the progress bar;
4. checkpoint — every ``checkpoint_every`` steps and at the last one;
5. callbacks — ``fn(step, entry)`` after the checkpoint; raising stops the run.

:func:`finish_policy` then turns the trained policy into the published model (merge or keep the
adapter, gold metrics, save), the same for every RL stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from alignlab.distributed import runtime as dist
from alignlab.errors import ConfigError, TrainingError
from alignlab.stages.evaluation import gold_metrics, uses_testbed
from alignlab.stages.lifecycle import StageRun

log = logging.getLogger("alignlab")

StepCallback = Callable[[int, dict[str, Any]], None]


class RLAlgorithm(Protocol):
    """One RL stage's step and the state it carries between steps."""

    trainer: Any  # an alignlab.rl.trainer.PolicyTrainer
    modules: dict[str, Any]  # what a checkpoint saves (unwrapped models)

    def step(self, step: int, note: str) -> dict[str, Any]:
        """Run step ``step`` (1-based); ``note`` names the last good checkpoint, for errors."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state beside the trainer's (controllers, cursors)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    resumed_from: int | None


def checkpoint_due(every: int, step: int, total: int) -> bool:
    """Every ``every`` steps and at the last one; not yet in multi-process runs, where
    DeepSpeed's optimizer states are sharded."""
    return every > 0 and (step % every == 0 or step == total) and not dist.is_distributed()


def run_rl_loop(
    algorithm: RLAlgorithm,
    run: StageRun,
    cfg: Any,
    *,
    stage: str,
    key: str,
    ckpt_root: Path,
    total: int,
    tokenizer: Any,
    callbacks: Sequence[StepCallback] = (),
    postfix: Callable[[dict[str, Any]], dict[str, str]] = lambda entry: {},
) -> LoopResult:
    """Resume, run steps ``start + 1 .. total``, log and checkpoint (see the module docstring).

    ``cfg`` is the stage's config: its ``resume``, ``checkpoint_every``, ``eval``, ``tracking``,
    ``train.logging_steps``, ``data.source`` and ``output`` are read here.
    """
    from alignlab.eval.ppo_report import progress_bar
    from alignlab.rl.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        remove_checkpoints,
        restore_rng,
        save_checkpoint,
    )
    from alignlab.tracking import Tracker

    trainer = algorithm.trainer
    history: list[dict[str, Any]] = []
    start, saved, resumed_from = 0, None, None
    # 1. resume
    if not cfg.resume:
        remove_checkpoints(ckpt_root)
    elif (latest := latest_checkpoint(ckpt_root)) is not None:
        ckpt = load_checkpoint(latest, modules=algorithm.modules)
        if ckpt.state.get("checkpoint_key") != key:
            raise ConfigError(
                f"the checkpoint {latest} belongs to another run (key "
                f"{ckpt.state.get('checkpoint_key')}, this run is {key}); set resume: false to "
                "start over or change checkpoint_dir"
            )
        trainer.load_state_dict(ckpt.torch_states["trainer"])
        algorithm.load_state_dict(ckpt.state["algorithm"])
        history, start, saved, resumed_from = ckpt.state["history"], ckpt.step, latest, ckpt.step
        restore_rng(ckpt)  # last: building the models drew random numbers
        log.info("%s: resuming from %s (step %d of %d)", stage, latest, start, total)

    on_testbed = uses_testbed(cfg.data.source)
    tracker = Tracker.create(
        cfg.tracking,
        cfg.output,
        config=cfg,
        inputs={role: getattr(t, "ref", t.id) for role, t in run.inputs.items()},
    )
    progress = progress_bar(start, total, desc=stage)
    try:
        for step in range(start + 1, total + 1):
            # 2. the step: rollout, score, advantages, guard, update
            note = f"the last good checkpoint is {saved}" if saved else "no checkpoint was written yet"
            started = time.perf_counter()
            try:
                entry = algorithm.step(step, note)
            except TrainingError as err:
                if note in str(err):
                    raise
                raise TrainingError(f"{err}; {note}") from err
            entry["time_step"] = time.perf_counter() - started
            # 3. log
            if on_testbed and cfg.eval.gold and cfg.eval.gold_every > 0:
                if step % cfg.eval.gold_every == 0 or step == total:
                    with trainer.for_generation() as (gen_policy, _):
                        entry.update(in_training_gold(gen_policy, tokenizer, cfg.eval))
            history.append(entry)
            if step % max(1, cfg.train.logging_steps) == 0 or step == total:
                tracker.log(entry, step)
            progress.update(1)
            gold = {"gold": f"{entry['gold_score']:.3f}"} if "gold_score" in entry else {}
            progress.set_postfix(**postfix(entry), **gold)
            # 4. checkpoint
            if checkpoint_due(cfg.checkpoint_every, step, total):
                saved = save_checkpoint(
                    ckpt_root,
                    step,
                    modules=algorithm.modules,
                    torch_states={"trainer": trainer.state_dict()},
                    state={"checkpoint_key": key, "history": history, "algorithm": algorithm.state_dict()},
                )
            # 5. callbacks
            for callback in callbacks:
                callback(step, entry)
    finally:
        progress.close()
        tracker.finish()
    return LoopResult(history, resumed_from)


def in_training_gold(policy: Any, tokenizer: Any, cfg: Any) -> dict[str, float]:
    """Greedy gold score and accuracy of ``cfg.gold_every_n`` held-out testbed prompts."""
    from alignlab.testbed import gold_score

    result = gold_score(policy, n=cfg.gold_every_n, tokenizer=tokenizer, max_new_tokens=cfg.max_new_tokens)
    return {"gold_score": float(result["gold_score"]), "gold_accuracy": float(result["gold_accuracy"])}


def encode_prompts_or_fail(
    tokenizer: Any, run: StageRun, cfg: Any
) -> tuple[list[list[int]], list[Any], list[dict[str, Any]], int]:
    """The run's prompts chat-templated for sampling: token ids, chats, the records' other columns
    (``answer``, ...) and how many were dropped as longer than ``data.max_prompt_length``."""
    from alignlab.rl.rollout import encode_prompt_rows

    records = run.data["prompts"].records
    queries, prompts, columns, dropped = encode_prompt_rows(tokenizer, records, cfg.data.max_prompt_length)
    if not queries:
        raise ConfigError(
            f"every prompt of {cfg.data.source} is longer than data.max_prompt_length="
            f"{cfg.data.max_prompt_length} tokens"
        )
    return queries, prompts, columns, dropped


def finish_policy(
    run: StageRun, cfg: Any, policy: Any, tokenizer: Any, metrics: dict[str, Any], result: LoopResult
) -> Any:
    """Publishable policy: merged (or its adapter kept), gold-evaluated on the testbed and saved into
    the run folder with ``metrics``. Returns the trained model, or None in a process that is not the
    main one (which evaluates and publishes)."""
    from alignlab.models import save_model
    from alignlab.models.adapters import finalize

    metrics["trainable_parameters"] = sum(
        getattr(p, "ds_numel", p.numel()) for p in policy.parameters() if p.requires_grad
    )
    policy = dist.main_process_model(policy)
    if policy is None:
        return None
    trained = finalize(policy, cfg.adapter)
    metrics["history"] = result.history
    if result.resumed_from is not None:
        metrics["resumed_from_step"] = result.resumed_from
    metrics.update(gold_metrics(trained, tokenizer, cfg.eval, uses_testbed(cfg.data.source)))
    save_model(trained, tokenizer, run.dir)
    run.metrics.update(metrics)
    return trained


def publish_rl_stage(
    stage: Any,
    registry: Any,
    *,
    inputs: dict[str, Any],
    data: dict[str, Any],
    force: bool,
    train: Callable[[StageRun, str, Path], None],
) -> Any:
    """Reuse or publish an RL stage's artifact; its checkpoints live under
    ``<registry>/.checkpoints/<key>`` (or ``checkpoint_dir``), keyed by the stage fingerprint (which
    leaves out run-control fields, so a resume with ``resume``/``checkpoint_every`` changed finds
    them), and are removed once the artifact is published. ``train(run, key, ckpt_root)`` trains."""
    from alignlab.registry.liveness import alive
    from alignlab.rl.checkpoint import remove_checkpoints
    from alignlab.stages.lifecycle import publish_stage, stage_fingerprint

    cfg = stage.config
    key = stage_fingerprint(stage.name, cfg, inputs, data)
    ckpt_root = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else registry.root / ".checkpoints" / key

    def body(run: StageRun) -> None:
        # gc leaves a live run's checkpoints alone. The main process holds the mark (an exclusive
        # lock: the others would wait on it), and only once run_stage has made sure no identical
        # run trains (an identical run waits there, with all its processes, not here).
        with alive(ckpt_root) if dist.is_main_process() else nullcontext():
            train(run, key, ckpt_root)

    artifact = publish_stage(stage, registry, inputs=inputs, data=data, force=force, body=body)
    remove_checkpoints(ckpt_root)  # published: nothing left to resume
    return artifact


def with_rl_accelerator(cfg: Any, micro_batch_size: int, train: Callable[[Any], None]) -> None:
    """Run ``train(accelerator)`` with an accelerator built from ``cfg.distributed``; the accelerate
    state is process-wide, so it starts from a clean one and leaves a clean one."""
    from alignlab.models.accelerator import release_accelerator

    accelerator = dist.make_accelerator(
        cfg.distributed,
        max_grad_norm=cfg.train.max_grad_norm or None,
        micro_batch_size=max(1, micro_batch_size),
    )
    try:
        train(accelerator)
    finally:
        release_accelerator()


def trainer_options(cfg: Any, accelerator: Any) -> dict[str, Any]:
    """The :class:`~alignlab.rl.trainer.PolicyTrainer` keywords an RL stage's ``train`` and
    ``generation`` groups give (all but ``total_updates``)."""
    return {
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "max_grad_norm": cfg.train.max_grad_norm,
        "scheduler": cfg.train.lr_scheduler,
        "warmup_ratio": cfg.train.warmup_ratio,
        "grad_accum": cfg.train.grad_accum,
        "temperature": cfg.generation.temperature,
        "seed": cfg.train.seed,
        "accelerator": accelerator,
    }


def load_policy(
    run: StageRun, cfg: Any, accelerator: Any, *, needs_reference: bool = True
) -> tuple[Any, Any, Any]:
    """The policy (a peft model for LoRA), its tokenizer, and its frozen reference: the
    ``reference`` input or the ``model`` one, placed by ``accelerator`` like the trained models; None
    with LoRA and no ``reference`` input (the policy with its adapter off is the reference), or
    when ``needs_reference`` is False."""
    from peft import get_peft_model

    from alignlab.models import load_causal_lm
    from alignlab.models.adapters import AdapterMethod, peft_config, quantization_kwargs

    lora = cfg.adapter.method != AdapterMethod.FULL
    policy, tok = load_causal_lm(
        run.inputs["model"], run.registry, merge_adapter=True, **quantization_kwargs(cfg.adapter)
    )
    reference = None
    if needs_reference and ("reference" in run.inputs or not lora):
        reference, _ = load_causal_lm(
            run.inputs.get("reference", run.inputs["model"]), run.registry, merge_adapter=True
        )
        reference = accelerator.prepare_model(reference.requires_grad_(False).eval(), evaluation_mode=True)
    if lora:
        policy = get_peft_model(policy, peft_config(cfg.adapter))
    return policy, tok, reference


def reward_model_scorer(target: Any, run: StageRun, accelerator: Any, batch_size: int) -> Any:
    """A frozen reward model as a scorer, placed by ``accelerator``."""
    from alignlab.rewards import RewardModelScorer, load_reward_model

    rm, rm_tok = load_reward_model(target, run.registry)
    rm = accelerator.prepare_model(rm.requires_grad_(False).eval(), evaluation_mode=True)
    return RewardModelScorer(rm, rm_tok, batch_size=batch_size)


def reward_list(reward: Any) -> list[Any]:
    """The ``reward`` input as a list: a list as is, a comma-separated string split (the CLI's
    ``reward=a,b``), anything else alone."""
    if isinstance(reward, (list, tuple)):
        if not reward:
            raise ConfigError("reward: the list of rewards is empty")
        return list(reward)
    if isinstance(reward, str) and "," in reward:
        return [r.strip() for r in reward.split(",") if r.strip()]
    return [reward]


def resolve_rewards(registry: Any, reward: Any, cfg: Any) -> dict[str, Any]:
    """The ``reward`` input, one reward or several, resolved and checked against the config's
    ``reward_weights`` / ``reward_rule`` / ``safety``: each its own role (``reward``,
    ``reward_2``, ...), so each is a parent of the output and part of its fingerprint."""
    from alignlab.rewards import check_combination, resolve_reward

    rewards = reward_list(reward)
    check_combination([str(r) for r in rewards], cfg.reward_weights, cfg.reward_rule, cfg.safety)
    return {
        "reward" if i == 0 else f"reward_{i + 1}": resolve_reward(registry, r) for i, r in enumerate(rewards)
    }


def combined_scorer(run: StageRun, cfg: Any, make: Callable[[Any], Any]) -> Any:
    """One scorer for the run's rewards (its :class:`~alignlab.rewards.RewardInput` inputs, in
    role order), combined by the config's rule; ``make(reward_input)`` builds each part."""
    from alignlab.rewards import CombinedScorer, RewardInput

    parts = [(r.ref, make(r)) for r in run.inputs.values() if isinstance(r, RewardInput)]
    return CombinedScorer(parts, cfg.reward_weights, cfg.reward_rule, cfg.safety)


def rl_scorer(run: StageRun, cfg: Any, accelerator: Any) -> Any:
    """:func:`combined_scorer` for PPO and GRPO: reward models placed by ``accelerator``."""

    def make(reward: Any) -> Any:
        if reward.target is not None:
            return reward_model_scorer(reward.target, run, accelerator, cfg.generation.batch_size)
        return reward.scorer(run.registry)

    return combined_scorer(run, cfg, make)


def reward_log(means: dict[str, float]) -> dict[str, float]:
    """A step's ``reward/<name>`` log entries: each reward's mean score (and ``safety_share``)."""
    return {f"reward/{k}": v for k, v in means.items()}


@contextmanager
def rollout_engine(cfg: Any, trainer: Any, tokenizer: Any) -> Iterator[Any | None]:
    """The run's generation engine (``generation.engine``): None for ``hf`` (the policy samples
    itself), else a colocated :class:`~alignlab.models.engines.VLLMEngine`, closed at the end.
    Its weights arrive with :func:`sync_engine` before the first rollout."""
    from alignlab.models.engines import EngineKind, VLLMEngine, resolve_engine

    kind = resolve_engine(cfg.generation.engine)
    if kind == EngineKind.HF:
        yield None
        return
    if trainer.accelerator.num_processes > 1:
        raise ConfigError(
            "generation.engine=vllm runs on one process for now (each rank's own colocated vLLM is "
            "not tested here); set generation.engine=hf for multi-process runs"
        )
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    engine = VLLMEngine(
        policy,
        tokenizer,
        max_model_len=cfg.data.max_prompt_length + cfg.generation.max_new_tokens,
        settings=cfg.generation.vllm,
        seed=cfg.train.seed,
    )
    log.info("%s: vLLM engine ready in %.1f s", cfg.output, engine.startup_seconds)
    try:
        yield engine
    finally:
        engine.close()


def sync_engine(engine: Any | None, policy: Any, trainer: Any) -> dict[str, float]:
    """Bring the engine's weights to the trainer's (once per optimiser update, inside the
    trainer's :meth:`~alignlab.rl.trainer.PolicyTrainer.for_generation`); its seconds, for the
    step's timings (nothing with the HF engine)."""
    if engine is None:
        return {}
    return {"sync": engine.follow(policy, trainer.updates)}
