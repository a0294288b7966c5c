"""OpenAssistant (OASST1/OASST2) conversation trees: the best-ranked path and the ranked replies.

Two layouts are read:

- **trees** (``*.trees.jsonl``): one tree per line,
  ``{"message_tree_id", "prompt": {"message_id", "role": "prompter", "text", "replies": [...]}}``,
  each reply ``{"role": "assistant" | "prompter", "text", "rank"?, "replies": [...]}``;
- **messages** (the flat table on the hub, ``OpenAssistant/oasst1``): one message per row with
  ``message_id``, ``parent_id`` (null at the root), ``role``, ``text``, ``rank``. :func:`assemble`
  groups a source's rows into trees before they are parsed, so both layouts load the same way.

A tree gives (:class:`~alignlab.data.kinds.Thread`): for SFT, its **best path**: from the root
prompt, at each turn the reply of lowest rank (rank 0 is the best; unranked replies come after
ranked ones, in file order), cut after the last assistant turn; for reward data, one ranking per
prompter turn with two or more ranked assistant replies, whose prompt is the path up to that turn.
Deleted messages and messages that failed review (``deleted: true``, ``review_result: false``)
are left out, as OASST's own exports do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from alignlab.data.kinds import Ranking, Thread
from alignlab.data.validation import DropReason, RecordError, expect_str, require, wrong_type

ROLES = {"prompter": "user", "assistant": "assistant"}
Row = tuple[str, Any]


def _usable(message: Any) -> bool:
    return (
        isinstance(message, dict) and not message.get("deleted") and message.get("review_result") is not False
    )


def _ranked(message: dict[str, Any]) -> bool:
    rank = message.get("rank")
    return isinstance(rank, (int, float)) and not isinstance(rank, bool)


def _rank_key(indexed: tuple[int, dict[str, Any]]) -> tuple[int, float, int]:
    i, message = indexed
    return (0, float(message["rank"]), i) if _ranked(message) else (1, 0.0, i)


def _message(node: Any, name: str, where: str) -> dict[str, str]:
    if not isinstance(node, dict):
        raise wrong_type(where, name, "a message object {'role', 'text', 'replies'}", node)
    role = require(node, "role", where)
    if role not in ROLES:
        raise RecordError(
            where,
            DropReason.UNKNOWN_ROLE,
            f"field '{name}.role': unknown OASST role {role!r}; expected prompter or assistant",
        )
    text = expect_str(require(node, "text", where), f"{name}.text", where, allow_empty=False)
    return {"role": ROLES[role], "content": text}


def _replies(node: dict[str, Any], name: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The usable replies of ``node``, best first, each with its path name."""
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise wrong_type(where, f"{name}.replies", "a list of messages", replies)
    usable = [(i, r) for i, r in enumerate(replies) if _usable(r)]
    return [(f"{name}.replies[{i}]", r) for i, r in sorted(usable, key=_rank_key)]


def parse_tree(record: dict[str, Any], where: str) -> Thread:
    """One OASST tree record as its best path and its rankings."""
    root = require(record, "prompt", where)
    if not isinstance(root, dict):
        raise wrong_type(
            where, "prompt", "the tree's root message {'role': 'prompter', 'text', 'replies'}", root
        )
    first = _message(root, "prompt", where)
    if first["role"] != "user":
        raise RecordError(
            where, DropReason.BAD_CONVERSATION, "field 'prompt.role': a tree starts with a prompter message"
        )
    rankings: list[Ranking] = []
    best: list[dict[str, str]] = []

    def walk(node: dict[str, Any], name: str, path: list[dict[str, str]], on_best: bool) -> None:
        replies = _replies(node, name, where)
        messages = [(n, r, _message(r, n, where)) for n, r in replies]
        if path[-1]["role"] == "user":
            ranked = [m["content"] for _, r, m in messages if m["role"] == "assistant" and _ranked(r)]
            if len(ranked) >= 2:
                rankings.append(Ranking(list(path), ranked))
        for i, (n, r, m) in enumerate(messages):
            if m["role"] == path[-1]["role"]:
                raise RecordError(
                    where,
                    DropReason.BAD_CONVERSATION,
                    f"field '{n}.role': a {r.get('role')} reply to a {r.get('role')} message",
                )
            child_on_best = on_best and i == 0
            if child_on_best:
                best.append(m)
            walk(r, n, [*path, m], child_on_best)

    best.append(first)
    walk(root, "prompt", [first], True)
    while best and best[-1]["role"] != "assistant":
        best.pop()
    if not best:  # a prompt nobody answered: the conversation is the prompt alone
        best = [first]
    return Thread(best, rankings)


def parse_message_row(record: dict[str, Any], where: str) -> Thread:
    """A flat OASST message row that :func:`assemble` could not place in a tree."""
    parent = record.get("parent_id")
    detail = (
        f"an OASST reply whose parent message {parent!r} is not in this source; its tree cannot be rebuilt"
        if parent is not None
        else "a flat OASST message; load the whole file (load_records groups its rows into trees)"
    )
    raise RecordError(where, DropReason.BAD_CONVERSATION, detail)


def is_message_row(value: Any) -> bool:
    """Whether ``value`` looks like one row of OASST's flat message table."""
    return (
        isinstance(value, dict)
        and "message_id" in value
        and "parent_id" in value
        and value.get("role") in ROLES
        and "replies" not in value
    )


def assemble(rows: Iterable[Row]) -> Iterator[Row]:
    """Rows with OASST's flat message rows grouped into tree records (other rows pass through).

    Trees come after the other rows, in the order of their root rows; a tree's ``where`` is its
    root row's, e.g. ``oasst.jsonl:1 (tree of 5 messages)``. A reply whose parent is not in the
    source is passed on as it is, so that parsing it reports the missing parent.
    """
    messages: list[Row] = []
    for where, value in rows:
        if is_message_row(value):
            messages.append((where, value))
        else:
            yield where, value
    if not messages:
        return
    nodes = {m["message_id"]: {**m, "replies": []} for _, m in messages}
    for _, m in messages:
        parent = m.get("parent_id")
        if parent is not None and parent in nodes:
            nodes[parent]["replies"].append(nodes[m["message_id"]])

    def size(node: dict[str, Any]) -> int:
        return 1 + sum(size(r) for r in node["replies"])

    for where, m in messages:
        parent = m.get("parent_id")
        if parent is None:
            root = nodes[m["message_id"]]
            tree = {"message_tree_id": m.get("message_tree_id", m["message_id"]), "prompt": root}
            yield f"{where} (tree of {size(root)} messages)", tree
        elif parent not in nodes:
            yield where, m
