"""Packing tokenized documents into fixed-length training sequences.

Documents are joined with EOS and cut into ``seq_len`` chunks; a long document spans several
chunks and the final partial chunk is kept (padded, pads masked out of the loss), so no text is
truncated away.
"""

from __future__ import annotations

from collections.abc import Sequence

IGNORE_INDEX = -100


def pack_documents(
    docs: Sequence[Sequence[int]], seq_len: int, eos_id: int, pad_id: int
) -> list[dict[str, list[int]]]:
    """Pack token-id documents into chunks of ``seq_len`` tokens.

    Returns:
        One dict per chunk with ``input_ids``, ``attention_mask`` and ``labels`` (each seq_len long;
        labels are IGNORE_INDEX on padding).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    stream: list[int] = []
    for doc in docs:
        if doc:
            stream.extend(doc)
            stream.append(eos_id)
    chunks = []
    for start in range(0, len(stream), seq_len):
        piece = stream[start : start + seq_len]
        n_pad = seq_len - len(piece)
        chunks.append(
            {
                "input_ids": piece + [pad_id] * n_pad,
                "attention_mask": [1] * len(piece) + [0] * n_pad,
                "labels": piece + [IGNORE_INDEX] * n_pad,
            }
        )
    return chunks


def count_tokens(chunks: Sequence[dict[str, list[int]]]) -> int:
    """Real (non-padding) tokens in packed chunks."""
    return sum(sum(c["attention_mask"]) for c in chunks)
