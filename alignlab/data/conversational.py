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
- dolly: ``{"instruction", "context", "response", "category"?}`` (databricks-dolly-15k); the user
  turn is ``instruction + "\n\n" + context`` when context is not empty, as for alpaca.
- ultrachat: ``{"data": [user, assistant, user, assistant, ...]}`` (UltraChat's released files;
  ``id`` and other keys are ignored).
"""

from __future__ import annotations

import ast
import json
from typing import Any

from alignlab.data.kinds import Conversation
from alignlab.data.messages import (
    as_prompt,
    parse_message,
    parse_messages,
    parse_tool_calls,
    parse_tools,
    warn_loose,
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


# ---- dolly ------------------------------------------------------------------------------------


def parse_dolly(record: dict[str, Any], where: str) -> Conversation:
    instruction = expect_str(require(record, "instruction", where), "instruction", where, allow_empty=False)
    context = expect_str(record.get("context") or "", "context", where)
    response = expect_str(
        require(record, "response", where), "response", where, allow_empty=False, response=True
    )
    return Conversation(
        [
            {"role": "user", "content": _alpaca_user(instruction, context)},
            {"role": "assistant", "content": response},
        ]
    )


def write_dolly(conversation: Conversation, where: str) -> dict[str, Any]:
    roles = [m["role"] for m in conversation.messages]
    if roles != ["user", "assistant"] or conversation.tools or conversation.messages[1].get("tool_calls"):
        raise _cannot_hold("dolly", "more than one plain user turn and its answer", where)
    user, assistant = conversation.messages
    return {"instruction": user["content"], "context": "", "response": assistant["content"]}


# ---- ultrachat --------------------------------------------------------------------------------


def parse_ultrachat(record: dict[str, Any], where: str) -> Conversation:
    turns = expect_list(require(record, "data", where), "data", where, what="a list of turns (strings)")
    if len(turns) % 2:
        raise RecordError(
            where,
            DropReason.BAD_CONVERSATION,
            f"field 'data': {len(turns)} turns; UltraChat alternates user and assistant, so the count must be even",
        )
    roles = ("user", "assistant")
    return Conversation(
        [
            {"role": roles[i % 2], "content": expect_str(t, f"data[{i}]", where, allow_empty=False)}
            for i, t in enumerate(turns)
        ]
    )


def write_ultrachat(conversation: Conversation, where: str) -> dict[str, Any]:
    messages = conversation.messages
    roles = [m["role"] for m in messages]
    plain = not conversation.tools and not any(m.get("tool_calls") for m in messages)
    if not plain or not messages or roles != ["user", "assistant"] * (len(messages) // 2) or len(roles) % 2:
        raise _cannot_hold(
            "ultrachat", "this conversation (it needs alternating user / assistant turns)", where
        )
    return {"data": [m["content"] for m in messages]}


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


def _function_calls(value: str, name: str, where: str, tools: list[Any] | None) -> list[dict[str, Any]]:
    """A ``function_call`` turn's calls: JSON (``{"name", "arguments"}`` or a list), else the loose
    Python-call form many dumps write (``map_search('Paris')``), converted with a warning."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as err:
        loose = _python_calls(value, tools)
        if loose is None:
            raise RecordError(
                where,
                DropReason.WRONG_TYPE,
                f"field '{name}': a function call must be JSON ({err.msg}, column {err.colno}) "
                "or a Python-style call such as map_search('Paris')",
            ) from None
        warn_loose(
            f"{name.split('[')[0]}:python-call",
            where,
            f"field '{name}' is a Python-style call ({value.strip()[:60]}), not JSON; converted to "
            f"{json.dumps(loose[0], ensure_ascii=False)[:120]}",
        )
        calls = loose
    return parse_tool_calls(calls, name, where)


def _parameter_names(tools: list[Any] | None, function: str) -> list[str]:
    """The parameter names of ``function`` in the record's tool schemas, in their written order."""
    for tool in tools or []:
        schema = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(schema, dict) and schema.get("name") == function:
            properties = (schema.get("parameters") or {}).get("properties")
            return list(properties) if isinstance(properties, dict) else []
    return []


def _python_calls(value: str, tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """``f(1, x='a')`` (or several, comma-separated or in a list) as flat ``{"name", "arguments"}``
    calls; None when ``value`` is not such a call with literal arguments.

    Read with :mod:`ast` (never evaluated). Positional arguments take the names the record's
    tool schema gives the function's parameters, in order; without a schema they are named
    ``arg1``, ``arg2``, ...
    """
    try:
        tree = ast.parse(value.strip(), mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, (ast.Tuple, ast.List)) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            return None
        try:
            function = ast.unparse(node.func)
            positional = [ast.literal_eval(a) for a in node.args]
            keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        except ValueError:  # not a literal: a variable, an expression
            return None
        if len(keywords) != len(node.keywords) or not function.replace(".", "_").isidentifier():
            return None
        names = _parameter_names(tools, function)
        names += [f"arg{i + 1}" for i in range(len(names), len(positional))]
        calls.append({"name": function, "arguments": {**dict(zip(names, positional)), **keywords}})
    return calls or None


def parse_sharegpt(record: dict[str, Any], where: str) -> Conversation:
    turns = expect_list(
        require(record, "conversations", where), "conversations", where, what="a list of turns"
    )
    tools = parse_tools(record.get("tools"), "tools", where)
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
            calls = _function_calls(value, f"{name}.value", where, tools)
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and "tool_calls" not in previous:
                previous["tool_calls"] = calls  # "gpt" text then "function_call": one assistant turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return Conversation(messages, tools)


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
