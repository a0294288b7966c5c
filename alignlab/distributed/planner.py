"""Memory planner: what one GPU holds when a stage trains under ZeRO 0-3, offload, LoRA or QLoRA.

Per GPU it counts the model states (weights, gradients, optimizer states), ZeRO-3's gathered
layer and the activations of every model a stage keeps: SFT and the reward model train one, DPO
adds a frozen reference, PPO trains an actor and a critic beside a frozen reference and reward
model. For full fine-tuning under ZeRO-2 and ZeRO-3 the model-state numbers are DeepSpeed's own
estimators' (``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``);
the accounting, its sources and the activation formula are in docs/memory_planner.md.

Example:
    >>> from alignlab.distributed.planner import Setup, plan
    >>> p = plan("7B", "sft", Setup(zero_stage=3, gpus=8, gradient_checkpointing=True), gpu_memory_gib=80)
    >>> round(p.total / 2**30, 1), p.fits
    (16.3, True)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean

GIB = 2**30
# QLoRA (Dettmers et al., 2023, §3): NF4 weights (4 bits) + one 8-bit absmax per 64 weights + one
# fp32 constant per 256 of those blocks ("double quantization"): 8/64 + 32/(64*256) bits each.
NF4_BYTES = 0.5
NF4_CONSTANTS_BYTES = (8 / 64 + 32 / (64 * 256)) / 8
NF4_CONSTANTS_BYTES_SINGLE = 32 / 64 / 8  # without double quantization: one fp32 absmax per 64


class PlanStage(StrEnum):
    """Which models a stage keeps on the GPU."""

    SFT = "sft"  # one causal LM, trained (pretraining counts the same)
    RM = "rm"  # one reward model (no LM head), trained on chosen + rejected
    DPO = "dpo"  # the policy trained on chosen + rejected, a frozen reference
    PPO = "ppo"  # actor and critic trained, reference and reward model frozen


def _stage_aliases() -> dict[str, PlanStage]:
    """Recipe stage names -> the shape of their training run (alignlab.stages.STAGE_INFO's plan_as)."""
    from alignlab.stages import STAGE_INFO

    aliases = {name: PlanStage(info.plan_as) for name, info in STAGE_INFO.items() if info.plan_as}
    return {**aliases, "reward": PlanStage.RM}


STAGE_ALIASES = _stage_aliases()


class Accounting(StrEnum):
    """How many bytes each trained parameter costs (see docs/memory_planner.md)."""

    DEEPSPEED = "deepspeed"  # DeepSpeed's estimators: 2 + 2 + 4 (fp32 grads) + 12 = 20 bytes at ZeRO-0/1/2
    MIXED = "mixed"  # the ZeRO paper's mixed-precision Adam: 2 + 2 + 12 = 16 bytes
    NO_MASTER = "no_master"  # 16-bit weights and grads, fp32 Adam moments, no master copy: 12 bytes
    FP32 = "fp32"  # no mixed precision: 4 + 4 + 8 = 16 bytes


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of each model state under one accounting.

    Attributes:
        weights: the working weights the forward pass reads (16-bit, or fp32 without mixed precision).
        grads: the gradients backward writes (same precision as the weights).
        grads_fp32: the fp32 gradient partition the ZeRO optimizer keeps (ZeRO 0-2).
        grads_fp32_zero3: the same under ZeRO-3, which converts one sub-group at a time.
        optimizer: fp32 master weights (when kept) plus Adam's momentum and variance.
        activations: bytes per activation value.
    """

    weights: float
    grads: float
    grads_fp32: float
    grads_fp32_zero3: float
    optimizer: float
    activations: float


ACCOUNTING: dict[Accounting, StateBytes] = {
    # DeepSpeed's estimators: ZeRO-2 = 2 + 18/N where 18 = 2 fp16 grads + 4 fp32 grads + 4 fp32
    # params + 8 Adam; ZeRO-3 = 18/N in all, i.e. 2 fewer bytes of fp32 gradient per parameter.
    Accounting.DEEPSPEED: StateBytes(2, 2, 4, 2, 12, 2),
    Accounting.MIXED: StateBytes(2, 2, 0, 0, 12, 2),  # ZeRO paper §3.1: 2Ψ + 2Ψ + 12Ψ
    Accounting.NO_MASTER: StateBytes(2, 2, 0, 0, 8, 2),
    Accounting.FP32: StateBytes(4, 4, 0, 0, 8, 4),
}
ACCOUNTING_NOTES: dict[Accounting, str] = {
    Accounting.DEEPSPEED: "DeepSpeed's estimators: 16-bit weights and gradients + fp32 gradients, master weights "
    "and Adam moments (20 bytes per trained parameter; 18 sharded under ZeRO-3)",
    Accounting.MIXED: "ZeRO paper: 16-bit weights and gradients + fp32 master weights and Adam moments "
    "(16 bytes per trained parameter)",
    Accounting.NO_MASTER: "16-bit weights and gradients + fp32 Adam moments, no fp32 master copy "
    "(12 bytes per trained parameter)",
    Accounting.FP32: "no mixed precision: fp32 weights, gradients and Adam moments (16 bytes per trained parameter)",
}


# ----------------------------------------------------------------------------------------------
# model shapes


Linear = tuple[int, int, bool]  # (in_features, out_features, has bias)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only transformer, as far as memory is concerned.

    Attributes:
        name: what to call the model in reports.
        hidden: width of the residual stream (``hidden_size``).
        layers: transformer blocks.
        heads: attention heads. kv_heads: key/value heads (fewer than ``heads`` with GQA).
        intermediate: width of the MLP.
        vocab: vocabulary size (the logits' width).
        gated_mlp: SwiGLU-style MLP with three matrices (LLaMA, Mistral) instead of two (OPT, GPT-2).
        max_positions: the context length the model was trained for.
        embedding_params: input embeddings (tokens and learned positions); QLoRA keeps them 16-bit.
        head_params: an output layer of its own (0 when it shares the input embeddings).
        layer_linears: (in, out, bias) of each linear layer in one block.
        layer_norm_params: parameters of the norms in one block.
        extra_linears: linear layers outside the blocks (e.g. OPT-350m's projections).
        other_params: everything else (the final norm).
        token_embed_dim: width of the token embeddings when it differs from ``hidden``; None = hidden.
        params_override: the exact parameter count when the model was given as a size ("7B").
    """

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    max_positions: int
    embedding_params: int
    head_params: int
    layer_linears: tuple[Linear, ...]
    layer_norm_params: int = 0
    extra_linears: tuple[Linear, ...] = ()
    other_params: int = 0
    token_embed_dim: int | None = None
    params_override: int | None = None

    @property
    def _linears(self) -> list[Linear]:
        return list(self.layer_linears) * self.layers + list(self.extra_linears)

    @property
    def _linear_total(self) -> int:
        return sum(i * o + (o if b else 0) for i, o, b in self._linears)

    @property
    def params(self) -> int:
        """All parameters (shared embeddings counted once)."""
        if self.params_override is not None:
            return self.params_override
        return (
            self.embedding_params
            + self.head_params
            + self._linear_total
            + self.layers * self.layer_norm_params
            + self.other_params
        )

    @property
    def quantizable_params(self) -> int:
        """Weights of the linear layers bitsandbytes quantizes for QLoRA (all but the LM head)."""
        base = sum(i * o for i, o, _ in self._linears)
        if self.params_override is None:
            return base
        # a size like "7B": the part beyond the template's embeddings, norms and biases
        return self.params_override - (self._template_params - base)

    @property
    def _template_params(self) -> int:
        return replace(self, params_override=None).params

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest module, as DeepSpeed's ``model_to_params`` counts them."""
        linears = [i * o + (o if b else 0) for i, o, b in self._linears]
        return max([self.vocab * self.embed_dim, self.head_params, *linears])

    @property
    def embed_dim(self) -> int:
        """Width of the token embeddings (OPT-350m embeds in 512 and projects to 1024)."""
        return self.token_embed_dim or self.hidden

    def lora_params(self, r: int) -> int:
        """Trainable parameters of rank-``r`` LoRA on every linear layer but the LM head."""
        return r * sum(i + o for i, o, _ in self._linears)

    def reward_params(self) -> int:
        """Parameters as a reward model or critic: the LM head replaced by a scalar head."""
        return self.params - self.head_params + self.hidden

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def shape_from_config(config: dict[str, Any], name: str | None = None) -> ModelShape:
    """A :class:`ModelShape` from a Hugging Face ``config.json`` mapping.

    LLaMA, Mistral, OPT and GPT-2 are counted from their formulas; any other ``model_type`` is
    built on PyTorch's meta device (no memory, no download) and measured.
    """
    kind = config.get("model_type")
    name = name or config.get("_name_or_path") or str(kind)
    if kind in ("llama", "mistral"):
        return _llama(config, name)
    if kind == "opt":
        return _opt(config, name)
    if kind == "gpt2":
        return _gpt2(config, name)
    return _measured(config, name)


def _llama(c: dict[str, Any], name: str) -> ModelShape:
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    linears = (
        (h, heads * hd, bias),
        (h, kv * hd, bias),
        (h, kv * hd, bias),
        (heads * hd, h, bias),
        (h, f, mlp_bias),
        (h, f, mlp_bias),
        (f, h, mlp_bias),
    )
    return ModelShape(
        name=name, hidden=h, layers=c["num_hidden_layers"], heads=heads, kv_heads=kv, intermediate=f,
        vocab=v, gated_mlp=True, max_positions=c.get("max_position_embeddings", 2048),
        embedding_params=v * h, head_params=0 if c.get("tie_word_embeddings", False) else v * h,
        layer_linears=linears, layer_norm_params=2 * h, other_params=h,
    )  # fmt: skip


def _opt(c: dict[str, Any], name: str) -> ModelShape:
    h, f, v = c["hidden_size"], c["ffn_dim"], c["vocab_size"]
    wp = c.get("word_embed_proj_dim") or h
    bias = bool(c.get("enable_bias", True))
    affine = 2 if c.get("layer_norm_elementwise_affine", True) else 0
    final_norm = c.get("do_layer_norm_before", True) and not c.get("_remove_final_layer_norm", False)
    positions = c.get("max_position_embeddings", 2048)
    return ModelShape(
        name=name, hidden=h, layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
        kv_heads=c["num_attention_heads"], intermediate=f, vocab=v, gated_mlp=False, max_positions=positions,
        embedding_params=v * wp + (positions + 2) * h,  # OPT offsets learned positions by 2
        head_params=0 if c.get("tie_word_embeddings", True) else v * wp,
        layer_linears=((h, h, bias),) * 4 + ((h, f, bias), (f, h, bias)),
        layer_norm_params=2 * affine * h,
        extra_linears=((wp, h, False), (h, wp, False)) if wp != h else (),
        other_params=affine * h if final_norm else 0, token_embed_dim=wp,
    )  # fmt: skip


def _gpt2(c: dict[str, Any], name: str) -> ModelShape:
    h, v, positions = c["n_embd"], c["vocab_size"], c.get("n_positions", 1024)
    f = c.get("n_inner") or 4 * h
    return ModelShape(
        name=name, hidden=h, layers=c["n_layer"], heads=c["n_head"], kv_heads=c["n_head"], intermediate=f,
        vocab=v, gated_mlp=False, max_positions=positions, embedding_params=v * h + positions * h,
        head_params=0 if c.get("tie_word_embeddings", True) else v * h,
        layer_linears=((h, 3 * h, True), (h, h, True), (h, f, True), (f, h, True)),
        layer_norm_params=4 * h, other_params=2 * h,
    )  # fmt: skip


def _measured(c: dict[str, Any], name: str) -> ModelShape:
    """Any other architecture: build it on the meta device and count what is there."""
    try:
        import torch
        import transformers
    except ImportError as err:  # pragma: no cover - both are dependencies
        raise ConfigError(
            f"measuring a {c.get('model_type')!r} model needs torch and transformers: {err}"
        ) from err
    try:
        config = transformers.AutoConfig.for_model(**c)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"cannot build model_type {c.get('model_type')!r} from its config to count parameters ({err}); "
            "give the size instead, e.g. --model 7B"
        ) from err
    out = model.get_output_embeddings()
    seen: set[int] = set()
    embedding = head = norms = 0
    linears: list[Linear] = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        count = sum(p.numel() for p in own)
        if module is out:
            head += count
        elif isinstance(module, torch.nn.Embedding):
            embedding += count
        elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            w = module.weight
            i, o = (w.shape[1], w.shape[0]) if isinstance(module, torch.nn.Linear) else tuple(w.shape)
            linears.append((int(i), int(o), getattr(module, "bias", None) is not None))
        else:
            norms += count
    tc = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = _first(tc, "hidden_size", "n_embd", "d_model")
    heads = _first(tc, "num_attention_heads", "n_head")
    return ModelShape(
        name=name, hidden=h, layers=_first(tc, "num_hidden_layers", "n_layer"), heads=heads,
        kv_heads=getattr(tc, "num_key_value_heads", None) or heads,
        intermediate=_first(tc, "intermediate_size", "ffn_dim", "n_inner", default=4 * h),
        vocab=tc.vocab_size, gated_mlp=getattr(tc, "hidden_act", "") in ("silu", "swiglu"),
        max_positions=_first(tc, "max_position_embeddings", "n_positions", default=2048),
        embedding_params=embedding, head_params=head, layer_linears=(), extra_linears=tuple(linears),
        other_params=norms, token_embed_dim=int(model.get_input_embeddings().weight.shape[1]),
    )  # fmt: skip


def _first(config: Any, *names: str, default: int | None = None) -> int:
    for n in names:
        value = getattr(config, n, None)
        if value:
            return int(value)
    if default is None:
        raise ConfigError(
            f"the model config has none of {', '.join(names)}; give the size instead, e.g. --model 7B"
        )
    return default


# Well-known shapes (hub config.json essentials), so `--model` works offline.
_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096}
_OPT = {"model_type": "opt", "vocab_size": 50272, "max_position_embeddings": 2048}
_GPT2 = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024}
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "facebook/opt-125m": {**_OPT, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                          "ffn_dim": 3072},
    "facebook/opt-350m": {**_OPT, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                          "ffn_dim": 4096, "word_embed_proj_dim": 512, "do_layer_norm_before": False},
    "facebook/opt-1.3b": {**_OPT, "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
                          "ffn_dim": 8192},
    "facebook/opt-6.7b": {**_OPT, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                          "ffn_dim": 16384},
    "meta-llama/Llama-2-7b-hf": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "meta-llama/Llama-2-13b-hf": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824,
                                  "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40},
    "meta-llama/Llama-2-70b-hf": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672,
                                  "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "meta-llama/Meta-Llama-3-8B": {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 8192,
                                   "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                   "num_attention_heads": 32, "num_key_value_heads": 8},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "vocab_size": 32000, "max_position_embeddings": 32768,
                                  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 8},
    "gpt2": {**_GPT2, "n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {**_GPT2, "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {**_GPT2, "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {**_GPT2, "n_embd": 1600, "n_layer": 48, "n_head": 25},
}  # fmt: skip
# shapes a bare size ("7B") borrows its width, depth and vocabulary from: the nearest by size
SIZE_TEMPLATES = (
    "facebook/opt-125m",
    "facebook/opt-350m",
    "facebook/opt-1.3b",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-hf",
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt])\s*$", re.IGNORECASE)
_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _key(name: str) -> str:
    key = name.lower().removeprefix("hf:").split("/")[-1]
    for suffix in ("-chat-hf", "-hf", "-chat", "-instruct"):
        key = key.removesuffix(suffix)
    return key.replace("llama2", "llama-2").replace("llama3", "llama-3").replace("meta-llama-3", "llama-3")


_BY_KEY = {_key(hub_id): hub_id for hub_id in KNOWN_MODELS}


def resolve_model(spec: str | ModelShape) -> ModelShape:
    """A size ("7B", "350M"), a known hub id or short name, or a local config.json / model folder.

    Raises:
        ConfigError: nothing matches; the message lists the known names.
    """
    if isinstance(spec, ModelShape):
        return spec
    size = _SIZE.match(spec)
    if size:
        params = int(round(float(size.group(1)) * _UNITS[size.group(2).lower()]))
        if params <= 0:
            raise ConfigError(f"model size {spec!r} must be positive")
        template = min(SIZE_TEMPLATES, key=lambda t: abs(math.log(params / known_shape(t).params)))
        short = template.split("/")[-1]
        return replace(known_shape(template), name=f"{spec.strip()} ({short} shape)", params_override=params)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not a readable config.json ({err})") from err
        return shape_from_config(config, name=str(path.parent if path.name == "config.json" else path))
    key = _key(spec)
    if key in _BY_KEY:
        return known_shape(_BY_KEY[key])
    names = sorted(_BY_KEY)
    raise ConfigError(
        f"unknown model {spec!r}{did_you_mean(key, names)}: hub configs cannot be fetched here, so give a "
        f"size (7B, 350M), a local config.json or model folder, or one of: {', '.join(names)}"
    )


def known_shape(hub_id: str) -> ModelShape:
    """The built-in shape of a well-known model."""
    return shape_from_config(KNOWN_MODELS[hub_id], name=hub_id)


# ----------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class Setup:
    """How a stage is run, as far as memory is concerned.

    Attributes:
        zero_stage: DeepSpeed ZeRO stage 0-3 (0 = plain data parallelism).
        gpus: GPUs in all (one process each).
        gpus_per_node: GPUs per machine; None = min(gpus, 8).
        offload_optimizer: keep optimizer states (and the gradients they read) in CPU memory (ZeRO 1-3).
        offload_params: keep the weights in CPU memory too (ZeRO-3).
        lora_r: LoRA rank on every linear layer but the head; None = full fine-tuning.
        qlora: load the base in 4-bit NF4 (needs lora_r).
        double_quant: QLoRA quantizes its quantization constants too (alignlab's setting).
        accounting: bytes per trained parameter: deepspeed | mixed | no_master | fp32.
        seq_len: tokens per sequence (prompt + response for PPO); None = min(2048, the model's context).
        micro_batch: sequences per GPU per forward pass (pairs for rm and dpo).
        gradient_checkpointing: keep only each block's input and recompute the rest in backward.
        flash_attention: attention kernels that never store the seq x seq scores (SDPA, FlashAttention).
        zero_init: ZeRO-3 builds the model already partitioned (changes CPU memory only).
        buffer_factor: DeepSpeed's ``additional_buffer_factor`` on CPU memory.
    """

    zero_stage: int = 0
    gpus: int = 1
    gpus_per_node: int | None = None
    offload_optimizer: bool = False
    offload_params: bool = False
    lora_r: int | None = None
    qlora: bool = False
    double_quant: bool = True
    accounting: Accounting = Accounting.DEEPSPEED
    seq_len: int | None = None
    micro_batch: int = 1
    gradient_checkpointing: bool = False
    flash_attention: bool = True
    zero_init: bool = True
    buffer_factor: float = 1.5

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "accounting", Accounting(self.accounting))
        except ValueError:
            names = [a.value for a in Accounting]
            raise ConfigError(
                f"accounting must be one of {', '.join(names)}, got {self.accounting!r}"
                f"{did_you_mean(str(self.accounting), names)}"
            ) from None
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.gpus < 1:
            raise ConfigError(f"gpus must be at least 1, got {self.gpus}")
        if self.gpus % self.per_node:
            raise ConfigError(f"gpus ({self.gpus}) must be a multiple of gpus_per_node ({self.per_node})")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("offload_params needs zero_stage 3 (only ZeRO-3 partitions the weights)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.qlora and not self.lora_r:
            raise ConfigError("qlora trains LoRA adapters on a 4-bit base: set lora_r too")
        if self.lora_r is not None and self.lora_r < 1:
            raise ConfigError(f"lora_r must be at least 1, got {self.lora_r}")
        if self.micro_batch < 1 or (self.seq_len is not None and self.seq_len < 1):
            raise ConfigError("micro_batch and seq_len must be at least 1")

    @property
    def per_node(self) -> int:
        return self.gpus_per_node or min(self.gpus, 8)

    @property
    def nodes(self) -> int:
        return self.gpus // self.per_node

    @property
    def bytes(self) -> StateBytes:
        return ACCOUNTING[self.accounting]

    def describe(self) -> str:
        offload = [
            n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on
        ]
        return f"ZeRO-{self.zero_stage}" + (f" + offload {'+'.join(offload)}" if offload else "")


@dataclass(frozen=True)
class ModelMemory:
    """One model's share of each GPU, and of its machine's CPU memory (bytes).

    Attributes:
        role: policy | reward | actor | critic | reference.
        params: the model's parameters (its frozen base under LoRA).
        trainable: parameters the optimizer updates (0 for a frozen model).
        weights: GPU bytes of the weights.
        gradients: GPU bytes of the gradients.
        optimizer: GPU bytes of the optimizer states (fp32 master weights and Adam moments).
        working: ZeRO-3's gathered full layer while it computes (0 below ZeRO-3).
        activations: GPU bytes kept for backward (and PPO's generation cache), at the peak.
        cpu: CPU bytes per machine (DeepSpeed's rule, with its buffer factor).
        note: how the model is held, in words.
    """

    role: str
    params: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    working: float
    activations: float
    cpu: float
    note: str = ""

    @property
    def states(self) -> float:
        """Weights, gradients and optimizer states."""
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class Plan:
    """Per-GPU memory of one stage in one setup.

    Attributes:
        model: the shape planned for (the policy's).
        stage: sft | rm | dpo | ppo.
        setup: ZeRO stage, GPUs, offload, LoRA, precision, batch.
        models: one entry per model the stage keeps.
        gpu_memory: bytes of one GPU; None = no fit check.
        headroom: share of the GPU left for the CUDA context, fragmentation and temporary buffers.
    """

    model: ModelShape
    stage: PlanStage
    setup: Setup
    models: tuple[ModelMemory, ...]
    gpu_memory: float | None = None
    headroom: float = 0.1

    @property
    def weights(self) -> float:
        return sum(m.weights for m in self.models)

    @property
    def gradients(self) -> float:
        return sum(m.gradients for m in self.models)

    @property
    def optimizer(self) -> float:
        return sum(m.optimizer for m in self.models)

    @property
    def states(self) -> float:
        return sum(m.states for m in self.models)

    @property
    def working(self) -> float:
        """ZeRO-3 gathers one layer at a time, and the models run one at a time."""
        return max(m.working for m in self.models)

    @property
    def activations(self) -> float:
        """Models train one after the other: the peak is the largest one's."""
        return max(m.activations for m in self.models)

    @property
    def total(self) -> float:
        return self.states + self.working + self.activations

    @property
    def cpu(self) -> float:
        return sum(m.cpu for m in self.models)

    @property
    def usable(self) -> float | None:
        return None if self.gpu_memory is None else self.gpu_memory * (1 - self.headroom)

    @property
    def fits(self) -> bool | None:
        return None if self.usable is None else self.total <= self.usable

    def to_dict(self) -> dict[str, Any]:
        """Plain data (bytes) for ``--json``."""
        gib = {
            k: getattr(self, k) / GIB for k in ("weights", "gradients", "optimizer", "working", "activations")
        }
        return {
            "model": self.model.name,
            "params": self.model.params,
            "stage": self.stage.value,
            "setup": {
                **self.setup.__dict__,
                "accounting": self.setup.accounting.value,
                "nodes": self.setup.nodes,
            },
            "per_gpu_gib": {**gib, "total": self.total / GIB},
            "cpu_per_node_gib": self.cpu / GIB,
            "gpu_memory_gib": None if self.gpu_memory is None else self.gpu_memory / GIB,
            "fits": self.fits,
            "models": [{**m.__dict__, "states": m.states} for m in self.models],
        }


def zero_model_states(
    total_params: int,
    largest_layer_params: int,
    *,
    zero_stage: int,
    gpus_per_node: int = 1,
    nodes: int = 1,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    zero_init: bool = True,
    buffer_factor: float = 1.5,
    accounting: Accounting = Accounting.DEEPSPEED,
) -> tuple[float, float]:
    """(CPU bytes per machine, GPU bytes) of full fine-tuning's model states, in DeepSpeed's terms.

    With the default accounting these are the numbers of DeepSpeed's
    ``estimate_zero2_model_states_mem_needs`` (``cpu_offload=offload_optimizer``) and
    ``estimate_zero3_model_states_mem_needs`` (its GPU number includes the gathered layer).
    """
    setup = Setup(
        zero_stage=zero_stage, gpus=gpus_per_node * nodes, gpus_per_node=gpus_per_node,
        offload_optimizer=offload_optimizer, offload_params=offload_params, zero_init=zero_init,
        buffer_factor=buffer_factor, accounting=accounting,
    )  # fmt: skip
    m = _states("policy", total_params, total_params, 0.0, largest_layer_params, setup)
    return m.cpu, m.states + m.working


def _states(role: str, params: int, trainable: int, frozen: float, largest: int, s: Setup) -> ModelMemory:
    """Model states of one model: ``trainable`` parameters trained, ``frozen`` bytes of frozen weights."""
    b, n, z = s.bytes, s.gpus, s.zero_stage
    gpn, nodes, buf = s.per_node, s.nodes, s.buffer_factor
    weights = b.weights * trainable + frozen  # everything the forward pass reads
    if z == 3:
        weights /= n
    if s.offload_params:
        weights = 0.0
    if trainable == 0:
        grads = optim = 0.0
    elif s.offload_optimizer:  # gradients stream to the CPU optimizer
        grads = b.grads * trainable if z == 1 else 0.0
        optim = 0.0
    else:
        fp32 = b.grads_fp32_zero3 if z == 3 else b.grads_fp32
        grads = {
            0: (b.grads + fp32) * trainable,
            1: b.grads * trainable + fp32 * trainable / n,
            2: (b.grads + fp32) * trainable / n,
            3: (b.grads + fp32) * trainable / n,
        }[z]
        optim = b.optimizer * trainable / (1 if z == 0 else n)
    # ZeRO-3 gathers one whole layer (weights, and gradients when it is trained) to compute it
    working = 0.0
    if z == 3:
        working = (b.weights + (b.grads if trainable == params else 0)) * largest
    # CPU, DeepSpeed's rule: an fp32 copy per process while loading, or the offloaded states; a
    # LoRA base is loaded in its own precision (16-bit or 4-bit), not in fp32
    offloaded = (max(b.grads_fp32, b.grads) + b.optimizer) * trainable
    loading = 4 * params if trainable == params else frozen + b.weights * trainable
    if z < 3:
        cpu = max(loading * n, offloaded) if s.offload_optimizer else loading * gpn
    elif s.offload_optimizer or s.offload_params:
        held = (offloaded if s.offload_optimizer else 0) + (
            b.weights * trainable + frozen if s.offload_params else 0
        )
        cpu = held / nodes if s.zero_init else max(loading * gpn, held / nodes)
    else:
        cpu = 4 * largest * gpn if s.zero_init else loading * gpn
    if trainable == 0:  # a frozen model is loaded in 16 bits and only offloaded weights stay
        cpu = frozen / nodes if s.offload_params else 0.0
    return ModelMemory(role, params, trainable, weights, grads, optim, working, 0.0, cpu * buf)


def activation_bytes(shape: ModelShape, setup: Setup, *, batch: int, lm_head: bool) -> float:
    """Activations kept for backward on one GPU (Korthikanti et al., 2022, generalised).

    Per block, 16-bit: ``s·b·h·(14 + 4·kv/heads) + s·b·f·(6 gated | 4)`` bytes, plus ``5·a·s²·b``
    without flash attention; with MHA and a 4h GELU MLP that is the paper's ``34·s·b·h + 5·a·s²·b``.
    Gradient checkpointing keeps ``2·s·b·h`` per block and one block's full set while it is
    recomputed. The LM head adds the logits (16-bit) and their fp32 copy for the loss.
    """
    s, h, scale = _seq_len(shape, setup), shape.hidden, setup.bytes.activations / 2
    per_block = s * batch * h * (14 + 4 * shape.kv_heads / shape.heads)
    per_block += s * batch * shape.intermediate * (6 if shape.gated_mlp else 4)
    if not setup.flash_attention:
        per_block += 5 * shape.heads * s * s * batch
    if setup.gradient_checkpointing:
        kept = shape.layers * 2 * s * batch * h + per_block
    else:
        kept = shape.layers * per_block
    logits = s * batch * shape.vocab * (setup.bytes.activations + 4) if lm_head else 0.0
    return kept * scale + logits


def kv_cache_bytes(shape: ModelShape, setup: Setup, *, batch: int) -> float:
    """PPO's generation cache: keys and values of every layer for ``batch`` full sequences."""
    kv_width = shape.kv_heads * shape.head_dim
    return 2 * shape.layers * batch * _seq_len(shape, setup) * kv_width * setup.bytes.activations


def _seq_len(shape: ModelShape, setup: Setup) -> int:
    return setup.seq_len or min(2048, shape.max_positions)


def _frozen_bytes(shape: ModelShape, setup: Setup, params: int) -> float:
    """Bytes of a frozen base: 16-bit, or NF4 linear layers (QLoRA) and 16-bit for the rest."""
    if not setup.qlora:
        return setup.bytes.weights * params
    constants = NF4_CONSTANTS_BYTES if setup.double_quant else NF4_CONSTANTS_BYTES_SINGLE
    quantized = shape.quantizable_params
    return quantized * (NF4_BYTES + constants) + (params - quantized) * setup.bytes.weights


def _trained(role: str, shape: ModelShape, setup: Setup, *, reward: bool, batch: int) -> ModelMemory:
    params = shape.reward_params() if reward else shape.params
    if setup.lora_r is None:
        m = _states(role, params, params, 0.0, shape.largest_layer, setup)
        note = "trained: all weights"
    else:
        adapter = shape.lora_params(setup.lora_r) + (shape.hidden if reward else 0)  # + the scalar head
        m = _states(role, params, adapter, _frozen_bytes(shape, setup, params), shape.largest_layer, setup)
        base = "4-bit NF4" if setup.qlora else "16-bit"
        note = f"trained: LoRA r={setup.lora_r} ({adapter / 1e6:.1f}M params) on a frozen {base} base"
    act = activation_bytes(shape, setup, batch=batch, lm_head=not reward)
    return replace(m, activations=act, note=note)


def _frozen(role: str, shape: ModelShape, setup: Setup, *, reward: bool) -> ModelMemory:
    params = shape.reward_params() if reward else shape.params
    frozen = replace(setup, qlora=False)  # frozen models are loaded in 16 bits
    m = _states(role, params, 0, _frozen_bytes(shape, frozen, params), shape.largest_layer, frozen)
    return replace(m, note="inference only: 16-bit weights")


def _shared_reference(shape: ModelShape) -> ModelMemory:
    note = "the policy's base with the adapter disabled: no second copy"
    return ModelMemory("reference", shape.params, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, note)


def plan(
    model: str | ModelShape,
    stage: str | PlanStage,
    setup: Setup | None = None,
    *,
    reward_model: str | ModelShape | None = None,
    gpu_memory_gib: float | None = None,
    headroom: float = 0.1,
) -> Plan:
    """Per-GPU memory of ``stage`` for ``model`` in ``setup``.

    Args:
        model: a :class:`ModelShape`, a size ("7B"), a known name or a local config.json / folder.
        stage: sft | rm | dpo | ppo (pretrain and reward_model are accepted as sft and rm).
        setup: ZeRO stage, GPUs, offload, LoRA and batch (default: one GPU, full fine-tuning).
        reward_model: PPO's reward model (and critic, initialised from it); default: ``model``.
        gpu_memory_gib: memory of one GPU, for ``Plan.fits``.
        headroom: share of the GPU kept free when deciding whether it fits.
    """
    shape, setup = resolve_model(model), setup or Setup()
    kind = parse_stage(stage)
    b = setup.micro_batch
    lora = setup.lora_r is not None
    if kind is PlanStage.SFT:
        models = [_trained("policy", shape, setup, reward=False, batch=b)]
    elif kind is PlanStage.RM:
        models = [_trained("reward", shape, setup, reward=True, batch=2 * b)]
    elif kind is PlanStage.DPO:  # chosen and rejected go through the policy together
        reference = _shared_reference(shape) if lora else _frozen("reference", shape, setup, reward=False)
        models = [_trained("policy", shape, setup, reward=False, batch=2 * b), reference]
    else:
        rm_shape = resolve_model(reward_model) if reward_model is not None else shape
        actor = _trained("actor", shape, setup, reward=False, batch=b)
        cache = kv_cache_bytes(shape, setup, batch=b)
        if cache > actor.activations:
            actor = replace(actor, activations=cache)
        models = [
            actor,
            _trained("critic", rm_shape, setup, reward=True, batch=b),
            _shared_reference(shape) if lora else _frozen("reference", shape, setup, reward=False),
            _frozen("reward", rm_shape, setup, reward=True),
        ]
    memory = None if gpu_memory_gib is None else gpu_memory_gib * GIB
    return Plan(shape, kind, setup, tuple(models), memory, headroom)


def parse_stage(stage: str | PlanStage) -> PlanStage:
    """``sft | rm | dpo | ppo`` (and the recipe names ``pretrain``, ``reward_model``)."""
    if isinstance(stage, PlanStage):
        return stage
    if stage in STAGE_ALIASES:
        return STAGE_ALIASES[stage]
    try:
        return PlanStage(stage)
    except ValueError:
        choices = [s.value for s in PlanStage] + list(STAGE_ALIASES)
        raise ConfigError(
            f"unknown stage {stage!r}{did_you_mean(stage, choices)}; plan one of sft, rm, dpo, ppo"
        ) from None


ZERO_VARIANTS = ((0, False, False), (1, False, False), (1, True, False), (2, False, False), (2, True, False),
                 (3, False, False), (3, True, False), (3, True, True))  # fmt: skip


def configurations(
    model: str | ModelShape, stage: str | PlanStage, setup: Setup | None = None, **kwargs: Any
) -> list[Plan]:
    """The same stage under every ZeRO stage and offload choice (other settings from ``setup``)."""
    setup = setup or Setup()
    return [
        plan(model, stage, replace(setup, zero_stage=z, offload_optimizer=opt, offload_params=par), **kwargs)
        for z, opt, par in ZERO_VARIANTS
    ]


def min_gpus(
    model: str | ModelShape,
    stage: str | PlanStage,
    setup: Setup,
    gpu_memory_gib: float,
    *,
    max_per_node: int = 8,
    limit: int = 1024,
    **kwargs: Any,
) -> int | None:
    """The smallest power-of-two GPU count (up to ``limit``) on which ``setup`` fits; None if none does.

    ``setup.gpus`` is ignored; machines hold up to ``max_per_node`` GPUs each.
    """
    shape = resolve_model(model)
    n = 1
    while n <= limit:
        trial = replace(setup, gpus=n, gpus_per_node=min(n, max_per_node))
        if plan(shape, stage, trial, gpu_memory_gib=gpu_memory_gib, **kwargs).fits:
            return n
        n *= 2
    return None


__all__ = [
    "ACCOUNTING",
    "ACCOUNTING_NOTES",
    "GIB",
    "KNOWN_MODELS",
    "Accounting",
    "ModelMemory",
    "ModelShape",
    "Plan",
    "PlanStage",
    "Setup",
    "StateBytes",
    "activation_bytes",
    "configurations",
    "known_shape",
    "kv_cache_bytes",
    "min_gpus",
    "parse_stage",
    "plan",
    "resolve_model",
    "shape_from_config",
    "zero_model_states",
]
