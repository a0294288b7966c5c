"""`SFT`: supervised fine-tuning on demonstrations, with TRL's SFTTrainer underneath.

Loss on the assistant tokens only by default, chat-template formatting, optional packing; full
fine-tuning, LoRA, QLoRA (CUDA) or prompt tuning through peft.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.config import load_config
from alignlab.distributed.config import DistributedGroup
from alignlab.distributed.runtime import check_distributed
from alignlab.models.adapters import AdapterGroup
from alignlab.registry import Artifact, Registry
from alignlab.stages.contract import Input
from alignlab.stages.groups import ChatData, EvalGroup, TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import StageRun, policy_output_kind, prepare_policy_stage, run_policy_stage

log = logging.getLogger("alignlab")


@dataclass
class SFTConfig:
    """Settings of an SFT run.

    Attributes:
        output: artifact name to publish.
        data: demonstrations.
        train: optimisation.
        adapter: full | lora | qlora | prompt_tuning.
        loss_on: "assistant" (default: prompt tokens masked out of the loss) or "all".
        packing: pack several examples per sequence (TRL best-fit-decreasing packing).
        eval: end-of-stage gold evaluation (testbed only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO, offload, precision, checkpointing (docs/scaling.md).
    """

    output: str = "sft"
    data: ChatData = field(default_factory=ChatData)
    train: TrainGroup = field(default_factory=lambda: TrainGroup(epochs=2.0, lr=5e-4, batch_size=16))
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    loss_on: Literal["assistant", "all"] = "assistant"
    packing: bool = False
    eval: EvalGroup = field(default_factory=EvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)


class SFT:
    """Supervised fine-tuning.

    Example:
        >>> from alignlab import SFT, Registry
        >>> sft = SFT({"data": {"source": "demos.jsonl"}, "adapter": {"method": "lora"}})
        >>> art = sft.run(Registry(), model="pretrain")  # doctest: +SKIP
        >>> art.metrics["gold_score"]  # doctest: +SKIP
    """

    name = "sft"
    config_cls = SFTConfig
    inputs = (Input("model", doc="the policy to fine-tune"),)

    def __init__(self, config: SFTConfig | dict | None = None) -> None:
        self.config = load_config(SFTConfig, config)
        check_distributed(self.config.distributed, self.config.adapter)

    def output_kind(self) -> str:
        return policy_output_kind(self.config.adapter)

    def check(self, registry: Registry, *, model: Any = None) -> None:
        prepare_policy_stage(self, registry, model, data_kind="sft")

    def run(
        self, registry: Registry | None = None, *, model: str | None = None, force: bool = False
    ) -> Artifact:
        return run_policy_stage(self, registry, model, data_kind="sft", force=force, body=self._train)

    def _train(self, run: StageRun, cfg: SFTConfig) -> None:
        from alignlab.models import save_model
        from alignlab.stages.sft_training import fine_tune_policy

        result = fine_tune_policy(run, cfg, packing=cfg.packing)
        if result is None:  # another process: the main one evaluates and publishes
            return
        trained, tok, metrics = result
        save_model(trained, tok, run.dir)
        run.metrics.update(metrics)
