"""Stage overhead: an alignlab stage against calling the TRL trainer directly, same settings.

One task per process (``--task sft|sft_packed|reward|dpo``, ``--side alignlab|trl``). Both sides
start from the same fixture folder (model, tokenizer, JSONL data), train the same number of
optimiser steps with the same batch size, learning rate, schedule and sequence length, and end
with the trained model saved to disk. The time is the wall clock from "nothing loaded" (imports
done) to "model saved": alignlab's includes what the stage adds (resolving and fingerprinting
inputs, data validation, publishing the artifact with checksums); TRL's the same loading, the
trainer and ``save_model``.

The RewardModel stage has its own accelerate loop (not TRL's); its raw peer is TRL's
``RewardTrainer`` on the same pairs. Gold evaluations (testbed-only extras) are off on the
alignlab side; the reward stage's end-of-training score statistics (used by PPO's reward
normalisation) are part of the stage and stay in.

With ``--model DIR --lora`` (the ``real`` benchmark: SmolLM2-135M-Instruct) both sides train the
same LoRA adapter (r 16, alpha 32, every linear layer; the reward model's score head in full) on
that model, and the time that matters is the training loop alone: ``train_s`` is the wall time
of the trainer's ``train()`` call (TRL's on both sides for SFT and DPO, alignlab's own loop for the
reward model), measured by wrapping that one call; ``steps_per_s`` is steps / train_s. The TRL
side trains SFT on every token (``assistant_only_loss`` refuses a template without
``{% generation %}`` markers, which is SmolLM2's), alignlab on the assistant tokens: the same
tokens go through the model, so the compute is the same.

Usage:
    .venv/bin/python benchmarks/stage_overhead.py --fixture DIR --task sft --side alignlab --out r.json
    .venv/bin/python benchmarks/stage_overhead.py --fixture DIR --model SMOLLM2_DIR --lora --task dpo ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_LENGTH = 128


def settings(args: argparse.Namespace) -> dict:
    return {
        "max_steps": args.steps,
        "epochs": 1.0,
        "lr": 1e-4,
        "batch_size": args.batch,
        "grad_accum": 1,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler": "linear",
        "max_grad_norm": 1.0,
        "seed": 0,
        "logging_steps": max(1, args.steps // 4),
    }


LIMIT: int | None = None  # --limit: both sides read only the first N records


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)][:LIMIT]


def conversational_pairs(rows: list[dict]) -> list[dict]:
    """TRL's conversational preference rows (what both stages build from the same records)."""
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


LORA = {"r": 16, "alpha": 32}
TRAIN_SECONDS: list[float] = []  # one entry per timed train() call


@contextlib.contextmanager
def timed(owner: object, name: str) -> Iterator[None]:
    """Record the wall time of every call of ``owner.name`` in TRAIN_SECONDS."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TRAIN_SECONDS.append(time.perf_counter() - started)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def alignlab_side(task: str, fixture: Path, tmp: Path, train: dict, model: Path, lora: bool) -> int:
    import transformers

    import alignlab.stages.reward as reward_stage
    from alignlab import DPO, SFT, Registry, RewardModel

    registry = Registry(tmp / "registry")
    policy = str(model)
    no_gold = {"gold": False}
    limit = {"limit": LIMIT} if LIMIT else {}
    adapter = {"adapter": {"method": "lora", **LORA}} if lora else {}
    if task in ("sft", "sft_packed"):
        cfg = {
            "data": {"source": str(fixture / "sft.jsonl"), "max_length": MAX_LENGTH, **limit},
            "train": train,
            "packing": task == "sft_packed",
            "eval": no_gold,
            **adapter,
        }
        with timed(transformers.Trainer, "train"):
            art = SFT(cfg).run(registry, model=policy)
    elif task == "reward":
        cfg = {
            "data": {
                "source": str(fixture / "prefs.jsonl"),
                "max_length": MAX_LENGTH,
                "eval_share": 0.0,
                **limit,
            },
            "train": train,
            "loss": {"use_margin": False},
            "eval": no_gold,
            **adapter,
        }
        with timed(reward_stage, "fit"):
            art = RewardModel(cfg).run(registry, model=policy)
    else:
        cfg = {
            "data": {"source": str(fixture / "prefs.jsonl"), "max_length": MAX_LENGTH, **limit},
            "train": train,
            "kl": {"n": 0},
            "eval": no_gold,
            **adapter,
        }
        with timed(transformers.Trainer, "train"):
            art = DPO(cfg).run(registry, model=policy)
    return int(art.metrics.get("train_tokens", 0) or 0)


def trl_side(task: str, fixture: Path, tmp: Path, train: dict, model_dir: Path, lora: bool) -> int:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    common = dict(
        output_dir=str(tmp / "out"),
        max_steps=train["max_steps"],
        learning_rate=train["lr"],
        per_device_train_batch_size=train["batch_size"],
        gradient_accumulation_steps=1,
        warmup_steps=0.0,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        max_grad_norm=train["max_grad_norm"],
        seed=0,
        data_seed=0,
        logging_steps=train["logging_steps"],
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        bf16=False,
        max_length=MAX_LENGTH,
        dataset_num_proc=None,
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def peft(task_type: str):
        from peft import LoraConfig

        if not lora:
            return None
        return LoraConfig(
            task_type=task_type, r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear"
        )

    if task in ("sft", "sft_packed"):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        data = Dataset.from_list([{"messages": r["messages"]} for r in records(fixture / "sft.jsonl")])
        from trl.chat_template_utils import has_generation_markers

        masked = has_generation_markers(tok.chat_template)  # TRL can mask only templates with markers
        args = trl.SFTConfig(**common, packing=task == "sft_packed", assistant_only_loss=masked)
        trainer = trl.SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft("CAUSAL_LM")
        )
    elif task == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        data = Dataset.from_list(conversational_pairs(records(fixture / "prefs.jsonl")))
        args = trl.RewardConfig(**common)
        trainer = trl.RewardTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft("SEQ_CLS")
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        reference = None if lora else AutoModelForCausalLM.from_pretrained(model_dir)
        data = Dataset.from_list(conversational_pairs(records(fixture / "prefs.jsonl")))
        args = trl.DPOConfig(**common, beta=0.1, loss_type="sigmoid")
        trainer = trl.DPOTrainer(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=data,
            processing_class=tok,
            peft_config=peft("CAUSAL_LM"),
        )
    started = time.perf_counter()
    trainer.train()
    TRAIN_SECONDS.append(time.perf_counter() - started)
    trainer.save_model(str(tmp / "model"))
    tok.save_pretrained(str(tmp / "model"))
    return 0


def count_sft_tokens(fixture: Path, steps: int, batch: int, packed: bool) -> int:
    """Real (non-padding) tokens the SFT run trains on: ``steps * batch`` rows, cycling the data.

    Padded rows hold one example each; packed rows are TRL's best-fit-decreasing packs of
    ``MAX_LENGTH`` tokens (``trl.pack_dataset``, what SFTTrainer uses). Counted from the tokenized
    data, not from the trainer.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    tok = AutoTokenizer.from_pretrained(fixture / "policy")
    ids = [
        tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][:MAX_LENGTH]
        for r in records(fixture / "sft.jsonl")
    ]
    if packed:
        rows = pack_dataset(Dataset.from_dict({"input_ids": ids}), MAX_LENGTH, strategy="bfd")
        lengths = [len(r) for r in rows["input_ids"]]
    else:
        lengths = [len(r) for r in ids]
    return sum(lengths[i % len(lengths)] for i in range(steps * batch))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", required=True, type=Path)
    p.add_argument("--task", required=True, choices=["sft", "sft_packed", "reward", "dpo"])
    p.add_argument("--side", required=True, choices=["alignlab", "trl"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", type=Path, default=None, help="policy folder (default: the fixture's)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter on both sides")
    p.add_argument("--limit", type=int, default=None, help="both sides read only the first N records")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import transformers  # noqa: F401  (imports are not part of the time)
    import trl  # noqa: F401

    if args.side == "alignlab":
        import alignlab  # noqa: F401
    global LIMIT
    LIMIT = args.limit
    train = settings(args)
    model = args.model or args.fixture / "policy"
    side = alignlab_side if args.side == "alignlab" else trl_side
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        side(args.task, args.fixture, Path(tmp), train, model, args.lora)
        seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if len(TRAIN_SECONDS) == 1:
        result["train_s"] = TRAIN_SECONDS[0]
        result["steps_per_s"] = args.steps / TRAIN_SECONDS[0]
    if args.task.startswith("sft") and args.model is None:
        tokens = count_sft_tokens(args.fixture, args.steps, args.batch, args.task == "sft_packed")
        result["train_tokens"] = tokens
        result["tokens_per_s"] = tokens / seconds
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
