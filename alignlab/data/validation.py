"""Record-level errors and the small type checks every format parser shares.

A :class:`RecordError` is a :class:`~alignlab.errors.DataError` that also carries *where* it
happened (``file:line``) and a short :class:`DropReason`, so that a lenient load can count
dropped records by reason while a strict load raises the very same error.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from alignlab.errors import DataError


class DropReason(StrEnum):
    """Why a record was refused; the keys of ``LoadReport.dropped``."""

    INVALID_JSON = "not valid JSON"
    NOT_UTF8 = "not UTF-8 text"
    TOO_LARGE = "record too large"
    NOT_A_RECORD = "not a record"
    UNKNOWN_FORMAT = "unknown format"
    MISSING_FIELD = "missing field"
    WRONG_TYPE = "wrong type"
    EMPTY_FIELD = "empty field"
    EMPTY_RESPONSE = "empty response"
    UNKNOWN_ROLE = "unknown role"
    BAD_CONVERSATION = "malformed conversation"
    BAD_RANKS = "ranks not a permutation"
    WRONG_KIND = "format does not give this kind"
    IDENTICAL = "chosen identical to rejected"


class RecordError(DataError):
    """One bad record: ``str(err)`` is ``"<where>: <detail>"``.

    Attributes:
        where: ``file:line`` (or ``file:row N``, ``source:record N``); may be empty.
        reason: the category counted in a lenient load's report.
        detail: the message without the location.
    """

    def __init__(self, where: str, reason: DropReason | str, detail: str) -> None:
        self.where = where
        self.reason = DropReason(reason)
        self.detail = detail
        super().__init__(f"{where}: {detail}" if where else detail)


class SkippedRecord(RecordError):
    """A well-formed record that carries no signal (chosen identical to rejected).

    Loaders drop it with a warning and count it, in strict mode too.
    """


def type_name(value: Any) -> str:
    """The name of a JSON value's type as people know it (``null``, ``int``, ``string`` ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def missing(where: str, name: str) -> RecordError:
    """The error for an absent (or null) field."""
    return RecordError(where, DropReason.MISSING_FIELD, f"field '{name}': missing")


def wrong_type(where: str, name: str, expected: str, value: Any) -> RecordError:
    """The error for a field of the wrong type, e.g. ``expected a string, got int``."""
    return RecordError(
        where, DropReason.WRONG_TYPE, f"field '{name}': expected {expected}, got {type_name(value)}"
    )


def require(record: dict[str, Any], name: str, where: str) -> Any:
    """``record[name]``, or a missing-field error when it is absent or null."""
    value = record.get(name)
    if value is None:
        raise missing(where, name)
    return value


def expect_str(value: Any, name: str, where: str, *, allow_empty: bool = True, response: bool = False) -> str:
    """Check that ``value`` is a string (non-blank unless ``allow_empty``).

    Args:
        response: a blank value is counted as an empty *response* rather than an empty field.
    """
    if not isinstance(value, str):
        raise wrong_type(where, name, "a string", value)
    if not allow_empty and not value.strip():
        if response:
            raise RecordError(where, DropReason.EMPTY_RESPONSE, f"field '{name}': empty response")
        raise RecordError(where, DropReason.EMPTY_FIELD, f"field '{name}': empty")
    return value


def expect_list(value: Any, name: str, where: str, *, what: str = "a list") -> list[Any]:
    """Check that ``value`` is a non-empty list."""
    if not isinstance(value, list):
        raise wrong_type(where, name, what, value)
    if not value:
        raise RecordError(where, DropReason.EMPTY_FIELD, f"field '{name}': empty list")
    return value


def optional_float(value: Any, name: str, where: str) -> float | None:
    """A number (or a numeric string, as CSV cells are) as float; None or ``""`` as None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise wrong_type(where, name, "a number", value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise wrong_type(where, name, "a number", value)
