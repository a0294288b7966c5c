"""Scoring continuations with a causal LM: the log-probability of each option after a context.

Multiple-choice evaluation (:mod:`alignlab.eval.multiple_choice`), the LLM judge of data cleaning
(:mod:`alignlab.data.judge`) and the pairwise judge (:mod:`alignlab.eval.judge`) read a model's
answer this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Eval mode and no autograd inside; the previous training flag restored after."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def model_device(model: Any) -> torch.device:
    """Where the model's parameters are (CPU for a parameterless stand-in)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _right_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def option_logprobs(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[Sequence[int]],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[torch.Tensor]:
    """Log-probabilities of each context's options, normalised over those options.

    When every option is one token (``" A"``, ``"1"``), one forward pass per context reads the
    logits of those tokens at the answer position (the last context token). Otherwise each
    option's continuation is scored in full (sum of its token log-probabilities).

    Args:
        model: a causal LM (anything returning ``.logits`` of shape (B, T, V)).
        tokenizer: encodes the option strings (without special tokens).
        contexts: token ids of each prompt, ending right before the answer.
        options: the continuations to compare for each context, e.g. ``[" A", " B", " C"]``.
        batch_size: sequences per forward pass.
        max_length: longest sequence; longer contexts lose their beginning. Default: the model's
            ``max_position_embeddings`` when it has one.

    Returns:
        One (K,) tensor of log-softmax scores per context (K = its number of options).
    """
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = {o: tokenizer(o, add_special_tokens=False).input_ids for row in options for o in row}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(model)
    single = all(len(ids) == 1 for ids in encoded.values()) and all(
        len({encoded[o][0] for o in row}) == len(row) for row in options
    )
    if single:  # (context) -> logits of the option tokens at its last position
        sequences = [_clip(list(c), 0, max_length) for c in contexts]
        targets = [[encoded[o][0] for o in row] for row in options]
    else:  # (context, option) -> summed log-probability of the option's tokens
        sequences, targets = [], []
        for c, row in zip(contexts, options):
            for o in row:
                sequences.append(_clip(list(c), len(encoded[o]), max_length) + encoded[o])
                targets.append(encoded[o])
    scores: list[torch.Tensor] = []
    with evaluating(model):
        for start in range(0, len(sequences), batch_size):
            rows = sequences[start : start + batch_size]
            ids, mask = _right_pad(rows, pad, device)
            logp = torch.log_softmax(
                model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1
            )  # (B, T, V)
            for i, row in enumerate(rows):
                want = targets[start + i]
                if single:
                    scores.append(logp[i, len(row) - 1, want].cpu())
                else:  # position t predicts token t + 1; the option fills the last len(want) slots
                    first = len(row) - len(want)
                    positions = torch.arange(first - 1, len(row) - 1)
                    scores.append(logp[i, positions, want].sum().cpu())
    if single:
        return [torch.log_softmax(s, dim=-1) for s in scores]
    out, pos = [], 0
    for row in options:
        out.append(torch.log_softmax(torch.stack(scores[pos : pos + len(row)]), dim=-1))
        pos += len(row)
    return out


def _clip(context: list[int], reserve: int, max_length: int | None) -> list[int]:
    if max_length is None or len(context) + reserve <= max_length:
        return context
    return context[len(context) + reserve - max_length :]
