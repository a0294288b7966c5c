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

Usage:
    .venv/bin/python benchmarks/stage_overhead.py --fixture DIR --task sft --side alignlab --out r.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
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


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


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


def alignlab_side(task: str, fixture: Path, tmp: Path, train: dict) -> int:
    from alignlab import DPO, SFT, Registry, RewardModel

    registry = Registry(tmp / "registry")
    policy = str(fixture / "policy")
    no_gold = {"gold": False}
    if task in ("sft", "sft_packed"):
        cfg = {
            "data": {"source": str(fixture / "sft.jsonl"), "max_length": MAX_LENGTH},
            "train": train,
            "packing": task == "sft_packed",
            "eval": no_gold,
        }
        art = SFT(cfg).run(registry, model=policy)
    elif task == "reward":
        cfg = {
            "data": {"source": str(fixture / "prefs.jsonl"), "max_length": MAX_LENGTH, "eval_share": 0.0},
            "train": train,
            "loss": {"use_margin": False},
            "eval": no_gold,
        }
        art = RewardModel(cfg).run(registry, model=policy)
    else:
        cfg = {
            "data": {"source": str(fixture / "prefs.jsonl"), "max_length": MAX_LENGTH},
            "train": train,
            "kl": {"n": 0},
            "eval": no_gold,
        }
        art = DPO(cfg).run(registry, model=policy)
    return int(art.metrics.get("train_tokens", 0) or 0)


def trl_side(task: str, fixture: Path, tmp: Path, train: dict) -> int:
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
    tok = AutoTokenizer.from_pretrained(fixture / "policy")
    if task in ("sft", "sft_packed"):
        model = AutoModelForCausalLM.from_pretrained(fixture / "policy")
        data = Dataset.from_list([{"messages": r["messages"]} for r in records(fixture / "sft.jsonl")])
        args = trl.SFTConfig(**common, packing=task == "sft_packed", assistant_only_loss=True)
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    elif task == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(fixture / "policy", num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        data = Dataset.from_list(conversational_pairs(records(fixture / "prefs.jsonl")))
        args = trl.RewardConfig(**common)
        trainer = trl.RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    else:
        model = AutoModelForCausalLM.from_pretrained(fixture / "policy")
        reference = AutoModelForCausalLM.from_pretrained(fixture / "policy")
        data = Dataset.from_list(conversational_pairs(records(fixture / "prefs.jsonl")))
        args = trl.DPOConfig(**common, beta=0.1, loss_type="sigmoid")
        trainer = trl.DPOTrainer(
            model=model, ref_model=reference, args=args, train_dataset=data, processing_class=tok
        )
    trainer.train()
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
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import transformers  # noqa: F401  (imports are not part of the time)
    import trl  # noqa: F401

    if args.side == "alignlab":
        import alignlab  # noqa: F401
    train = settings(args)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        (alignlab_side if args.side == "alignlab" else trl_side)(args.task, args.fixture, Path(tmp), train)
        seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.task.startswith("sft"):
        tokens = count_sft_tokens(args.fixture, args.steps, args.batch, args.task == "sft_packed")
        result["train_tokens"] = tokens
        result["tokens_per_s"] = tokens / seconds
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
