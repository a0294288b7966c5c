"""`Pretrain`: continued pretraining (and from scratch for the tiny base) on packed text.

Next-token loss on documents packed into ``seq_len`` chunks (long documents span chunks, nothing
is truncated away), drawn from a weighted mixture of sources, with optional vocabulary
extension before training and held-out perplexity after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from alignlab.config import load_config
from alignlab.distributed.config import DistributedGroup
from alignlab.distributed.runtime import check_distributed, main_process_model, trainable_parameters
from alignlab.errors import ConfigError
from alignlab.models.adapters import AdapterGroup, AdapterMethod
from alignlab.registry import Artifact, Registry
from alignlab.stages.contract import Input
from alignlab.stages.evaluation import gold_metrics, uses_testbed
from alignlab.stages.groups import EvalGroup, TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import (
    StageRun,
    hf_training_args,
    log_history_metrics,
    policy_output_kind,
    publish_stage,
    resolve_inputs,
)

log = logging.getLogger("alignlab")


@dataclass
class SourceSpec:
    """One data source of the mixture.

    Attributes:
        source: a file, `testbed:<name>`, a dataset artifact reference or a hub dataset name.
        weight: sampling weight (relative; see alignlab.data.mixture).
    """

    source: str = "testbed:pretrain"
    weight: float = 1.0


@dataclass
class PretrainData:
    """Pretraining data.

    Attributes:
        sources: the mixture's sources.
        total_tokens: mixture token budget; None = the sum of all sources' tokens.
        seq_len: packed sequence length.
        eval_share: share of packed chunks held out for perplexity.
    """

    sources: list[SourceSpec] = field(default_factory=lambda: [SourceSpec()])
    total_tokens: int | None = None
    seq_len: int = 128
    eval_share: float = 0.05


@dataclass
class VocabGroup:
    """Vocabulary extension before training (new embedding rows start at the mean embedding).

    Attributes:
        add_tokens: tokens to add as they are.
        train_source: text of the new domain to learn extra BPE tokens from.
        train_new_tokens: how many new BPE tokens to learn from train_source.
    """

    add_tokens: list[str] = field(default_factory=list)
    train_source: str | None = None
    train_new_tokens: int = 0


@dataclass
class PretrainConfig:
    """Settings of a pretraining run.

    Attributes:
        output: artifact name to publish.
        data: sources, mixture and packing.
        vocab: optional vocabulary extension.
        train: optimisation (defaults suit the tiny models on CPU).
        adapter: full | lora (continued pretraining of a large model through a LoRA adapter;
            merged into the published model unless adapter.merge is false).
        eval: end-of-stage gold evaluation (testbed only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO, offload, precision, checkpointing (docs/scaling.md).
    """

    output: str = "pretrain"
    data: PretrainData = field(default_factory=PretrainData)
    vocab: VocabGroup = field(default_factory=VocabGroup)
    train: TrainGroup = field(default_factory=lambda: TrainGroup(epochs=1.0, lr=1e-3, batch_size=32))
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    eval: EvalGroup = field(default_factory=EvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)

    def __post_init__(self) -> None:
        if not self.data.sources:
            raise ConfigError("data.sources is empty: give at least one text source")
        if self.adapter.method not in (AdapterMethod.FULL, AdapterMethod.LORA):
            raise ConfigError(
                f"adapter.method={self.adapter.method}: pretraining supports full and lora "
                "(prompt tuning learns a task prompt, not text; QLoRA needs a CUDA GPU)"
            )
        vocab = self.vocab
        if self.adapter.method != AdapterMethod.FULL and (vocab.add_tokens or vocab.train_new_tokens):
            raise ConfigError(
                "vocab: new tokens need their embedding rows trained, which a LoRA adapter does not "
                "do; extend the vocabulary with adapter.method=full"
            )


def extend_vocabulary(model: Any, tokenizer: Any, cfg: VocabGroup, new_domain: list[str]) -> list[str]:
    """Add tokens (given, and/or learned as BPE tokens on ``new_domain`` text); resize embeddings.

    New input and output embedding rows are set to the mean of the existing rows, so the new
    tokens start as an "average" token rather than noise (Hewitt, 2021).
    """
    import torch

    wanted = list(cfg.add_tokens)
    if cfg.train_new_tokens > 0:
        if not new_domain:
            raise ConfigError("vocab.train_new_tokens > 0 needs vocab.train_source text")
        learned = tokenizer.train_new_from_iterator(
            new_domain, vocab_size=len(tokenizer) + cfg.train_new_tokens
        )
        existing = set(tokenizer.get_vocab())
        ranked = sorted(learned.get_vocab().items(), key=lambda kv: kv[1])
        fresh = [tok for tok, _ in ranked if tok not in existing]
        # learned tokens are byte-level symbols; decode them back to text for add_tokens
        decoded = [learned.convert_tokens_to_string([t]) for t in fresh]
        wanted += [t for t in decoded if t.strip() and len(t) > 1][: cfg.train_new_tokens]
    if not wanted:
        return []
    old_size = len(tokenizer)
    added = tokenizer.add_tokens(list(dict.fromkeys(wanted)))
    if added == 0:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            emb.weight[old_size:] = emb.weight[:old_size].mean(dim=0, keepdim=True)
    new_tokens = tokenizer.convert_ids_to_tokens(list(range(old_size, len(tokenizer))))
    log.info("vocabulary extended by %d tokens", len(new_tokens))
    return new_tokens


class Pretrain:
    """Continued pretraining with packing, mixtures and optional vocabulary extension.

    Example:
        >>> from alignlab import Pretrain, Registry
        >>> art = Pretrain({"train": {"max_steps": 50}}).run(Registry(), model="base")  # doctest: +SKIP
        >>> art.metrics["perplexity"]  # doctest: +SKIP
    """

    name = "pretrain"
    config_cls = PretrainConfig
    inputs = (Input("model", doc="the model to continue pretraining"),)

    def __init__(self, config: PretrainConfig | dict | None = None) -> None:
        self.config = load_config(PretrainConfig, config)
        check_distributed(self.config.distributed, self.config.adapter)

    def run(
        self, registry: Registry | None = None, *, model: str | None = None, force: bool = False
    ) -> Artifact:
        cfg = self.config
        registry = registry or Registry()
        inputs, data = self._prepare(registry, model)

        def body(run: StageRun) -> None:
            self._train(run, cfg)

        return publish_stage(
            self,
            registry,
            inputs=inputs,
            data=data,
            force=force,
            body=body,
        )

    def output_kind(self) -> str:
        return policy_output_kind(self.config.adapter)

    def check(self, registry: Registry, *, model: Any = None) -> None:
        self._prepare(registry, model)

    def _prepare(self, registry: Registry, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The input and every text source, read and validated."""
        from alignlab.data import load_records

        cfg = self.config
        inputs = resolve_inputs(registry, self, {"model": model})
        data = {
            f"source{i}": load_records(s.source, kind="text", registry=registry)
            for i, s in enumerate(cfg.data.sources)
        }
        if cfg.vocab.train_source:
            data["vocab"] = load_records(cfg.vocab.train_source, kind="text", registry=registry)
        return inputs, data

    def _train(self, run: StageRun, cfg: PretrainConfig) -> None:
        import random

        from transformers import Trainer, TrainingArguments, default_data_collator

        from alignlab.data.mixture import sample_mixture
        from alignlab.data.packing import count_tokens, pack_documents
        from alignlab.eval.perplexity import perplexity
        from alignlab.models import load_causal_lm, save_model
        from alignlab.models.adapters import finalize, peft_config

        model, tok = load_causal_lm(run.inputs["model"], run.registry, merge_adapter=True)
        vocab_text = [r["text"] for r in run.data["vocab"].records] if "vocab" in run.data else []
        new_tokens = extend_vocabulary(model, tok, cfg.vocab, vocab_text)

        sources = {}
        for i, spec in enumerate(cfg.data.sources):
            texts = [r["text"] for r in run.data[f"source{i}"].records]
            sources[spec.source] = tok(texts, add_special_tokens=False)["input_ids"]
        weights = {spec.source: spec.weight for spec in cfg.data.sources}
        docs, shares = sample_mixture(sources, weights, cfg.data.total_tokens, seed=cfg.train.seed)
        chunks = pack_documents(docs, cfg.data.seq_len, tok.eos_token_id, tok.pad_token_id)
        random.Random(cfg.train.seed).shuffle(chunks)
        n_eval = max(1, int(len(chunks) * cfg.data.eval_share)) if cfg.data.eval_share > 0 else 0
        eval_chunks, train_chunks = chunks[:n_eval], chunks[n_eval:]
        if not train_chunks:
            raise ConfigError("pretraining data packs into no training sequences: add data or lower seq_len")
        for share in shares:
            log.info(
                "mixture %s: weight %.2f, %d of %d tokens, %.2f epochs",
                share.name,
                share.weight,
                share.sampled_tokens,
                share.available_tokens,
                share.epochs,
            )

        lora = peft_config(cfg.adapter)
        if lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, lora)
        args = TrainingArguments(**hf_training_args(cfg.train, cfg.tracking, cfg.output, cfg.distributed))
        trainer = Trainer(
            model=model, args=args, train_dataset=train_chunks, data_collator=default_data_collator
        )
        trainer.train()
        model = main_process_model(trainer.model)
        if model is None:  # another process: the main one evaluates and publishes
            return

        metrics: dict[str, Any] = log_history_metrics(trainer.state.log_history)
        metrics["trainable_parameters"] = trainable_parameters(trainer.model)
        metrics["train_tokens"] = count_tokens(train_chunks)
        metrics["mixture"] = {
            s.name: {
                "weight": s.weight,
                "available_tokens": s.available_tokens,
                "sampled_tokens": s.sampled_tokens,
                "epochs": round(s.epochs, 4),
            }
            for s in shares
        }
        if new_tokens:
            metrics["new_tokens"] = new_tokens
        if eval_chunks:
            ppl = perplexity(model, eval_chunks, batch_size=cfg.train.batch_size)
            metrics["perplexity"] = ppl["perplexity"]
            metrics["eval_nll"] = ppl["nll"]
        metrics.update(
            gold_metrics(model, tok, cfg.eval, uses_testbed(*(s.source for s in cfg.data.sources)))
        )
        save_model(finalize(model, cfg.adapter), tok, run.dir)
        run.metrics.update(metrics)
