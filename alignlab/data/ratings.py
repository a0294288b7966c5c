"""LLaMA-2's preference ratings and the margins its reward-model loss takes from them.

LLaMA-2's annotators rate each chosen response against the rejected one on four levels
("significantly better", "better", "slightly better", "negligibly better / unsure"), and the
reward model's loss is ``-log σ(r_chosen - r_rejected - m(r))`` with a margin per level
(Touvron et al., 2023, §3.2.2 and Table 27). This module reads the rating a preference record
carries and turns it into that margin.
"""

from __future__ import annotations

from typing import Any

from alignlab.errors import ConfigError

#: LLaMA-2's four levels, most separable first (level 0 ... level 3).
LEVELS = ("significantly better", "better", "slightly better", "negligibly better")

_ALIASES = {
    "significantly better": 0,
    "significantly_better": 0,
    "much better": 0,
    "better": 1,
    "slightly better": 2,
    "slightly_better": 2,
    "negligibly better": 3,
    "negligibly_better": 3,
    "negligibly better / unsure": 3,
    "unsure": 3,
}

#: Table 27 of Touvron et al. (2023): m(r) per level, "small" and "large".
MARGIN_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "small": (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0),
    "large": (3.0, 2.0, 1.0, 0.0),
}


def rating_level(value: Any, where: str = "rating") -> int:
    """The level (0 = significantly better ... 3 = negligibly better / unsure) of a rating given
    as one of the four phrases (case and spacing free, ``_`` for a space) or as the level itself.

    Raises:
        ConfigError: anything else, naming ``where``.
    """
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and 0 <= value < len(LEVELS):
        return value
    elif isinstance(value, str) and " ".join(value.lower().split()) in _ALIASES:
        return _ALIASES[" ".join(value.lower().split())]
    raise ConfigError(
        f"{where}: {value!r} is not a LLaMA-2 rating; use one of {', '.join(repr(x) for x in LEVELS)} "
        "(or 'unsure'), or the level 0-3"
    )


def margins_table(
    spec: str | list[float] | tuple[float, ...] | None, key: str = "loss.rating_margins"
) -> tuple[float, ...] | None:
    """The four margins ``spec`` names: a preset (``small`` | ``large``), four numbers, or None."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        if spec not in MARGIN_PRESETS:
            raise ConfigError(f"{key}={spec!r}: use small, large, none, or four numbers (one per level)")
        return MARGIN_PRESETS[spec]
    values = tuple(float(v) for v in spec)
    if len(values) != len(LEVELS) or any(v != v or v < 0 for v in values):
        raise ConfigError(
            f"{key}: give four margins >= 0, one per level ({', '.join(LEVELS)}); got {list(spec)}"
        )
    return values


def margin_for(rating: Any, table: tuple[float, ...], where: str = "rating") -> float:
    """m(r) for a record's ``rating`` under ``table`` (from :func:`margins_table`)."""
    return table[rating_level(rating, where)]
