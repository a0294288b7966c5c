"""The shared workload: one tiny policy, one reward model, one tokenizer and prompt files, on disk.

Built once in alignlab's venv; every contender (alignlab or a peer, in its own venv) loads the
same folders with plain ``transformers``, so the models, tokenizer and prompts are identical.

Layout of ``FOLDER``::

    policy/        LlamaForCausalLM + tokenizer (safetensors)
    reward/        LlamaForSequenceClassification (1 label): the policy's body, a seeded score head
    prompts.jsonl  {"prompt": [{"role": "user", "content": ...}]} per line (testbed RL prompts)
    sft.jsonl      {"messages": [...]} (testbed demonstrations, variable length)
    prefs.jsonl    {"prompt", "chosen", "rejected"} (testbed preference pairs)

Usage:
    .venv/bin/python benchmarks/fixture.py FOLDER [--size demo]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build(folder: Path, size: str = "demo", n_prompts: int = 512, seed: int = 0) -> Path:
    """Write the workload into ``folder`` (skipped when it is already complete)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from alignlab.models import save_model, tiny_llama, train_bpe_tokenizer
    from alignlab.testbed import source

    done = folder / "DONE"
    if done.exists() and done.read_text().strip() == f"{size} {n_prompts} {seed}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_bpe_tokenizer((r["text"] for r in source("tokenizer")), vocab_size=1024)
    tok.padding_side = "left"  # generation pads on the left; both sides read it from here
    policy = tiny_llama(
        size,
        len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        seed=seed,
    )
    save_model(policy, tok, folder / "policy")

    reward = LlamaForSequenceClassification.from_pretrained(folder / "policy", num_labels=1)
    reward.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        reward.score.weight.copy_(torch.randn(reward.score.weight.shape, generator=gen) * 0.5)
    save_model(reward, tok, folder / "reward")

    def write(name: str, records: list[dict]) -> None:
        with open(folder / name, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    write(
        "prompts.jsonl",
        [{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in source("prompts", n=n_prompts)],
    )
    write("sft.jsonl", source("sft", n=1024, seed=seed))
    write("prefs.jsonl", source("preferences", n=512, seed=seed))
    done.write_text(f"{size} {n_prompts} {seed}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", default="demo", choices=["test", "demo"])
    args = parser.parse_args()
    print(build(args.folder, args.size))


if __name__ == "__main__":
    main()
