"""What both PPO contenders share: the command-line settings and how a run is summarised.

Standard library only: it is imported in alignlab's venv and in the TRL venv alike.

Phases (seconds per step, both sides measured the same way):
    generation — sampling the responses (``generate`` with KV cache);
    forward    — the no-grad passes of the rollout: old log-probs (alignlab; TRL takes them from
                 the generation scores), reference log-probs, the critic's values;
    scoring    — the reward model on prompt + response;
    training   — the rest of the step: rewards, advantages and the PPO epochs.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any


def parse_args(doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", required=True, help="folder written by benchmarks/fixture.py")
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--steps", type=int, default=8, help="PPO steps (rollout + update)")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the rates")
    p.add_argument("--batch", type=int, default=32, help="prompts per rollout")
    p.add_argument("--minibatch", type=int, default=8, help="rows per optimiser step")
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per rollout")
    p.add_argument("--response-length", type=int, default=32, help="max new tokens")
    p.add_argument("--forward-batch", type=int, default=64, help="rows per no-grad forward / generate call")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def summarise(steps: list[dict[str, Any]], args: argparse.Namespace, total_s: float, peak_mb: float) -> dict:
    """Rates over the steps after the warm-up; the reward curve over all of them.

    Each step record holds ``step_s``, ``generation_s``, ``forward_s``, ``scoring_s``, ``tokens``
    (real response tokens, EOS included) and ``score`` (mean raw reward-model score).
    """
    timed = steps[args.warmup :] or steps
    loop = sum(s["step_s"] for s in timed)
    phases = {k: statistics.mean(s[f"{k}_s"] for s in timed) for k in ("generation", "forward", "scoring")}
    phases["training"] = statistics.mean(
        s["step_s"] - s["generation_s"] - s["forward_s"] - s["scoring_s"] for s in timed
    )
    cpu = [s["cpu_s"] for s in timed if s.get("cpu_s") is not None]
    return {
        "episodes_per_cpu_s": len(cpu) * args.batch / sum(cpu) if cpu else None,
        "episodes_per_s": len(timed) * args.batch / loop,
        "tokens_per_s": sum(s["tokens"] for s in timed) / loop,
        "step_s": loop / len(timed),
        **{f"{k}_s": v for k, v in phases.items()},
        "response_tokens_mean": statistics.mean(s["tokens"] for s in steps) / args.batch,
        "peak_rss_mb": peak_mb,
        "process_s": total_s,
        "reward_curve": [s["score"] for s in steps],
        "kl_curve": [s.get("kl") for s in steps],
        "steps": len(steps),
    }
