"""Batched chat generation: left padding, KV cache, stop at EOS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Messages = list[dict[str, Any]]


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The token ids that end a response: the tokenizer's EOS and every id the model's generation
    config names (``eos_token_id`` may be a list there, as LLaMA-3's ``[128001, 128008, 128009]``)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def as_messages(prompt: str | Messages) -> Messages:
    """A plain string prompt is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_prompts(tokenizer: Any, prompts: Sequence[str | Messages]) -> list[list[int]]:
    """Chat-template each prompt (with the assistant generation prompt) into token ids, with the
    messages as training saw them (:func:`alignlab.models.chat_template.chat_messages`)."""
    from alignlab.models.chat_template import chat_messages, render_ids

    return [
        render_ids(tokenizer, chat_messages(tokenizer, as_messages(p)), add_generation_prompt=True)
        for p in prompts
    ]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists. Returns ``(input_ids, attention_mask)``, each (B, T)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    *,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
    progress: bool = False,
    engine: str = "hf",
) -> list[str]:
    """Generate one assistant response per prompt; returns decoded text without special tokens.

    ``engine`` is ``hf`` (``model.generate``), ``vllm`` (a vLLM engine loaded with ``model``'s
    weights for this call) or ``auto`` (vLLM where it imports); see
    :mod:`alignlab.models.engines`.

    Example:
        >>> generate(model, tok, ["What is 2 plus 3?"], max_new_tokens=16)  # doctest: +SKIP
        ['The answer is 5.']
    """
    from tqdm.auto import tqdm

    from alignlab.models.engines import EngineKind, resolve_engine

    if resolve_engine(engine, "engine") == EngineKind.VLLM:
        return _generate_with_vllm(
            model, tokenizer, prompts, max_new_tokens, do_sample, temperature, top_p, seed
        )
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts)
    responses: list[str] = []
    starts = range(0, len(encoded), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        ids, mask = left_pad(encoded[start : start + batch_size], tokenizer.pad_token_id)
        # top_k=0: sample from the full distribution (transformers' default would keep the top 50)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if do_sample
            else {"do_sample": False}
        )
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_token_ids(tokenizer, model),
            use_cache=True,
            **sampling,
        )
        new_tokens = out[:, ids.shape[1] :]
        responses.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    if was_training:
        model.train()
    return [r.strip() for r in responses]


def _generate_with_vllm(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    seed: int | None,
) -> list[str]:
    """:func:`generate` on a vLLM engine that holds ``model``'s weights for this call."""
    from alignlab.models.engines import VLLMEngine

    encoded = encode_prompts(tokenizer, prompts)
    longest = max((len(e) for e in encoded), default=1)
    with VLLMEngine(model, tokenizer, max_model_len=longest + max_new_tokens) as engine:
        engine.sync(model)
        sampled = engine.sample(
            encoded,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_token_ids(tokenizer, model),
            temperature=temperature if do_sample else 0.0,
            top_p=top_p if do_sample else 1.0,
            seed=seed
            if seed is not None
            else (int(torch.randint(0, 2**31 - 1, (1,))) if do_sample else None),
            logprobs=False,
        )
    return [r.strip() for r in tokenizer.batch_decode(sampled.token_ids, skip_special_tokens=True)]
