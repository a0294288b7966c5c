"""Record kinds: what a stage consumes, and how a parsed record becomes canonical records of a kind.

A format parser turns a raw record into one of five parsed shapes (:class:`Conversation`,
:class:`Pair`, :class:`Ranking`, :class:`PromptOnly`, :class:`Text`); :func:`to_kind` turns that
shape into canonical records of the kind a stage asks for, where the conversion means something:

============  =====  ==========  =======  ======  ====
parsed        sft    preference  ranking  prompt  text
============  =====  ==========  =======  ======  ====
Conversation  yes    -           -        yes     yes
Pair          yes*   yes         yes (2)  yes     -
Ranking       yes*   yes (pairs) yes      yes     -
PromptOnly    -      -           -        yes     -
Text          -      -           -        -       yes
Thread        yes**  yes (pairs) yes (*n) yes     yes
============  =====  ==========  =======  ======  ====

(*) the prompt followed by the chosen / best response.
(**) the best-ranked path; (*n) one ranking per turn whose replies were ranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignlab.data.messages import check_sft, prompt_of, render_transcript
from alignlab.data.validation import DropReason, RecordError, SkippedRecord, StrEnum


class RecordKind(StrEnum):
    """What a stage reads: the shape of a canonical record."""

    SFT = "sft"
    PREFERENCE = "preference"
    RANKING = "ranking"
    PROMPT = "prompt"
    TEXT = "text"


Messages = list[dict[str, Any]]


@dataclass
class Conversation:
    """A whole conversation (messages, alpaca, sharegpt, prompt_completion)."""

    messages: Messages
    tools: list[Any] | None = None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            record["tools"] = self.tools
        return record


@dataclass
class Pair:
    """A prompt with a chosen and a rejected response (preference, hh_rlhf)."""

    prompt: Messages
    chosen: str
    rejected: str
    margin: float | None = None
    rating: str | None = None  # LLaMA-2's rating level name (alignlab.data.ratings), when given


@dataclass
class Ranking:
    """A prompt with K >= 2 responses, best first (ranked, kway)."""

    prompt: Messages
    responses: list[str]


@dataclass
class PromptOnly:
    """A prompt without a response (prompt); ``answer`` is the reference answer a verifiable
    reward checks against, when the record has one."""

    prompt: Messages
    answer: Any = None


@dataclass
class Text:
    """A plain document (text)."""

    text: str


@dataclass
class Thread:
    """A conversation tree with ranked replies (OASST): its best-ranked path as a conversation,
    and one :class:`Ranking` per turn whose replies were ranked (the path up to it as prompt)."""

    best: Messages
    rankings: list[Ranking]


Parsed = Conversation | Pair | Ranking | PromptOnly | Text | Thread

KINDS_OF: dict[type, frozenset[RecordKind]] = {
    Conversation: frozenset({RecordKind.SFT, RecordKind.PROMPT, RecordKind.TEXT}),
    Pair: frozenset({RecordKind.SFT, RecordKind.PREFERENCE, RecordKind.RANKING, RecordKind.PROMPT}),
    Ranking: frozenset({RecordKind.SFT, RecordKind.PREFERENCE, RecordKind.RANKING, RecordKind.PROMPT}),
    PromptOnly: frozenset({RecordKind.PROMPT}),
    Text: frozenset({RecordKind.TEXT}),
    Thread: frozenset(RecordKind),
}


def _identical(where: str) -> SkippedRecord:
    return SkippedRecord(
        where, DropReason.IDENTICAL, "chosen is identical to rejected; the pair carries no preference"
    )


def preference(
    prompt: Messages, chosen: str, rejected: str, margin: float | None = None, rating: str | None = None
) -> dict[str, Any]:
    """A canonical preference record (``rating`` only when the pair has one)."""
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}
    if rating is not None:
        record["rating"] = rating
    return record


def ranking_to_pairs(record: dict[str, Any], *, margin_from_ranks: bool = False) -> list[dict[str, Any]]:
    """All ``K(K-1)/2`` preference pairs of a canonical ranking record (best-first responses).

    Pairs whose two responses are the same text carry no preference and are left out.

    Args:
        record: ``{"prompt": [messages], "responses": [str, ...]}``, best first.
        margin_from_ranks: set each pair's margin to its rank gap (1.0 for neighbours)
            instead of None.

    Example:
        >>> pairs = ranking_to_pairs({"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"]})
        >>> [(p["chosen"], p["rejected"]) for p in pairs]
        [('a', 'b'), ('a', 'c'), ('b', 'c')]
    """
    responses = record["responses"]
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if responses[i].strip() == responses[j].strip():
                continue
            margin = float(j - i) if margin_from_ranks else None
            pairs.append(preference(record["prompt"], responses[i], responses[j], margin))
    return pairs


def to_kind(parsed: Parsed, kind: RecordKind, where: str, *, fmt: str = "") -> list[dict[str, Any]]:
    """Canonical records of ``kind`` from one parsed record (several only for ranking -> preference).

    Raises:
        RecordError: the record cannot give ``kind`` or breaks a rule of that kind.
        SkippedRecord: chosen identical to rejected.
    """
    if kind not in KINDS_OF[type(parsed)]:
        what = f"a '{fmt}' record" if fmt else f"a {type(parsed).__name__.lower()}"
        gives = ", ".join(sorted(KINDS_OF[type(parsed)]))
        raise RecordError(
            where, DropReason.WRONG_KIND, f"{what} cannot be used as '{kind}' data (it gives: {gives})"
        )
    if isinstance(parsed, Thread):
        if kind in (RecordKind.SFT, RecordKind.PROMPT, RecordKind.TEXT):
            return to_kind(Conversation(parsed.best), kind, where, fmt=fmt)
        if not parsed.rankings:
            raise RecordError(
                where,
                DropReason.WRONG_KIND,
                f"this conversation tree has no ranked replies to give '{kind}' data",
            )
        out = []
        for ranking in parsed.rankings:
            try:
                out.extend(to_kind(ranking, kind, where, fmt=fmt))
            except SkippedRecord:  # one turn's replies all alike; the tree's other turns still count
                continue
        if not out:
            raise _identical(where)
        return out
    if isinstance(parsed, Conversation):
        if kind == RecordKind.SFT:
            check_sft(parsed.messages, "messages", where)
            return [parsed.as_record()]
        if kind == RecordKind.PROMPT:
            return [{"prompt": prompt_of(parsed.messages, "messages", where)}]
        return [{"text": render_transcript(parsed.messages)}]
    if isinstance(parsed, Pair):
        if kind == RecordKind.SFT:
            return [{"messages": [*parsed.prompt, {"role": "assistant", "content": parsed.chosen}]}]
        if kind == RecordKind.PROMPT:
            return [{"prompt": parsed.prompt}]
        if parsed.chosen.strip() == parsed.rejected.strip():
            raise _identical(where)
        if kind == RecordKind.RANKING:
            return [{"prompt": parsed.prompt, "responses": [parsed.chosen, parsed.rejected]}]
        return [preference(parsed.prompt, parsed.chosen, parsed.rejected, parsed.margin, parsed.rating)]
    if isinstance(parsed, Ranking):
        record = {"prompt": parsed.prompt, "responses": parsed.responses}
        if kind == RecordKind.SFT:
            return [{"messages": [*parsed.prompt, {"role": "assistant", "content": parsed.responses[0]}]}]
        if kind == RecordKind.PROMPT:
            return [{"prompt": parsed.prompt}]
        if kind == RecordKind.RANKING:
            return [record]
        pairs = ranking_to_pairs(record)
        if not pairs:
            raise _identical(where)
        return pairs
    if isinstance(parsed, PromptOnly):
        return [{"prompt": parsed.prompt} | ({} if parsed.answer is None else {"answer": parsed.answer})]
    return [{"text": parsed.text}]
