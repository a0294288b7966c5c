"""The layouts public dumps come in: loose ShareGPT tool calls, Dolly-15k, UltraChat, OASST trees."""

from __future__ import annotations

import json
import logging

import pytest

from alignlab.data import DropReason, RecordError, canonical_records, load_records, to_canonical
from alignlab.data import messages as messages_module

W = "dump.jsonl:4"


@pytest.fixture(autouse=True)
def _warn_afresh(monkeypatch):
    monkeypatch.setattr(messages_module, "_warned", set())


def sharegpt_call(value: str, tools=None) -> dict:
    record = {
        "conversations": [
            {"from": "human", "value": "Where is Paris?"},
            {"from": "function_call", "value": value},
            {"from": "observation", "value": "France"},
            {"from": "gpt", "value": "In France."},
        ]
    }
    if tools is not None:
        record["tools"] = tools
    return record


def first_call(record: dict) -> dict:
    return to_canonical(record, "auto", "sft", W)["messages"][1]["tool_calls"][0]["function"]


# ---- ShareGPT tool calls written loosely ----------------------------------------------------


def test_the_loose_sharegpt_example_loads_with_one_warning_per_form(caplog):
    record = sharegpt_call("map_search('Paris')", tools="map_search")
    with caplog.at_level(logging.WARNING, logger="alignlab.data"):
        out = to_canonical(record, "auto", "sft", W)
        to_canonical(record, "auto", "sft", "dump.jsonl:5")  # the same forms again: no new warning
    assert out["messages"][1]["tool_calls"] == [
        {"type": "function", "function": {"name": "map_search", "arguments": {"arg1": "Paris"}}}
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "map_search", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert all(w.startswith(W) for w in warnings)
    assert any("Python-style call" in w for w in warnings) and any("names tools" in w for w in warnings)


def test_positional_arguments_take_their_names_from_the_tool_schema():
    schema = [{"name": "map_search", "parameters": {"properties": {"query": {}, "limit": {}}}}]
    assert first_call(sharegpt_call("map_search('Paris', 3)", tools=json.dumps(schema)))["arguments"] == {
        "query": "Paris",
        "limit": 3,
    }
    assert first_call(sharegpt_call("map_search(query='Paris', near=[1.5, 2])"))["arguments"] == {
        "query": "Paris",
        "near": [1.5, 2],
    }


def test_several_loose_calls_in_one_turn():
    record = sharegpt_call("[get_time(city='Oslo'), get_time(city='Rome')]")
    calls = to_canonical(record, "auto", "sft", W)["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Oslo"}, {"city": "Rome"}]


def test_strict_json_calls_still_read_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="alignlab.data"):
        call = first_call(sharegpt_call('{"name": "map_search", "arguments": {"q": "Paris"}}', tools="[]"))
    assert call == {"name": "map_search", "arguments": {"q": "Paris"}}
    assert caplog.records == []


@pytest.mark.parametrize(
    "value",
    ["map_search(city)", "os.system('rm -rf /') + 1", "{oops", "__import__('os')('x')", "f(**kw)"],
)
def test_a_call_that_is_neither_json_nor_a_literal_call_is_refused_and_never_run(value):
    with pytest.raises(RecordError, match=r"must be JSON .* or a Python-style call") as info:
        to_canonical(sharegpt_call(value), "auto", "sft", W)
    assert info.value.reason == DropReason.WRONG_TYPE and str(info.value).startswith(W)


def test_a_tools_string_that_is_neither_json_nor_names_is_refused():
    with pytest.raises(RecordError, match="field 'tools': not valid JSON .* nor a list of tool names"):
        to_canonical(sharegpt_call('{"name": "x"', tools="map search: find places"), "auto", "sft", W)


# ---- Dolly, UltraChat -------------------------------------------------------------------------


def test_dolly_rows_are_dolly_not_alpaca():
    row = {
        "instruction": "Who wrote it?",
        "context": "Hamlet is a play by Shakespeare.",
        "response": "Shakespeare.",
        "category": "closed_qa",
    }
    assert to_canonical(row, "auto", "sft", W)["messages"] == [
        {"role": "user", "content": "Who wrote it?\n\nHamlet is a play by Shakespeare."},
        {"role": "assistant", "content": "Shakespeare."},
    ]
    no_context = to_canonical({**row, "context": ""}, "auto", "sft", W)
    assert no_context["messages"][0]["content"] == "Who wrote it?"
    with pytest.raises(RecordError, match="field 'response'"):
        to_canonical({**row, "response": ""}, "auto", "sft", W)


def test_ultrachat_turns_alternate_user_and_assistant():
    out = to_canonical({"id": "0", "data": ["hi", "hello", "2+2?", "4"]}, "auto", "sft", W)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant"]
    assert (
        to_canonical({"data": ["hi", "hello", "2+2?", "4"]}, "auto", "prompt", W)["prompt"][-1]["content"]
        == "2+2?"
    )
    with pytest.raises(RecordError, match="3 turns; UltraChat alternates"):
        to_canonical({"data": ["hi", "hello", "more"]}, "auto", "sft", W)
    with pytest.raises(RecordError, match=r"field 'data\[1\]'"):
        to_canonical({"data": ["hi", 5]}, "auto", "sft", W)


# ---- OASST ------------------------------------------------------------------------------------


def msg(mid, role, text, rank=None, replies=(), **extra):
    node = {"message_id": mid, "role": role, "text": text, "replies": list(replies), **extra}
    if rank is not None:
        node["rank"] = rank
    return node


TREE = {
    "message_tree_id": "t1",
    "prompt": msg(
        "a",
        "prompter",
        "Name a colour.",
        replies=[
            msg("b", "assistant", "Blue, I guess", rank=1),
            msg(
                "c",
                "assistant",
                "Blue.",
                rank=0,
                replies=[
                    msg(
                        "d",
                        "prompter",
                        "Another?",
                        replies=[
                            msg("e", "assistant", "Red.", rank=0),
                            msg("f", "assistant", "Rouge", rank=1),
                            msg("g", "assistant", "spam", rank=2, deleted=True),
                        ],
                    )
                ],
            ),
            msg("h", "assistant", "Unranked answer"),
        ],
    ),
}
Q1 = [{"role": "user", "content": "Name a colour."}]
Q2 = [*Q1, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]


def test_an_oasst_tree_gives_its_best_path_for_sft_and_its_ranked_replies_for_reward_data():
    assert canonical_records(TREE, "auto", "sft", W) == [
        {"messages": [*Q2, {"role": "assistant", "content": "Red."}]}
    ]
    assert canonical_records(TREE, "auto", "ranking", W) == [
        {"prompt": Q1, "responses": ["Blue.", "Blue, I guess"]},  # the unranked reply is not ranked
        {"prompt": Q2, "responses": ["Red.", "Rouge"]},  # the deleted reply is left out
    ]
    pairs = canonical_records(TREE, "auto", "preference", W)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Blue.", "Blue, I guess"), ("Red.", "Rouge")]


def test_a_tree_without_ranked_replies_cannot_give_reward_data():
    tree = {
        "message_tree_id": "t",
        "prompt": msg("a", "prompter", "hi", replies=[msg("b", "assistant", "hello")]),
    }
    assert canonical_records(tree, "auto", "sft", W)[0]["messages"][-1]["content"] == "hello"
    with pytest.raises(RecordError, match="no ranked replies"):
        canonical_records(tree, "auto", "ranking", W)


def test_a_malformed_tree_names_the_message():
    tree = {"message_tree_id": "t", "prompt": msg("a", "prompter", "hi", replies=[msg("b", "robot", "x")])}
    with pytest.raises(RecordError, match=r"prompt\.replies\[0\]\.role': unknown OASST role 'robot'"):
        canonical_records(tree, "auto", "sft", W)


def flat_rows(node, parent=None):
    yield {k: v for k, v in node.items() if k != "replies"} | {"parent_id": parent, "message_tree_id": "t1"}
    for reply in node.get("replies", []):
        yield from flat_rows(reply, node["message_id"])


def test_the_flat_oasst_table_is_grouped_into_trees_when_loaded(tmp_path):
    path = tmp_path / "oasst1.jsonl"
    rows = list(flat_rows(TREE["prompt"]))
    rows.insert(2, {"message_id": "z", "parent_id": "gone", "role": "assistant", "text": "orphan", "rank": 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = load_records(str(path), kind="sft", strict=False)
    assert sft.records == canonical_records(TREE, "auto", "sft", W)
    assert sft.format == "oasst"
    assert sft.report.dropped == {DropReason.BAD_CONVERSATION: 1}
    rankings = load_records(str(path), kind="ranking", strict=False)
    assert rankings.records == canonical_records(TREE, "auto", "ranking", W)
    with pytest.raises(RecordError, match=r"oasst1\.jsonl:3: an OASST reply whose parent message 'gone'"):
        load_records(str(path), kind="sft")


def test_each_load_of_a_loose_dump_warns_once(tmp_path, caplog):
    path = tmp_path / "dump.jsonl"
    rows = [sharegpt_call("map_search('Paris')") for _ in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="alignlab.data"):
        for _ in range(2):
            assert len(load_records(str(path), kind="sft")) == 3
    warnings = [r.getMessage() for r in caplog.records if "Python-style call" in r.getMessage()]
    assert len(warnings) == 2 and all(w.startswith(f"{path}:1") for w in warnings)
