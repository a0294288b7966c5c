"""Chat templates as training data: token ids and the assistant-token mask, for any template.

TRL's ``assistant_only_loss`` needs a template with ``{% generation %}`` markers, which most
models' templates lack (SmolLM2, LLaMA-2, Mistral, ...). alignlab builds the mask itself by
rendering the conversation prefix by prefix: the tokens of an assistant turn are those that
``messages[: i + 1]`` adds to ``messages[:i]`` rendered with the generation prompt, cut after the
turn's end-of-turn (stop) token, so what follows it (a newline, the next turn's header) is not
trained. Each prefix's tokens must be a prefix of the whole conversation's; a template that
renders earlier turns differently once later ones follow (one that drops past reasoning, say)
falls back to its ``{% generation %}`` markers where it has them, and is refused otherwise with
what to do.

Example:
    >>> chat = tokenize_chat(tok, [{"role": "user", "content": "Hi"},
    ...                            {"role": "assistant", "content": "Hello!"}], stop_ids=[2])  # doctest: +SKIP
    >>> tok.decode([t for t, m in zip(chat.input_ids, chat.assistant_mask) if m])  # doctest: +SKIP
    'Hello!<|im_end|>'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import DataError

log = logging.getLogger("alignlab")

Messages = list[dict[str, Any]]
_PROBE_TOOL = "alignlab_probe_tool"


class ChatTemplateError(DataError):
    """A chat template that cannot give an assistant-token mask (names the model and what to do)."""


@dataclass
class ChatTokens:
    """One conversation tokenised: ``input_ids`` and a 0/1 ``assistant_mask`` of the same length."""

    input_ids: list[int]
    assistant_mask: list[int]


def model_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def renders_tool_calls(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes an assistant turn's ``tool_calls`` into the text."""
    template = tokenizer.chat_template
    cached = _TOOL_CALLS_RENDERED.get(template)
    if cached is None:
        probe = [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": _PROBE_TOOL, "arguments": {}}}],
            },
        ]
        try:
            cached = _PROBE_TOOL in tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # a template that rejects the shape does not render it either
            cached = False
        _TOOL_CALLS_RENDERED[template] = cached
    return cached


_TOOL_CALLS_RENDERED: dict[str, bool] = {}


def chat_messages(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> Messages:
    """Messages as the template should get them.

    Where the template ignores ``tool_calls`` (SmolLM2's, alignlab's), an assistant turn's calls
    are written into its content as JSON (as :func:`alignlab.data.messages.tool_call_text` does
    for transcripts), so that training sees the call instead of an empty turn.
    """
    from alignlab.data.messages import tool_call_text

    if not any(m.get("tool_calls") for m in messages) or renders_tool_calls(tokenizer):
        return [dict(m) for m in messages]
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls:
            m["content"] = tool_call_text(m.get("content", ""), calls)
        out.append(m)
    return out


def render_ids(
    tokenizer: Any, messages: Messages, *, tools: Any = None, add_generation_prompt: bool = False
) -> list[int]:
    """The template's token ids for ``messages`` (the template adds BOS and the like itself)."""
    return list(
        tokenizer.apply_chat_template(
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
    )


def tokenize_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Any = None,
    stop_ids: Sequence[int] = (),
) -> ChatTokens:
    """Token ids of a conversation and the mask of its assistant tokens.

    Each assistant turn's masked tokens are its content followed by its end-of-turn token (the
    last of ``stop_ids`` in the tokens the turn adds; where the template writes none, the turn's
    tokens up to the next turn are kept whole).

    Raises:
        ChatTemplateError: the template renders a prefix of the conversation as tokens that are
            not a prefix of the whole, and has no ``{% generation %}`` markers to fall back on.
    """
    messages = chat_messages(tokenizer, messages)
    full = render_ids(tokenizer, messages, tools=tools)
    mask = [0] * len(full)
    stops = set(stop_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _prefix_ids(tokenizer, messages[:i], tools)
        end = render_ids(tokenizer, messages[: i + 1], tools=tools)
        broken = _first_mismatch(start, end)
        if broken is None:
            broken = _first_mismatch(end, full)
        if broken is not None:
            return _generation_marker_mask(tokenizer, messages, tools, full, broken, i)
        stop = max((p for p in range(len(start), len(end)) if end[p] in stops), default=None)
        for p in range(len(start), len(end) if stop is None else stop + 1):
            mask[p] = 1
    return ChatTokens(full, mask)


def _prefix_ids(tokenizer: Any, messages: Messages, tools: Any) -> list[int]:
    """The ids before an assistant turn: the earlier messages with the generation prompt."""
    if not messages:  # a conversation that opens with the assistant
        try:
            return render_ids(tokenizer, [], tools=tools, add_generation_prompt=True)
        except Exception:  # templates that index messages[0] cannot render nothing
            return []
    return render_ids(tokenizer, messages, tools=tools, add_generation_prompt=True)


def _first_mismatch(prefix: list[int], whole: list[int]) -> int | None:
    """The first position where ``prefix`` is not a prefix of ``whole`` (None when it is)."""
    for p, token in enumerate(prefix):
        if p >= len(whole) or whole[p] != token:
            return p
    return None


def _generation_marker_mask(
    tokenizer: Any, messages: Messages, tools: Any, full: list[int], broken: int, turn: int
) -> ChatTokens:
    from trl.chat_template_utils import has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        out = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return ChatTokens(list(out["input_ids"]), list(out["assistant_masks"]))
    near = tokenizer.decode(full[max(0, broken - 3) : broken + 3])
    raise ChatTemplateError(
        f"{model_name(tokenizer)}: its chat template cannot be masked for loss_on=assistant: the "
        f"conversation rendered up to turn {turn} is not a token prefix of the whole conversation "
        f"(they differ at token {broken}, near {near!r}), so the template renders earlier turns "
        "differently once later ones follow, or tokens merge across the turn boundary. Set "
        "loss_on=all to train on every token, or give the tokenizer a chat template that wraps "
        "each assistant turn in {% generation %}...{% endgeneration %} (docs/models.md)"
    )


def tokenize_conversations(
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    *,
    stop_ids: Sequence[int],
    assistant_only: bool = True,
    source: str = "",
) -> list[dict[str, list[int]]]:
    """Canonical SFT records as TRL-ready rows: ``input_ids`` and, when ``assistant_only``, the
    ``assistant_masks`` TRL turns into labels.

    Raises:
        ChatTemplateError: naming the record (``source`` row N) whose conversation cannot be masked.
    """
    from tqdm.auto import tqdm

    rows = []
    tails: set[str] = set()
    for n, record in enumerate(tqdm(records, desc="tokenize", leave=False, disable=len(records) < 2000)):
        tools = record.get("tools")
        if not assistant_only:
            messages = chat_messages(tokenizer, record["messages"])
            rows.append({"input_ids": render_ids(tokenizer, messages, tools=tools)})
            continue
        try:
            chat = tokenize_chat(tokenizer, record["messages"], tools=tools, stop_ids=stop_ids)
        except ChatTemplateError as err:
            raise ChatTemplateError(f"{source or 'SFT data'} row {n + 1}: {err}") from None
        if n < 8:
            tails.add(_turn_tail(tokenizer, chat, stop_ids))
        rows.append({"input_ids": chat.input_ids, "assistant_masks": chat.assistant_mask})
    if assistant_only and "" in tails:
        log.warning(
            "%s: the chat template ends assistant turns without a stop token (%s): the model learns "
            "the turn's ending text instead and may not stop generating",
            model_name(tokenizer),
            tokenizer.convert_ids_to_tokens(list(stop_ids)),
        )
    return rows


def _turn_tail(tokenizer: Any, chat: ChatTokens, stop_ids: Sequence[int]) -> str:
    """The stop token that ends the conversation's last trained span ('' when there is none)."""
    last = max((p for p, m in enumerate(chat.assistant_mask) if m), default=None)
    if last is None or chat.input_ids[last] not in set(stop_ids):
        return ""
    return tokenizer.convert_ids_to_tokens(chat.input_ids[last])
