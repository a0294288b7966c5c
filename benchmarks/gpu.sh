#!/usr/bin/env bash
# GPU numbers on one GPU, in under 8 minutes: rollout tokens/s with the hf and vllm engines on a
# ~0.7B LLaMA-architecture model, a PPO and a GRPO step with each engine, training tokens/s with MFU.
# Writes benchmarks/results/gpu.json (and prints it); docs/performance.md says how to read it.
#
#   benchmarks/gpu.sh                 # in an environment with alignlab installed: pip install -e '.[vllm]'
#   WHEELS=DIR benchmarks/gpu.sh      # offline: first installs every wheel in DIR (pip --no-index)
#   GPU_BENCH_ARGS="--size tiny --skip ppo grpo" benchmarks/gpu.sh   # a smoke test, also on a CPU
#
# vLLM's CUDA build is not part of alignlab's pinned CPU stack; without it the vLLM rows are skipped
# (the JSON says why) and the hf rows still run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/alignlab-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/alignlab-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi: CPU run"
mkdir -p benchmarks/results
# 7.5 minutes at most: what finished by then is in the JSON only if the script ends, so each part is bounded
timeout 450 "$PY" benchmarks/gpu_bench.py --out benchmarks/results/gpu.json ${GPU_BENCH_ARGS:-}
