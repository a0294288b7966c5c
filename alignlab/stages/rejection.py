"""`RejectionSampling`: best-of-K fine-tuning (LLaMA 2's rejection sampling, Touvron et al. 2023 §3.2.3).

Each round samples K responses per prompt from the latest policy, scores them with a reward model
or a reward function, keeps the best one (optionally only above a threshold), and fine-tunes the
policy on prompt -> best response with the SFT machinery. A round publishes two artifacts: the
selected samples (a dataset whose parents are the policy and the reward model) and then the
fine-tuned policy, whose parents include that dataset — so lineage reads
``policy <- samples <- previous policy``, and a re-run with the same settings reuses both.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.config import load_config
from alignlab.distributed.config import DistributedGroup
from alignlab.distributed.runtime import check_distributed, is_main_process
from alignlab.errors import ConfigError, DataError
from alignlab.models.adapters import AdapterGroup
from alignlab.models.engines import EngineKind
from alignlab.registry import Artifact, Registry
from alignlab.rewards import CombineRule, RewardFn, RewardInput, SafetyFirstSettings, prompt_text
from alignlab.stages.contract import Input
from alignlab.stages.evaluation import uses_testbed
from alignlab.stages.groups import DataSource, EvalGroup, TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import (
    StageRun,
    load_data,
    policy_output_kind,
    publish_stage,
    resolve_inputs,
    run_stage,
)
from alignlab.stages.rl_loop import combined_scorer, resolve_rewards, reward_log

log = logging.getLogger("alignlab")

Messages = list[dict[str, Any]]
PLOT_FILE = "best_of_n.png"
SAMPLES_FILE = "samples.jsonl"  # every sample and its reward, beside the selected data.jsonl


@dataclass
class PromptData(DataSource):
    """Prompts to sample responses for.

    Attributes:
        source: `testbed:prompts`, a file of prompts (or of conversations: their prompt part is
            used), a dataset artifact reference or a hub dataset name.
        max_length: longest tokenized training example (prompt + selected response).
    """

    max_length: int = 256


@dataclass
class SamplingGroup:
    """Best-of-K sampling and selection.

    Attributes:
        k: responses sampled per prompt; the best one is kept.
        temperature: sampling temperature: higher gives more diverse samples (a wider best-of-K gap)
            but worse ones. The best value moves with the model (LLaMA 2 §3.2.3 found 1.2–1.3 for its
            chat models); on the testbed's tiny models 0.7 selects better responses than 1.0.
        top_p: nucleus sampling threshold (1.0 samples from the full distribution).
        max_new_tokens: longest sampled response.
        batch_size: sequences per generation batch; each prompt is repeated k times in a batch, so
            a batch holds max(1, batch_size // k) prompts.
        threshold: keep a prompt's best response only if its reward is at least this (None keeps all).
        seed: sampling seed of round 1 (round r uses seed + r - 1).
        engine: hf | vllm | auto — what samples the candidates: transformers' generate, or vLLM
            loaded with the policy's weights (auto: vLLM where it imports); see docs/performance.md.
            vLLM samples a round's prompts in one call (batch_size then only batches the scoring).
    """

    k: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 64
    threshold: float | None = None
    seed: int = 0
    engine: EngineKind = EngineKind.HF

    def __post_init__(self) -> None:
        try:
            self.engine = EngineKind(self.engine)
        except ValueError:
            choices = ", ".join(e.value for e in EngineKind)
            raise ConfigError(f"sampling.engine: {self.engine!r} is not one of {choices}") from None
        if self.k < 1:
            raise ConfigError(f"sampling.k must be at least 1, got {self.k}")
        if self.temperature <= 0:
            raise ConfigError(f"sampling.temperature must be > 0, got {self.temperature}")


@dataclass
class RejectionSamplingConfig:
    """Settings of a rejection-sampling run.

    Attributes:
        output: name of the fine-tuned policy artifact.
        dataset_output: name of the selected-samples dataset artifact (default: "<output>-samples").
        data: prompts.
        sampling: best-of-K sampling and selection.
        rounds: sample-select-fine-tune rounds, each sampling from the latest policy.
        reward_weights: one weight per reward when ``reward`` lists several (None = all 1).
        reward_rule: sum | safety_first — how several rewards combine (docs/stages/ppo.md).
        safety: the safety-first rule's settings: which reward is safety, its threshold.
        train: optimisation of the fine-tuning on the selected responses.
        adapter: full | lora | qlora | prompt_tuning.
        loss_on: "assistant" (default: prompt tokens masked out of the loss) or "all".
        eval: end-of-round gold evaluation (testbed only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO, offload, precision, checkpointing for the fine-tuning (the
            sampling runs on the main process; docs/scaling.md).
    """

    output: str = "rejection_sampling"
    dataset_output: str | None = None
    data: PromptData = field(default_factory=PromptData)
    sampling: SamplingGroup = field(default_factory=SamplingGroup)
    rounds: int = 1
    reward_weights: list[float] | None = None
    reward_rule: CombineRule = CombineRule.SUM
    safety: SafetyFirstSettings = field(default_factory=SafetyFirstSettings)
    train: TrainGroup = field(default_factory=lambda: TrainGroup(epochs=2.0, lr=5e-4, batch_size=16))
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    loss_on: Literal["assistant", "all"] = "assistant"
    eval: EvalGroup = field(default_factory=EvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")


@dataclass
class SamplingStep:
    """What the samples dataset of one round depends on (its recorded config and fingerprint):
    not the fine-tuning settings, so changing those re-trains without re-sampling."""

    output: str
    data: PromptData
    sampling: SamplingGroup
    round: int
    reward_weights: list[float] | None = None
    reward_rule: CombineRule = CombineRule.SUM
    safety: SafetyFirstSettings = field(default_factory=SafetyFirstSettings)


# ---- sampling and selection ---------------------------------------------------------------------


def select_best(
    prompts: Sequence[Messages],
    samples: Sequence[Sequence[str]],
    rewards: Sequence[Sequence[float]],
    threshold: float | None = None,
) -> list[dict[str, Any]]:
    """The best response of each prompt as an SFT record (``messages`` + its ``reward``); a prompt
    whose best reward is below ``threshold`` gives none. Ties go to the first sample."""
    rows = []
    for prompt, texts, scores in zip(prompts, samples, rewards):
        best = max(range(len(scores)), key=scores.__getitem__)
        if threshold is not None and scores[best] < threshold:
            continue
        rows.append(
            {"messages": [*prompt, {"role": "assistant", "content": texts[best]}], "reward": scores[best]}
        )
    return rows


def _on_accelerator(model: Any) -> Any:
    import torch

    placed = getattr(model, "is_quantized", False) or getattr(model, "hf_device_map", None)
    if torch.cuda.is_available() and not placed:
        return model.to("cuda")
    return model


# ---- the stage ----------------------------------------------------------------------------------


class RejectionSampling:
    """Best-of-K rejection-sampling fine-tuning.

    Example:
        >>> from alignlab import Registry, RejectionSampling
        >>> from alignlab.testbed import gold_reward_fn
        >>> rs = RejectionSampling({"sampling": {"k": 8}, "data": {"limit": 256}})
        >>> art = rs.run(Registry(), model="sft", reward=gold_reward_fn)  # doctest: +SKIP
        >>> art.metrics["best_of_n"]  # mean best reward of N = 1, 2, 4, 8 samples  # doctest: +SKIP
        >>> art.metrics["gold_score"]  # doctest: +SKIP

    In a recipe the reward is a reward-model entry or an import path::

        - name: rs
          stage: rejection_sampling
          inputs: {model: sft, reward: "alignlab.testbed:gold_reward_fn"}
    """

    name = "rejection_sampling"
    config_cls = RejectionSamplingConfig
    inputs = (
        Input("model", doc="the policy to sample from and fine-tune"),
        Input(
            "reward",
            kinds=("reward_model",),
            function=True,
            several=True,
            doc="scores the K samples of each prompt; several combine by reward_rule",
        ),
    )

    def __init__(self, config: RejectionSamplingConfig | dict | None = None) -> None:
        self.config = load_config(RejectionSamplingConfig, config)
        check_distributed(self.config.distributed, self.config.adapter)

    def run(
        self,
        registry: Registry | None = None,
        *,
        model: str | Artifact | None = None,
        reward: str | RewardFn | Artifact | None = None,
        force: bool = False,
    ) -> Artifact:
        """Run ``config.rounds`` rounds from the policy ``model``; returns the last policy artifact."""
        cfg = self.config
        registry = registry or Registry()
        inputs, rewards, prompts = self._prepare(registry, model, reward)
        policy = inputs["model"]
        for round_ in range(1, cfg.rounds + 1):
            samples = self._sampling_round(registry, policy, rewards, prompts, round_, force)
            policy = self._training_round(registry, policy, rewards, prompts, samples, force)
        return policy

    def output_kind(self) -> str:
        return policy_output_kind(self.config.adapter)

    def check(self, registry: Registry, *, model: Any = None, reward: Any = None) -> None:
        self._prepare(registry, model, reward)

    def _prepare(
        self, registry: Registry, model: Any, reward: Any
    ) -> tuple[dict[str, Any], dict[str, RewardInput], Any]:
        """Everything before sampling: QLoRA can run here, the policy, the reward, the prompts."""
        from alignlab.models.adapters import quantization_kwargs

        cfg = self.config
        quantization_kwargs(cfg.adapter)  # fail early when QLoRA cannot run here
        inputs = resolve_inputs(registry, self, {"model": model})
        rewards = resolve_rewards(registry, reward, cfg)  # reward, reward_2, ...
        prompts = load_data(cfg.data, "prompt", registry)
        return inputs, rewards, prompts

    def _sampling_round(
        self,
        registry: Registry,
        policy: Any,
        rewards: dict[str, RewardInput],
        prompts: Any,
        round_: int,
        force: bool,
    ) -> Artifact:
        cfg = self.config
        step = SamplingStep(
            output=cfg.dataset_output or f"{cfg.output}-samples",
            data=cfg.data,
            sampling=cfg.sampling,
            round=round_,
            reward_weights=cfg.reward_weights,
            reward_rule=cfg.reward_rule,
            safety=cfg.safety,
        )

        def body(run: StageRun) -> None:
            from alignlab.data import write_records
            from alignlab.data.sources import ARTIFACT_DATA_FILE
            from alignlab.eval.best_of_n import best_of_n_curve, plot_best_of_n, sample_and_score
            from alignlab.models import load_causal_lm
            from alignlab.models.adapters import quantization_kwargs
            from alignlab.models.engines import resolve_engine

            if not is_main_process():  # sampling is not collective: the main process does it alone
                return
            engine = resolve_engine(cfg.sampling.engine, "sampling.engine")  # before the model loads
            model, tok = load_causal_lm(run.inputs["model"], run.registry, **quantization_kwargs(cfg.adapter))
            records = run.data["prompts"].records
            chats = [r["prompt"] for r in records]
            sampling = cfg.sampling
            scorer = combined_scorer(run, cfg, lambda reward: reward.scorer(run.registry))
            samples, rewards = sample_and_score(
                _on_accelerator(model),
                tok,
                scorer,
                chats,
                columns=[{k: v for k, v in r.items() if k != "prompt"} for r in records],
                k=sampling.k,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                batch_size=sampling.batch_size,
                seed=sampling.seed + round_ - 1,
                desc=f"rejection sampling, round {round_}: best of {cfg.sampling.k}",
                engine=engine,
            )
            selected = select_best(chats, samples, rewards, cfg.sampling.threshold)
            if not selected:
                raise DataError(
                    f"rejection sampling round {round_}: no prompt's best reward reached "
                    f"sampling.threshold={cfg.sampling.threshold} (highest: "
                    f"{max(max(r) for r in rewards):.3f}); lower or unset the threshold"
                )
            write_records(run.dir / ARTIFACT_DATA_FILE, selected)
            write_records(
                run.dir / SAMPLES_FILE,
                [{"prompt": p, "responses": s, "rewards": r} for p, s, r in zip(chats, samples, rewards)],
            )
            curves = {"reward": best_of_n_curve(rewards)}
            if uses_testbed(cfg.data.source):  # the gold scorer is cheap: how much of the gain is real
                from alignlab.testbed import gold_reward_fn

                texts = [prompt_text(p) for p in chats]
                curves["gold"] = best_of_n_curve(
                    [gold_reward_fn([t] * len(s), s) for t, s in zip(texts, samples)]
                )
            plot_best_of_n(curves, run.dir / PLOT_FILE, title=f"best of N, round {round_}")
            run.metrics.update(
                {
                    "round": round_,
                    "prompts": len(chats),
                    "selected": len(selected),
                    "reward_mean": curves["reward"][1],
                    "selected_reward_mean": sum(r["reward"] for r in selected) / len(selected),
                    **reward_log(scorer.means()),
                    **{
                        _curve_key(name): {str(n): v for n, v in curve.items()}
                        for name, curve in curves.items()
                    },
                }
            )
            log.info(
                "round %d: best of N %s; kept %d of %d prompts",
                round_,
                run.metrics["best_of_n"],
                len(selected),
                len(chats),
            )

        return run_stage(
            stage=self.name,
            name=step.output,
            kind="dataset",
            config=step,
            registry=registry,
            inputs={"model": policy, **rewards},
            data={"prompts": prompts},
            force=force,
            body=body,
        )

    def _training_round(
        self,
        registry: Registry,
        policy: Any,
        rewards: dict[str, RewardInput],
        prompts: Any,
        samples: Artifact,
        force: bool,
    ) -> Artifact:
        from alignlab.data import load_records

        cfg = self.config
        selected = load_records(samples.id, kind="sft", registry=registry)  # .artifact: a parent

        def body(run: StageRun) -> None:
            from alignlab.models import save_model
            from alignlab.stages.sft_training import fine_tune_policy

            result = fine_tune_policy(run, cfg)
            if result is None:  # another process: the main one evaluates and publishes
                return
            trained, tok, metrics = result
            metrics.update(
                {k: v for k, v in samples.metrics.items() if k.startswith("best_of_n") or k == "round"}
            )
            if (samples.path / PLOT_FILE).exists():
                shutil.copy(samples.path / PLOT_FILE, run.dir / PLOT_FILE)
            save_model(trained, tok, run.dir)
            run.metrics.update(metrics)

        return publish_stage(
            self,
            registry,
            inputs={"model": policy, **rewards},
            data={"prompts": prompts, "train": selected},
            force=force,
            body=body,
        )


def _curve_key(scorer: str) -> str:
    return "best_of_n" if scorer == "reward" else f"best_of_n_{scorer}"
