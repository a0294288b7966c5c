"""Chat messages: validation into the canonical shape, prompts, and plain-text transcripts.

A canonical message is ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``
with, where present, ``tool_calls`` (assistant), ``tool_call_id`` and ``name`` (tool).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from alignlab.data.validation import (
    DropReason,
    RecordError,
    expect_list,
    expect_str,
    missing,
    wrong_type,
)
from alignlab.errors import did_you_mean

ROLES = ("system", "user", "assistant", "tool")
_ROLE_HINTS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "function": "tool",
}
MESSAGE_LIST = "a list of messages"
logger = logging.getLogger("alignlab.data")
_warned: set[str] = set()


def reset_loose_warnings() -> None:
    """Start a new load: each loose form warns again once (:func:`warn_loose`)."""
    _warned.clear()


def warn_loose(key: str, where: str, message: str) -> None:
    """Log a warning about a loose form that was converted, once per ``key`` and load.

    A dump written one way is usually written that way on every line; one warning (naming the
    first record) says so without flooding the log. A load starts with :func:`reset_loose_warnings`.
    """
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s: %s (later records converted the same way are not reported)", where, message)


def parse_tool_calls(value: Any, name: str, where: str) -> list[dict[str, Any]]:
    """Normalize tool calls to ``{"type": "function", "function": {"name", "arguments"}}`` (+ ``id``).

    Accepts the OpenAI shape and the flat ``{"name", "arguments"}`` shape (ShareGPT function calls).
    """
    if isinstance(value, dict):
        value = [value]
    calls = expect_list(value, name, where, what="a list of tool calls")
    out = []
    for i, call in enumerate(calls):
        path = f"{name}[{i}]"
        if not isinstance(call, dict):
            raise wrong_type(where, path, "a tool call object", call)
        function = call.get("function", call)
        if not isinstance(function, dict):
            raise wrong_type(where, f"{path}.function", "an object with 'name' and 'arguments'", function)
        fname = function.get("name")
        if fname is None:
            raise missing(where, f"{path}.name")
        expect_str(fname, f"{path}.name", where, allow_empty=False)
        arguments = function.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, (dict, str)):
            raise wrong_type(where, f"{path}.arguments", "an object or a JSON string", arguments)
        normalized: dict[str, Any] = {"type": "function", "function": {"name": fname, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            normalized["id"] = call["id"]
        out.append(normalized)
    return out


def _content(value: Any, name: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: only text parts can be trained on
        texts = []
        for i, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise wrong_type(where, f"{name}[{i}]", "a text part {'type': 'text', 'text': ...}", part)
            texts.append(part["text"])
        return "".join(texts)
    raise wrong_type(where, name, "a string", value)


def parse_message(value: Any, name: str, where: str) -> dict[str, Any]:
    """Validate one message (``name`` is its path, e.g. ``messages[2]``) into canonical form."""
    if not isinstance(value, dict):
        raise wrong_type(where, name, "a message object {'role', 'content'}", value)
    role = value.get("role")
    if role is None:
        raise missing(where, f"{name}.role")
    if role not in ROLES:
        hint = (
            f" (did you mean '{_ROLE_HINTS[role]}'?)"
            if role in _ROLE_HINTS
            else did_you_mean(str(role), ROLES)
        )
        raise RecordError(
            where,
            DropReason.UNKNOWN_ROLE,
            f"field '{name}.role': unknown role {role!r}{hint}; expected one of {', '.join(ROLES)}",
        )
    tool_calls = value.get("tool_calls")
    content = value.get("content")
    if content is None:
        if not (role == "assistant" and tool_calls):
            raise missing(where, f"{name}.content")
        content = ""
    message: dict[str, Any] = {"role": role, "content": _content(content, f"{name}.content", where)}
    if tool_calls:
        if role != "assistant":
            raise RecordError(
                where,
                DropReason.BAD_CONVERSATION,
                f"field '{name}.tool_calls': only assistant turns call tools",
            )
        message["tool_calls"] = parse_tool_calls(tool_calls, f"{name}.tool_calls", where)
    for key in ("tool_call_id", "name"):
        if value.get(key) is not None:
            message[key] = expect_str(value[key], f"{name}.{key}", where)
    return message


def parse_messages(value: Any, name: str, where: str) -> list[dict[str, Any]]:
    """Validate a non-empty list of messages."""
    items = expect_list(value, name, where, what=MESSAGE_LIST)
    return [parse_message(m, f"{name}[{i}]", where) for i, m in enumerate(items)]


_TOOL_NAMES = re.compile(r"\s*[A-Za-z_][\w.-]*(\s*[,;\s]\s*[A-Za-z_][\w.-]*)*\s*")


def parse_tools(value: Any, name: str, where: str) -> list[Any] | None:
    """Tool schemas: a list, or a JSON string holding one (ShareGPT); empty -> None.

    Many ShareGPT dumps write only the tools' names (``"tools": "map_search"``, or several
    separated by commas): that loose form becomes ``[{"type": "function", "function": {"name": ...}}]``
    with a logged warning, since a schema without parameters says less than the model may need.
    """
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            if not _TOOL_NAMES.fullmatch(value):
                raise RecordError(
                    where,
                    DropReason.WRONG_TYPE,
                    f"field '{name}': not valid JSON ({err.msg}, column {err.colno}), "
                    "nor a list of tool names like 'map_search, get_time'",
                ) from None
            names = re.split(r"[,;\s]+", value.strip())
            warn_loose(
                f"{name}:names",
                where,
                f"field '{name}' names tools ({', '.join(names)}) instead of giving JSON schemas; "
                "read as schemas without parameters",
            )
            empty = {"type": "object", "properties": {}}
            value = [{"type": "function", "function": {"name": n, "parameters": empty}} for n in names]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise wrong_type(where, name, "a list of tool schemas", value)
    return value


def as_prompt(value: Any, name: str, where: str) -> list[dict[str, Any]]:
    """A prompt given as a string (one user turn) or as messages ending with a user or tool turn."""
    if isinstance(value, str):
        expect_str(value, name, where, allow_empty=False)
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise wrong_type(where, name, "a string or a list of messages", value)
    messages = parse_messages(value, name, where)
    check_prompt(messages, name, where)
    return messages


def check_prompt(messages: list[dict[str, Any]], name: str, where: str) -> None:
    """A prompt ends with a non-empty user (or tool) turn."""
    last = messages[-1]
    if last["role"] not in ("user", "tool"):
        raise RecordError(
            where,
            DropReason.BAD_CONVERSATION,
            f"field '{name}': a prompt must end with a user turn, not {last['role']}",
        )
    if not last["content"].strip():
        raise RecordError(where, DropReason.EMPTY_FIELD, f"field '{name}': the last user turn is empty")


def prompt_of(messages: list[dict[str, Any]], name: str, where: str) -> list[dict[str, Any]]:
    """The messages up to and including the last user (or tool) turn."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] in ("user", "tool"):
            prompt = messages[: i + 1]
            check_prompt(prompt, name, where)
            return prompt
    raise RecordError(where, DropReason.BAD_CONVERSATION, f"field '{name}': no user turn to use as a prompt")


def as_response(value: Any, name: str, where: str) -> str:
    """A response given as a string or as messages whose last turn is the assistant's answer."""
    if isinstance(value, list):
        messages = parse_messages(value, name, where)
        last = messages[-1]
        if last["role"] != "assistant":
            raise RecordError(
                where,
                DropReason.BAD_CONVERSATION,
                f"field '{name}': the last message must be the assistant's response, not {last['role']}",
            )
        value = last["content"]
    elif not isinstance(value, str):
        raise wrong_type(where, name, "a string or a list of messages", value)
    return expect_str(value, name, where, allow_empty=False, response=True)


def check_sft(messages: list[dict[str, Any]], name: str, where: str) -> None:
    """An SFT conversation ends with a non-empty assistant turn (text or tool calls)."""
    last = messages[-1]
    if last["role"] != "assistant":
        raise RecordError(
            where,
            DropReason.BAD_CONVERSATION,
            f"field '{name}': the conversation must end with an assistant turn, not {last['role']}",
        )
    if not last["content"].strip() and not last.get("tool_calls"):
        raise RecordError(
            where, DropReason.EMPTY_RESPONSE, f"field '{name}': the last assistant turn is empty"
        )


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|System): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant", "System": "system"}


def parse_transcript(text: Any, name: str, where: str) -> tuple[list[dict[str, Any]], str]:
    """Split an HH-RLHF transcript at its last assistant turn: ``(prompt messages, response)``.

    ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: d"`` gives
    ``([user a, assistant b, user c], "d")``.
    """
    if not isinstance(text, str):
        raise wrong_type(where, name, "a transcript string or a list of messages", text)
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RecordError(
            where,
            DropReason.BAD_CONVERSATION,
            f"field '{name}': not an HH-RLHF transcript (expected turns '\\n\\nHuman: ...' and '\\n\\nAssistant: ...')",
        )
    turns = [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]
    if turns[-1]["role"] != "assistant":
        raise RecordError(
            where,
            DropReason.BAD_CONVERSATION,
            f"field '{name}': the transcript does not end with an Assistant turn",
        )
    prompt = turns[:-1]
    if not prompt:
        raise RecordError(
            where, DropReason.BAD_CONVERSATION, f"field '{name}': no Human turn before the answer"
        )
    check_prompt(prompt, name, where)
    response = expect_str(turns[-1]["content"], name, where, allow_empty=False, response=True)
    return prompt, response


def tool_call_text(content: str, tool_calls: list[dict[str, Any]]) -> str:
    """An assistant turn's text with its tool calls written after it as JSON, for formats (and chat
    templates) that have no place for calls: ``content\\n[{"arguments": ..., "name": ...}]``."""
    calls = json.dumps([c["function"] for c in tool_calls], ensure_ascii=False, sort_keys=True)
    return f"{content}\n{calls}".strip()


def render_transcript(messages: list[dict[str, Any]]) -> str:
    """A conversation as plain text for pretraining: ``"User: ...\\n\\nAssistant: ..."``."""
    lines = []
    for m in messages:
        text = tool_call_text(m["content"], m["tool_calls"]) if m.get("tool_calls") else m["content"]
        lines.append(f"{m['role'].capitalize()}: {text}")
    return "\n\n".join(lines)


__all__ = [
    "ROLES",
    "as_prompt",
    "as_response",
    "check_prompt",
    "check_sft",
    "parse_message",
    "parse_messages",
    "parse_tool_calls",
    "parse_tools",
    "reset_loose_warnings",
    "warn_loose",
    "parse_transcript",
    "prompt_of",
    "render_transcript",
    "tool_call_text",
]
