"""Where a PPO run's time goes: the alignlab PPO stage on the fixture, profiled twice.

1. ``torch.profiler`` (CPU activities): the operators with the most self CPU time.
2. ``cProfile``: the Python functions with the most cumulative time (the phases and what they call),
   and the ones with the most own time (per-call Python overhead).

Writes the top items as Markdown (for docs/performance.md) and JSON.

Usage:
    .venv/bin/python benchmarks/profile_ppo.py --fixture DIR --out profile.json [--steps 3 ...]
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import markdown_table  # noqa: E402
from ppo_settings import parse_args  # noqa: E402

TOP = 12


def run_once(args, fixture: Path) -> None:
    from alignlab import PPO, Registry

    config = {
        "data": {"source": str(fixture / "prompts.jsonl")},
        "train": {"batch_size": args.batch, "max_steps": args.steps, "lr": args.lr, "max_grad_norm": 0.0},
        "ppo": {"epochs": args.epochs, "mini_batch_size": args.minibatch},
        "generation": {"max_new_tokens": args.response_length, "batch_size": args.forward_batch},
        "reward_clip": None,
        "checkpoint_every": 0,
        "eval": {"gold": False, "gold_every": 0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        PPO(config).run(Registry(Path(tmp)), model=str(fixture / "policy"), reward=str(fixture / "reward"))


def main() -> None:
    args = parse_args(__doc__)
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    fixture = Path(args.fixture)
    run_once(args, fixture)  # warm caches (imports, tokenizer files) outside both profiles

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_once(args, fixture)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events) or 1
    ops = [
        {
            "op": e.key,
            "calls": e.count,
            "self_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total_us,
        }
        for e in events[:TOP]
    ]

    profiler = cProfile.Profile()
    profiler.enable()
    run_once(args, fixture)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = max(v[3] for v in stats.stats.values())  # the outermost cumulative time

    def rows(key: int, keep) -> list[dict]:
        picked = []
        for (file, line, name), (_cc, ncalls, tottime, cumtime, _) in sorted(
            stats.stats.items(), key=lambda kv: kv[1][key], reverse=True
        ):
            if keep(file, name):
                where = file.split("site-packages/")[-1].split("/work/main/")[-1]
                picked.append(
                    {
                        "function": f"{where}:{line} {name}",
                        "calls": ncalls,
                        "own_s": tottime,
                        "cum_s": cumtime,
                        "share": cumtime / total,
                    }
                )
            if len(picked) == TOP:
                break
        return picked

    ours = rows(
        3,
        lambda f, n: "alignlab/" in f and n not in ("run", "run_stage", "_train", "_train_with", "<lambda>"),
    )
    own = rows(2, lambda f, n: not f.startswith("~") and "{" not in n)
    md = (
        "### Profile of one PPO run\n\n"
        f"`benchmarks/profile_ppo.py`: the alignlab PPO stage, `--steps {args.steps} --batch {args.batch} "
        f"--minibatch {args.minibatch} --epochs {args.epochs} --response-length {args.response_length}`, "
        "loading included.\n\n"
        "alignlab functions by cumulative time (cProfile):\n\n"
        + markdown_table(
            ["function", "calls", "cum s", "share"],
            [[f"`{r['function']}`", r["calls"], f"{r['cum_s']:.2f}", f"{r['share']:.0%}"] for r in ours],
        )
        + "\n\nPython functions by own time (cProfile; per-call overhead):\n\n"
        + markdown_table(
            ["function", "calls", "own s"],
            [[f"`{r['function']}`", r["calls"], f"{r['own_s']:.2f}"] for r in own],
        )
        + "\n\nOperators by self CPU time (torch.profiler):\n\n"
        + markdown_table(
            ["operator", "calls", "self s", "share"],
            [[f"`{r['op']}`", r["calls"], f"{r['self_s']:.2f}", f"{r['share']:.0%}"] for r in ops],
        )
        + "\n"
    )
    Path(args.out).write_text(
        json.dumps({"ops": ops, "alignlab_cumulative": ours, "own_time": own, "markdown": md})
    )
    print(md)


if __name__ == "__main__":
    main()
