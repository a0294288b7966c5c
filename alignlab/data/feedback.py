"""The human-feedback formats: preference pairs, HH-RLHF transcripts and K-way rankings.

- preference: ``{"prompt", "chosen", "rejected", "margin"?}``; each of the three a string or a
  list of messages (a chosen/rejected list ends with the assistant's response).
- hh_rlhf: ``{"chosen", "rejected"}`` full transcripts (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``
  or message lists), split at the last assistant turn; both must share the same prompt.
- ranked: ``{"context", "responses": [{"text", "rank"}, ...]}``, rank 1 = best.
- kway: ``{"prompt", "responses": [str, ...]}`` best first, or ``[{"text", "rank"}, ...]``.
"""

from __future__ import annotations

from typing import Any

from alignlab.data.kinds import Pair, Ranking
from alignlab.data.messages import as_prompt, as_response, check_prompt, parse_messages, parse_transcript
from alignlab.data.validation import (
    DropReason,
    RecordError,
    expect_list,
    expect_str,
    missing,
    optional_float,
    require,
    wrong_type,
)


def parse_preference(record: dict[str, Any], where: str) -> Pair:
    prompt = as_prompt(require(record, "prompt", where), "prompt", where)
    chosen = as_response(require(record, "chosen", where), "chosen", where)
    rejected = as_response(require(record, "rejected", where), "rejected", where)
    margin = optional_float(record.get("margin"), "margin", where)
    return Pair(prompt, chosen, rejected, margin, _rating(record.get("rating"), where))


def _rating(value: Any, where: str) -> str | None:
    """A LLaMA-2 rating (phrase or level 0-3) as its level's name; None when absent."""
    from alignlab.data.ratings import LEVELS, rating_level
    from alignlab.errors import ConfigError

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return LEVELS[rating_level(value, "rating")]
    except ConfigError:
        raise wrong_type(
            where, "rating", f"a LLaMA-2 rating ({', '.join(LEVELS)}, 'unsure' or 0-3)", value
        ) from None


def _split_conversation(value: Any, name: str, where: str) -> tuple[list[dict[str, Any]], str]:
    if isinstance(value, list):
        response = as_response(value, name, where)
        prompt = parse_messages(value, name, where)[:-1]
        if not prompt:
            raise RecordError(
                where, DropReason.BAD_CONVERSATION, f"field '{name}': no prompt before the response"
            )
        check_prompt(prompt, name, where)
        return prompt, response
    return parse_transcript(value, name, where)


def parse_hh_rlhf(record: dict[str, Any], where: str) -> Pair:
    chosen_prompt, chosen = _split_conversation(require(record, "chosen", where), "chosen", where)
    rejected_prompt, rejected = _split_conversation(require(record, "rejected", where), "rejected", where)
    if chosen_prompt != rejected_prompt:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt)) if a != b),
            min(len(chosen_prompt), len(rejected_prompt)),
        )
        raise RecordError(
            where,
            DropReason.BAD_CONVERSATION,
            f"fields 'chosen' and 'rejected' differ before the last assistant turn (at turn {turn + 1}); "
            "both transcripts must share the same prompt",
        )
    return Pair(chosen_prompt, chosen, rejected, optional_float(record.get("margin"), "margin", where))


def _rank(value: Any, name: str, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(where, name, "an integer rank", value)
    return value


def ranked_responses(value: Any, name: str, where: str, *, ordered_strings: bool) -> list[str]:
    """Responses best first, from ``[{"text", "rank"}]`` (or, when allowed, best-first strings).

    Raises:
        RecordError: fewer than two responses, an empty one, or ranks that are not a
            permutation of 1..K (ties are not allowed).
    """
    items = expect_list(value, name, where, what="a list of responses")
    if len(items) < 2:
        raise RecordError(
            where, DropReason.BAD_RANKS, f"field '{name}': a ranking needs at least 2 responses, got 1"
        )
    if ordered_strings and all(isinstance(item, str) for item in items):
        return [
            expect_str(t, f"{name}[{i}]", where, allow_empty=False, response=True)
            for i, t in enumerate(items)
        ]
    texts, ranks = [], []
    for i, item in enumerate(items):
        path = f"{name}[{i}]"
        if not isinstance(item, dict):
            expected = (
                "a string or a {'text', 'rank'} object" if ordered_strings else "a {'text', 'rank'} object"
            )
            raise wrong_type(where, path, expected, item)
        for key in ("text", "rank"):
            if item.get(key) is None:
                raise missing(where, f"{path}.{key}")
        texts.append(expect_str(item["text"], f"{path}.text", where, allow_empty=False, response=True))
        ranks.append(_rank(item["rank"], f"{path}.rank", where))
    k = len(ranks)
    if sorted(ranks) != list(range(1, k + 1)):
        ties = sorted({r for r in ranks if ranks.count(r) > 1})
        problem = (
            f"ties are not allowed (rank {ties[0]} appears {ranks.count(ties[0])} times)" if ties else ""
        )
        raise RecordError(
            where,
            DropReason.BAD_RANKS,
            f"field '{name}': ranks must be a permutation of 1..{k}, got {ranks}"
            + (f"; {problem}" if problem else ""),
        )
    return [text for _, text in sorted(zip(ranks, texts))]


def parse_ranked(record: dict[str, Any], where: str) -> Ranking:
    prompt = as_prompt(require(record, "context", where), "context", where)
    return Ranking(
        prompt,
        ranked_responses(require(record, "responses", where), "responses", where, ordered_strings=False),
    )


def parse_kway(record: dict[str, Any], where: str) -> Ranking:
    prompt = as_prompt(require(record, "prompt", where), "prompt", where)
    return Ranking(
        prompt,
        ranked_responses(require(record, "responses", where), "responses", where, ordered_strings=True),
    )
