"""The reward model's data: rankings from canonical records, the held-out split, tokenised batches.

Every example is a :class:`Ranking`: one prompt and its K >= 2 responses, best first (a
preference pair is K = 2). A batch flattens its rankings to responses, each a chat transcript
(the prompt messages + one assistant turn) tokenised once and padded with the others, so that a
single forward pass scores every response of the batch once (see :mod:`alignlab.reward_losses`).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.errors import DataError

log = logging.getLogger("alignlab")

DROPPED_DUPLICATES = "ranking with identical responses"


@dataclass
class Ranking:
    """One prompt and its responses, best first.

    Attributes:
        prompt: the prompt messages.
        responses: K >= 2 responses, best first.
        margins: one margin per pair (:func:`alignlab.reward_losses.ranking_pairs` order), or None.
        rating: a pair's LLaMA-2 rating level (0 = significantly better ... 3 = negligibly
            better / unsure, :mod:`alignlab.data.ratings`), when its record has one.
    """

    prompt: list[dict[str, Any]]
    responses: list[str]
    margins: list[float] | None = None
    rating: int | None = None


def rankings_from_records(
    records: Sequence[dict[str, Any]],
    kind: str,
    *,
    use_margin: bool = True,
    source: str = "",
    rating_margins: Any = None,
) -> tuple[list[Ranking], int]:
    """Canonical ``preference`` or ``ranking`` records as rankings; also the number dropped.

    A pair's margin is its ``margin``, else, with ``rating_margins`` (a preset or four numbers,
    :func:`alignlab.data.ratings.margins_table`), the margin of its LLaMA-2 ``rating``.

    A ranking holding the same response twice (after stripping) says nothing about those two
    and contradicts itself about the rest; it is dropped with a warning and counted, as
    :mod:`alignlab.data` drops a pair whose chosen equals its rejected.
    """
    from alignlab.data.ratings import margin_for, margins_table, rating_level

    table = margins_table(rating_margins)
    out: list[Ranking] = []
    dropped = 0
    for i, record in enumerate(records, 1):
        if kind == "preference":
            margin, rating = record.get("margin"), record.get("rating")
            where = f"{source or 'reward data'}: record {i}, field rating"
            level = None if rating is None else rating_level(rating, where)
            if margin is None and table is not None and level is not None:
                margin = margin_for(level, table, where)
            margins = [float(margin)] if use_margin and margin is not None else None
            out.append(Ranking(record["prompt"], [record["chosen"], record["rejected"]], margins, level))
            continue
        responses = list(record["responses"])
        if len({r.strip() for r in responses}) < len(responses):
            dropped += 1
            continue
        out.append(Ranking(record["prompt"], responses))
    if dropped:
        log.warning(
            "%s: dropped %d ranking(s) that list the same response twice", source or "reward data", dropped
        )
    if not out:
        raise DataError(
            f"{source + ': ' if source else ''}no usable rankings: all {dropped} list the same response twice"
        )
    return out, dropped


def split_by_prompt(
    rankings: Sequence[Ranking], share: float, seed: int
) -> tuple[list[Ranking], list[Ranking]]:
    """Hold out ``share`` of the distinct prompts (at least one when share > 0), with all their rankings.

    Splitting by prompt rather than by record keeps every held-out prompt unseen in training.
    The split depends only on the records and ``seed``.

    Returns:
        ``(train, held_out)``; ``held_out`` is empty when ``share`` is 0.

    Raises:
        DataError: ``share > 0`` but fewer than two distinct prompts, so nothing is left to train on.
    """
    keys = [json.dumps(r.prompt, sort_keys=True) for r in rankings]
    distinct = sorted(set(keys))
    if share <= 0:
        return list(rankings), []
    if len(distinct) < 2:
        raise DataError(
            f"data.eval_share={share} needs at least 2 distinct prompts to hold one out; "
            f"the data has {len(distinct)}. Add data or set data.eval_share=0"
        )
    random.Random(seed).shuffle(distinct)
    n_eval = min(len(distinct) - 1, max(1, round(share * len(distinct))))
    held = set(distinct[:n_eval])
    train = [r for r, k in zip(rankings, keys) if k not in held]
    return train, [r for r, k in zip(rankings, keys) if k in held]


def gold_rankings(n: int, seed: int) -> list[Ranking]:
    """``n`` fresh testbed pairs ordered by the gold preference (no label noise).

    Each pair of :func:`alignlab.testbed.preference_pairs` is put best first by
    :func:`alignlab.testbed.gold_preference`, the testbed's hidden Bradley-Terry preference.
    """
    from alignlab.testbed import gold_preference, preference_pairs

    out = []
    from alignlab.data.ratings import rating_level

    for pair in preference_pairs(n, seed=seed, label_noise=0.0):
        prompt, a, b = pair["prompt"], pair["chosen"], pair["rejected"]
        best_first = [a, b] if gold_preference(prompt, a, b) > 0.5 else [b, a]
        out.append(
            Ranking([{"role": "user", "content": prompt}], best_first, rating=rating_level(pair["rating"]))
        )
    return out


@dataclass
class Encoded:
    """A ranking tokenised: one list of token ids per response, best first."""

    ids: list[list[int]]
    margins: list[float] | None = None


def transcript(tokenizer: Any, prompt: list[dict[str, Any]], response: str) -> str:
    """The text a reward model scores: the prompt messages and the response as an assistant turn."""
    return tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": response}], tokenize=False
    )


def encode(rankings: Sequence[Ranking], tokenizer: Any, max_length: int) -> tuple[list[Encoded], int]:
    """Tokenise every response of every ranking once; also how many transcripts were truncated.

    A transcript longer than ``max_length`` tokens loses its *beginning*: the reward is read at
    the last token, so the end of the response must stay.
    """
    texts = [transcript(tokenizer, r.prompt, resp) for r in rankings for resp in r.responses]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    truncated = sum(len(x) > max_length for x in ids)
    ids = [x[-max_length:] for x in ids]
    out, start = [], 0
    for r in rankings:
        out.append(Encoded(ids[start : start + len(r.responses)], r.margins))
        start += len(r.responses)
    return out, truncated


def collate(batch: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Flatten a batch of rankings to its R responses, right-padded together.

    Returns:
        ``input_ids`` (R, T), ``attention_mask`` (R, T), ``sizes`` (G,) responses per ranking,
        ``margin`` (P,) per-pair margins (0 where a ranking has none).
    """
    rows = [ids for enc in batch for ids in enc.ids]
    width = max(len(x) for x in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    margins: list[float] = []
    for enc in batch:
        n_pairs = math.comb(len(enc.ids), 2)
        margins.extend(enc.margins if enc.margins is not None else [0.0] * n_pairs)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "sizes": torch.tensor([len(enc.ids) for enc in batch], dtype=torch.long),
        "margin": torch.tensor(margins, dtype=torch.float32),
    }
