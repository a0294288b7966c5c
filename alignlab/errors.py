"""Errors raised for people: each says what was wrong, where, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AlignlabError(Exception):
    """Base class of every error alignlab raises on purpose."""


class ConfigError(AlignlabError, ValueError):
    """A config key, value or type is wrong (names the key)."""


class DataError(AlignlabError, ValueError):
    """A data file or record is wrong (names file:line and the field)."""


class ReferenceNotFound(AlignlabError, LookupError):
    """A reference resolves to nothing (lists close matches)."""


class RegistryError(AlignlabError):
    """The registry refused an operation (e.g. removing an artifact with children)."""


class TrainingError(AlignlabError, RuntimeError):
    """Training stopped on a guard (non-finite loss, KL beyond bound, ...)."""


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``word`` (for "did you mean" hints)."""
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix, or an empty string when nothing is close."""
    matches = closest(word, candidates)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"
