"""`RewardModel`: a scalar reward head on a fine-tuned LM, trained on preference pairs or K-way rankings.

The model is ``AutoModelForSequenceClassification`` (one label) initialised from the input causal
LM (its score head new), trained with alignlab's own loop on accelerate: every response of a batch
is scored once, and the pairwise Bradley-Terry terms (optionally with margins and a centring term)
are formed from those scores, each prompt weighted once (see :mod:`alignlab.reward_losses`).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.config import load_config
from alignlab.data.validation import DropReason
from alignlab.distributed.config import DistributedGroup
from alignlab.distributed.runtime import check_distributed, main_process_model
from alignlab.errors import ConfigError, TrainingError
from alignlab.models.adapters import AdapterGroup, AdapterMethod
from alignlab.registry import Artifact, Registry
from alignlab.stages.contract import Input
from alignlab.stages.evaluation import uses_testbed
from alignlab.stages.groups import DataSource, EvalGroup, TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import (
    Resolved,
    StageRun,
    load_data,
    log_history_metrics,
    publish_stage,
    resolve_inputs,
)
from alignlab.stages.reward_data import DROPPED_DUPLICATES, Encoded, Ranking, collate, encode, gold_rankings

log = logging.getLogger("alignlab")

DEFAULT_SOURCES = {"preference": "testbed:preferences", "ranking": "testbed:rankings"}
SUMMARY = ("accuracy", "gold_accuracy", "margin_mean", "score_mean", "score_std", "metrics_split")
GOLD_PAIRS_SEED = 7919  # fresh testbed pairs for gold_accuracy, apart from the default training seed 0
TRAIN_METRICS_SAMPLE = 1000  # eval_share 0: rankings of the training data the metrics are computed on


@dataclass
class RewardData(DataSource):
    """Comparison data.

    Attributes:
        kind: "preference" (pairs) or "ranking" (K-way rankings, trained as InstructGPT does).
        source: preference pairs ({"prompt", "chosen", "rejected", "margin"?}; also HH-RLHF, or
            rankings split into pairs) when kind is preference; default `testbed:preferences`.
        rankings: K-way rankings ({"prompt", "responses"} best first, or {"text", "rank"} items)
            when kind is ranking; default `testbed:rankings`.
        max_length: longest transcript in tokens; longer ones lose their beginning.
        eval_share: share of distinct prompts held out (with all their records) for the metrics;
            0 computes the metrics on a seeded sample of at most 1,000 training rankings.
    """

    source: str | None = None  # type: ignore[assignment]  (None: the default of data.kind)
    kind: Literal["preference", "ranking"] = "preference"
    rankings: str | None = None
    max_length: int = 256
    eval_share: float = 0.1


@dataclass
class RewardLossGroup:
    """The loss (alignlab.reward_losses.ranking_loss).

    Attributes:
        use_margin: subtract the data's per-pair margin (LLaMA-2) where a record has one.
        rating_margins: the margin of a pair that carries a LLaMA-2 ``rating`` instead of a
            ``margin``: ``small`` or ``large`` (Touvron et al. 2023, Table 27: 1, 2/3, 1/3, 0
            and 3, 2, 1, 0 for "significantly better" ... "negligibly better / unsure"), four
            numbers, or ``none`` (ratings unused). An explicit ``margin`` wins.
        center_coef: weight of the reward-centring term (r_chosen + r_rejected)² (Eisenstein et
            al. 2023; 0.01 is TRL's suggestion); 0 turns it off.
    """

    use_margin: bool = True
    rating_margins: str | list[float] | None = None
    center_coef: float = 0.0

    def __post_init__(self) -> None:
        from alignlab.data.ratings import margins_table

        margins_table(self.rating_margins)  # a ConfigError naming loss.rating_margins


@dataclass
class RewardModelConfig:
    """Settings of a reward-model run.

    Attributes:
        output: artifact name to publish.
        data: comparison data and the held-out split.
        loss: margin and centring.
        train: optimisation; batch_size counts pairs or rankings (all responses of a ranking go
            through the model together).
        adapter: full | lora | qlora (LoRA on the transformer, the score head fully trained;
            merged into the published model, so adapter.merge must stay true).
        eval: gold_n = number of fresh testbed pairs for gold_accuracy (testbed data only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO, offload, precision, checkpointing (docs/scaling.md).
    """

    output: str = "reward_model"
    data: RewardData = field(default_factory=RewardData)
    loss: RewardLossGroup = field(default_factory=RewardLossGroup)
    # one epoch, as InstructGPT trains its reward models (they overfit after one)
    train: TrainGroup = field(
        default_factory=lambda: TrainGroup(epochs=1.0, lr=3e-4, batch_size=16, logging_steps=5)
    )
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    eval: EvalGroup = field(default_factory=EvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)

    def __post_init__(self) -> None:
        if not 0.0 <= self.data.eval_share < 1.0:
            raise ConfigError(f"data.eval_share must be in [0, 1), got {self.data.eval_share}")
        if self.adapter.method == AdapterMethod.PROMPT_TUNING:
            raise ConfigError("adapter.method=prompt_tuning is only supported for causal LM stages")
        if self.adapter.method != AdapterMethod.FULL and not self.adapter.merge:
            raise ConfigError(
                "adapter.merge=false: a reward model is published merged, so that it loads with "
                "AutoModelForSequenceClassification; keep adapter.merge=true"
            )
        data_source(self.data)  # data.source and data.rankings agree with data.kind


@dataclass
class _Plan:
    """What RewardModel has checked and loaded before it trains."""

    registry: Registry
    inputs: dict[str, Resolved]
    records: Any
    rankings: list[Ranking]
    dropped: dict[str, int]
    source: str


def data_source(data: RewardData) -> str:
    """The source to read for ``data.kind``; setting the other kind's field is a mistake, not ignored."""
    other = "rankings" if data.kind == "preference" else "source"
    if getattr(data, other) is not None:
        hint = "set data.kind=ranking" if data.kind == "preference" else "name the rankings in data.rankings"
        raise ConfigError(f"data.{other} is set but data.kind is {data.kind!r}: {hint}")
    chosen = data.source if data.kind == "preference" else data.rankings
    return chosen or DEFAULT_SOURCES[data.kind]


class RewardModel:
    """Train a reward model on preference pairs or K-way rankings.

    Example:
        >>> from alignlab import Registry, RewardModel
        >>> rm = RewardModel({"data": {"kind": "ranking", "rankings": "testbed:rankings?n=200&k=4"}})
        >>> art = rm.run(Registry(), model="sft")  # doctest: +SKIP
        >>> art.metrics["accuracy"], art.metrics["score_mean"], art.metrics["score_std"]  # doctest: +SKIP
        >>> from transformers import AutoModelForSequenceClassification
        >>> AutoModelForSequenceClassification.from_pretrained(art.path)  # doctest: +SKIP
    """

    name = "reward_model"
    config_cls = RewardModelConfig
    inputs = (Input("model", doc="the causal LM whose transformer the reward model starts from"),)

    def __init__(self, config: RewardModelConfig | dict | None = None) -> None:
        self.config = load_config(RewardModelConfig, config)
        check_distributed(self.config.distributed, self.config.adapter)

    def run(
        self, registry: Registry | None = None, *, model: str | None = None, force: bool = False
    ) -> Artifact:
        plan = self._prepare(registry, model)
        cfg = self.config
        return publish_stage(
            self,
            plan.registry,
            inputs=plan.inputs,
            data={"train": plan.records},
            force=force,
            body=lambda run: self._train(run, cfg, plan.rankings, plan.dropped, uses_testbed(plan.source)),
        )

    def output_kind(self) -> str:
        return "reward_model"

    def check(self, registry: Registry, *, model: Any = None) -> None:
        self._prepare(registry, model)

    def _prepare(self, registry: Registry | None, model: Any) -> _Plan:
        """Everything before training: QLoRA can run here, the input, the rankings."""
        from alignlab.models.adapters import quantization_kwargs
        from alignlab.stages.reward_data import rankings_from_records

        cfg = self.config
        registry = registry or Registry()
        quantization_kwargs(cfg.adapter)  # fail early when QLoRA cannot run here
        source = data_source(cfg.data)
        inputs = resolve_inputs(registry, self, {"model": model})
        records = load_data(cfg.data, cfg.data.kind, registry, source=source)
        rankings, duplicates = rankings_from_records(
            records.records,
            cfg.data.kind,
            use_margin=cfg.loss.use_margin,
            source=source,
            rating_margins=cfg.loss.rating_margins,
        )
        dropped = dict(records.report.dropped)
        if duplicates:
            dropped[DROPPED_DUPLICATES] = duplicates
        return _Plan(registry, inputs, records, rankings, dropped, source)

    def _train(
        self,
        run: StageRun,
        cfg: RewardModelConfig,
        rankings: list[Ranking],
        dropped: dict[str, int],
        on_testbed: bool,
    ) -> None:
        import torch

        from alignlab.models import save_model
        from alignlab.models.adapters import finalize, peft_config
        from alignlab.stages.reward_data import split_by_prompt

        torch.manual_seed(cfg.train.seed)  # the new score head's initialisation
        model, tok = initial_reward_model(run.inputs["model"], run.registry, cfg.adapter)
        lora = peft_config(cfg.adapter, task_type="SEQ_CLS")
        if lora is not None:
            from peft import get_peft_model, prepare_model_for_kbit_training

            if cfg.adapter.method == AdapterMethod.QLORA:
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            lora.modules_to_save = ["score"]  # the new head is trained in full, not through LoRA
            model = get_peft_model(model, lora)
        train, held_out = split_by_prompt(rankings, cfg.data.eval_share, cfg.train.seed)
        train_enc, truncated = encode(train, tok, cfg.data.max_length)
        metrics: dict[str, Any] = {
            "train_rankings": len(train),
            "eval_rankings": len(held_out),
            "truncated": truncated,
            "dropped": dropped,
            "dropped_identical": dropped.get(str(DropReason.IDENTICAL), 0),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        inputs = {role: getattr(t, "ref", None) or t.id for role, t in run.inputs.items()}
        model, history = fit(model, train_enc, cfg, tok.pad_token_id, inputs)
        model = main_process_model(model)
        if model is None:  # another process: the main one evaluates and publishes
            return
        model = finalize(model, cfg.adapter)
        metrics.update(log_history_metrics(history))
        if held_out:
            eval_enc = encode(held_out, tok, cfg.data.max_length)[0]
        else:  # a seeded sample is enough for the score statistics; scoring all of it again is not
            eval_enc = random.Random(cfg.train.seed).sample(
                train_enc, min(len(train_enc), TRAIN_METRICS_SAMPLE)
            )
        metrics["metrics_split"] = "held_out" if held_out else "train"
        metrics.update(evaluate(model, eval_enc, tok.pad_token_id, cfg.train.batch_size))
        if by_rating := accuracy_by_rating(model, held_out, tok, cfg):
            metrics["accuracy_by_rating"] = by_rating
        if cfg.eval.gold and on_testbed and cfg.eval.gold_n > 0:
            gold = gold_rankings(cfg.eval.gold_n, GOLD_PAIRS_SEED)
            gold_enc = encode(gold, tok, cfg.data.max_length)[0]
            metrics["gold_accuracy"] = evaluate(model, gold_enc, tok.pad_token_id, cfg.train.batch_size)[
                "accuracy"
            ]
            metrics["gold_pairs"] = cfg.eval.gold_n
            metrics["gold_accuracy_by_rating"] = accuracy_by_rating(model, gold, tok, cfg)
        log.info("reward model: %s", {k: v for k, v in metrics.items() if k in SUMMARY})
        model.config.pad_token_id = tok.pad_token_id
        save_model(model, tok, run.dir)
        run.metrics.update(metrics)


def initial_reward_model(target: Resolved, registry: Registry, adapter: AdapterGroup) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the causal LM ``target`` as a one-label sequence classifier.

    The transformer's weights are kept and the score head is new. An adapter artifact is merged
    into its base first (a classification head cannot sit on a causal-LM adapter). The model's
    ``pad_token_id`` is set to the tokenizer's, since the reward is read at the last non-pad token.
    """
    from transformers import AutoModelForSequenceClassification

    from alignlab.models import load_causal_lm, load_tokenizer
    from alignlab.models.adapters import quantization_kwargs
    from alignlab.models.loading import _from_pretrained, model_location

    tok = load_tokenizer(target, registry)
    with tempfile.TemporaryDirectory(prefix="alignlab-reward-init-") as tmp:
        location = model_location(target)
        if getattr(target, "kind", None) == "adapter":
            merged, _ = load_causal_lm(target, registry, merge_adapter=True)
            merged.save_pretrained(tmp, safe_serialization=True)
            location = tmp
        model = _from_pretrained(
            AutoModelForSequenceClassification,
            location,
            trust_remote_code=False,
            num_labels=1,
            **quantization_kwargs(adapter),
        )
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def score(model: Any, batch: dict[str, Any]) -> Any:
    """One reward per response of a collated batch, from one forward pass: (R,)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]


def batch_loss(
    model: Any, batch: dict[str, Any], center_coef: float = 0.0
) -> tuple[Any, dict[str, float], Any]:
    """The ranking loss of a collated batch: ``(loss, stats, scores)``; each response scored once."""
    from alignlab.reward_losses import ranking_loss

    scores = score(model, batch)  # (R,)
    loss, stats = ranking_loss(scores.float(), batch["sizes"].tolist(), batch["margin"], center_coef)
    return loss, stats, scores


def optimizer_steps(micro_batches: int, train: TrainGroup) -> int:
    """Optimiser steps of a run: ``max_steps`` if set, else the epochs' worth (partial epochs allowed)."""
    if train.max_steps > 0:
        return train.max_steps
    return max(1, math.ceil(train.epochs * math.ceil(micro_batches / train.grad_accum)))


def fit(
    model: Any,
    data: list[Encoded],
    cfg: RewardModelConfig,
    pad_token_id: int,
    inputs: dict[str, str] | None = None,
) -> tuple[Any, list]:
    """Train with AdamW, warmup + schedule, clipping and accumulation; returns ``(model, history)``.

    accelerate places the model and data (CPU here, one or more GPUs), on DeepSpeed when
    ``cfg.distributed`` or the launch asks for it. Each optimiser step is, in order:

    1. **score**: every response of the micro-batch once, the ranking loss from those scores;
    2. **guard**: a non-finite loss stops the run with what to change;
    3. **backward**, clipping the gradient at the last micro-batch of the step;
    4. **step** the optimiser and the schedule;
    5. **log** every ``train.logging_steps`` steps: the means since the last point, over the
       processes, to the history and the tracker (``cfg.tracking``, alignlab.tracking).

    ``history`` holds one ``{"step", "loss", "accuracy", "margin_mean", "lr"}`` per logging point
    (as a transformers Trainer logs); ``inputs`` (role -> reference) go to the tracker.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from alignlab.distributed.runtime import is_main_process, make_accelerator
    from alignlab.models.accelerator import release_accelerator
    from alignlab.tracking import Tracker

    train = cfg.train
    accelerator = make_accelerator(
        cfg.distributed,
        max_grad_norm=train.max_grad_norm if train.max_grad_norm > 0 else None,
        gradient_accumulation_steps=train.grad_accum,
    )
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=train.batch_size,
        shuffle=True,
        collate_fn=lambda b: collate(b, pad_token_id),
        generator=torch.Generator().manual_seed(train.seed),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps = optimizer_steps(len(loader), train)
    # accelerate steps a prepared scheduler once per process per step. Under DeepSpeed it would
    # wrap it in a no-op (only DeepSpeed's own schedulers go to its engine): step it here instead.
    deepspeed = accelerator.distributed_type == "DEEPSPEED"
    per_step = 1 if deepspeed else accelerator.num_processes
    scheduler = get_scheduler(
        train.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(train.warmup_ratio * steps) * per_step,
        num_training_steps=steps * per_step,
    )
    if not deepspeed:
        scheduler = accelerator.prepare(scheduler)
    tracker = Tracker.create(
        cfg.tracking if is_main_process() else "none", cfg.output, config=cfg, inputs=inputs
    )
    model.train()
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    step = 0
    bar = tqdm(total=steps, desc="reward model", disable=not accelerator.is_local_main_process)
    try:
        while step < steps:
            for batch in loader:
                with accelerator.accumulate(model):
                    # 1. score
                    loss, stats, _ = batch_loss(model, batch, cfg.loss.center_coef)
                    # 2. guard
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"reward model: the loss became {loss.item()} at step {step + 1}; "
                            f"lower train.lr (now {train.lr}) or check the data"
                        )
                    # 3. backward
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, train.max_grad_norm)
                    # 4. step
                    optimizer.step()
                    if accelerator.sync_gradients or not deepspeed:
                        scheduler.step()
                    optimizer.zero_grad()
                window.append(_reduced(accelerator, loss.item(), stats))
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                # 5. log
                if step % train.logging_steps == 0 or step == steps:
                    point = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    point["lr"] = scheduler.get_last_lr()[0]
                    history.append({"step": step, **point})
                    bar.set_postfix(loss=f"{point['loss']:.4f}", acc=f"{point['accuracy']:.2f}")
                    log.info(
                        "reward model step %d/%d: loss %.4f, accuracy %.3f, margin %.3f, lr %.2e",
                        step,
                        steps,
                        point["loss"],
                        point["accuracy"],
                        point["margin_mean"],
                        point["lr"],
                    )
                    tracker.log({f"train/{k}": v for k, v in point.items()}, step=step)
                    window = []
                if step >= steps:
                    break
    finally:
        bar.close()
        tracker.finish()
    trained = accelerator.unwrap_model(model)
    release_accelerator()  # the next stage in this process configures its own precision
    return trained, history


def _reduced(accelerator: Any, loss: float, stats: dict[str, float]) -> dict[str, float]:
    """The micro-batch's loss, accuracy and margin, averaged over the processes."""
    import torch

    values = torch.tensor([loss, stats["accuracy"], stats["margin_mean"]])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values.to(accelerator.device), "mean").cpu()
    return dict(zip(("loss", "accuracy", "margin_mean"), values.tolist()))


def accuracy_by_rating(
    model: Any, rankings: list[Ranking], tok: Any, cfg: RewardModelConfig
) -> dict[str, Any]:
    """Accuracy on the pairs of each LLaMA-2 rating level (``{level: {"accuracy", "pairs"}}``),
    for the pairs that carry one: LLaMA-2 reports that margins help on the clearly separable
    pairs (Touvron et al. 2023, Table 28). Empty when none does."""
    from alignlab.data.ratings import LEVELS

    out: dict[str, Any] = {}
    for level, name in enumerate(LEVELS):
        group = [r for r in rankings if r.rating == level]
        if group:
            enc = encode(group, tok, cfg.data.max_length)[0]
            accuracy = evaluate(model, enc, tok.pad_token_id, cfg.train.batch_size)["accuracy"]
            out[name] = {"accuracy": accuracy, "pairs": len(group)}
    return out


def evaluate(model: Any, data: list[Encoded], pad_token_id: int, batch_size: int) -> dict[str, float]:
    """Pairwise metrics of ``data`` (each response scored once, every pair counted once).

    Returns:
        ``accuracy`` (share of pairs the model orders as the data does), ``margin_mean`` (mean
        r_better - r_worse), ``eval_loss`` (the training loss), ``score_mean`` and ``score_std``
        (over the responses: PPO normalises rewards with them), ``eval_pairs``.
    """
    import torch

    from alignlab.reward_losses import ranking_pairs

    model.eval()
    device = next(model.parameters()).device
    scores, gaps, losses, weights = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            chunk = data[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
            loss, _, batch_scores = batch_loss(model, batch)
            better, worse, _ = ranking_pairs(batch["sizes"].tolist(), device=device)
            scores.append(batch_scores.float())
            gaps.append((batch_scores[better] - batch_scores[worse]).float())
            losses.append(loss.item())
            weights.append(len(chunk))
    all_scores, all_gaps = torch.cat(scores), torch.cat(gaps)
    return {
        "accuracy": (all_gaps > 0).float().mean().item(),
        "margin_mean": all_gaps.mean().item(),
        "eval_loss": sum(x * w for x, w in zip(losses, weights)) / sum(weights),
        "score_mean": all_scores.mean().item(),
        "score_std": all_scores.std(unbiased=False).item(),
        "eval_pairs": int(all_gaps.numel()),
    }
