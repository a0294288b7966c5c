"""Perplexity and bits per character of a causal LM on held-out text.

Two normalisations of the same total negative log-likelihood (NLL, in nats):

- per token: ``perplexity = exp(total NLL / scored tokens)`` — depends on the tokenizer;
- per character: ``bits/char = total NLL / ln 2 / characters of the text scored`` — comparable
  across tokenizers, since every model is charged for the same characters.

:func:`perplexity` scores chunks that are already packed (the pretraining stage's held-out
chunks); :func:`text_perplexity` packs raw documents itself so that every token of every document
is scored exactly once, which is what makes the per-character number honest.

Example:
    >>> result = text_perplexity(model, tokenizer, ["Mira lives in Oakvale."])  # doctest: +SKIP
    >>> result.perplexity, result.bits_per_char  # doctest: +SKIP
    (12.3, 1.9)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignlab.data.packing import IGNORE_INDEX
from alignlab.errors import DataError


@torch.inference_mode()
def nll_sum(model: Any, chunks: Sequence[dict[str, list[int]]], batch_size: int = 16) -> tuple[float, int]:
    """Total next-token NLL (nats) over the label tokens of packed chunks, and how many there are.

    Position t of a chunk predicts ``labels[t + 1]``; ``IGNORE_INDEX`` labels are not scored.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        ids = torch.tensor([c["input_ids"] for c in batch], device=device)  # (B, T)
        labels = torch.tensor([c["labels"] for c in batch], device=device)  # (B, T)
        mask = torch.tensor([c["attention_mask"] for c in batch], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        target = labels[:, 1:]  # (B, T-1)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total_nll += nll.item()
        total_tokens += int((target != IGNORE_INDEX).sum())
    if was_training:
        model.train()
    return total_nll, total_tokens


def perplexity(model: Any, chunks: Sequence[dict[str, list[int]]], batch_size: int = 16) -> dict[str, float]:
    """Token-level perplexity of ``model`` on packed chunks (``input_ids``/``labels``, -100 = ignore).

    Every label token counts once, whatever the batch it falls in (sum of NLL / number of tokens,
    not a mean of per-batch means).
    """
    total_nll, total_tokens = nll_sum(model, chunks, batch_size)
    if total_tokens == 0:
        raise ValueError("no tokens to score")
    mean = total_nll / total_tokens
    return {"nll": mean, "perplexity": math.exp(mean), "tokens": total_tokens}


@dataclass(frozen=True)
class TextPerplexity:
    """Perplexity and bits per character of a model on a set of documents.

    Attributes:
        nll: mean NLL per scored token, in nats.
        perplexity: ``exp(nll)``.
        bits_per_token: ``nll / ln 2``.
        bits_per_char: total NLL / ln 2 / ``characters``.
        tokens: tokens scored (every token of every document, separators excluded).
        characters: characters of the documents scored.
        documents: number of documents.
        total_nll: total NLL in nats.
    """

    nll: float
    perplexity: float
    bits_per_token: float
    bits_per_char: float
    tokens: int
    characters: int
    documents: int
    total_nll: float

    def to_metrics(self, prefix: str = "heldout_") -> dict[str, float | int]:
        """Flat metrics for ``Registry.add_metrics``."""
        keys = ("perplexity", "bits_per_char", "bits_per_token", "nll", "tokens", "characters", "documents")
        return {f"{prefix}{key}": getattr(self, key) for key in keys}


def document_separator(tokenizer: Any) -> int:
    """The token that precedes each document: BOS when the tokenizer itself adds one, else EOS
    (alignlab's pretraining packs documents as ``doc EOS doc EOS``, so a document follows EOS)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        probe = tokenizer("a").input_ids
        if probe and probe[0] == bos:
            return bos
    if tokenizer.eos_token_id is None:
        raise DataError("text_perplexity: the tokenizer has neither a BOS it adds nor an EOS token")
    return tokenizer.eos_token_id


def pack_for_scoring(
    docs: Sequence[Sequence[int]], seq_len: int, separator: int, pad_id: int
) -> list[dict[str, list[int]]]:
    """Pack documents so that every document token is a label exactly once.

    The stream is ``SEP doc1 SEP doc2 ...``; separators are context, never labels. Consecutive
    chunks overlap by one token (stride ``seq_len - 1``): the first position of a chunk only
    predicts, since its own label was scored at the end of the previous chunk.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    stream: list[int] = []
    labels: list[int] = []
    for doc in docs:
        stream.append(separator)
        labels.append(IGNORE_INDEX)
        stream.extend(doc)
        labels.extend(doc)
    chunks = []
    for start in range(0, max(1, len(stream) - 1), seq_len - 1):
        ids, lab = stream[start : start + seq_len], labels[start : start + seq_len]
        n_pad = seq_len - len(ids)
        chunks.append(
            {
                "input_ids": ids + [pad_id] * n_pad,
                "attention_mask": [1] * len(ids) + [0] * n_pad,
                "labels": [IGNORE_INDEX] + lab[1:] + [IGNORE_INDEX] * n_pad,
            }
        )
    return chunks


def text_perplexity(
    model: Any, tokenizer: Any, texts: Sequence[str], *, seq_len: int | None = None, batch_size: int = 16
) -> TextPerplexity:
    """Score raw documents: per-token perplexity and bits per character.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        texts: the held-out documents (empty ones are skipped).
        seq_len: chunk length; default the model's ``max_position_embeddings`` capped at 1024.
        batch_size: chunks per forward pass.

    Raises:
        DataError: no text to score.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise DataError("text_perplexity: no text to score (every document is empty)")
    if seq_len is None:
        seq_len = min(1024, int(getattr(model.config, "max_position_embeddings", 1024) or 1024))
    docs = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chunks = pack_for_scoring(docs, seq_len, document_separator(tokenizer), pad)
    total_nll, tokens = nll_sum(model, chunks, batch_size)
    if tokens == 0:
        raise DataError("text_perplexity: the documents encode to no tokens")
    characters = sum(len(t) for t in texts)
    mean = total_nll / tokens
    return TextPerplexity(
        nll=mean,
        perplexity=math.exp(mean),
        bits_per_token=mean / math.log(2),
        bits_per_char=total_nll / math.log(2) / characters,
        tokens=tokens,
        characters=characters,
        documents=len(texts),
        total_nll=total_nll,
    )
