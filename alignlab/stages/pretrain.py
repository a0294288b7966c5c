"""`Pretrain`: continued pretraining (and from scratch for the tiny base) on packed text.

Next-token loss on documents packed into ``seq_len`` chunks (long documents span chunks, nothing
is truncated away), drawn from a weighted mixture of sources, with optional vocabulary
extension before training and held-out perplexity after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from alignlab.config import check_range, load_config
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


class VocabSchedule(StrEnum):
    """What trains after a vocabulary extension (Chinese-LLaMA's two stages, Cui et al. 2023 §3)."""

    FULL = "full"  # every weight (adapter.method full)
    NEW_ROWS = "new_rows"  # stage 1: only the new rows of the input embeddings and the LM head
    LORA_EMBEDDINGS = "lora_embeddings"  # stage 2: LoRA, with embeddings and LM head trained whole


@dataclass
class VocabGroup:
    """Vocabulary extension before training (new embedding rows start at the mean embedding).

    Attributes:
        add_tokens: strings to make single tokens. On a byte-level BPE tokenizer they become
            tokens through appended merges (so they never match inside another word); on other
            tokenizers they are added tokens.
        train_source: text of the new domain to learn new tokens from.
        train_new_tokens: how many new tokens (whole words or characters) to learn from
            train_source with a BPE trained on it, merged into the model's tokenizer
            (:mod:`alignlab.models.vocab`); the vocabulary grows by these plus the partial
            pieces their merges go through.
        max_token_chars: the longest learned string taken, in characters (chosen here: Chinese
            words are mostly 1-4 characters, and a BPE trained on a small, repetitive corpus
            otherwise learns whole phrases).
        split_digits: pre-tokenize every digit on its own, as LLaMA does (Touvron et al. 2023).
        schedule: what trains: ``full``; ``new_rows`` (Chinese-LLaMA's first stage: only the new
            embedding and LM-head rows, everything else frozen); ``lora_embeddings`` (its second
            stage: LoRA with the embeddings and LM head trained whole, ``modules_to_save``).
    """

    add_tokens: list[str] = field(default_factory=list)
    train_source: str | None = None
    train_new_tokens: int = 0
    max_token_chars: int = 8
    split_digits: bool = False
    schedule: VocabSchedule = VocabSchedule.FULL

    def __post_init__(self) -> None:
        check_range(self, "train_new_tokens", low=0)
        check_range(self, "max_token_chars", low=1)


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
        lora = self.adapter.method != AdapterMethod.FULL
        if vocab.schedule == VocabSchedule.LORA_EMBEDDINGS and not lora:
            raise ConfigError("vocab.schedule=lora_embeddings trains a LoRA adapter: set adapter.method=lora")
        if vocab.schedule == VocabSchedule.NEW_ROWS and (
            lora or not (vocab.add_tokens or vocab.train_new_tokens)
        ):
            raise ConfigError(
                "vocab.schedule=new_rows trains only the rows of tokens added in this stage: it needs "
                "adapter.method=full and vocab.add_tokens or vocab.train_new_tokens"
            )
        if (
            lora
            and vocab.schedule != VocabSchedule.LORA_EMBEDDINGS
            and (vocab.add_tokens or vocab.train_new_tokens)
        ):
            raise ConfigError(
                "vocab: new tokens need their embedding rows trained, which a plain LoRA adapter does not "
                "do; set vocab.schedule=lora_embeddings (embeddings and LM head trained whole) or adapter.method=full"
            )


def extend_vocabulary(model: Any, tokenizer: Any, cfg: VocabGroup, new_domain: list[str]) -> dict[str, Any]:
    """Extend ``tokenizer`` (in place) as ``cfg`` says and resize ``model``'s embeddings.

    New input and output embedding rows are set to the mean of the existing rows, so the new
    tokens start as an "average" token rather than noise (Hewitt, 2021). Returns the metrics:
    ``new_tokens`` (the strings that became tokens), ``vocab_added`` (entries added),
    ``vocab_first_new_id``, and on the new domain's text ``tokens_per_char_before`` / ``_after``.
    """
    import torch

    from alignlab.models import vocab

    out: dict[str, Any] = {}
    if cfg.split_digits:
        vocab.split_digits(tokenizer)
        out["split_digits"] = True
    wanted = list(cfg.add_tokens)
    if cfg.train_new_tokens > 0 and not new_domain:
        raise ConfigError("vocab.train_new_tokens > 0 needs vocab.train_source text")
    if new_domain:
        out["tokens_per_char_before"] = vocab.tokens_per_char(tokenizer, new_domain)
    if cfg.train_new_tokens > 0:
        learned = vocab.learned_words(
            tokenizer, new_domain, cfg.train_new_tokens, max_chars=cfg.max_token_chars
        )
        wanted += learned
    if not wanted:
        return out
    old_size = len(tokenizer)
    if vocab.is_byte_level_bpe(tokenizer):
        extension = vocab.merge_vocabulary(tokenizer, wanted)
        first, words = extension.first_id, extension.words
    else:
        first = old_size
        tokenizer.add_tokens(list(dict.fromkeys(wanted)))
        words = tokenizer.convert_ids_to_tokens(list(range(old_size, len(tokenizer))))
    if len(tokenizer) == old_size:
        return out
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            emb.weight[first : len(tokenizer)] = emb.weight[:first].mean(dim=0, keepdim=True)
    out.update(new_tokens=words, vocab_added=len(tokenizer) - old_size, vocab_first_new_id=first)
    if new_domain:
        out["tokens_per_char_after"] = vocab.tokens_per_char(tokenizer, new_domain)
    log.info(
        "vocabulary extended: %d new tokens (%d entries)%s",
        len(words),
        len(tokenizer) - old_size,
        f", tokens per character on the new domain {out['tokens_per_char_before']:.3f} -> "
        f"{out['tokens_per_char_after']:.3f}"
        if new_domain
        else "",
    )
    return out


def embedding_modules(model: Any) -> list[str]:
    """The names of the input-embedding and LM-head modules (one when they are tied)."""
    by_id = {id(m): name for name, m in model.named_modules()}
    names = [by_id[id(model.get_input_embeddings())]]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        names.append(by_id[id(head)])
    return [n.rsplit(".", 1)[-1] for n in names]


def train_only_new_rows(model: Any, first_new_id: int) -> Any:
    """Freeze all but the embedding and LM-head rows from ``first_new_id`` on: their gradients of
    the old rows are zeroed, and a Trainer callback puts the old rows back after each step (so
    that weight decay cannot move them either). Returns the callback."""
    import torch
    from transformers import TrainerCallback

    tensors = {
        id(e.weight): e.weight
        for e in (model.get_input_embeddings(), model.get_output_embeddings())
        if e is not None
    }
    for param in model.parameters():
        param.requires_grad_(id(param) in tensors)
    saved = {key: w.detach()[:first_new_id].clone() for key, w in tensors.items()}

    def keep_old_rows(grad: Any) -> Any:
        grad = grad.clone()
        grad[:first_new_id] = 0
        return grad

    for weight in tensors.values():
        weight.register_hook(keep_old_rows)

    class RestoreOldRows(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            with torch.no_grad():
                for key, weight in tensors.items():
                    weight[:first_new_id] = saved[key]

    return RestoreOldRows()


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
        vocab_metrics = extend_vocabulary(model, tok, cfg.vocab, vocab_text)

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
        callbacks = []
        if cfg.vocab.schedule == VocabSchedule.NEW_ROWS:
            callbacks.append(train_only_new_rows(model, vocab_metrics["vocab_first_new_id"]))
        if lora is not None:
            from peft import get_peft_model

            if cfg.vocab.schedule == VocabSchedule.LORA_EMBEDDINGS:
                lora.modules_to_save = embedding_modules(model)
            model = get_peft_model(model, lora)
        args = TrainingArguments(**hf_training_args(cfg.train, cfg.tracking, cfg.output, cfg.distributed))
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_chunks,
            data_collator=default_data_collator,
            callbacks=callbacks,
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
        metrics.update(vocab_metrics)
        if eval_chunks:
            ppl = perplexity(model, eval_chunks, batch_size=cfg.train.batch_size)
            metrics["perplexity"] = ppl["perplexity"]
            metrics["eval_nll"] = ppl["nll"]
        metrics.update(
            gold_metrics(model, tok, cfg.eval, uses_testbed(*(s.source for s in cfg.data.sources)))
        )
        save_model(finalize(model, cfg.adapter), tok, run.dir)
        run.metrics.update(metrics)
