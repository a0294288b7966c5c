"""`TinyBase`: the embedded default base model, built from config and published as an artifact.

A LLaMA-architecture model (RMSNorm, SwiGLU, RoPE) with random weights and a byte-level BPE
tokenizer trained on the testbed's text. Lineage starts here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.config import load_config
from alignlab.registry import Artifact, Registry
from alignlab.stages.evaluation import gold_metrics
from alignlab.stages.groups import EvalGroup
from alignlab.stages.lifecycle import StageRun, publish_stage


@dataclass
class TinyBaseConfig:
    """Settings of the tiny base.

    Attributes:
        output: artifact name to publish.
        size: "test" (~0.9M parameters) or "demo" (~2.8M parameters); see alignlab.models.TINY_SIZES.
        vocab_size: BPE vocabulary size (special tokens included).
        tokenizer_data: text source the BPE is trained on.
        seed: initialisation seed.
        eval: end-of-stage evaluation (gold score of the untrained model: the floor).
    """

    output: str = "base"
    size: Literal["test", "demo"] = "demo"
    vocab_size: int = 1024
    tokenizer_data: str = "testbed:tokenizer"
    seed: int = 0
    eval: EvalGroup = field(default_factory=lambda: EvalGroup(gold_n=100))


class TinyBase:
    """Build and publish the tiny base model.

    Example:
        >>> from alignlab import Registry, TinyBase
        >>> base = TinyBase({"size": "test"}).run(Registry("/tmp/reg"))  # doctest: +SKIP
        >>> base.ref  # doctest: +SKIP
        'base:v1'
    """

    name = "tiny_base"
    config_cls = TinyBaseConfig
    inputs = ()

    def __init__(self, config: TinyBaseConfig | dict | None = None) -> None:
        self.config = load_config(TinyBaseConfig, config)

    def output_kind(self) -> str:
        return "model"

    def check(self, registry: Registry) -> None:
        self._tokenizer_text(registry)

    def _tokenizer_text(self, registry: Registry) -> Any:
        from alignlab.data import load_records

        return load_records(self.config.tokenizer_data, kind="text", registry=registry)

    def run(self, registry: Registry | None = None, *, force: bool = False) -> Artifact:
        cfg = self.config
        registry = registry or Registry()
        text = self._tokenizer_text(registry)

        def body(run: StageRun) -> None:
            from alignlab.models import tiny_llama, train_bpe_tokenizer

            tok = train_bpe_tokenizer((r["text"] for r in text.records), vocab_size=cfg.vocab_size)
            model = tiny_llama(
                cfg.size,
                len(tok),
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                seed=cfg.seed,
            )
            save_base(run, model, tok, cfg.eval)

        return publish_stage(
            self,
            registry,
            inputs={},
            data={"tokenizer": text},
            force=force,
            body=body,
        )


def save_base(run: StageRun, model: Any, tokenizer: Any, eval_cfg: EvalGroup) -> None:
    """Save a base model into the run and record what it is: its parameter count, vocabulary size
    and gold score (the floor a recipe's later stages are compared with)."""
    from alignlab.models import save_model

    save_model(model, tokenizer, run.dir)
    run.metrics["parameters"] = sum(p.numel() for p in model.parameters())
    run.metrics["vocab_size"] = len(tokenizer)
    run.metrics.update(gold_metrics(model, tokenizer, eval_cfg, on_testbed=True))
