"""`alignlab plan`: per-GPU memory of a stage, and which ZeRO / offload configurations fit.

Example:
    alignlab plan --model 7B --stage sft --zero 0 --gpus 1 --accounting no_master
    alignlab plan --model meta-llama/Llama-2-7b-hf --stage ppo --zero 3 --gpus 8 --gradient-checkpointing
    alignlab plan --model 70B --stage sft --lora 16 --qlora --gpu-mem 48
    alignlab plan --model ./my-model/config.json --stage dpo --zero 2 --gpus 4 --json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from alignlab.commands import friendly_errors


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``plan`` command to an argparse sub-parsers object."""
    from alignlab.distributed.planner import Accounting, PlanStage

    p = subparsers.add_parser(
        "plan",
        help="estimate per-GPU memory of a stage and which ZeRO configurations fit",
        description=__doc__.splitlines()[0] + " Method and sources: docs/memory_planner.md.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="SIZE_OR_ID",
        help="a size (7B, 350M), a well-known hub id or short name (llama-2-7b, facebook/opt-1.3b), "
        "or a local config.json / model folder",
    )
    p.add_argument("--stage", default="sft", choices=[s.value for s in PlanStage], help="default: sft")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3], help="ZeRO stage (default: 0)")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs in all (default: 1)")
    p.add_argument("--gpus-per-node", type=int, default=None, metavar="N", help="default: min(gpus, 8)")
    p.add_argument(
        "--offload-optimizer", action="store_true", help="optimizer states in CPU memory (ZeRO 1-3)"
    )
    p.add_argument("--offload-params", action="store_true", help="weights in CPU memory too (ZeRO-3)")
    p.add_argument("--lora", type=int, default=None, metavar="R", help="LoRA rank on every linear layer")
    p.add_argument(
        "--qlora", action="store_true", help="4-bit NF4 base under the LoRA adapters (rank 8 unless --lora)"
    )
    p.add_argument(
        "--gpu-mem", type=float, default=80.0, metavar="GB", help="memory of one GPU in GiB (default: 80)"
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        metavar="N",
        help="tokens per sequence (default: min(2048, context))",
    )
    p.add_argument(
        "--batch-size", type=int, default=1, metavar="N", help="micro-batch per GPU (pairs for rm/dpo)"
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument(
        "--eager-attention", action="store_true", help="attention that stores the seq x seq scores"
    )
    p.add_argument(
        "--accounting",
        default=Accounting.DEEPSPEED.value,
        choices=[a.value for a in Accounting],
        help="bytes per trained parameter (default: deepspeed, as DeepSpeed's estimators count)",
    )
    p.add_argument(
        "--reward-model",
        default=None,
        metavar="SIZE_OR_ID",
        help="ppo: reward model and critic (default: --model)",
    )
    p.add_argument("--json", action="store_true", help="print the plan and the configurations as JSON")
    p.set_defaults(func=friendly_errors(_plan))
    return p


def _plan(args: argparse.Namespace) -> int:
    from alignlab.distributed.model_shapes import resolve_model
    from alignlab.distributed.planner import Setup, configurations, min_gpus, plan

    setup = Setup(
        zero_stage=args.zero, gpus=args.gpus, gpus_per_node=args.gpus_per_node,
        offload_optimizer=args.offload_optimizer, offload_params=args.offload_params,
        lora_r=args.lora or (8 if args.qlora else None), qlora=args.qlora, accounting=args.accounting,
        seq_len=args.seq_len, micro_batch=args.batch_size, gradient_checkpointing=args.gradient_checkpointing,
        flash_attention=not args.eager_attention,
    )  # fmt: skip
    shape = resolve_model(args.model)
    kwargs: dict[str, Any] = {"reward_model": args.reward_model, "gpu_memory_gib": args.gpu_mem}
    main = plan(shape, args.stage, setup, **kwargs)
    rows = []
    for option in configurations(shape, args.stage, setup, **kwargs):
        fewest = min_gpus(
            shape,
            args.stage,
            option.setup,
            args.gpu_mem,
            max_per_node=args.gpus_per_node or 8,
            **_no_mem(kwargs),
        )
        rows.append((option, fewest))
    if args.json:
        out = {
            "plan": main.to_dict(),
            "configurations": [
                {
                    "zero_stage": o.setup.zero_stage,
                    "offload_optimizer": o.setup.offload_optimizer,
                    "offload_params": o.setup.offload_params,
                    "per_gpu_gib": o.total / 2**30,
                    "cpu_per_node_gib": o.cpu / 2**30,
                    "fits": o.fits,
                    "min_gpus": fewest,
                }
                for o, fewest in rows
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(format_plan(main))
    print()
    print(format_configurations(rows, main))
    return 0


def _no_mem(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "gpu_memory_gib"}


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def format_plan(p: Any) -> str:
    """The plan as text: header, one row per model, the per-GPU total and whether it fits."""
    from alignlab.distributed.planner import ACCOUNTING_NOTES

    s, shape = p.setup, p.model
    method = (
        "full fine-tuning"
        if s.lora_r is None
        else (f"QLoRA r={s.lora_r}" if s.qlora else f"LoRA r={s.lora_r}")
    )
    seq = s.seq_len or min(2048, shape.max_positions)
    machines = f"{s.nodes} machine{'s' if s.nodes > 1 else ''} x {s.per_node}"
    lines = [
        f"{shape.name}: {shape.params / 1e9:.2f}B parameters; stage {p.stage.value}, {method}",
        f"{s.describe()} on {s.gpus} GPU{'s' if s.gpus > 1 else ''} ({machines}); micro-batch {s.micro_batch} x {seq} "
        f"tokens; gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}; "
        f"{'flash/SDPA' if s.flash_attention else 'eager'} attention",
        f"accounting {s.accounting.value}: {ACCOUNTING_NOTES[s.accounting]}",
        "",
    ]
    headers = ["per GPU, GiB", "weights", "gradients", "optimizer", "ZeRO-3 layer", "activations", "model"]
    rows = [
        [
            m.role,
            _gib(m.weights),
            _gib(m.gradients),
            _gib(m.optimizer),
            _gib(m.working),
            _gib(m.activations),
            m.note,
        ]
        for m in p.models
    ]
    rows.append(["total", _gib(p.weights), _gib(p.gradients), _gib(p.optimizer), _gib(p.working) + " (peak)",
                 _gib(p.activations) + " (peak)", f"= {_gib(p.total)} GiB per GPU"])  # fmt: skip
    lines.append(_table(headers, rows))
    lines.append(f"CPU memory per machine: {_gib(p.cpu)} GiB (DeepSpeed's rule, x{s.buffer_factor} buffer)")
    if p.gpu_memory is not None:
        verdict = "fits" if p.fits else "does NOT fit"
        lines.append(
            f"{verdict} a {p.gpu_memory / 2**30:g} GiB GPU ({_gib(p.total)} of {_gib(p.usable)} GiB usable, "
            f"{p.headroom:.0%} kept for the CUDA context, fragmentation and buffers)"
        )
    return "\n".join(lines)


def format_configurations(rows: Sequence[tuple[Any, int | None]], main: Any) -> str:
    """Every ZeRO stage / offload choice for the same model, stage and batch."""
    s = main.setup
    title = (
        f"configurations on {s.gpus} x {main.gpu_memory / 2**30:g} GiB GPUs (same model, stage and batch):"
    )
    headers = ["ZeRO", "offload", "per GPU GiB", "CPU/machine GiB", "fits", "fewest GPUs that fit"]
    table = []
    for option, fewest in rows:
        o = option.setup
        offload = "+".join(
            n for n, on in (("optimizer", o.offload_optimizer), ("params", o.offload_params)) if on
        )
        mark = " <-" if (o.zero_stage, o.offload_optimizer, o.offload_params) == (
            s.zero_stage, s.offload_optimizer, s.offload_params) else ""  # fmt: skip
        table.append([f"{o.zero_stage}{mark}", offload or "-", _gib(option.total), _gib(option.cpu),
                      "yes" if option.fits else "no", "-" if fewest is None else str(fewest)])  # fmt: skip
    return title + "\n" + _table(headers, table)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)
