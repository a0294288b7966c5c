"""Data formats: the registry, detection from a record's keys, and conversion to canonical records.

Example:
    >>> record = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    >>> detect_format(record, "x.jsonl:1")
    <DataFormat.ALPACA: 'alpaca'>
    >>> to_canonical(record, "auto", "sft", "x.jsonl:1")
    {'messages': [{'role': 'user', 'content': 'Add 2 and 3.'}, {'role': 'assistant', 'content': '5'}]}
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from alignlab.data import conversational, feedback, oasst
from alignlab.data.kinds import (
    KINDS_OF,
    Conversation,
    Pair,
    Parsed,
    PromptOnly,
    Ranking,
    RecordKind,
    Text,
    Thread,
    to_kind,
)
from alignlab.data.messages import as_prompt
from alignlab.data.validation import DropReason, RecordError, StrEnum, expect_str, require, type_name
from alignlab.errors import ConfigError, DataError, did_you_mean

AUTO = "auto"


class DataFormat(StrEnum):
    """The record layouts alignlab reads (see docs/data.md for an example of each)."""

    MESSAGES = "messages"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"
    HH_RLHF = "hh_rlhf"
    RANKED = "ranked"
    KWAY = "kway"
    PROMPT = "prompt"
    TEXT = "text"
    DOLLY = "dolly"
    ULTRACHAT = "ultrachat"
    OASST = "oasst"
    OASST_MESSAGE = "oasst_message"


@dataclass(frozen=True)
class FormatSpec:
    """One record layout.

    Attributes:
        name: the format's name (a :class:`DataFormat` value for the built-in ones).
        keys: the layout in a few words, shown when detection fails.
        matches: whether a record with these keys looks like this format.
        parse: ``(record, where) -> Conversation | Pair | Ranking | PromptOnly | Text``.
        shape: the parsed type ``parse`` returns (decides which record kinds it can give).
        write: for conversational formats, ``(Conversation, where) -> record`` (the inverse of parse).
    """

    name: str
    keys: str
    matches: Callable[[Collection[str]], bool]
    parse: Callable[[dict[str, Any], str], Parsed]
    shape: type
    write: Callable[[Conversation, str], dict[str, Any]] | None = None

    @property
    def gives(self) -> frozenset[RecordKind]:
        """The record kinds this format can give."""
        return KINDS_OF[self.shape]


FORMATS: dict[str, FormatSpec] = {}


def register_format(spec: FormatSpec) -> FormatSpec:
    """Add a format; detection tries formats in registration order.

    Raises:
        ValueError: a format with this name is already registered.
    """
    name = str(spec.name)
    if name in FORMATS:
        raise ValueError(f"data format {name!r} is already registered; pick another name")
    if spec.shape not in KINDS_OF:
        raise ValueError(f"data format {name!r}: shape must be one of {[t.__name__ for t in KINDS_OF]}")
    FORMATS[name] = spec
    return spec


def _parse_prompt(record: dict[str, Any], where: str) -> PromptOnly:
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise RecordError(
            where,
            DropReason.WRONG_TYPE,
            f"field 'answer' must be a string or a number, got {type(answer).__name__}",
        )
    return PromptOnly(as_prompt(require(record, "prompt", where), "prompt", where), answer)


def _parse_text(record: dict[str, Any], where: str) -> Text:
    return Text(expect_str(require(record, "text", where), "text", where, allow_empty=False))


def _has(*required: str, any_of: tuple[str, ...] = ()) -> Callable[[Collection[str]], bool]:
    def matches(keys: Collection[str]) -> bool:
        return all(k in keys for k in required) and (not any_of or any(k in keys for k in any_of))

    return matches


def _builtin_formats() -> None:
    F, cv, fb = DataFormat, conversational, feedback
    for spec in (
        FormatSpec(
            F.MESSAGES,
            "messages",
            _has("messages"),
            cv.parse_messages_record,
            Conversation,
            cv.write_messages_record,
        ),
        FormatSpec(
            F.SHAREGPT,
            "conversations[, system, tools]",
            _has("conversations"),
            cv.parse_sharegpt,
            Conversation,
            cv.write_sharegpt,
        ),
        FormatSpec(
            F.DOLLY,
            "instruction, context, response[, category]",
            _has("instruction", "response"),
            cv.parse_dolly,
            Conversation,
            cv.write_dolly,
        ),
        FormatSpec(
            F.ALPACA,
            "instruction, input, output[, system, history]",
            _has("instruction"),
            cv.parse_alpaca,
            Conversation,
            cv.write_alpaca,
        ),
        FormatSpec(
            F.OASST,
            "message_tree_id, prompt {role, text, replies [{role, text, rank, replies}]}",
            _has("message_tree_id", "prompt"),
            oasst.parse_tree,
            Thread,
        ),
        FormatSpec(
            F.RANKED,
            "context, responses[{text, rank}]",
            _has("context", "responses"),
            fb.parse_ranked,
            Ranking,
        ),
        FormatSpec(
            F.KWAY,
            "prompt, responses (best first, or [{text, rank}])",
            _has("prompt", "responses"),
            fb.parse_kway,
            Ranking,
        ),
        FormatSpec(
            F.PREFERENCE,
            "prompt, chosen, rejected[, margin]",
            _has("prompt", any_of=("chosen", "rejected")),
            fb.parse_preference,
            Pair,
        ),
        FormatSpec(
            F.HH_RLHF,
            "chosen, rejected (full transcripts)",
            _has(any_of=("chosen", "rejected")),
            fb.parse_hh_rlhf,
            Pair,
        ),
        FormatSpec(
            F.PROMPT_COMPLETION,
            "prompt, completion",
            _has("prompt", "completion"),
            cv.parse_prompt_completion,
            Conversation,
            cv.write_prompt_completion,
        ),
        FormatSpec(F.PROMPT, "prompt", _has("prompt"), _parse_prompt, PromptOnly),
        FormatSpec(
            F.ULTRACHAT,
            "data [user, assistant, ...]",
            _has("data"),
            cv.parse_ultrachat,
            Conversation,
            cv.write_ultrachat,
        ),
        FormatSpec(
            F.OASST_MESSAGE,
            "message_id, parent_id, role, text (rows of OASST's flat table, grouped into trees)",
            _has("message_id", "role", "text"),
            oasst.parse_message_row,
            Thread,
        ),
        FormatSpec(F.TEXT, "text", _has("text"), _parse_text, Text),
    ):
        register_format(spec)


_builtin_formats()


def record_kind(kind: RecordKind | str) -> RecordKind:
    """``kind`` as a :class:`RecordKind`; a ConfigError naming the valid kinds otherwise."""
    try:
        return RecordKind(kind)
    except ValueError:
        names = [k.value for k in RecordKind]
        raise ConfigError(
            f"unknown record kind {kind!r}{did_you_mean(str(kind), names)}; expected one of {', '.join(names)}"
        ) from None


def format_spec(fmt: DataFormat | str) -> FormatSpec:
    """The registered format named ``fmt``; a ConfigError listing the known ones otherwise."""
    if fmt not in FORMATS:
        raise ConfigError(
            f"unknown data format {fmt!r}{did_you_mean(str(fmt), FORMATS)}; "
            f"expected 'auto' or one of {', '.join(FORMATS)}"
        )
    return FORMATS[str(fmt)]


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RecordError(where, DropReason.NOT_A_RECORD, f"expected a JSON object, got {type_name(record)}")
    return record


def detect_format(
    record: dict[str, Any], where: str, kind: RecordKind | str | None = None
) -> DataFormat | str:
    """The format of ``record``, told from its keys.

    When several formats fit (a record with both ``messages`` and ``prompt``/``chosen``/``rejected``
    keys, say) and ``kind`` is given, the first one that can give that kind wins.

    Raises:
        RecordError: not an object, or no format fits its keys (the message lists the known formats).
    """
    keys = [k for k, v in _check_record(record, where).items() if v is not None]
    fitting = [spec for spec in FORMATS.values() if spec.matches(keys)]
    if not fitting:
        known = "; ".join(f"{spec.name} ({spec.keys})" for spec in FORMATS.values())
        raise RecordError(
            where,
            DropReason.UNKNOWN_FORMAT,
            f"cannot tell the format from the keys {sorted(record)}; known formats: {known}",
        )
    if kind is not None:
        wanted = record_kind(kind)
        for spec in fitting:
            if wanted in spec.gives:
                return _name(spec)
    return _name(fitting[0])


def _name(spec: FormatSpec) -> DataFormat | str:
    try:
        return DataFormat(spec.name)
    except ValueError:  # a format registered by a user
        return spec.name


def canonical_records(
    record: Any, fmt: DataFormat | str, kind: RecordKind | str, where: str
) -> list[dict[str, Any]]:
    """All canonical records of ``kind`` in ``record`` (several when a ranking gives preference pairs)."""
    kind = record_kind(kind)
    record = _check_record(record, where)
    name = detect_format(record, where, kind) if fmt == AUTO else format_spec(fmt).name
    return to_kind(FORMATS[str(name)].parse(record, where), kind, where, fmt=str(name))


def to_canonical(record: Any, fmt: DataFormat | str, kind: RecordKind | str, where: str) -> dict[str, Any]:
    """The canonical record of ``kind`` for one raw record in format ``fmt`` (or ``"auto"``).

    Raises:
        RecordError: the record is malformed, e.g.
            ``"data.jsonl:3: field 'chosen': expected a string or a list of messages, got int"``.
        SkippedRecord: chosen identical to rejected (a loader drops and counts it).
        DataError: a ranking asked for as one preference record (use :func:`canonical_records`
            or :func:`ranking_to_pairs`, which give all of its pairs).
    """
    records = canonical_records(record, fmt, kind, where)
    if len(records) != 1:
        raise DataError(
            f"{where}: this ranking gives {len(records)} preference pairs, not one; "
            "use canonical_records() or ranking_to_pairs()"
        )
    return records[0]


def _conversational(fmt: DataFormat | str, where: str) -> FormatSpec:
    spec = format_spec(fmt)
    if spec.write is None:
        names = ", ".join(s.name for s in FORMATS.values() if s.write is not None)
        raise DataError(
            f"{where + ': ' if where else ''}'{spec.name}' is not a conversational format ({names})"
        )
    return spec


def to_messages(record: dict[str, Any], fmt: DataFormat | str = AUTO, where: str = "") -> dict[str, Any]:
    """A conversational record (messages, alpaca, sharegpt, prompt_completion) as ``{"messages": [...]}``.

    Example:
        >>> to_messages({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
        {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]}
    """
    name = detect_format(_check_record(record, where), where, RecordKind.SFT) if fmt == AUTO else fmt
    return _conversational(name, where).parse(record, where).as_record()


def from_messages(record: dict[str, Any], fmt: DataFormat | str, where: str = "") -> dict[str, Any]:
    """A ``{"messages": [...], "tools"?}`` record written in another conversational format.

    Raises:
        RecordError: the format cannot hold this conversation (tool calls in alpaca, say).
    """
    spec = _conversational(fmt, where)
    conversation = conversational.parse_messages_record(_check_record(record, where), where)
    return spec.write(conversation, where)  # type: ignore[misc]
