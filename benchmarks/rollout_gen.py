"""Rollout generation: tokens/s of PPO's sampling (``alignlab.rl.rollout.sample_responses``)
against a plain ``model.generate`` loop on the same model, prompts and settings, per batch size.

Both sample with temperature 1, top-k 0, top-p 1, KV cache, up to ``--new-tokens`` tokens, stop at
EOS. Tokens counted are the real response tokens (up to and including each row's first EOS), by
the same rule on both sides. The two alternate in one process (A B, B A, ...), after one warm-up
call each per batch size.

Usage:
    .venv/bin/python benchmarks/rollout_gen.py --fixture DIR --out rollout.json [--batch-sizes 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import alternating_order  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", required=True, type=Path)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompts", type=int, default=64, help="prompts per measurement (at least one batch)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.models.generation import left_pad
    from alignlab.rl.rollout import response_mask, sample_responses
    from alignlab.stages.ppo import GenerationSettings

    tok = AutoTokenizer.from_pretrained(args.fixture / "policy")
    model = AutoModelForCausalLM.from_pretrained(args.fixture / "policy").eval()
    records = [json.loads(line) for line in open(args.fixture / "prompts.jsonl")]
    queries = [
        list(
            tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in records
    ]
    eos = [tok.eos_token_id]

    def rollout(query, mask, b):
        settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=b)
        return sample_responses(model, query, mask, settings, eos, tok.pad_token_id)

    @torch.inference_mode()
    def plain(query, mask, b):
        outs = []
        for i in range(0, query.shape[0], b):
            out = model.generate(
                input_ids=query[i : i + b],
                attention_mask=mask[i : i + b],
                max_new_tokens=args.new_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
            outs.append(out[:, query.shape[1] :])
        width = max(o.shape[1] for o in outs)
        return torch.cat(
            [torch.nn.functional.pad(o, (0, width - o.shape[1]), value=tok.pad_token_id) for o in outs]
        )

    contenders = {"alignlab": rollout, "generate": plain}
    results: dict[str, dict[str, list[float]]] = {}
    for b in args.batch_sizes:
        n = max(b, min(args.prompts, 16 if b < 4 else args.prompts))  # small batches: fewer calls
        query, mask = left_pad(queries[:n], tok.pad_token_id)
        for fn in contenders.values():  # warm-up
            fn(query[:b], mask[:b], b)
        results[str(b)] = {name: [] for name in contenders}
        for name in alternating_order(list(contenders), args.reps):
            torch.manual_seed(len(results[str(b)][name]))
            start = time.perf_counter()
            response = contenders[name](query, mask, b)
            seconds = time.perf_counter() - start
            tokens = int(response_mask(response, eos)[0].sum())
            results[str(b)][name].append(tokens / seconds)
        print(
            f"batch {b:3d}: "
            + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.0f} tok/s" for k, v in results[str(b)].items()),
            file=sys.stderr,
            flush=True,
        )
    Path(args.out).write_text(json.dumps({"new_tokens": args.new_tokens, "tokens_per_s": results}))


if __name__ == "__main__":
    main()
