"""peft adapters (LoRA, QLoRA, prompt tuning): the ``adapter`` config group every stage shares, and
the peft configs, quantisation and merging made from it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from alignlab.errors import ConfigError


class AdapterMethod(StrEnum):
    """How the weights are adapted: all of them, or a small set of new ones (peft)."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"  # 4-bit NF4 base + LoRA; needs CUDA and bitsandbytes
    PROMPT_TUNING = "prompt_tuning"  # trains only `num_virtual_tokens` soft prompt vectors


@dataclass
class AdapterGroup:
    """Parameter-efficient fine-tuning (peft).

    Attributes:
        method: full | lora | qlora | prompt_tuning.
        r: LoRA rank. alpha: LoRA scaling numerator. dropout: LoRA dropout.
        target_modules: module names to adapt ("all-linear" = every linear layer but the head).
        num_virtual_tokens: soft prompt length for prompt tuning.
        merge: publish a merged full model (True) or an adapter artifact whose parent is its base.
    """

    method: AdapterMethod = AdapterMethod.FULL
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    num_virtual_tokens: int = 8
    merge: bool = True


def check_qlora_available() -> None:
    """QLoRA needs CUDA and bitsandbytes; say which is missing instead of failing deep inside."""
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if missing:
        raise ConfigError(
            "adapter.method=qlora loads the base in 4-bit NF4 with bitsandbytes, which needs "
            + " and ".join(missing)
            + ". Use adapter.method=lora on this machine."
        )


def quantization_kwargs(adapter: AdapterGroup) -> dict[str, Any]:
    """``from_pretrained`` kwargs for QLoRA's 4-bit NF4 base (empty for other methods)."""
    if adapter.method != AdapterMethod.QLORA:
        return {}
    check_qlora_available()
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    }


def peft_config(adapter: AdapterGroup, task_type: str = "CAUSAL_LM") -> Any | None:
    """The peft config for ``adapter`` (None for full fine-tuning)."""
    from peft import LoraConfig, PromptTuningConfig

    if adapter.method == AdapterMethod.FULL:
        return None
    if adapter.method == AdapterMethod.PROMPT_TUNING:
        if task_type != "CAUSAL_LM":
            raise ConfigError("adapter.method=prompt_tuning is only supported for causal LM stages")
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=adapter.num_virtual_tokens)
    targets = adapter.target_modules
    return LoraConfig(
        task_type=task_type,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets[0] if targets == ["all-linear"] else list(targets),
    )


def publishes_adapter(adapter: AdapterGroup) -> bool:
    """Whether the stage publishes an adapter artifact (else a full model).

    LoRA/QLoRA merge into the base when ``merge`` is set; soft prompts cannot be merged into
    weights, so prompt tuning always publishes an adapter.
    """
    if adapter.method == AdapterMethod.FULL:
        return False
    if adapter.method == AdapterMethod.PROMPT_TUNING:
        return True
    return not adapter.merge


def finalize(model: Any, adapter: AdapterGroup) -> Any:
    """Merge a LoRA adapter into its base when the config asks for a merged model."""
    if adapter.method in (AdapterMethod.LORA, AdapterMethod.QLORA) and adapter.merge:
        return model.merge_and_unload()
    return model
