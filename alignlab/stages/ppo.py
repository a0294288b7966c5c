"""`PPO`: RLHF with proximal policy optimisation, against a reward model or a reward function.

One PPO step (InstructGPT; Ziegler et al. 2019):

1. rollout — sample a response to each of ``train.batch_size`` prompts (KV cache, left padding,
   stop at EOS; the old log-probs from the sampling logits), then one inference pass each for
   the reference log-probs and the critic's values (``alignlab.rl.rollout``);
2. scores — the reward model (or function) on prompt + response, normalised, clipped, minus
   ``missing_eos_penalty`` for responses that never ended (``ScoreShaper``);
3. rewards — ``-β·KL_t`` on every token, the score added on the last one; GAE(γ, λ) advantages and
   returns; advantages whitened (``alignlab.rl.advantages``);
4. update — ``ppo.epochs`` passes over shuffled minibatches: clipped surrogate + ``vf_coef`` ×
   clipped value loss − ``entropy_coef`` × entropy (+ ``ptx.coef`` × pretraining LM loss), AdamW
   (``alignlab.rl.trainer``);
5. KL control — β fixed, or adapted toward ``kl.target``.

Every step is logged (console, wandb/tensorboard, the artifact's ``history``); a non-finite loss
or a KL beyond ``max_kl`` stops the run with :class:`TrainingError`; checkpoints every
``checkpoint_every`` steps make a stopped run resumable (``alignlab.rl.checkpoint``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from alignlab.config import check_range, load_config, run_control
from alignlab.distributed import runtime as dist
from alignlab.distributed.config import DistributedGroup
from alignlab.errors import ConfigError, TrainingError
from alignlab.models.adapters import AdapterGroup, AdapterMethod
from alignlab.models.engines import EngineKind, VLLMSettings
from alignlab.registry import Artifact, Registry
from alignlab.rewards import CombineRule, SafetyFirstSettings
from alignlab.rl.kl import KLControl, KLEstimator, make_kl_controller
from alignlab.rl.normalization import RewardNormalization, ScoreShaper, score_moments_from_metrics
from alignlab.stages.contract import Input, Planned
from alignlab.stages.groups import DataSource, EvalGroup, TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import (
    StageRun,
    load_data,
    policy_output_kind,
    resolve_inputs,
)
from alignlab.stages.rl_loop import (
    StepCallback,
    encode_prompts_or_fail,
    finish_policy,
    load_policy,
    publish_rl_stage,
    resolve_rewards,
    reward_log,
    rl_scorer,
    rollout_engine,
    run_rl_loop,
    sync_engine,
    trainer_options,
    with_rl_accelerator,
)

log = logging.getLogger("alignlab")


@dataclass
class PPOSettings:
    """The PPO update.

    Attributes:
        epochs: PPO epochs over each rollout batch. Source — InstructGPT and DeepSpeed-Chat
            (``ppo_epochs=1``); TRL's last PPO used 4.
        mini_batch_size: rollout rows per optimiser step (split further by ``train.grad_accum``).
            Source — alignlab, sized for CPU runs; TRL's last PPO used 1 minibatch per batch.
        clip: ε of the clipped surrogate. Source — PPO paper, InstructGPT, DeepSpeed-Chat, TRL (0.2).
        value_clip: ε of the clipped value loss, in value units (None = unclipped). Source —
            DeepSpeed-Chat and TRL (``cliprange_value=0.2``).
        vf_coef: weight of the value loss in the total loss. Source — TRL (0.1).
        entropy_coef: weight of an entropy bonus. Source — InstructGPT, DeepSpeed-Chat and TRL use
            none (0.0).
        gamma: discount γ. Source — InstructGPT, DeepSpeed-Chat, TRL (1.0).
        lam: GAE λ. Source — DeepSpeed-Chat and TRL (0.95).
        whiten_advantages: standardise advantages over the rollout batch. Source — TRL (on).
        advantage_estimator: a name in ``alignlab.rl.ADVANTAGE_ESTIMATORS`` (gae, reinforce, ...).
        critic_lr: the critic's learning rate (None = ``train.lr``). DeepSpeed-Chat used 5e-6 for
            the critic beside 9.65e-6 for the actor.
    """

    epochs: int = 1
    mini_batch_size: int = 8
    clip: float = 0.2
    value_clip: float | None = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    advantage_estimator: str = "gae"
    critic_lr: float | None = None


@dataclass
class GenerationSettings:
    """How responses are sampled during PPO.

    Attributes:
        max_new_tokens: response budget; a response that hits it without EOS "never ended"
            (see ``missing_eos_penalty``). Source — alignlab (a clean testbed answer is ~10 tokens;
            TRL's last PPO used 53).
        temperature: sampling temperature; log-probabilities are taken at the same temperature so
            that the ratio is that of the sampling policy. Source — InstructGPT samples at 1.0
            (on-policy); TRL's last PPO used 0.7.
        top_p: nucleus sampling (1.0 = off). Truncation is not reflected in the log-probabilities,
            as in TRL; keep it at 1.0 for exact on-policy ratios.
        top_k: keep the k most likely tokens (0 = the full distribution, as in TRL).
        batch_size: prompts per ``generate`` call and per inference forward pass.
        engine: hf | vllm | auto — what samples the responses: transformers' ``generate`` on the
            policy, or a colocated vLLM whose weights are synced from the policy before every
            rollout (``auto``: vLLM where it imports). With vLLM the trainer recomputes the old
            log-probs, and the gap to vLLM's is logged (``engine/*``). See docs/performance.md.
        vllm: the vLLM engine's memory and sleep settings.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64
    engine: EngineKind = EngineKind.HF
    vllm: VLLMSettings = field(default_factory=VLLMSettings)

    def __post_init__(self) -> None:
        check_range(self, "max_new_tokens", low=1)
        check_range(self, "temperature", above=0)
        check_range(self, "top_p", above=0, high=1)
        check_range(self, "top_k", low=0)
        check_range(self, "batch_size", low=1)


@dataclass
class PPOData(DataSource):
    """Prompts (``source``: ``testbed:prompts``, a prompt file, a dataset artifact or a hub name).

    Attributes:
        max_prompt_length: prompts longer than this (in tokens, chat template included) are dropped.
    """

    max_prompt_length: int = 128


@dataclass
class KLSettings:
    """The KL penalty toward the reference policy.

    Attributes:
        control: fixed | adaptive. Source — InstructGPT and TRL's last PPO fixed; Ziegler et al.
            and TRL's legacy PPO adaptive.
        coef: β (the initial β when adaptive). Source — TRL's last PPO 0.05; InstructGPT 0.02;
            DeepSpeed-Chat 0.1.
        target: adaptive only — the per-response KL to track. Source — Ziegler et al., TRL legacy (6).
        horizon: adaptive only — in samples. Source — Ziegler et al., TRL legacy (10000).
        estimator: per-token KL estimator k1 | k2 | k3. Source — InstructGPT, TRL (k1).
    """

    control: KLControl = KLControl.FIXED
    coef: float = 0.05
    target: float = 6.0
    horizon: float = 10000.0
    estimator: KLEstimator = KLEstimator.K1


@dataclass
class PTXSettings:
    """The PPO-ptx term (InstructGPT): a pretraining LM loss mixed into the policy loss.

    Attributes:
        source: text data (``testbed:pretrain``, a file with a ``text`` column, ...); None = off.
        coef: weight of the per-token LM loss. InstructGPT's γ and DeepSpeed-Chat's ``unsup_coef``
            are 27.8, but DeepSpeed-Chat takes a separate optimiser step for it; here it is added
            to the PPO loss, where 1.0 weighs a token of pretraining like a token of PPO.
        batch_size: texts per minibatch. max_length: tokens per text. limit: texts to load.
    """

    source: str | None = None
    coef: float = 1.0
    batch_size: int = 8
    max_length: int = 128
    limit: int | None = 5000


class CriticInit(StrEnum):
    """Where the critic starts from when no ``critic`` input is given."""

    REWARD = "reward"  # the reward model's weights (InstructGPT, DeepSpeed-Chat)
    POLICY = "policy"  # the policy's transformer with a new scalar head


@dataclass
class PPOEvalGroup(EvalGroup):
    """Gold evaluation during and after PPO (testbed only).

    Attributes:
        gold: score the policy with the testbed's gold scorer (during training and at the end).
        gold_n: held-out prompts scored at the end (``gold_score``, ``gold_accuracy``).
        max_new_tokens: answer budget of every gold evaluation (greedy decoding).
        gold_every: also score ``gold_every_n`` prompts every N steps and at the last one, into
            the step's history entry (0 = only at the end).
        gold_every_n: prompts per in-training gold evaluation.
    """

    gold_every: int = 10
    gold_every_n: int = 32


@dataclass
class PPOTrainGroup(TrainGroup):
    """Optimisation, as PPO reads it (``TrainGroup`` with PPO's meanings and defaults).

    Attributes:
        batch_size: prompts per rollout (one PPO step). Source — alignlab, sized for CPU.
        epochs: passes over the prompts. max_steps: PPO steps; overrides epochs when > 0.
        lr: the policy's peak learning rate (AdamW). Source — InstructGPT and DeepSpeed-Chat
            9.65e-6, TRL legacy 1.41e-5.
        lr_scheduler: transformers scheduler name over all optimiser steps. Source — TRL (linear).
        warmup_ratio: share of optimiser steps with linear warmup. Source — TRL (0).
        grad_accum: micro-batches per PPO minibatch (``ppo.mini_batch_size`` rows in all).
        weight_decay: AdamW weight decay. max_grad_norm: gradient clipping, policy and critic each.
        seed: seed of initialisation, sampling and data order.
        logging_steps: send every Nth step to wandb/tensorboard (the history keeps every step).
    """

    lr: float = 1e-5
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    logging_steps: int = run_control(default=1)


@dataclass
class PPOConfig:
    """Settings of a PPO run.

    Attributes:
        output: artifact name to publish.
        data: prompts.
        train: optimisation (see :class:`PPOTrainGroup`).
        ppo: the PPO update (clip, value clip, γ, λ, epochs, minibatches, ...).
        generation: sampling of responses.
        kl: the KL penalty and its control.
        reward_normalization: none | running | reward_model (the reward model's stored
            ``score_mean``/``score_std``). Source — none in InstructGPT/DeepSpeed-Chat; TRL legacy
            offered running scaling.
        reward_clip: clip the (normalised) score to ±this; None = off. Source — DeepSpeed-Chat (5).
        missing_eos_penalty: subtracted from the score of responses without EOS; None = off.
            Source — TRL (off by default).
        critic_init: reward | policy; None = reward with a reward model, policy with a function.
            With several rewards, ``reward`` means the first one.
        reward_weights: one weight per reward when ``reward`` lists several (None = all 1).
        reward_rule: sum | safety_first — how several rewards combine: their weighted sum, or
            LLaMA-2's safety-first rule (docs/stages/ppo.md "Several reward models").
        safety: the safety-first rule's settings: which reward is safety, its threshold.
        adapter: full | lora (the reference is then the base with the adapter off) | qlora.
        ptx: the PPO-ptx pretraining term.
        max_kl: stop with TrainingError when the mean per-response KL to the reference exceeds
            this; None = no bound.
        checkpoint_every: save a resumable checkpoint every N steps (0 = never; not yet in
            multi-process runs).
        checkpoint_dir: where; None = ``<registry root>/.checkpoints/<run key>``.
        resume: continue from the latest checkpoint of the same run when there is one; false
            starts over and deletes it.
        eval: gold evaluation during and after training (testbed only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO for policy and critic (one engine); the reference and the reward
            model are replicated in every process; under ZeRO-3 a rollout gathers the weights once.
            ``train.batch_size`` is the rollout batch of all processes together (docs/scaling.md).
    """

    output: str = "ppo"
    data: PPOData = field(default_factory=PPOData)
    train: PPOTrainGroup = field(default_factory=PPOTrainGroup)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    kl: KLSettings = field(default_factory=KLSettings)
    reward_normalization: RewardNormalization = RewardNormalization.NONE
    reward_clip: float | None = 5.0
    missing_eos_penalty: float | None = None
    critic_init: CriticInit | None = None
    reward_weights: list[float] | None = None
    reward_rule: CombineRule = CombineRule.SUM
    safety: SafetyFirstSettings = field(default_factory=SafetyFirstSettings)
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    ptx: PTXSettings = field(default_factory=PTXSettings)
    max_kl: float | None = None
    checkpoint_every: int = run_control(default=50)
    checkpoint_dir: str | None = run_control(default=None)
    resume: bool = run_control(default=True)
    eval: PPOEvalGroup = field(default_factory=PPOEvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)

    def __post_init__(self) -> None:
        if self.adapter.method == AdapterMethod.PROMPT_TUNING:
            raise ConfigError("adapter.method=prompt_tuning is not supported by PPO; use lora or full")


class PPO:
    """Proximal policy optimisation of a policy against a reward model or a reward function.

    Args:
        config: a PPOConfig or a mapping.
        callbacks: called as ``fn(step, entry)`` after each step (its checkpoint written); raise to stop.

    Example:
        >>> from alignlab import PPO, Registry
        >>> ppo = PPO({"train": {"max_steps": 200, "lr": 1e-5}, "kl": {"coef": 0.05}})
        >>> art = ppo.run(Registry(), model="sft", reward="reward_model")  # doctest: +SKIP
        >>> art.metrics["kl_to_reference"], art.metrics["gold_score"]  # doctest: +SKIP
    """

    name = "ppo"
    config_cls = PPOConfig
    inputs = (
        Input("model", doc="the policy to start from (an SFT artifact)"),
        Input(
            "reward",
            kinds=("reward_model",),
            function=True,
            several=True,
            doc="scores each sampled response; several combine by reward_rule",
        ),
        Input(
            "critic",
            kinds=("reward_model", "model"),
            required=False,
            doc="a checkpoint to start the critic from",
        ),
        Input("reference", required=False, doc="the frozen reference policy (default: model)"),
    )

    def __init__(
        self, config: PPOConfig | dict | None = None, *, callbacks: Sequence[StepCallback] = ()
    ) -> None:
        self.config = load_config(PPOConfig, config)
        dist.check_distributed(self.config.distributed, self.config.adapter)
        self.callbacks = list(callbacks)

    def run(
        self,
        registry: Registry | None = None,
        *,
        model: str | None = None,
        reward: Any = None,
        critic: str | None = None,
        reference: str | None = None,
        force: bool = False,
    ) -> Artifact:
        """Train and publish the policy.

        Args:
            registry: where inputs resolve and the output is published.
            model: the policy to start from (an SFT artifact).
            reward: a reward-model reference, ``"pkg.module:function"`` or a callable
                ``(prompts, responses) -> scores``.
            critic: a checkpoint to start the critic from (else ``critic_init``).
            reference: the frozen reference policy (default: ``model``).
            force: train even when an artifact with the same fingerprint exists.
        """
        registry = registry or Registry()
        plan = self._prepare(registry, model=model, reward=reward, critic=critic, reference=reference)
        return publish_rl_stage(
            self,
            registry,
            inputs=plan.inputs,
            data=plan.data,
            force=force,
            train=lambda run, key, ckpt_root: self._train(run, self.config, key, ckpt_root),
        )

    def output_kind(self) -> str:
        return policy_output_kind(self.config.adapter)

    def check(
        self,
        registry: Registry,
        *,
        model: Any = None,
        reward: Any = None,
        critic: Any = None,
        reference: Any = None,
    ) -> None:
        self._prepare(registry, model=model, reward=reward, critic=critic, reference=reference)

    def _prepare(self, registry: Registry, **refs: Any) -> _Plan:
        """Everything before training: QLoRA can run here, the inputs and their kinds, the reward,
        the prompts (and PPO-ptx text), and the settings that depend on which inputs there are."""
        from alignlab.data import load_records
        from alignlab.models.adapters import quantization_kwargs

        cfg = self.config
        quantization_kwargs(cfg.adapter)
        rewards = resolve_rewards(registry, refs.pop("reward"), cfg)  # reward, reward_2, ...
        inputs: dict[str, Any] = {**resolve_inputs(registry, self, refs), **rewards}
        check_inputs(cfg, inputs)
        data: dict[str, Any] = {"prompts": load_data(cfg.data, "prompt", registry)}
        if cfg.ptx.source:
            data["ptx"] = load_records(cfg.ptx.source, kind="text", registry=registry, limit=cfg.ptx.limit)
        return _Plan(inputs, data)

    def _train(self, run: StageRun, cfg: PPOConfig, key: str, ckpt_root: Path) -> None:
        with_rl_accelerator(
            cfg,
            cfg.ppo.mini_batch_size // max(1, cfg.train.grad_accum),
            lambda accelerator: self._train_with(run, cfg, key, ckpt_root, accelerator),
        )

    def _train_with(self, run: StageRun, cfg: PPOConfig, key: str, ckpt_root: Path, accelerator: Any) -> None:
        from accelerate.utils import set_seed

        from alignlab.eval.ppo_report import plot_ppo_report
        from alignlab.rl.trainer import PPOTrainer, PTXBatches

        set_seed(cfg.train.seed)
        models = build_models(run, cfg, accelerator)
        tok = models.tokenizer
        queries, prompts, columns, dropped = encode_prompts_or_fail(tok, run, cfg)
        ptx = None
        if "ptx" in run.data:
            ptx = PTXBatches.from_texts(
                [r["text"] for r in run.data["ptx"].records],
                tok,
                batch_size=cfg.ptx.batch_size,
                max_length=cfg.ptx.max_length,
                seed=cfg.train.seed,
            )
        sizes = batch_sizes(cfg, len(queries), accelerator.num_processes)
        log.info("ppo: %s", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items()))
        trainer = PPOTrainer(
            models.policy,
            models.critic,
            cfg.ppo,
            total_updates=sizes["optimizer_steps"],  # each process steps on its share of the rollout
            **trainer_options(cfg, accelerator),
            ptx=ptx,
            ptx_coef=cfg.ptx.coef,
        )
        with rollout_engine(cfg, trainer, tok) as engine:
            steps = PPOSteps(cfg, trainer, models, queries, prompts, engine, columns)
            result = run_rl_loop(
                steps,
                run,
                cfg,
                stage="ppo",
                key=key,
                ckpt_root=ckpt_root,
                total=sizes["ppo_steps"],
                tokenizer=tok,
                callbacks=self.callbacks,
                postfix=lambda e: {"score": f"{e['reward_score']:.3f}", "kl": f"{e['kl']:.3f}"},
            )
        history = result.history
        metrics: dict[str, Any] = {
            "steps": sizes["ppo_steps"],
            "episodes": sizes["ppo_steps"] * cfg.train.batch_size,
            "batch_sizes": sizes,
            "prompts_dropped": dropped,
            "critic_from": models.critic_from,
        }
        if history:
            metrics.update(
                reward_score=history[-1]["reward_score"],
                reward_score_first=history[0]["reward_score"],
                kl_to_reference=history[-1]["kl"],
                kl_coef=steps.kl_ctl.value,
            )
        policy = accelerator.unwrap_model(trainer.policy)
        if finish_policy(run, cfg, policy, tok, metrics, result) is not None:
            plot_ppo_report(
                history, run.dir / "report.png", title=f"{cfg.output}: PPO from {run.inputs['model'].ref}"
            )


class PPOSteps:
    """One PPO step (the module docstring's 1–5) and what it carries between steps: the KL
    controller and the score shaper's running moments (an :class:`~alignlab.stages.rl_loop.RLAlgorithm`)."""

    def __init__(
        self,
        cfg: PPOConfig,
        trainer: Any,
        models: PPOModels,
        queries: list,
        prompts: list,
        engine: Any | None = None,
        columns: list[dict[str, Any]] | None = None,
    ) -> None:
        self.cfg, self.trainer, self.models, self.engine = cfg, trainer, models, engine
        self.queries, self.prompts = queries, prompts
        self.columns = columns or [{} for _ in queries]  # each prompt record's other fields
        self.kl_ctl = make_kl_controller(cfg.kl.control, cfg.kl.coef, cfg.kl.target, cfg.kl.horizon)
        accelerator = trainer.accelerator
        self.modules = {
            "policy": accelerator.unwrap_model(trainer.policy),
            "critic": accelerator.unwrap_model(trainer.critic),
        }

    def step(self, step: int, note: str) -> dict[str, Any]:
        from alignlab.eval.ppo_report import step_entry
        from alignlab.rl.rollout import collect_rollout, step_rows

        cfg, trainer, models = self.cfg, self.trainer, self.models
        accelerator = trainer.accelerator
        # 1. rollout: sample this step's prompts' responses, score and shape them
        rows = step_rows(step, cfg.train.batch_size, len(self.queries), cfg.train.seed)
        rows = rows[accelerator.process_index :: accelerator.num_processes]  # this process's share
        with trainer.for_generation() as (gen_policy, gen_critic):
            synced = sync_engine(self.engine, gen_policy, trainer)
            rollout, seconds = collect_rollout(
                gen_policy,
                models.tokenizer,
                [self.queries[i] for i in rows],
                [self.prompts[i] for i in rows],
                critic=gen_critic,
                scorer=models.scorer,
                shaper=models.shaper,
                settings=cfg.generation,
                reference=models.reference,
                columns=[self.columns[i] for i in rows],
                engine=self.engine,
            )
        seconds |= synced
        means = dict(models.scorer.last_means)
        # 2. advantages: per-token KL-penalised rewards, GAE, returns
        beta = self.kl_ctl.value
        experience = trainer.experience(rollout, beta, cfg.kl.estimator)
        kl = float(accelerator.reduce(experience.kl.sum(dim=1).mean(), "mean"))  # same in every process
        # 3. guard: a KL beyond max_kl (or not finite) stops the run
        check_kl(kl, cfg.max_kl, step, note)
        # 4. update: PPO epochs of clipped policy and value steps on minibatches
        training = time.perf_counter()
        stats = trainer.update(rollout, experience, step)
        seconds["training"] = time.perf_counter() - training
        self.kl_ctl.update(kl, n_steps=len(rollout))
        # 5. log: the step's history entry
        entry = step_entry(step, rollout, kl, beta, stats, seconds, sum(seconds.values()))
        return entry | reward_log(means)

    def state_dict(self) -> dict[str, Any]:
        return {"kl": self.kl_ctl.state_dict(), "scores": self.models.shaper.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl"])
        self.models.shaper.load_state_dict(state["scores"])


@dataclass
class PPOModels:
    """What a PPO run trains and scores with."""

    policy: Any
    tokenizer: Any
    reference: Any | None  # None: the policy with its adapter disabled
    critic: Any
    scorer: Any
    shaper: ScoreShaper
    critic_from: str  # the reference the critic was initialised from


def batch_sizes(cfg: PPOConfig, prompts: int, processes: int = 1) -> dict[str, int]:
    """The sizes PPO's batch settings give, as the stage prints them at start (docs/stages/ppo.md).

    ``train.batch_size`` counts prompts per rollout (all processes together), each sampled once;
    ``ppo.mini_batch_size`` counts rollout rows per optimiser step, split into ``train.grad_accum``
    micro-batches; ``ppo.epochs`` passes over each rollout.
    """
    batch, mini = cfg.train.batch_size, cfg.ppo.mini_batch_size
    steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(cfg.train.epochs * prompts / batch)
    per_rollout = cfg.ppo.epochs * math.ceil(batch / processes / mini)
    return {
        "prompts_per_rollout": batch,
        "prompts_per_process": math.ceil(batch / processes),
        "sequences_per_minibatch": mini,
        "sequences_per_micro_batch": max(1, math.ceil(mini / max(1, cfg.train.grad_accum))),
        "optimizer_steps_per_rollout": per_rollout,
        "ppo_steps": steps,
        "optimizer_steps": steps * per_rollout,
    }


def check_kl(kl: float, max_kl: float | None, step: int, note: str) -> None:
    """Stop when the per-response KL to the reference is not finite or beyond ``max_kl``."""
    if not math.isfinite(kl) or (max_kl is not None and kl > max_kl):
        raise TrainingError(
            f"KL to the reference is {kl:.4g} nats per response at step {step}, beyond max_kl="
            f"{max_kl}: the policy drifted too far. Lower train.lr or raise kl.coef; {note}"
        )


@dataclass
class _Plan:
    """What PPO has checked and loaded before it trains."""

    inputs: dict[str, Any]  # "reward" is an alignlab.rewards.RewardInput: a model or a function
    data: dict[str, Any]


def check_inputs(cfg: PPOConfig, inputs: dict[str, Any]) -> None:
    """The settings that depend on which inputs there are, checked before any work."""
    critic_source_of(cfg, inputs)
    if cfg.reward_normalization == RewardNormalization.REWARD_MODEL and "reward_2" in inputs:
        raise ConfigError(
            "reward_normalization=reward_model uses one reward model's score moments; with several "
            "rewards use 'running' (the combined score's running moments) or 'none'"
        )
    if cfg.reward_normalization == RewardNormalization.REWARD_MODEL and not isinstance(
        inputs["reward"].target, (Artifact, Planned)
    ):
        raise ConfigError(
            "reward_normalization=reward_model needs a reward-model artifact (its metrics hold "
            "score_mean/score_std); use 'running' with a reward function or an external model"
        )


def critic_source_of(cfg: PPOConfig, inputs: dict[str, Any]) -> Any:
    """Where the critic starts: the ``critic`` input, else the reward model or the policy (``critic_init``)."""
    reward_model = inputs["reward"].target
    init = cfg.critic_init or (CriticInit.REWARD if reward_model is not None else CriticInit.POLICY)
    if "critic" in inputs:
        return inputs["critic"]
    if init is CriticInit.REWARD:
        if reward_model is None:
            raise ConfigError(
                "critic_init=reward needs a reward model; with a reward function use "
                "critic_init: policy or pass critic=<checkpoint>"
            )
        return reward_model
    if getattr(inputs["model"], "kind", None) == "adapter":
        raise ConfigError(
            "critic_init=policy needs a full model, but the policy is an adapter artifact; pass "
            "critic=<checkpoint> or publish the SFT model merged (adapter.merge: true)"
        )
    return inputs["model"]


def build_models(run: StageRun, cfg: PPOConfig, accelerator: Any) -> PPOModels:
    """Load the policy, its reference, the critic and the scorer (the ``reward`` input: a reward
    model, or a function).

    The frozen models are placed (and autocast, under mixed precision) by ``accelerator`` like the
    trained ones, so the reference computes its log-probs exactly as the policy does.
    """
    from peft import get_peft_model

    from alignlab.models.adapters import peft_config
    from alignlab.rewards import load_reward_model

    policy, tok, reference = load_policy(run, cfg, accelerator)
    reward_model = run.inputs["reward"].target
    scorer = rl_scorer(run, cfg, accelerator)

    critic_source = critic_source_of(cfg, run.inputs)
    critic, critic_tok = load_reward_model(critic_source, run.registry)
    if critic_tok.get_vocab() != tok.get_vocab():
        raise ConfigError(
            f"the critic ({getattr(critic_source, 'ref', critic_source)}) uses another "
            "tokenizer than the policy; the critic reads the policy's tokens: set "
            "critic_init: policy or pass critic="
        )
    if cfg.adapter.method != AdapterMethod.FULL:
        critic = get_peft_model(critic, peft_config(cfg.adapter, task_type="SEQ_CLS"))

    moments = None
    if cfg.reward_normalization == RewardNormalization.REWARD_MODEL:
        moments = score_moments_from_metrics(reward_model.metrics)
    shaper = ScoreShaper(cfg.reward_normalization, cfg.reward_clip, cfg.missing_eos_penalty, moments)
    return PPOModels(
        policy=policy,
        tokenizer=tok,
        reference=reference,
        critic=critic,
        scorer=scorer,
        shaper=shaper,
        critic_from=getattr(critic_source, "ref", None) or critic_source.id,
    )
