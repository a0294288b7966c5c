"""Perplexity: exp of the mean next-token negative log-likelihood over real (non-pad) tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


@torch.inference_mode()
def perplexity(model: Any, chunks: Sequence[dict[str, list[int]]], batch_size: int = 16) -> dict[str, float]:
    """Token-level perplexity of ``model`` on packed chunks (``input_ids``/``labels``, -100 = ignore).

    Every label token counts once, whatever the batch it falls in (sum of NLL / number of tokens,
    not a mean of per-batch means).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        ids = torch.tensor([c["input_ids"] for c in batch], device=device)  # (B, T)
        labels = torch.tensor([c["labels"] for c in batch], device=device)  # (B, T)
        mask = torch.tensor([c["attention_mask"] for c in batch], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        target = labels[:, 1:]  # (B, T-1)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                              ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((target != -100).sum())
    if was_training:
        model.train()
    if total_tokens == 0:
        raise ValueError("no tokens to score")
    mean = total_nll / total_tokens
    return {"nll": mean, "perplexity": math.exp(mean), "tokens": total_tokens}
