"""`GRPO`: critic-free RL — GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++, GSPO — on PPO's loop.

One step (Shao et al. 2024; the variants change one piece each):

1. rollout — ``train.batch_size`` prompts, each sampled ``grpo.num_generations`` times (KV
   cache, stop at EOS, the old log-probs from the sampling logits); the reference's log-probs
   only when ``grpo.kl_coef`` > 0 (``alignlab.rl.rollout``);
2. scores — every reward (functions and reward models, ``reward_weights``), summed; DAPO's soft
   overlong penalty when ``grpo.overlong=penalty``;
3. dynamic sampling (DAPO, ``grpo.dynamic_sampling``) — groups whose rewards are all equal carry
   no signal: they are dropped and more prompts sampled, up to ``grpo.max_refills`` times;
4. advantages — one per response from its group (``grpo.advantage``: grpo, dr_grpo, rloo,
   reinforce_pp, reinforce_pp_baseline; ``alignlab.rl.group``);
5. update — ``grpo.epochs`` passes over minibatches: the clipped surrogate with
   ``clip_low``/``clip_high``, token or sequence (GSPO) ratios, ``loss_aggregation``
   token_mean / sequence_mean / constant, + β·k3 KL − entropy bonus (``alignlab.rl.trainer.GroupTrainer``).

Steps, logging, gold evaluation, guards, checkpoints and exact resume are PPO's
(:mod:`alignlab.stages.rl_loop`). Defaults follow TRL's ``GRPOTrainer`` (8 generations, β = 0,
``loss_type="dapo"`` = token_mean, ε = 0.2) unless said otherwise in docs/stages/grpo.md.
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

import torch

from alignlab.config import load_config, run_control
from alignlab.distributed import runtime as dist
from alignlab.distributed.config import DistributedGroup
from alignlab.errors import ConfigError
from alignlab.models.adapters import AdapterGroup, AdapterMethod
from alignlab.registry import Artifact, Registry
from alignlab.rewards import CombineRule, SafetyFirstSettings
from alignlab.rl.group import GroupAdvantage, equal_groups, get_group_advantage, overlong_penalty
from alignlab.rl.kl import KLEstimator
from alignlab.rl.losses import ImportanceSampling, LossAggregation
from alignlab.stages.contract import Input
from alignlab.stages.groups import DataSource, TrackingGroup
from alignlab.stages.lifecycle import (
    StageRun,
    load_data,
    policy_output_kind,
    resolve_inputs,
)
from alignlab.stages.ppo import GenerationSettings, PPOEvalGroup, PPOTrainGroup, check_kl
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


class Overlong(StrEnum):
    """What happens to responses that hit ``generation.max_new_tokens`` without ending (DAPO)."""

    NONE = "none"  # scored like any other
    MASK = "mask"  # their tokens are left out of the loss (overlong filtering)
    PENALTY = "penalty"  # soft overlong punishment over the last ``overlong_buffer`` tokens


@dataclass
class GRPOSettings:
    """The critic-free update.

    Attributes:
        num_generations: responses sampled per prompt (the group). Source — TRL (8); DeepSeekMath 64.
        advantage: grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline
            (``alignlab.rl.group``). Source — GRPO (Shao et al. 2024), TRL's default.
        epochs: passes over each step's responses (TRL's ``num_iterations``, 1).
        mini_batch_size: responses per optimiser step; 0 = all of the step's in one (as TRL by
            default). ``train.grad_accum`` splits it into micro-batches.
        clip_low: ε of the ratio's lower clip. Source — TRL, DAPO (0.2).
        clip_high: ε of the upper clip; above ``clip_low`` is DAPO's clip-higher (0.28 there).
            Source — TRL (``epsilon_high`` = ``epsilon`` = 0.2). For GSPO use about 3e-4 / 4e-4.
        importance_sampling: token | sequence (GSPO, Zheng et al. 2025). Source — TRL (token).
        loss_aggregation: token_mean (DAPO) | sequence_mean (GRPO) | constant (Dr. GRPO).
            Source — TRL's default ``loss_type="dapo"``.
        kl_coef: β of the k3 KL to the reference in the loss; 0 loads no reference model.
            Source — TRL (0.0); DeepSeekMath 0.04.
        entropy_coef: weight of an entropy bonus (0 = none).
        dynamic_sampling: drop the groups whose rewards are all equal and sample more prompts
            (DAPO). Source — DAPO (on); TRL has none (off).
        max_refills: dynamic sampling's extra rounds of ``train.batch_size`` prompts per step.
        overlong: none | mask | penalty (DAPO's overlong filtering / soft punishment).
        overlong_buffer: the penalty's buffer in tokens (DAPO: 4096 of 20480 tokens, here a fifth
            of ``generation.max_new_tokens`` when 0).
        overlong_coef: weight of the penalty (DAPO 1.0).
    """

    num_generations: int = 8
    advantage: GroupAdvantage = GroupAdvantage.GRPO
    epochs: int = 1
    mini_batch_size: int = 0
    clip_low: float = 0.2
    clip_high: float = 0.2
    importance_sampling: ImportanceSampling = ImportanceSampling.TOKEN
    loss_aggregation: LossAggregation = LossAggregation.TOKEN_MEAN
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False
    max_refills: int = 2
    overlong: Overlong = Overlong.NONE
    overlong_buffer: int = 0
    overlong_coef: float = 1.0


@dataclass
class GRPOData(DataSource):
    """Prompts (``source``: ``testbed:prompts``, a prompt file, a dataset artifact or a hub name).
    A prompt record's other fields (``answer``, ...) reach the reward functions that name them.

    Attributes:
        max_prompt_length: prompts longer than this (in tokens, chat template included) are dropped.
    """

    max_prompt_length: int = 128


@dataclass
class GRPOTrainGroup(PPOTrainGroup):
    """Optimisation, as the critic-free stage reads it.

    Attributes:
        batch_size: prompts per step (all processes together); each is sampled
            ``grpo.num_generations`` times. Source — alignlab, sized for CPU.
        lr: peak learning rate (AdamW). Source — TRL's GRPOTrainer (1e-6, for billion-parameter
            models); the testbed recipe uses more for its 2.8M-parameter model.
    """

    batch_size: int = 16
    lr: float = 1e-6


@dataclass
class GRPOConfig:
    """Settings of a critic-free RL run.

    Attributes:
        output: artifact name to publish.
        data: prompts.
        train: optimisation (see :class:`GRPOTrainGroup`).
        grpo: the group sampling, advantage and loss (see :class:`GRPOSettings`).
        generation: sampling of responses (PPO's :class:`~alignlab.stages.ppo.GenerationSettings`).
        reward_weights: one weight per reward when ``reward`` lists several (None = all 1).
        reward_rule: sum | safety_first — how several rewards combine (see docs/stages/ppo.md).
        safety: LLaMA-2's safety-first rule: which reward is safety, its threshold.
        adapter: full | lora (the reference, when β > 0, is then the base with the adapter off) | qlora.
        max_kl: stop with TrainingError when the mean per-response KL to the reference exceeds
            this (needs a reference: ``grpo.kl_coef`` > 0); None = no bound.
        checkpoint_every: save a resumable checkpoint every N steps (0 = never; not yet in
            multi-process runs).
        checkpoint_dir: where; None = ``<registry root>/.checkpoints/<run key>``.
        resume: continue from the latest checkpoint of the same run when there is one.
        eval: gold evaluation during and after training (testbed only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO for the policy; every process samples its share of the
            prompts (whole groups), so ``train.batch_size`` must divide by the processes.
    """

    output: str = "grpo"
    data: GRPOData = field(default_factory=GRPOData)
    train: GRPOTrainGroup = field(default_factory=GRPOTrainGroup)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    reward_weights: list[float] | None = None
    reward_rule: CombineRule = CombineRule.SUM
    safety: SafetyFirstSettings = field(default_factory=SafetyFirstSettings)
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    max_kl: float | None = None
    checkpoint_every: int = run_control(default=50)
    checkpoint_dir: str | None = run_control(default=None)
    resume: bool = run_control(default=True)
    eval: PPOEvalGroup = field(default_factory=PPOEvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)

    def __post_init__(self) -> None:
        g = self.grpo
        if self.adapter.method == AdapterMethod.PROMPT_TUNING:
            raise ConfigError("adapter.method=prompt_tuning is not supported by GRPO; use lora or full")
        if g.num_generations < 2:
            raise ConfigError(
                f"grpo.num_generations={g.num_generations}: a group needs at least 2 responses per "
                "prompt (its mean is the baseline); TRL's default is 8"
            )
        if not 0 < g.clip_low < 1 or g.clip_high <= 0:
            raise ConfigError(
                f"grpo.clip_low must be in (0, 1) and grpo.clip_high > 0, got {g.clip_low}, {g.clip_high}"
            )
        if self.train.batch_size < 1:
            raise ConfigError(f"train.batch_size={self.train.batch_size}: at least one prompt per step")
        if g.kl_coef < 0 or g.max_refills < 0 or g.mini_batch_size < 0:
            raise ConfigError("grpo.kl_coef, grpo.max_refills and grpo.mini_batch_size must be >= 0")
        if g.overlong == Overlong.PENALTY and self.buffer() >= self.generation.max_new_tokens:
            raise ConfigError(
                f"grpo.overlong_buffer={g.overlong_buffer} must be below generation.max_new_tokens="
                f"{self.generation.max_new_tokens}"
            )
        if self.max_kl is not None and g.kl_coef == 0:
            raise ConfigError("max_kl needs a reference to measure KL against: set grpo.kl_coef > 0")
        get_group_advantage(g.advantage)

    def buffer(self) -> int:
        """The overlong penalty's buffer in tokens."""
        return self.grpo.overlong_buffer or max(1, self.generation.max_new_tokens // 5)


class GRPO:
    """Critic-free policy optimisation from group-relative advantages, against reward functions
    (verifiable rewards) and/or reward models.

    Args:
        config: a GRPOConfig or a mapping.
        callbacks: called as ``fn(step, entry)`` after each step (its checkpoint written); raise to stop.

    Example:
        >>> from alignlab import GRPO, Registry
        >>> grpo = GRPO({"grpo": {"num_generations": 8, "advantage": "dr_grpo",
        ...              "loss_aggregation": "constant"}, "train": {"max_steps": 40, "lr": 1e-4}})
        >>> art = grpo.run(Registry(), model="sft", reward="alignlab.testbed:correctness")  # doctest: +SKIP
        >>> art.metrics["gold_accuracy"]  # doctest: +SKIP
    """

    name = "grpo"
    config_cls = GRPOConfig
    inputs = (
        Input("model", doc="the policy to start from (an SFT artifact)"),
        Input(
            "reward",
            kinds=("reward_model",),
            function=True,
            several=True,
            doc="scores each sampled response; a list is summed with reward_weights",
        ),
        Input(
            "reference", required=False, doc="the frozen reference policy for the KL term (default: model)"
        ),
    )

    def __init__(
        self, config: GRPOConfig | dict | None = None, *, callbacks: Sequence[StepCallback] = ()
    ) -> None:
        self.config = load_config(GRPOConfig, config)
        dist.check_distributed(self.config.distributed, self.config.adapter)
        self.callbacks = list(callbacks)

    def run(
        self,
        registry: Registry | None = None,
        *,
        model: str | None = None,
        reward: Any = None,
        reference: str | None = None,
        force: bool = False,
    ) -> Artifact:
        """Train and publish the policy.

        Args:
            registry: where inputs resolve and the output is published.
            model: the policy to start from.
            reward: a reward-model reference, ``"pkg.module:function"``, a callable
                ``(prompts, responses) -> scores``, or a list of them (summed with ``reward_weights``).
            reference: the frozen reference policy of the KL term (default: ``model``).
            force: train even when an artifact with the same fingerprint exists.
        """
        registry = registry or Registry()
        inputs, data = self._prepare(registry, model=model, reward=reward, reference=reference)
        return publish_rl_stage(
            self,
            registry,
            inputs=inputs,
            data=data,
            force=force,
            train=lambda run, key, ckpt_root: self._train(run, self.config, key, ckpt_root),
        )

    def output_kind(self) -> str:
        return policy_output_kind(self.config.adapter)

    def check(
        self, registry: Registry, *, model: Any = None, reward: Any = None, reference: Any = None
    ) -> None:
        self._prepare(registry, model=model, reward=reward, reference=reference)

    def _prepare(self, registry: Registry, **refs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Inputs (each reward its own role: ``reward``, ``reward_2``, ...) and the prompts."""
        from alignlab.models.adapters import quantization_kwargs

        cfg = self.config
        quantization_kwargs(cfg.adapter)
        rewards = resolve_rewards(registry, refs.pop("reward"), cfg)
        inputs: dict[str, Any] = {**resolve_inputs(registry, self, refs), **rewards}
        return inputs, {"prompts": load_data(cfg.data, "prompt", registry)}

    def _train(self, run: StageRun, cfg: GRPOConfig, key: str, ckpt_root: Path) -> None:
        mini = cfg.grpo.mini_batch_size or cfg.train.batch_size * cfg.grpo.num_generations
        with_rl_accelerator(
            cfg,
            mini // max(1, cfg.train.grad_accum),
            lambda accelerator: self._train_with(run, cfg, key, ckpt_root, accelerator),
        )

    def _train_with(
        self, run: StageRun, cfg: GRPOConfig, key: str, ckpt_root: Path, accelerator: Any
    ) -> None:
        from accelerate.utils import set_seed

        from alignlab.eval.ppo_report import plot_ppo_report
        from alignlab.rl.trainer import GroupTrainer

        set_seed(cfg.train.seed)
        processes = accelerator.num_processes
        if cfg.train.batch_size % processes:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} prompts do not split into whole groups over "
                f"{processes} processes; use a multiple of {processes}"
            )
        policy, tok, reference, scorer = build_models(run, cfg, accelerator)
        queries, prompts, columns, dropped = encode_prompts_or_fail(tok, run, cfg)
        sizes = batch_sizes(cfg, len(queries), processes)
        log.info("grpo: %s", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items()))
        trainer = GroupTrainer(
            policy,
            cfg.grpo,
            max_tokens=cfg.generation.max_new_tokens,
            total_updates=sizes["optimizer_steps"],
            **trainer_options(cfg, accelerator),
        )
        with rollout_engine(cfg, trainer, tok) as engine:
            result = run_rl_loop(
                GroupSteps(cfg, trainer, tok, reference, scorer, queries, prompts, columns, engine),
                run,
                cfg,
                stage="grpo",
                key=key,
                ckpt_root=ckpt_root,
                total=sizes["steps"],
                tokenizer=tok,
                callbacks=self.callbacks,
                postfix=lambda e: {
                    "reward": f"{e['reward_score']:.3f}",
                    "std": f"{e['group_reward_std']:.3f}",
                },
            )
        history = result.history
        metrics: dict[str, Any] = {
            "steps": sizes["steps"],
            "episodes": sum(int(e.get("sequences", 0)) for e in history),
            "batch_sizes": sizes,
            "prompts_dropped": dropped,
            "advantage": str(cfg.grpo.advantage),
        }
        if history:
            metrics.update(
                reward_score=history[-1]["reward_score"], reward_score_first=history[0]["reward_score"]
            )
            if history[-1].get("kl") is not None:
                metrics["kl_to_reference"] = history[-1]["kl"]
        unwrapped = accelerator.unwrap_model(trainer.policy)
        if finish_policy(run, cfg, unwrapped, tok, metrics, result) is not None:
            plot_ppo_report(
                history, run.dir / "report.png", title=f"{cfg.output}: GRPO from {run.inputs['model'].ref}"
            )


def batch_sizes(cfg: GRPOConfig, prompts: int, processes: int = 1) -> dict[str, int]:
    """The sizes the batch settings give, as the stage prints them at start (docs/stages/grpo.md)."""
    batch, g = cfg.train.batch_size, cfg.grpo.num_generations
    steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(cfg.train.epochs * prompts / batch)
    per_process = batch // processes * g
    mini = cfg.grpo.mini_batch_size or per_process
    per_step = cfg.grpo.epochs * math.ceil(per_process / mini)
    return {
        "prompts_per_step": batch,
        "generations_per_prompt": g,
        "sequences_per_step": batch * g,
        "sequences_per_process": per_process,
        "sequences_per_minibatch": mini,
        "optimizer_steps_per_step": per_step,
        "steps": steps,
        "optimizer_steps": steps * per_step,
    }


def build_models(run: StageRun, cfg: GRPOConfig, accelerator: Any) -> tuple[Any, Any, Any, Any]:
    """The policy (with its LoRA adapter), its tokenizer, the reference (None: none needed, or the
    base with the adapter off) and one scorer for all the rewards."""
    policy, tok, reference = load_policy(run, cfg, accelerator, needs_reference=cfg.grpo.kl_coef > 0)
    return policy, tok, reference, rl_scorer(run, cfg, accelerator)


class GroupSteps:
    """One critic-free step (the module docstring's 1–5) and the prompt cursor it carries
    (an :class:`~alignlab.stages.rl_loop.RLAlgorithm`)."""

    def __init__(
        self,
        cfg: GRPOConfig,
        trainer: Any,
        tokenizer: Any,
        reference: Any,
        scorer: Any,
        queries: list[list[int]],
        prompts: list[Any],
        columns: list[dict[str, Any]],
        engine: Any | None = None,
    ) -> None:
        from alignlab.rl.normalization import RewardNormalization, ScoreShaper

        self.cfg, self.trainer, self.tokenizer, self.engine = cfg, trainer, tokenizer, engine
        self.reference, self.scorer = reference, scorer
        self.queries, self.prompts, self.columns = queries, prompts, columns
        self.shaper = ScoreShaper(
            RewardNormalization.NONE, None, None
        )  # raw scores: the group is the baseline
        self.advantage = get_group_advantage(cfg.grpo.advantage)
        self.cursor = 0  # prompts drawn so far (all processes together)
        self.modules = {"policy": trainer.accelerator.unwrap_model(trainer.policy)}

    def draw(self, k: int) -> list[int]:
        """The next ``k`` prompts (all processes'), from a seeded shuffle per pass over the data."""
        from alignlab.rl.rollout import shuffled_rows

        rows = shuffled_rows(self.cursor, k, len(self.queries), self.cfg.train.seed)
        self.cursor += k
        return rows

    def sample_groups(self, rows: list[int]) -> tuple[Any, dict[str, float]]:
        """This process's share of ``rows``, each sampled ``num_generations`` times and scored;
        the rollout's ``scores`` are what the groups compare (:meth:`shaped`)."""
        from alignlab.rl.rollout import collect_rollout

        accelerator, g = self.trainer.accelerator, self.cfg.grpo.num_generations
        mine = [r for r in rows[accelerator.process_index :: accelerator.num_processes] for _ in range(g)]
        with self.trainer.for_generation() as (gen_policy, _):
            synced = sync_engine(self.engine, gen_policy, self.trainer)
            rollout, seconds = collect_rollout(
                gen_policy,
                self.tokenizer,
                [self.queries[i] for i in mine],
                [self.prompts[i] for i in mine],
                critic=None,
                scorer=self.scorer,
                shaper=self.shaper,
                settings=self.cfg.generation,
                reference=self.reference,
                with_reference=self.cfg.grpo.kl_coef > 0,
                columns=[self.columns[i] for i in mine],
                engine=self.engine,
            )
        rollout.scores = self.shaped(rollout)
        return rollout, seconds | synced

    def step(self, step: int, note: str) -> dict[str, Any]:
        from alignlab.eval.ppo_report import step_entry
        from alignlab.rl.rollout import concat_rollouts
        from alignlab.rl.trainer import GroupExperience

        cfg, g, trainer = self.cfg, self.cfg.grpo, self.trainer
        accelerator = trainer.accelerator
        G = g.num_generations
        wanted = cfg.train.batch_size // accelerator.num_processes  # groups per process
        # 1-2. rollout and scores; 3. dynamic sampling: keep the groups with signal, refill
        first, means, kept, seconds, rounds = None, {}, [], {}, 0
        while True:
            rollout, secs = self.sample_groups(self.draw(cfg.train.batch_size))
            seconds = {k: seconds.get(k, 0.0) + v for k, v in secs.items()}
            if first is None:  # the step's on-policy sample, as logged
                first, means = rollout, dict(self.scorer.last_means)
            useful = ~equal_groups(rollout.scores.view(-1, G)) if g.dynamic_sampling else None
            kept.append(
                rollout if useful is None else rollout.select(useful.repeat_interleave(G).nonzero().flatten())
            )
            rounds += 1
            count = torch.tensor(float(sum(len(k) for k in kept) // G), device=accelerator.device)
            have = min(
                wanted, int(-accelerator.reduce(-count, "max"))
            )  # the fewest of any process: all train alike
            if useful is None or have >= wanted or rounds > g.max_refills:
                break
        kl, stats = None, {"skipped": 1.0}  # every group equal in some process: nothing to learn
        if have > 0:
            rollout = concat_rollouts([k for k in kept if len(k)], self.tokenizer.pad_token_id)
            rollout = rollout.select(torch.arange(have * G, device=rollout.query.device))
            # 4. advantages: one per response from its group
            advantages = self.advantage(rollout.scores.view(-1, G)).flatten()
            keep = rollout.ended.float() if g.overlong == Overlong.MASK else torch.ones_like(advantages)
            if g.kl_coef > 0:
                per_token = KLEstimator.K3.estimate(rollout.logprobs, rollout.ref_logprobs) * rollout.mask
                kl = float(accelerator.reduce(per_token.sum(1).mean(), "mean"))
                check_kl(kl, cfg.max_kl, step, note)
            # 5. update
            started = time.perf_counter()
            stats = trainer.update(rollout, GroupExperience(advantages, keep), step)
            seconds["training"] = time.perf_counter() - started
        first_scores = first.scores.view(-1, G)
        entry = step_entry(step, first, kl, g.kl_coef, stats, seconds, sum(seconds.values()))
        entry.update(
            group_reward_std=float(first_scores.std(dim=1).mean()),
            equal_group_fraction=float(accelerator.reduce(equal_groups(first_scores).float().mean(), "mean")),
            groups_used=have,
            sampling_rounds=rounds,
            sequences=have * G * accelerator.num_processes,
            **reward_log(means),
        )
        return entry

    def shaped(self, rollout: Any) -> torch.Tensor:
        """The scores the groups compare: the rewards, plus DAPO's soft overlong penalty."""
        scores = rollout.raw_scores
        if self.cfg.grpo.overlong == Overlong.PENALTY:
            lengths = rollout.mask.sum(dim=1)
            penalty = overlong_penalty(lengths, self.cfg.generation.max_new_tokens, self.cfg.buffer())
            scores = scores + self.cfg.grpo.overlong_coef * penalty.to(scores.device)
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])
