"""Vocabulary extension by merging a new-domain BPE into a model's own tokenizer.

What Chinese-LLaMA (Cui et al., 2023, §2.2) and BELLE do: learn a tokenizer on the new domain's
text, merge its vocabulary *and merges* into the base tokenizer, resize the embeddings. Adding the
learned pieces as ``added_tokens`` instead (what this library did before issue 18) makes them
match inside any word ("the other" became "t he othe r") and cannot express a byte-level piece
of a CJK character at all.

How the merge keeps old text as it was: every merge added here ranks after all of the base's
merges, so on any piece of text the base merges run to completion first (giving exactly the base
tokenization) and only then may a new merge join two adjacent tokens; it does so only where two
tokens of a new word meet. Text without the new words' pieces (English and code after a Chinese
extension) therefore tokenizes exactly as before; an English domain word ("photosynthesis") may
also shorten an English word that shares its start ("photograph"), as any BPE extension would.

Supported: byte-level BPE tokenizers (GPT-2, LLaMA-3, Qwen, SmolLM2 and the testbed's). Others
(LLaMA-2's character-level BPE with byte fallback, Unigram, WordPiece) are refused with a
ConfigError naming ``vocab.train_new_tokens``; ``vocab.add_tokens`` still works for them.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import ConfigError

log = logging.getLogger("alignlab")


@dataclass
class Extension:
    """What :func:`merge_vocabulary` added.

    Attributes:
        words: the new-domain strings that became single tokens.
        tokens: every vocabulary entry added, in id order (the words and the partial pieces
            their merges go through, e.g. the first two bytes of a CJK character).
        first_id: the id of the first added token.
    """

    words: list[str]
    tokens: list[str]
    first_id: int


def _state(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("vocab: extending a vocabulary needs a fast (tokenizers-backed) tokenizer")
    state = json.loads(backend.to_str())
    kind = state.get("model", {}).get("type")
    if kind != "BPE" or "ByteLevel" not in json.dumps(state.get("pre_tokenizer")):
        raise ConfigError(
            f"vocab.train_new_tokens: the tokenizer is not a byte-level BPE (model {kind}, pre-tokenizer "
            f"{(state.get('pre_tokenizer') or {}).get('type')}); merging a learned vocabulary is built for "
            "byte-level BPE tokenizers only (vocab.add_tokens adds whole tokens to any tokenizer)"
        )
    return state


def _install(tokenizer: Any, state: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))


def _merge_pair(entry: Any) -> tuple[str, str]:
    """A merge as stored in tokenizer.json: ``[a, b]`` (tokenizers >= 0.20) or ``"a b"``."""
    if isinstance(entry, str):
        a, b = entry.split(" ", 1)
        return a, b
    return entry[0], entry[1]


def _next_id(state: dict[str, Any]) -> int:
    ids = list(state["model"]["vocab"].values()) + [t["id"] for t in state.get("added_tokens", [])]
    return max(ids, default=-1) + 1


def _is_clean(text: str) -> bool:
    """A learned piece worth a token: whole characters (no byte of a split one), not only space."""
    return (
        bool(text.strip()) and "\ufffd" not in text and not any(unicodedata.category(c) == "Cc" for c in text)
    )


def is_byte_level_bpe(tokenizer: Any) -> bool:
    try:
        _state(tokenizer)
    except ConfigError:
        return False
    return True


def learned_words(tokenizer: Any, texts: Sequence[str], n: int, *, max_chars: int = 8) -> list[str]:
    """Up to ``n`` strings a BPE trained on ``texts`` makes tokens of, most frequent first, that
    the base tokenizer does not already hold as one token: whole characters only, one
    pre-tokenizer piece each (single CJK characters included: most of what Chinese-LLaMA adds)."""
    _state(tokenizer)  # a byte-level BPE, or a ConfigError
    backend = tokenizer._tokenizer
    learned = tokenizer.train_new_from_iterator(list(texts), vocab_size=4 * n + 512)
    base = tokenizer.get_vocab()
    out: list[str] = []
    seen: set[str] = set()
    for token, _ in sorted(learned.get_vocab().items(), key=lambda kv: kv[1]):
        text = learned.convert_tokens_to_string([token])
        if token in base or text in seen or not _is_clean(text) or len(text.strip()) > max_chars:
            continue
        if (
            len(backend.pre_tokenizer.pre_tokenize_str(text)) != 1
            or len(tokenizer(text, add_special_tokens=False)["input_ids"]) < 2
        ):
            continue
        seen.add(text)
        out.append(text)
        if len(out) == n:
            break
    return out


def merge_vocabulary(tokenizer: Any, words: Sequence[str]) -> Extension:
    """Make each of ``words`` one token of ``tokenizer`` (changed in place) by appending merges.

    Shorter words first, so that a word's merges build on its characters' tokens. A word that
    the pre-tokenizer splits in several pieces cannot be one token and is skipped.
    """
    from tokenizers import Tokenizer

    state = _state(tokenizer)
    model = state["model"]
    vocab: dict[str, int] = model["vocab"]
    strings = isinstance(model["merges"][0], str) if model["merges"] else False
    known = {_merge_pair(m) for m in model["merges"]}
    next_id = first_id = _next_id(state)
    added: list[str] = []
    done: list[str] = []

    def add(token: str) -> None:
        nonlocal next_id
        if token not in vocab:
            vocab[token] = next_id
            next_id += 1
            added.append(token)

    by_length: dict[int, list[str]] = {}
    for word in dict.fromkeys(words):
        by_length.setdefault(len(word), []).append(word)
    for length in sorted(by_length):
        current = Tokenizer.from_str(json.dumps(state))  # with the shorter words' merges
        for word in by_length[length]:
            pieces = current.pre_tokenizer.pre_tokenize_str(word)
            if len(pieces) != 1:
                continue
            piece = pieces[0][0]
            tokens = [t.value for t in current.model.tokenize(piece)]
            if len(tokens) == 1:
                continue
            joined = tokens[0]
            for token in tokens[1:]:
                if (joined, token) not in known:
                    known.add((joined, token))
                    model["merges"].append(f"{joined} {token}" if strings else [joined, token])
                add(joined + token)
                joined += token
            done.append(word)
    _install(tokenizer, state)
    return Extension(words=done, tokens=added, first_id=first_id)


def split_digits(tokenizer: Any) -> None:
    """Pre-tokenize every digit as its own piece, as LLaMA's tokenizer does (Touvron et al.,
    2023, §2.1: "we split all numbers into individual digits"); changes ``tokenizer`` in place."""
    from tokenizers import pre_tokenizers

    backend = tokenizer._tokenizer
    digits = pre_tokenizers.Digits(individual_digits=True)
    backend.pre_tokenizer = (
        pre_tokenizers.Sequence([digits, backend.pre_tokenizer]) if backend.pre_tokenizer else digits
    )


def tokens_per_char(tokenizer: Any, texts: Sequence[str]) -> float:
    """Tokens per character over ``texts`` (Chinese-LLaMA reports its extension about halves it)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    return tokens / chars if chars else 0.0
