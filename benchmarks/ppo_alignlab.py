"""PPO contender: alignlab's PPO stage on the shared fixture (run in alignlab's venv).

Runs ``alignlab.PPO`` end to end on a throw-away registry, with the settings of
``ppo_settings.py`` (the TRL contender reads the same ones), and writes per-step times, the reward
curve and the peak RSS as JSON.

Usage:
    .venv/bin/python benchmarks/ppo_alignlab.py --fixture DIR --out result.json [--steps 8 ...]
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ppo_settings import parse_args, summarise  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    import torch

    torch.set_num_threads(args.threads)
    from alignlab import PPO, Registry

    fixture = Path(args.fixture)
    config = {
        "data": {"source": str(fixture / "prompts.jsonl"), "max_prompt_length": 128},
        "train": {
            "batch_size": args.batch,
            "max_steps": args.steps,
            "lr": args.lr,
            "lr_scheduler": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 0.0,  # 0 = no clipping: TRL's PPO loop never clips gradients
            "seed": args.seed,
        },
        "ppo": {"epochs": args.epochs, "mini_batch_size": args.minibatch},
        "generation": {
            "max_new_tokens": args.response_length,
            "temperature": args.temperature,
            "batch_size": args.forward_batch,
        },
        "kl": {"control": "fixed", "coef": args.kl_coef, "estimator": "k1"},
        "reward_normalization": "none",
        "reward_clip": None,  # TRL uses the raw reward-model score
        "checkpoint_every": 0,
        "eval": {"gold": False, "gold_every": 0},
    }
    steps: list[dict] = []
    cpu = [time.process_time()]  # CPU seconds at each step's end (robust to a shared machine)

    def on_step(step: int, entry: dict) -> None:
        cpu.append(time.process_time())
        steps.append(entry)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        PPO(config, callbacks=[on_step]).run(
            Registry(Path(tmp) / "registry"),
            model=str(fixture / "policy"),
            reward=str(fixture / "reward"),
        )
        total = time.perf_counter() - started
    records = [
        {
            "step_s": args.batch / e["samples_per_s"],
            "generation_s": e["time_generation"],
            "forward_s": e["time_forward"],
            "scoring_s": e["time_scoring"],
            "tokens": e["response_length"] * args.batch,
            "score": e["reward_score"],
            "kl": e["kl"],
            "cpu_s": cpu[i + 1] - cpu[i] if i else None,  # the first includes loading
        }
        for i, e in enumerate(steps)
    ]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(summarise(records, args, total, peak_mb)))


if __name__ == "__main__":
    main()
