"""Normalisation and deduplication: exact (hash of the normalised text), near (MinHash LSH), semantic.

The normalize step rewrites the stored text (Unicode form, whitespace) but keeps its case;
lower-casing is for matching only.

Each deduplicator sees texts one by one (or batch by batch), keeps the first occurrence and
flags later copies: ``check(text)`` returns None to keep, or ``(reason, detail)`` to drop.
Matching ignores case, Unicode compatibility forms and whitespace (:func:`matching_text`).

Example:
    >>> near = NearDedup(NearDedupSettings(threshold=0.5))
    >>> near.check("the quick brown fox jumps over the lazy dog") is None
    True
    >>> near.check("The quick brown fox jumps over the lazy cat")[0]
    'near duplicate'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alignlab.errors import ConfigError

Verdict = tuple[str, str] | None  # None: keep; (reason, detail): drop
SNIPPET = 80


def matching_text(text: str) -> str:
    """The text as compared for duplicates: NFKC, case-folded, whitespace runs as one space."""
    if text.isascii():  # NFKC leaves ASCII alone; the common case, so skip the Unicode tables
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _snippet(text: str) -> str:
    text = " ".join(text[: 2 * SNIPPET].split())
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


# ---- normalisation of the stored text ------------------------------------------------------------------------------

_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad]")  # zero-width space, word joiner, BOM, soft hyphen
_ODD_SPACES = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile(r"[ \t]+(?=\n)")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class NormalizeSettings:
    """Settings of the normalize step (the stored text keeps its case; lower-casing is for matching only).

    Attributes:
        unicode: Unicode normal form applied to every text field: NFKC (compatibility forms
            folded: full-width letters, ligatures, non-breaking spaces), NFC, or none.
        whitespace: unify line ends, drop zero-width characters, make exotic spaces plain, strip
            trailing spaces on each line and both ends of the field, and squeeze 3+ newlines to 2
            (runs of spaces inside a line are kept: code indentation).
    """

    unicode: Literal["NFKC", "NFC", "none"] = "NFKC"
    whitespace: bool = True


class Normalizer:
    """``normalizer(text) -> (text, {"unicode"|"whitespace": 1})``: what changed it."""

    def __init__(self, settings: NormalizeSettings) -> None:
        self.form = None if settings.unicode == "none" else settings.unicode
        self.whitespace = settings.whitespace

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        if self.form and not text.isascii():
            normal = unicodedata.normalize(self.form, text)
            if normal != text:
                counts["unicode"], text = 1, normal
        if self.whitespace:
            spaced = text.replace("\r\n", "\n").replace("\r", "\n")
            if not spaced.isascii():
                spaced = _ODD_SPACES.sub(" ", _INVISIBLE.sub("", spaced))
            spaced = _BLANK_LINES.sub("\n\n", _TRAILING.sub("", spaced)).strip()
            if spaced != text:
                counts["whitespace"], text = 1, spaced
        return text, counts


# ---- exact duplicates -------------------------------------------------------------------------


@dataclass
class ExactDedupSettings:
    """Settings of the exact_dedup step.

    Attributes:
        ignore_punctuation: also ignore punctuation (Unicode categories P*) and the spaces it
            leaves, so "Hello, world!" and "hello world" are one text; CJK punctuation (，。！)
            counts as punctuation too.
    """

    ignore_punctuation: bool = False


def without_punctuation(text: str) -> str:
    """``text`` with every Unicode punctuation character dropped and whitespace runs as one space."""
    return " ".join("".join(c for c in text if not unicodedata.category(c).startswith("P")).split())


class ExactDedup:
    """Drop texts whose normalised form was seen before (a 16-byte BLAKE2b digest per kept text)."""

    def __init__(self, settings: ExactDedupSettings | None = None) -> None:
        self.settings = settings or ExactDedupSettings()
        self.seen: set[bytes] = set()

    def check(self, text: str) -> Verdict:
        key = matching_text(text)
        if self.settings.ignore_punctuation:
            key = without_punctuation(key)
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        if digest in self.seen:
            return "exact duplicate", ""
        self.seen.add(digest)
        return None


# ---- near duplicates: MinHash LSH over word n-grams ---------------------------------------------


@dataclass
class NearDedupSettings:
    """Settings of the near_dedup step.

    Attributes:
        threshold: Jaccard similarity of the word n-gram sets at or above which a text is a
            near duplicate of an earlier one (0-1).
        num_perm: MinHash permutations; more is a closer estimate of the Jaccard similarity and
            slower.
        ngram: words per shingle (texts shorter than this are one shingle).
        seed: MinHash seed (the result is deterministic given it).
        verify: confirm each LSH candidate with the exact Jaccard similarity of the shingle sets
            (keeps a sorted hash array per kept text in memory); false compares MinHash estimates.
        shingle: ``words`` (word n-grams), ``chars`` (character n-grams, spaces removed) or
            ``auto``: characters for a text mostly in a script written without spaces (Chinese,
            Japanese, Thai, Lao, Khmer, Myanmar, Tibetan), where a whole document is one "word"
            and a one-character edit would change its only shingle; words otherwise.
        char_ngram: characters per character shingle. 5 is chosen here, between the 3- to
            5-grams commonly used for character-level near-dedup of Chinese text; shorter
            n-grams make unrelated texts share more shingles.
    """

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 3
    seed: int = 1
    verify: bool = True
    shingle: Literal["auto", "words", "chars"] = "auto"
    char_ngram: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"near_dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 16 or self.ngram < 1:
            raise ConfigError("near_dedup: num_perm must be >= 16 and ngram >= 1")
        if self.shingle not in ("auto", "words", "chars"):
            raise ConfigError(f"near_dedup.shingle must be auto, words or chars, got {self.shingle!r}")
        if self.char_ngram < 1:
            raise ConfigError(f"near_dedup.char_ngram must be >= 1, got {self.char_ngram}")


try:  # datasets depends on xxhash; fall back to BLAKE2b where it is missing
    from xxhash import xxh32_intdigest as _hash32
except ImportError:  # pragma: no cover

    def _hash32(data: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "little")


# Scripts written without spaces between words: CJK ideographs (and their extensions and
# compatibility forms), kana, Hangul is spaced and not listed; Thai, Lao, Tibetan, Myanmar, Khmer.
_SPACELESS = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B-G
)


def is_spaceless(text: str, share: float = 0.3) -> bool:
    """Whether at least ``share`` of the letters of ``text`` are in a script written without spaces."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    spaceless = sum(any(lo <= ord(c) <= hi for lo, hi in _SPACELESS) for c in letters)
    return spaceless >= share * len(letters)


def shingles(text: str, ngram: int = 3, *, mode: str = "words", char_ngram: int = 5) -> np.ndarray:
    """Sorted unique 32-bit hashes of the n-grams of the normalised text, shape (n,): word
    n-grams, or character n-grams (whitespace removed) with ``mode="chars"``, or whichever
    :func:`is_spaceless` says with ``mode="auto"``."""
    normal = matching_text(text)
    if mode == "chars" or (mode == "auto" and is_spaceless(normal)):
        units, n, join = list("".join(normal.split())), char_ngram, "".join
    else:
        units, n, join = normal.split(), ngram, " ".join
    if len(units) <= n:
        grams = [join(units)] if units else []
    else:
        grams = list(map(join, zip(*(units[i:] for i in range(n)))))
    hashes = [_hash32(g.encode()) for g in grams]
    return np.unique(np.array(hashes, dtype=np.uint32))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if not a.size and not b.size:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


# The LSH only proposes candidates, which are then checked exactly; proposing from a lower
# threshold makes a pair just above the real threshold almost surely proposed (the LSH's S-curve
# is ~50% at its own threshold), at the price of a few more exact checks.
_CANDIDATE_SLACK = 0.15


def _identity(value: Any) -> Any:
    return value


class NearDedup:
    """Drop texts whose word n-gram set has Jaccard >= threshold with a kept text (datasketch MinHash LSH)."""

    def __init__(self, settings: NearDedupSettings) -> None:
        from datasketch import MinHash, MinHashLSH

        self.settings = settings
        lsh_threshold = (
            max(0.3, settings.threshold - _CANDIDATE_SLACK) if settings.verify else settings.threshold
        )
        self.lsh = MinHashLSH(threshold=lsh_threshold, num_perm=settings.num_perm)
        self._template = MinHash(num_perm=settings.num_perm, seed=settings.seed)
        self._minhash = MinHash
        self.kept: dict[int, tuple[np.ndarray | Any, str]] = {}  # key -> (shingles or MinHash, snippet)
        self._next_key = 0

    def _sketch(self, grams: np.ndarray) -> Any:
        # The shingles are hashed already: hand them to MinHash as they are (hashfunc = identity).
        m = self._minhash(
            num_perm=self.settings.num_perm,
            seed=self.settings.seed,
            hashfunc=_identity,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        m.update_batch(grams.tolist())
        return m

    def check(self, text: str) -> Verdict:
        grams = shingles(
            text, self.settings.ngram, mode=self.settings.shingle, char_ngram=self.settings.char_ngram
        )
        if not grams.size:
            return None
        sketch = self._sketch(grams)
        best, best_key = 0.0, None
        for key in self.lsh.query(sketch):
            stored = self.kept[key][0]
            similarity = jaccard(grams, stored) if self.settings.verify else sketch.jaccard(stored)
            if similarity > best:
                best, best_key = similarity, key
        if best_key is not None and best >= self.settings.threshold:
            return "near duplicate", f"Jaccard {best:.2f} with {self.kept[best_key][1]!r}"
        key = self._next_key
        self._next_key += 1
        self.lsh.insert(key, sketch, check_duplication=False)
        self.kept[key] = (grams if self.settings.verify else sketch, _snippet(text))
        return None


# ---- semantic duplicates: sentence embeddings ---------------------------------------------------


@dataclass
class SemanticDedupSettings:
    """Settings of the semantic_dedup step.

    Attributes:
        model: local folder of a sentence-embedding model (transformers AutoModel + tokenizer,
            safetensors weights); never downloaded.
        threshold: cosine similarity of the mean-pooled embeddings at or above which a text is a
            semantic duplicate of an earlier one.
        batch_size: texts embedded per forward pass.
        max_length: tokens per text; longer texts are truncated.
    """

    model: str = ""
    threshold: float = 0.95
    batch_size: int = 32
    max_length: int = 256


Encoder = Callable[[Sequence[str]], np.ndarray]  # texts -> (N, D) unit-norm embeddings


def load_encoder(path: str, *, max_length: int = 256) -> Encoder:
    """A sentence encoder from a local model folder: AutoModel, mean pooling over the mask, L2 norm.

    Raises:
        ConfigError: the folder does not exist or holds no loadable model (nothing is downloaded).
    """
    folder = Path(path).expanduser()
    if not path or not folder.is_dir():
        raise ConfigError(
            f"semantic_dedup.model: {path!r} is not a local folder. Semantic dedup only loads a local "
            "sentence-embedding model and never downloads one: save one (config, tokenizer, "
            "safetensors weights) to a folder and give its path"
        )
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"semantic_dedup.model: cannot load an embedding model from {folder}: {err}"
        ) from err
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    @torch.inference_mode()
    def encode(texts: Sequence[str]) -> np.ndarray:
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()

    return encode


class SemanticDedup:
    """Drop texts whose embedding has cosine >= threshold with a kept text's.

    Compares each text with every kept one (a matrix product per batch): fine for tens of
    thousands of records; for millions, run near_dedup first.
    """

    def __init__(self, settings: SemanticDedupSettings, encoder: Encoder | None = None) -> None:
        self.settings = settings
        self.encode = encoder or load_encoder(settings.model, max_length=settings.max_length)
        self.kept: np.ndarray | None = None  # (capacity, D), the first n rows used
        self.snippets: list[str] = []
        self.n = 0

    def _append(self, vector: np.ndarray, text: str) -> None:
        if self.kept is None:
            self.kept = np.empty((1024, vector.shape[0]), dtype=np.float32)
        elif self.n == self.kept.shape[0]:
            self.kept = np.concatenate([self.kept, np.empty_like(self.kept)])
        self.kept[self.n] = vector
        self.snippets.append(_snippet(text))
        self.n += 1

    def check_batch(self, texts: Sequence[str]) -> list[Verdict]:
        if not texts:
            return []
        vectors = np.asarray(self.encode(texts), dtype=np.float32)  # (B, D)
        verdicts: list[Verdict] = []
        for text, vector in zip(texts, vectors):
            if self.n:
                sims = self.kept[: self.n] @ vector  # type: ignore[index]  # (n,)
                best = int(np.argmax(sims))
                if sims[best] >= self.settings.threshold:
                    verdicts.append(
                        ("semantic duplicate", f"cosine {sims[best]:.3f} with {self.snippets[best]!r}")
                    )
                    continue
            self._append(vector, text)
            verdicts.append(None)
        return verdicts
