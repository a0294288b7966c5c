"""Supervised fine-tuning of a loaded model on chat records: TRL's SFTTrainer, shared by the stages.

`SFT` trains on demonstrations with it; `RejectionSampling` on the best of K sampled responses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from alignlab.models.adapters import AdapterGroup
from alignlab.stages.groups import TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import hf_training_args, log_history_metrics

if TYPE_CHECKING:
    from alignlab.distributed.config import DistributedGroup


def train_sft(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    *,
    train: TrainGroup,
    adapter: AdapterGroup,
    tracking: TrackingGroup,
    run_name: str,
    max_length: int,
    loss_on: Literal["assistant", "all"] = "assistant",
    packing: bool = False,
    distributed: DistributedGroup | None = None,
    source: str = "",
) -> tuple[Any | None, dict[str, Any]]:
    """Fine-tune ``model`` on canonical SFT records (``{"messages": [...]}``).

    Args:
        model, tokenizer: a loaded causal LM (see alignlab.models.load_causal_lm) and its tokenizer.
        records: canonical SFT records.
        train, adapter, tracking: the stage's config groups (alignlab.stages.groups).
        run_name: names the run in trackers (the stage's output name).
        max_length: longest tokenized example; longer ones are truncated from the end.
        loss_on: "assistant" trains on the assistant turns only (their content and end-of-turn
            token, for any chat template: :mod:`alignlab.models.chat_template`); "all" trains on
            every token.
        packing: pack several examples per sequence.
        distributed: the stage's ``distributed`` group (DeepSpeed ZeRO and friends).
        source: where the records come from (named in errors).

    Returns:
        ``(trained model, metrics)``: the model with a LoRA adapter merged in when ``adapter.merge``
        asks for it; metrics hold the loss curve and the number of trainable parameters. In a
        multi-process run the model is whole and plain on the main process and None on the others
        (:func:`alignlab.distributed.runtime.main_process_model`).
    """
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from alignlab.distributed.runtime import doing, main_process_model, trainable_parameters
    from alignlab.models.adapters import finalize, peft_config
    from alignlab.models.chat_template import tokenize_conversations
    from alignlab.models.generation import stop_token_ids

    # tokenised here, masks included, so that any chat template trains on its assistant turns
    # (TRL's assistant_only_loss needs {% generation %} markers most templates lack)
    rows = tokenize_conversations(
        tokenizer,
        records,
        stop_ids=stop_token_ids(tokenizer, model),
        assistant_only=loss_on == "assistant",
        source=source,
    )
    doing("building the SFT trainer")
    args = TRLSFTConfig(
        **hf_training_args(train, tracking, run_name, distributed),
        max_length=max_length,
        packing=packing,
        assistant_only_loss=False,  # the assistant_masks column carries the mask
        completion_only_loss=False,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config(adapter),
    )
    doing("training")
    trainer.train()
    metrics = log_history_metrics(trainer.state.log_history)
    metrics["trainable_parameters"] = trainable_parameters(trainer.model)
    doing("gathering the trained model")
    model = main_process_model(trainer.model)
    return (None if model is None else finalize(model, adapter)), metrics


def fine_tune_policy(run: Any, cfg: Any, *, packing: bool = False) -> tuple[Any, Any, dict[str, Any]] | None:
    """Load ``run.inputs["model"]`` and fine-tune it on ``run.data["train"]`` with :func:`train_sft`.

    ``cfg`` is a stage config with ``train``, ``adapter``, ``tracking``, ``output``,
    ``data.max_length``, ``data.source``, ``loss_on``, ``distributed`` and ``eval`` (SFT,
    RejectionSampling). Returns ``(model, tokenizer, metrics)`` with the gold metrics added, or
    None in a process other than the main one (it evaluates and publishes).
    """
    from alignlab.models import load_causal_lm
    from alignlab.models.adapters import quantization_kwargs
    from alignlab.stages.evaluation import gold_metrics, uses_testbed

    # an adapter input is folded into its base: the new weights (or adapter) train on that model
    model, tok = load_causal_lm(
        run.inputs["model"], run.registry, merge_adapter=True, **quantization_kwargs(cfg.adapter)
    )
    trained, metrics = train_sft(
        model,
        tok,
        run.data["train"].records,
        train=cfg.train,
        adapter=cfg.adapter,
        tracking=cfg.tracking,
        run_name=cfg.output,
        max_length=cfg.data.max_length,
        loss_on=cfg.loss_on,
        packing=packing,
        distributed=cfg.distributed,
        source=str(cfg.data.source),
    )
    if trained is None:
        return None
    metrics.update(gold_metrics(trained, tok, cfg.eval, uses_testbed(cfg.data.source)))
    return trained, tok, metrics
