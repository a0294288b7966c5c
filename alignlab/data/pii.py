"""PII scrubbing: emails, phone numbers, credit cards, IP addresses and IBANs become typed placeholders.

Each detector is a candidate regex plus a check that rules out look-alikes: card numbers must pass
the Luhn checksum, IBANs the mod-97 checksum and their country's length, IP addresses must parse,
and phone numbers must have a phone's shape (a ``+`` country code, an area code in parentheses,
the North American 3-3-4 grouping, or a national number with a leading trunk ``0``), so dates,
version numbers and other numbers stay. An optional NER hook (``ner(text) -> [(start, end, label)]``)
adds names, addresses and the like.

Example:
    >>> scrub = PIIScrubber(PIISettings())
    >>> scrub("Mail jane.doe@example.com or call +44 20 7946 0958 (since 2023-10-12).")
    ('Mail <EMAIL> or call <PHONE> (since 2023-10-12).', {'email': 1, 'phone': 1})
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from alignlab.data.validation import StrEnum
from alignlab.errors import ConfigError, DataError


class PIIType(StrEnum):
    """A kind of personal data the scrubber finds; its placeholder is ``<UPPER_NAME>``."""

    EMAIL = "email"
    PHONE = "phone"
    CREDIT_CARD = "credit_card"
    IP_ADDRESS = "ip_address"
    IBAN = "iban"

    @property
    def placeholder(self) -> str:
        return f"<{self.value.upper()}>"


Span = tuple[int, int, str]  # (start, end, label): text[start:end] is replaced by <LABEL>
NER = Callable[[str], Sequence[tuple[int, int, str]]]


@dataclass
class PIISettings:
    """Settings of the pii step.

    Attributes:
        types: which kinds of PII to replace: email, phone, credit_card, ip_address, iban.
        ner: import path of an NER callable, ``"package.module:function"``, called as
            ``ner(text) -> [(start, end, label), ...]`` on each text field after the regex
            scrubbing; each span is replaced by ``<LABEL>`` (e.g. ``<PERSON>``).
    """

    types: list[PIIType] = field(default_factory=lambda: list(PIIType))
    ner: str | None = None


# ---- checksums ----------------------------------------------------------------------------------


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of a card number (digits only; separators are ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Lengths of the IBANs of the SEPA countries and others in common use (ISO 13616 registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """The ISO 13616 check: the country's length and ``int(rearranged) % 97 == 1`` (spaces ignored)."""
    iban = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    if len(iban) != IBAN_LENGTHS.get(iban[:2], len(iban)):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# ---- detectors ----------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\w.+-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?=[0-9A-Fa-f:]*::?[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}(?![\w:])")
# A run of digits and phone separators; _is_phone decides. Linear: no nested quantifiers.
_PHONE = re.compile(r"(?<![\w+/.-])\+?\(?\d[\d().\- ]{5,22}\d(?![\w/-]|\.\d)")
_NANP = re.compile(r"(?:1([ .-]))?(?:\d{3}|\(\d{3}\) ?)([ .-]?)\d{3}[ .-]\d{4}")
_PAREN = re.compile(r"\(\d{2,5}\) ?\d{2,4}(?:[ .-]?\d{2,4}){1,3}")
_TRUNK = re.compile(r"0\d{1,4}(?:[ .-]\d{2,8}){1,4}")
_IBAN_HEAD = re.compile(r"\b[A-Z]{2}\d{2} ?$")  # the rest of a bad IBAN is no card number
_DATE = re.compile(r"\d{4}([-/.])\d{1,2}\1\d{1,2}|\d{1,2}([-/.])\d{1,2}\2\d{2,4}")


def _emails(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _EMAIL.finditer(text)]


def _ibans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _IBAN.finditer(text):
        candidate, end = m.group(), m.end()
        if not iban_valid(candidate) and " " in candidate:  # a capitalised word glued on at the end
            candidate = candidate.rsplit(" ", 1)[0]
            end = m.start() + len(candidate)
        if iban_valid(candidate):
            spans.append((m.start(), end))
    return spans


def _cards(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _CARD.finditer(text):
        candidate = m.group()
        digits = re.sub(r"\D", "", candidate)
        separators = set(re.sub(r"\d", "", candidate))
        if _IBAN_HEAD.search(text, max(0, m.start() - 5), m.start()):
            continue
        if 13 <= len(digits) <= 19 and digits[0] in "23456" and len(separators) <= 1 and luhn_valid(digits):
            spans.append(m.span())
    return spans


def _ips(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        spans.append(m.span())
    for m in _IPV6.finditer(text) if text.count(":") >= 2 else ():
        candidate = m.group()
        if not any(c.isdigit() for c in candidate):  # "dead::beef", "a::b" are not worth the risk
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        spans.append(m.span())
    return spans


def _is_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if digits > 15 or _DATE.fullmatch(candidate):
        return False
    if candidate.startswith("+"):
        return 8 <= digits and candidate.count("(") == candidate.count(")")
    if candidate.startswith("("):
        return 9 <= digits <= 12 and bool(_PAREN.fullmatch(candidate))
    if _NANP.fullmatch(candidate):
        return True
    return candidate[0] == "0" and 9 <= digits <= 11 and bool(_TRUNK.fullmatch(candidate))


def _phones(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _PHONE.finditer(text):
        start, end = m.span()
        candidate = m.group()
        if candidate.endswith(")") and candidate.count(")") > candidate.count("("):
            end = start + len(candidate[:-1].rstrip())  # the sentence's bracket, not an area code's
        elif candidate[0] == "(" and candidate.count("(") > candidate.count(")"):
            start += 1  # "(555-123-4567)": the number in brackets
        if _is_phone(text[start:end]):
            spans.append((start, end))
    return spans


# Priority order: an IBAN's digits must not be read as a card or a phone number first.
DETECTORS: dict[PIIType, Callable[[str], list[tuple[int, int]]]] = {
    PIIType.EMAIL: _emails,
    PIIType.IBAN: _ibans,
    PIIType.CREDIT_CARD: _cards,
    PIIType.IP_ADDRESS: _ips,
    PIIType.PHONE: _phones,
}
_DIGIT_FREE = (PIIType.EMAIL,)
_ANY_DIGIT = re.compile(r"\d")  # detectors worth running on text without digits


def find_pii(text: str, types: Sequence[PIIType] = tuple(PIIType)) -> list[Span]:
    """Non-overlapping PII spans, sorted by start; earlier detectors win overlaps."""
    wanted = set(types)
    has_digit = _ANY_DIGIT.search(text) is not None
    has_at = "@" in text
    taken: list[Span] = []
    for kind, detect in DETECTORS.items():
        if kind not in wanted or (kind == PIIType.EMAIL and not has_at):
            continue
        if kind not in _DIGIT_FREE and not has_digit:
            continue
        for start, end in detect(text):
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind.value))
    return sorted(taken)


def replace_spans(text: str, spans: Sequence[Span]) -> str:
    """``text`` with each (start, end, label) span replaced by ``<LABEL>``; overlaps keep the first."""
    out, last = [], 0
    for start, end, label in sorted(spans):
        if start < last:
            continue
        out.append(text[last:start])
        out.append(f"<{label.upper()}>")
        last = end
    out.append(text[last:])
    return "".join(out)


def load_ner(path: str) -> NER:
    """Import the NER callable named ``"package.module:function"`` (or ``package.module.function``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"pii.ner: cannot import {path!r} ({err}); give 'package.module:function' of a callable "
            "ner(text) -> [(start, end, label), ...] importable from this environment"
        ) from err
    if not callable(target):
        raise ConfigError(f"pii.ner: {path!r} is not callable")
    return target


def _check_ner_spans(spans: Sequence[tuple[int, int, str]], text: str, path: str) -> list[Span]:
    checked = []
    for span in spans:
        try:
            start, end, label = span
        except (TypeError, ValueError):
            raise DataError(
                f"pii.ner {path!r} returned {span!r}; expected (start, end, label) tuples"
            ) from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise DataError(
                f"pii.ner {path!r} returned the span ({start!r}, {end!r}) outside a text of {len(text)} characters"
            )
        checked.append((start, end, str(label)))
    return checked


class PIIScrubber:
    """Replace PII in a text by typed placeholders; ``scrubber(text) -> (text, {type: count})``."""

    def __init__(self, settings: PIISettings, ner: NER | None = None) -> None:
        self.types = tuple(PIIType(t) for t in settings.types)
        self.ner_path = settings.ner or ""
        self.ner = ner if ner is not None else (load_ner(settings.ner) if settings.ner else None)

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        spans = find_pii(text, self.types)
        if spans:
            text = replace_spans(text, spans)
            for _, _, label in spans:
                counts[label] = counts.get(label, 0) + 1
        if self.ner is not None and text:
            ner_spans = _check_ner_spans(self.ner(text), text, self.ner_path)
            if ner_spans:
                text = replace_spans(text, ner_spans)
                for _, _, label in ner_spans:
                    key = label.lower()
                    counts[key] = counts.get(key, 0) + 1
        return text, counts
