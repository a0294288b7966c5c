"""Tiny LLaMA-architecture models built from config (RMSNorm, SwiGLU, RoPE), never downloaded.

Model builders are plain functions calling one generic builder, as in torchtune.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny LLaMA. Parameter counts are for a 1024-token vocabulary (tied embeddings)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 256


TINY_SIZES: dict[str, TinySize] = {
    # ~0.9M parameters: unit and integration tests.
    "test": TinySize(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4),
    # ~2.8M parameters (2,777,472): the `make rlhf` demo, sized to finish the whole recipe in minutes on 2 cores.
    "demo": TinySize(hidden_size=192, intermediate_size=512, num_hidden_layers=6, num_attention_heads=6),
}


def build_llama(
    size: TinySize, vocab_size: int, *, bos_token_id: int, eos_token_id: int, pad_token_id: int, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised LlamaForCausalLM of the given shape (deterministic given seed)."""
    import torch

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tiny_llama(size: str, vocab_size: int, **ids: int) -> LlamaForCausalLM:
    """Build the named tiny size (``"test"`` or ``"demo"``)."""
    return build_llama(TINY_SIZES[size], vocab_size, **ids)
