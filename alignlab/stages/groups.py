"""Config groups shared by several stages (``train``, ``lora``, ``eval``, ``tracking``).

Each field is documented once, here; stage configs nest these groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from alignlab.config import FieldRangeError, check_range, run_control, run_control_group


class ReportTo(StrEnum):
    """Where training metrics go besides the console and the artifact."""

    NONE = "none"
    WANDB = "wandb"  # offline unless the user logged in and set WANDB_MODE=online
    TENSORBOARD = "tensorboard"


@dataclass
class TrainGroup:
    """Optimisation settings.

    Attributes:
        epochs: passes over the training data (ignored when max_steps > 0).
        max_steps: optimiser steps; overrides epochs when > 0.
        lr: peak learning rate (AdamW).
        batch_size: sequences per device per optimiser step (before accumulation).
        grad_accum: gradient accumulation steps.
        warmup_ratio: share of steps with linear warmup.
        weight_decay: AdamW weight decay.
        lr_scheduler: transformers scheduler name (cosine, linear, constant, ...).
        max_grad_norm: gradient clipping norm.
        seed: seed for data order and initialisation.
        logging_steps: log every N optimiser steps (run control: not part of the fingerprint).
    """

    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 1e-4
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = run_control(default=10)

    def __post_init__(self) -> None:
        check_range(self, "lr", above=0)
        check_range(self, "batch_size", low=1)
        check_range(self, "grad_accum", low=1)
        check_range(self, "warmup_ratio", low=0, high=1)
        check_range(self, "weight_decay", low=0)
        check_range(self, "max_grad_norm", low=0)
        check_range(self, "logging_steps", low=1)
        check_range(self, "epochs", low=0)
        if self.max_steps <= 0 and self.epochs <= 0:
            raise FieldRangeError(
                "epochs",
                f"is {self.epochs:g} with max_steps {self.max_steps}: nothing would be trained "
                "(set epochs > 0, or max_steps > 0)",
            )


@dataclass
class DataSource:
    """Where a stage's records come from: the fields every stage's ``data`` group shares.

    Attributes:
        source: a file (json, jsonl, parquet, csv; formats: docs/data.md), a ``testbed:<name>``
            source, a dataset artifact reference or a hub dataset name.
        format: "auto" to detect from the keys, or a format name to force.
        strict: fail on the first bad record (True) or drop bad records and report them (False).
        limit: use only the first N records.
    """

    source: str = "testbed:prompts"
    format: str = "auto"
    strict: bool = True
    limit: int | None = None

    def __post_init__(self) -> None:
        check_range(self, "limit", low=1)
        for name in ("max_length", "max_prompt_length"):
            if hasattr(self, name):
                check_range(self, name, low=1)


@dataclass
class ChatData(DataSource):
    """Conversations to fine-tune on: demonstrations (SFT) or preference pairs (DPO).

    Attributes:
        source: demonstrations (messages / Alpaca / ShareGPT / prompt-completion) for SFT,
            pairs (prompt/chosen/rejected, HH-RLHF, rankings) for DPO: a file, ``testbed:sft`` /
            ``testbed:preferences[?n=...]``, a dataset artifact reference or a hub dataset name.
        max_length: longest tokenized example (prompt and response); longer ones are truncated
            from the end.
    """

    source: str = "testbed:sft"
    max_length: int = 256


@run_control_group
@dataclass
class EvalGroup:
    """Evaluation run at the end of a stage (run control: measures the artifact, never changes it,
    so it is not part of the fingerprint).

    Attributes:
        gold: score the model with the testbed's gold scorer (only meaningful on testbed data).
        gold_n: number of held-out testbed prompts to score.
        max_new_tokens: generation length for evaluation.
    """

    gold: bool = True
    gold_n: int = 200
    max_new_tokens: int = 32


@run_control_group
@dataclass
class TrackingGroup:
    """Experiment tracking (run control: not part of the fingerprint).

    Attributes:
        report_to: none | wandb | tensorboard.
        run_name: run name (defaults to the artifact name).
        project: wandb project.
    """

    report_to: ReportTo = ReportTo.NONE
    run_name: str | None = None
    project: str = "alignlab"
