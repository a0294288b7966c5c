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

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from alignlab.distributed.model_shapes import ModelShape, resolve_model
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
    "Accounting",
    "ModelMemory",
    "Plan",
    "PlanStage",
    "Setup",
    "StateBytes",
    "activation_bytes",
    "configurations",
    "kv_cache_bytes",
    "min_gpus",
    "parse_stage",
    "plan",
    "zero_model_states",
]
