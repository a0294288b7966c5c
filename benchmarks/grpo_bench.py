"""GRPO contender: alignlab's ``grpo`` stage or TRL 1.16's ``GRPOTrainer`` (both installed in
alignlab's venv), on the shared fixture policy and prompts, with the same settings.

Identical on both sides: the fixture policy and tokenizer, the first ``--prompts`` fixture prompts,
``--batch`` prompts per step × ``--generations`` completions, ``--response-length`` new tokens,
temperature 1, β = 0 (no reference model), ε = 0.2, the token-mean loss (TRL's default
``loss_type="dapo"``), group-normalised advantages (TRL's ``scale_rewards="group"``), one optimiser
step per generation batch, AdamW at ``--lr`` with a constant schedule, no gradient clipping, fp32,
and the reward function :func:`brevity` (a verifiable reward the untrained policy can move).

Timed: each step from sampling to the end of the optimiser step (TRL: between ``on_step_begin``
and ``on_step_end``; alignlab: the step's own clock), leaving out the first ``--warmup`` steps.
Written as JSON: episodes (completions) per second, per CPU-second, the reward curve, peak RSS.

Usage:
    .venv/bin/python benchmarks/grpo_bench.py --side alignlab|trl --fixture DIR --out result.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def brevity(prompts: list, completions: list, **_: object) -> list[float]:
    """3 / (1 + words): higher for shorter answers. Takes TRL's conversational completions (lists
    of messages) and alignlab's strings alike."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [3.0 / (1.0 + len(t.split())) for t in texts]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["alignlab", "trl"], required=True)
    p.add_argument("--fixture", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def prompts_file(fixture: Path, n: int, folder: Path) -> Path:
    lines = (fixture / "prompts.jsonl").read_text().splitlines()[:n]
    out = folder / "prompts.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def run_alignlab(args: argparse.Namespace, fixture: Path, tmp: Path) -> list[dict]:
    from alignlab import GRPO, Registry

    steps: list[dict] = []

    def on_step(step: int, entry: dict) -> None:
        steps.append({"s": entry["time_step"], "cpu": time.process_time(), "reward": entry["reward_score"]})

    config = {
        "data": {"source": str(prompts_file(fixture, args.prompts, tmp)), "max_prompt_length": 128},
        "train": {
            "batch_size": args.batch,
            "max_steps": args.steps,
            "lr": args.lr,
            "lr_scheduler": "constant",
            "weight_decay": 0.0,
            "max_grad_norm": 0.0,
            "seed": args.seed,
        },
        "grpo": {"num_generations": args.generations, "mini_batch_size": 0, "kl_coef": 0.0},
        "generation": {"max_new_tokens": args.response_length, "temperature": 1.0, "batch_size": 256},
        "checkpoint_every": 0,
        "eval": {"gold": False, "gold_every": 0},
    }
    GRPO(config, callbacks=[on_step]).run(
        Registry(tmp / "registry"), model=str(fixture / "policy"), reward=brevity
    )
    return steps


def run_trl(args: argparse.Namespace, fixture: Path, tmp: Path) -> list[dict]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append({"s": time.perf_counter() - self.started, "cpu": time.process_time()})

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "reward" in logs and steps:
                steps[-1]["reward"] = logs["reward"]

    data = load_dataset("json", data_files=str(prompts_file(fixture, args.prompts, tmp)), split="train")
    tok = AutoTokenizer.from_pretrained(fixture / "policy")
    model = AutoModelForCausalLM.from_pretrained(fixture / "policy")
    config = GRPOConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=args.batch * args.generations,
        gradient_accumulation_steps=1,
        num_generations=args.generations,
        max_completion_length=args.response_length,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
    )
    GRPOTrainer(
        model=model,
        reward_funcs=brevity,
        args=config,
        train_dataset=data,
        processing_class=tok,
        callbacks=[Clock()],
    ).train()
    return steps


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    fixture = Path(args.fixture)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cpu0 = time.process_time()
        steps = (run_alignlab if args.side == "alignlab" else run_trl)(args, fixture, Path(tmp))
        total = time.perf_counter() - started
    cpus = [cpu0] + [s["cpu"] for s in steps]
    for i, s in enumerate(steps):
        s["cpu_s"] = cpus[i + 1] - cpus[i]
    timed = steps[args.warmup :] or steps
    episodes = args.batch * args.generations
    result = {
        "episodes_per_s": len(timed) * episodes / sum(s["s"] for s in timed),
        "episodes_per_cpu_s": len(timed) * episodes / sum(s["cpu_s"] for s in timed),
        "step_s": statistics.mean(s["s"] for s in timed),
        "reward_curve": [s.get("reward") for s in steps],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "process_s": total,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
