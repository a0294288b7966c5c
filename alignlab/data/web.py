"""Web text: markup stripped with an HTML parser, and the Gopher / RefinedWeb repetition filters.

``strip_html`` turns an HTML page (or a fragment with real tags) into its visible text with
Python's :class:`html.parser.HTMLParser` (the parser BeautifulSoup's default builder wraps):
``<script>``, ``<style>`` and the like are dropped with their content, block elements (``p``,
``div``, ``li``, ``h1`` ...) end a line, ``<br>`` breaks one, entities are decoded. Markdown code
fences are left alone, so an answer that *shows* HTML keeps it. Text without a known HTML tag
(``a < b > c``) is not touched.

``repetition`` drops documents that repeat themselves, with the rules and thresholds of Gopher
(Rae et al., 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
appendix A, table A1), which RefinedWeb (Penedo et al., 2023) applies too: the share of
duplicated lines and paragraphs (by count and by characters), the share of characters in the
most frequent 2-, 3-, 4-gram, and the share of characters in duplicated 5- to 10-grams. Words
are whitespace words, or single characters for text in a script written without spaces
(:func:`alignlab.data.dedup.is_spaceless`).

Example:
    >>> strip = HtmlStripper(HtmlSettings())
    >>> strip("<html><head><style>p {}</style></head><body><p>Hello &amp; welcome</p><p>Bye</p></body></html>")
    ('Hello & welcome\\nBye', {'html': 1})
    >>> RepetitionFilter(RepetitionSettings())("buy now\\n" * 10)
    ('repeated lines', '90% of lines are repeats > 30%')
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser

from alignlab.data.dedup import is_spaceless
from alignlab.data.filters import _ATTRIBUTES, _HTML_TAGS, Verdict
from alignlab.errors import ConfigError

# ---- markup -------------------------------------------------------------------------------------

_TAG = re.compile(rf"</?(?:{_HTML_TAGS}){_ATTRIBUTES}>|<!--|<!doctype\s+html", re.IGNORECASE)
_FENCE = re.compile(r"(```.*?```|~~~.*?~~~)", re.DOTALL)
BLOCK_TAGS = frozenset(
    "address article aside blockquote dd details dialog div dl dt fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table tbody td tfoot th "
    "thead title tr ul".split()
)


@dataclass
class HtmlSettings:
    """Settings of the strip_html step.

    Attributes:
        skip_tags: elements dropped with all their content (code, styles, page furniture).
        keep_code_fences: leave text inside Markdown code fences (```) as it is.
    """

    skip_tags: list[str] = field(
        default_factory=lambda: ["script", "style", "noscript", "template", "iframe", "svg", "head", "object"]
    )
    keep_code_fences: bool = True


class _Text(HTMLParser):
    def __init__(self, skip: frozenset[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.skip, self.depth, self.parts = skip, 0, []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.skip:
            self.depth += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag == "br" or tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.skip:
            self.depth = max(0, self.depth - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.parts.append(data)


def html_to_text(
    markup: str, skip_tags: frozenset[str] | set[str] = frozenset(HtmlSettings().skip_tags)
) -> str:
    """The visible text of ``markup``: one line per block, spaces collapsed, blank lines dropped."""
    parser = _Text(frozenset(skip_tags))
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


class HtmlStripper:
    """``(text) -> (visible text, {"html": 1})`` for text with HTML tags; unchanged text otherwise."""

    def __init__(self, settings: HtmlSettings) -> None:
        self.skip = frozenset(t.lower() for t in settings.skip_tags)
        self.keep_fences = settings.keep_code_fences

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        if "<" not in text or not _TAG.search(text):
            return text, {}
        pieces = _FENCE.split(text) if self.keep_fences else [text]
        out = [
            p if i % 2 else (html_to_text(p, self.skip) if _TAG.search(p) else p)
            for i, p in enumerate(pieces)
        ]
        new = "\n".join(p.strip("\n") for p in out if p.strip()) if len(out) > 1 else out[0]
        return (new, {"html": 1}) if new != text else (text, {})


# ---- repetition ---------------------------------------------------------------------------------


@dataclass
class RepetitionSettings:
    """Settings of the repetition step: Gopher's thresholds (table A1), each a fraction in
    [0, 1] above which a document is dropped; None turns that rule off.

    Attributes:
        dup_line_fraction: lines that repeat an earlier line, over all lines (0.30).
        dup_paragraph_fraction: paragraphs (split on blank lines) that repeat an earlier one (0.30).
        dup_line_char_fraction: characters in repeated lines, over all characters (0.20).
        dup_paragraph_char_fraction: characters in repeated paragraphs (0.20).
        top_ngram_char_fraction: for n = 2, 3, 4: characters covered by the most frequent n-gram,
            over all word characters (0.20, 0.18, 0.16).
        dup_ngram_char_fraction: for n = 5 ... 10: characters in n-grams that occur more than
            once (0.15, 0.14, 0.13, 0.12, 0.11, 0.10).
    """

    dup_line_fraction: float | None = 0.30
    dup_paragraph_fraction: float | None = 0.30
    dup_line_char_fraction: float | None = 0.20
    dup_paragraph_char_fraction: float | None = 0.20
    top_ngram_char_fraction: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    def __post_init__(self) -> None:
        for name in (
            "dup_line_fraction",
            "dup_paragraph_fraction",
            "dup_line_char_fraction",
            "dup_paragraph_char_fraction",
        ):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"cleaning.repetition.{name}: {value!r} is not a fraction in [0, 1]")
        for name in ("top_ngram_char_fraction", "dup_ngram_char_fraction"):
            for n, value in getattr(self, name).items():
                if not (isinstance(n, int) and n >= 1 and 0 <= value <= 1):
                    raise ConfigError(
                        f"cleaning.repetition.{name}: {{{n!r}: {value!r}}} must map an n-gram size >= 1 "
                        "to a fraction in [0, 1]"
                    )


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many of ``items`` repeat an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _words(text: str) -> list[str]:
    return [c for c in text if not c.isspace()] if is_spaceless(text) else text.split()


def top_ngram_share(words: list[str], n: int) -> float:
    """Characters of the most frequent n-gram times its count, over all word characters."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    return sum(map(len, gram)) * count / total if count > 1 else 0.0


def dup_ngram_share(words: list[str], n: int) -> float:
    """Characters of the words covered by an n-gram that occurs more than once, over all word
    characters (each word counted once, however many repeated n-grams cover it)."""
    total = sum(map(len, words))
    if len(words) < n or not total:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    return sum(len(w) for w, c in zip(words, covered) if c) / total


class RepetitionFilter:
    """Drop a document that repeats its lines, paragraphs or n-grams past Gopher's thresholds."""

    def __init__(self, settings: RepetitionSettings) -> None:
        self.s = settings

    def __call__(self, text: str) -> Verdict:
        s, total = self.s, len(text)
        if not text.strip():
            return None
        for unit, pieces, by_count, by_chars in (
            (
                "lines",
                [x for x in text.split("\n") if x.strip()],
                s.dup_line_fraction,
                s.dup_line_char_fraction,
            ),
            (
                "paragraphs",
                [x for x in re.split(r"\n\s*\n", text) if x.strip()],
                s.dup_paragraph_fraction,
                s.dup_paragraph_char_fraction,
            ),
        ):
            if len(pieces) < 2:
                continue
            count, chars = _duplicates([p.strip() for p in pieces])
            if by_count is not None and count / len(pieces) > by_count:
                return f"repeated {unit}", f"{count / len(pieces):.0%} of {unit} are repeats > {by_count:.0%}"
            if by_chars is not None and chars / total > by_chars:
                return (
                    f"repeated {unit}",
                    f"{chars / total:.0%} of characters in repeated {unit} > {by_chars:.0%}",
                )
        words = _words(text)
        for n, limit in sorted(s.top_ngram_char_fraction.items()):
            share = top_ngram_share(words, n)
            if share > limit:
                return (
                    "top n-gram",
                    f"the most frequent {n}-gram covers {share:.0%} of characters > {limit:.0%}",
                )
        for n, limit in sorted(s.dup_ngram_char_fraction.items()):
            share = dup_ngram_share(words, n)
            if share > limit:
                return "repeated n-grams", f"repeated {n}-grams cover {share:.0%} of characters > {limit:.0%}"
        return None
