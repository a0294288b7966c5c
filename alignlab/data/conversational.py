"""The conversational formats, read into and written from canonical messages.

Each format has a ``parse_*(record, where) -> Conversation`` and a ``write_*(conversation, where)
-> dict``; ``write(parse(x))`` gives back ``x`` for records in the format's usual shape, and
``parse(write(c))`` gives back ``c`` for every conversation the format can hold.

- messages: ``{"messages": [{"role", "content", "tool_calls"?}], "tools"?}`` (OpenAI chat JSONL).
- alpaca: ``{"instruction", "input", "output", "system"?, "history"?: [[user, assistant], ...]}``;
  the user turn is ``instruction + "\\n\\n" + input`` when input is not empty.
- sharegpt: ``{"conversations": [{"from", "value"}], "system"?, "tools"?}`` with ``from`` in
  human / gpt / system / function_call / observation (LLaMA-Factory's convention).
- prompt_completion: ``{"prompt": str | messages, "completion": str | messages}``.
"""

from __future__ import annotations

import json
from typing import Any

from alignlab.data.kinds import Conversation
from alignlab.data.messages import (
    as_prompt,
    parse_message,
    parse_messages,
    parse_tool_calls,
    parse_tools,
)
from alignlab.data.validation import (
    DropReason,
    RecordError,
    expect_list,
    expect_str,
    missing,
    require,
    wrong_type,
)

# ---- messages ---------------------------------------------------------------------------------


def parse_messages_record(record: dict[str, Any], where: str) -> Conversation:
    messages = parse_messages(require(record, "messages", where), "messages", where)
    return Conversation(messages, parse_tools(record.get("tools"), "tools", where))


def write_messages_record(conversation: Conversation, where: str) -> dict[str, Any]:
    return conversation.as_record()


# ---- alpaca -----------------------------------------------------------------------------------


def _alpaca_user(instruction: str, input_: str) -> str:
    return f"{instruction}\n\n{input_}" if input_.strip() else instruction


def parse_alpaca(record: dict[str, Any], where: str) -> Conversation:
    instruction = expect_str(require(record, "instruction", where), "instruction", where, allow_empty=False)
    input_ = expect_str(record.get("input") or "", "input", where)
    output = expect_str(require(record, "output", where), "output", where, allow_empty=False, response=True)
    messages: list[dict[str, Any]] = []
    if record.get("system"):
        messages.append({"role": "system", "content": expect_str(record["system"], "system", where)})
    for i, turn in enumerate(record.get("history") or []):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise wrong_type(where, f"history[{i}]", "a [user, assistant] pair", turn)
        messages.append({"role": "user", "content": expect_str(turn[0], f"history[{i}][0]", where)})
        messages.append({"role": "assistant", "content": expect_str(turn[1], f"history[{i}][1]", where)})
    messages.append({"role": "user", "content": _alpaca_user(instruction, input_)})
    messages.append({"role": "assistant", "content": output})
    return Conversation(messages)


def _cannot_hold(fmt: str, what: str, where: str) -> RecordError:
    return RecordError(
        where, DropReason.BAD_CONVERSATION, f"{fmt} cannot hold {what}; write messages or sharegpt instead"
    )


def write_alpaca(conversation: Conversation, where: str) -> dict[str, Any]:
    messages = list(conversation.messages)
    record: dict[str, Any] = {}
    if messages and messages[0]["role"] == "system":
        record["system"] = messages.pop(0)["content"]
    roles = [m["role"] for m in messages]
    if conversation.tools or any(m.get("tool_calls") for m in messages) or "tool" in roles:
        raise _cannot_hold("alpaca", "tool calls", where)
    if not messages or len(messages) % 2 or roles != ["user", "assistant"] * (len(messages) // 2):
        raise _cannot_hold("alpaca", "this conversation (it needs alternating user / assistant turns)", where)
    pairs = [[messages[i]["content"], messages[i + 1]["content"]] for i in range(0, len(messages), 2)]
    instruction, output = pairs.pop()
    out = {"instruction": instruction, "input": "", "output": output}
    if pairs:
        out["history"] = pairs
    return {**out, **record}


# ---- sharegpt ---------------------------------------------------------------------------------

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
_SHAREGPT_NAMES = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


def _function_calls(value: str, name: str, where: str) -> list[dict[str, Any]]:
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as err:
        raise RecordError(
            where,
            DropReason.WRONG_TYPE,
            f"field '{name}': a function call must be JSON: {err.msg} (column {err.colno})",
        ) from None
    return parse_tool_calls(calls, name, where)


def parse_sharegpt(record: dict[str, Any], where: str) -> Conversation:
    turns = expect_list(
        require(record, "conversations", where), "conversations", where, what="a list of turns"
    )
    messages: list[dict[str, Any]] = []
    if record.get("system"):
        messages.append({"role": "system", "content": expect_str(record["system"], "system", where)})
    for i, turn in enumerate(turns):
        name = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise wrong_type(where, name, "a turn object {'from', 'value'}", turn)
        if "from" not in turn and "role" in turn:  # some exports keep OpenAI keys inside conversations
            messages.append(parse_message(turn, name, where))
            continue
        speaker = turn.get("from")
        if speaker is None:
            raise missing(where, f"{name}.from")
        if speaker not in SHAREGPT_ROLES:
            raise RecordError(
                where,
                DropReason.UNKNOWN_ROLE,
                f"field '{name}.from': unknown speaker {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}",
            )
        value = turn.get("value")
        if value is None:
            raise missing(where, f"{name}.value")
        value = expect_str(value, f"{name}.value", where)
        if speaker == "function_call":
            calls = _function_calls(value, f"{name}.value", where)
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and "tool_calls" not in previous:
                previous["tool_calls"] = calls  # "gpt" text then "function_call": one assistant turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return Conversation(messages, parse_tools(record.get("tools"), "tools", where))


def _function_call_value(calls: list[dict[str, Any]]) -> str:
    plain = [c["function"] for c in calls]
    return json.dumps(plain[0] if len(plain) == 1 else plain, ensure_ascii=False)


def write_sharegpt(conversation: Conversation, where: str) -> dict[str, Any]:
    messages = list(conversation.messages)
    record: dict[str, Any] = {}
    if messages and messages[0]["role"] == "system":
        record["system"] = messages.pop(0)["content"]
    turns = []
    for m in messages:
        if m.get("tool_calls"):
            if m["content"]:
                turns.append({"from": "gpt", "value": m["content"]})
            turns.append({"from": "function_call", "value": _function_call_value(m["tool_calls"])})
        else:
            turns.append({"from": _SHAREGPT_NAMES[m["role"]], "value": m["content"]})
    out: dict[str, Any] = {"conversations": turns, **record}
    if conversation.tools:
        out["tools"] = json.dumps(conversation.tools, ensure_ascii=False)
    return out


# ---- prompt_completion ------------------------------------------------------------------------


def parse_prompt_completion(record: dict[str, Any], where: str) -> Conversation:
    prompt = as_prompt(require(record, "prompt", where), "prompt", where)
    completion = require(record, "completion", where)
    if isinstance(completion, str):
        expect_str(completion, "completion", where, allow_empty=False, response=True)
        return Conversation([*prompt, {"role": "assistant", "content": completion}])
    if not isinstance(completion, list):
        raise wrong_type(where, "completion", "a string or a list of messages", completion)
    return Conversation([*prompt, *parse_messages(completion, "completion", where)])


def write_prompt_completion(conversation: Conversation, where: str) -> dict[str, Any]:
    messages = conversation.messages
    if conversation.tools:
        raise _cannot_hold("prompt_completion", "tool schemas", where)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise _cannot_hold(
            "prompt_completion", "a conversation that does not end with an assistant turn", where
        )
    *prompt, last = messages
    completion: str | list[dict[str, Any]] = [last] if last.get("tool_calls") else last["content"]
    if len(prompt) == 1 and prompt[0]["role"] == "user" and set(prompt[0]) == {"role", "content"}:
        return {"prompt": prompt[0]["content"], "completion": completion}
    return {"prompt": prompt, "completion": completion}
