"""Formats -> canonical records: detection, every format, malformed variants, round trips."""

from __future__ import annotations

import pytest

from alignlab.data import (
    FORMATS,
    DataFormat,
    DropReason,
    FormatSpec,
    RecordError,
    RecordKind,
    SkippedRecord,
    canonical_records,
    detect_format,
    from_messages,
    ranking_to_pairs,
    register_format,
    to_canonical,
    to_messages,
)
from alignlab.data.kinds import Text
from alignlab.errors import ConfigError, DataError

W = "data.jsonl:3"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def reason(excinfo: pytest.ExceptionInfo) -> DropReason:
    return excinfo.value.reason


# ---- detection ------------------------------------------------------------------------------

DETECTION = [
    ({"messages": [user("a"), assistant("b")]}, DataFormat.MESSAGES),
    ({"instruction": "a", "input": "", "output": "b"}, DataFormat.ALPACA),
    ({"conversations": [{"from": "human", "value": "a"}]}, DataFormat.SHAREGPT),
    ({"prompt": "a", "completion": "b"}, DataFormat.PROMPT_COMPLETION),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, DataFormat.PREFERENCE),
    (
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        DataFormat.HH_RLHF,
    ),
    ({"context": "a", "responses": [{"text": "b", "rank": 1}]}, DataFormat.RANKED),
    ({"prompt": "a", "responses": ["b", "c"]}, DataFormat.KWAY),
    ({"prompt": "a"}, DataFormat.PROMPT),
    ({"text": "a"}, DataFormat.TEXT),
    ({"instruction": "a", "context": "", "response": "b", "category": "qa"}, DataFormat.DOLLY),
    ({"id": 7, "data": ["a", "b"]}, DataFormat.ULTRACHAT),
    (
        {"message_tree_id": "t", "prompt": {"message_id": "m", "role": "prompter", "text": "a"}},
        DataFormat.OASST,
    ),
    ({"message_id": "m", "parent_id": None, "role": "prompter", "text": "a"}, DataFormat.OASST_MESSAGE),
]


@pytest.mark.parametrize(("record", "fmt"), DETECTION, ids=[f.value for _, f in DETECTION])
def test_detect_format_from_keys(record, fmt):
    assert detect_format(record, W) == fmt


def test_detection_covers_every_builtin_format():
    assert {f for _, f in DETECTION} == set(DataFormat)


def test_detection_prefers_a_format_that_gives_the_kind():
    # UltraFeedback-style rows carry both a full conversation and a preference pair
    record = {"messages": [user("q"), assistant("a")], "prompt": "q", "chosen": "a", "rejected": "b"}
    assert detect_format(record, W) == DataFormat.MESSAGES
    assert detect_format(record, W, kind="preference") == DataFormat.PREFERENCE
    assert to_canonical(record, "auto", "preference", W)["rejected"] == "b"


def test_detect_unknown_keys_lists_known_formats():
    with pytest.raises(RecordError) as excinfo:
        detect_format({"question": "a", "answer": "b"}, W)
    message = str(excinfo.value)
    assert message.startswith(f"{W}: cannot tell the format")
    assert "['answer', 'question']" in message
    for fmt in DataFormat:
        assert fmt.value in message
    assert reason(excinfo) == DropReason.UNKNOWN_FORMAT


def test_detect_refuses_non_objects():
    with pytest.raises(RecordError, match=r"data.jsonl:3: expected a JSON object, got list"):
        detect_format([1, 2], W)


def test_explicit_format_overrides_detection():
    # "prompt" + "completion" would be detected as prompt_completion; forced to "prompt" it is a prompt record
    record = {"prompt": "q", "completion": "a"}
    assert to_canonical(record, "prompt", "prompt", W) == {"prompt": [user("q")]}
    with pytest.raises(RecordError, match="field 'instruction': missing"):
        to_canonical(record, DataFormat.ALPACA, "sft", W)


def test_unknown_format_and_kind_names_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'alpaca'"):
        to_canonical({"text": "a"}, "alpacca", "text", W)
    with pytest.raises(ConfigError, match="did you mean 'preference'"):
        to_canonical({"text": "a"}, "auto", "preferences", W)


def test_format_registry_refuses_duplicate_names():
    spec = FORMATS["text"]
    with pytest.raises(ValueError, match="already registered"):
        register_format(spec)


def test_register_custom_format():
    spec = FormatSpec("qa_test", "question, answer", lambda keys: "question" in keys, _parse_qa, Text)
    register_format(spec)
    try:
        assert detect_format({"question": "q"}, W) == "qa_test"
        assert to_canonical({"question": "q"}, "qa_test", "text", W) == {"text": "Q: q"}
    finally:
        del FORMATS["qa_test"]


def _parse_qa(record, where):
    return Text(f"Q: {record['question']}")


# ---- sft formats ----------------------------------------------------------------------------


def test_messages_with_tool_calls():
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    record = {
        "messages": [
            system("be brief"),
            user("1+1?"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "2", "tool_call_id": "c1"},
            assistant("2"),
        ],
        "tools": [{"type": "function", "function": {"name": "add"}}],
        "id": "extra keys are ignored",
    }
    out = to_canonical(record, "auto", "sft", W)
    assert out["messages"][2] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert out["messages"][3] == {"role": "tool", "content": "2", "tool_call_id": "c1"}
    assert out["tools"] == record["tools"]
    assert "id" not in out


def test_messages_content_parts_are_joined():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}, assistant("b")]}
    assert to_canonical(record, "auto", "sft", W)["messages"][0] == user("a")


@pytest.mark.parametrize(
    ("messages", "message", "why"),
    [
        ([user("a"), {"role": "assistant", "content": 5}], "field 'messages[1].content': expected a string, got int", "wrong type"),
        ([user("a"), {"content": "b"}], "field 'messages[1].role': missing", "missing field"),
        ([{"role": "human", "content": "a"}], "unknown role 'human' (did you mean 'user'?)", "unknown role"),
        ([user("a"), assistant("b"), user("c")], "must end with an assistant turn, not user", "malformed conversation"),
        ([user("a"), assistant("  ")], "the last assistant turn is empty", "empty response"),
        ([], "field 'messages': empty list", "empty field"),
        ("hello", "field 'messages': expected a list of messages, got string", "wrong type"),
    ],
)  # fmt: skip
def test_messages_malformed(messages, message, why):
    with pytest.raises(RecordError) as excinfo:
        to_canonical({"messages": messages}, "auto", "sft", W)
    assert message in str(excinfo.value)
    assert str(excinfo.value).startswith(W + ": ")
    assert reason(excinfo) == why


def test_alpaca_joins_instruction_and_input():
    record = {"instruction": "Translate.", "input": "bonjour", "output": "hello", "system": "You translate."}
    assert to_canonical(record, "auto", "sft", W) == {
        "messages": [system("You translate."), user("Translate.\n\nbonjour"), assistant("hello")]
    }
    record = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert to_canonical(record, "auto", "sft", W)["messages"] == [user("Say hi."), assistant("hi")]
    assert to_canonical({"instruction": "Say hi.", "output": "hi"}, "auto", "sft", W)["messages"][0] == user(
        "Say hi."
    )


def test_alpaca_history_and_errors():
    record = {"instruction": "c", "input": "", "output": "d", "history": [["a", "b"]]}
    assert to_canonical(record, "auto", "sft", W)["messages"] == [
        user("a"),
        assistant("b"),
        user("c"),
        assistant("d"),
    ]
    with pytest.raises(RecordError, match="field 'output': missing"):
        to_canonical({"instruction": "a", "input": ""}, "auto", "sft", W)
    with pytest.raises(RecordError, match="field 'output': empty response"):
        to_canonical({"instruction": "a", "output": " "}, "auto", "sft", W)
    with pytest.raises(RecordError, match="field 'instruction': expected a string, got int"):
        to_canonical({"instruction": 3, "output": "b"}, "auto", "sft", W)


def test_sharegpt_roles_system_and_tools():
    record = {
        "system": "sys",
        "tools": '[{"name": "weather"}]',
        "conversations": [
            {"from": "human", "value": "weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": "rain"},
            {"from": "gpt", "value": "It rains."},
        ],
    }
    out = to_canonical(record, "auto", "sft", W)
    assert out["tools"] == [{"name": "weather"}]
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    assert out["messages"] == [
        system("sys"),
        user("weather in Oslo?"),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "rain"},
        assistant("It rains."),
    ]


def test_sharegpt_malformed():
    with pytest.raises(RecordError, match=r"field 'conversations\[0\].from': unknown speaker 'robot'"):
        to_canonical({"conversations": [{"from": "robot", "value": "a"}]}, "auto", "sft", W)
    with pytest.raises(RecordError, match=r"field 'conversations\[1\].value': missing"):
        to_canonical({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}, "auto", "sft", W)
    with pytest.raises(RecordError, match="a function call must be JSON"):
        to_canonical({"conversations": [{"from": "function_call", "value": "{oops"}]}, "auto", "sft", W)


def test_prompt_completion():
    assert to_canonical({"prompt": "q", "completion": "a"}, "auto", "sft", W) == {
        "messages": [user("q"), assistant("a")]
    }
    record = {"prompt": [system("s"), user("q")], "completion": [assistant("a")]}
    assert to_canonical(record, "auto", "sft", W) == {"messages": [system("s"), user("q"), assistant("a")]}
    with pytest.raises(RecordError, match="field 'completion': empty response"):
        to_canonical({"prompt": "q", "completion": ""}, "auto", "sft", W)
    with pytest.raises(
        RecordError, match="field 'prompt': a prompt must end with a user turn, not assistant"
    ):
        to_canonical({"prompt": [user("q"), assistant("x")], "completion": "a"}, "auto", "sft", W)


# ---- preference formats ---------------------------------------------------------------------


def test_preference_strings_and_messages():
    out = to_canonical(
        {"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 2}, "auto", "preference", W
    )
    assert out == {"prompt": [user("q")], "chosen": "good", "rejected": "bad", "margin": 2.0}
    record = {"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]}
    assert to_canonical(record, "auto", "preference", W) == {
        "prompt": [user("q")],
        "chosen": "good",
        "rejected": "bad",
        "margin": None,
    }


@pytest.mark.parametrize(
    ("record", "message", "why"),
    [
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field 'chosen': expected a string or a list of messages, got int", "wrong type"),
        ({"prompt": "q", "chosen": "a"}, "field 'rejected': missing", "missing field"),
        ({"prompt": "q", "rejected": "a"}, "field 'chosen': missing", "missing field"),
        ({"prompt": "q", "chosen": "a", "rejected": ""}, "field 'rejected': empty response", "empty response"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt': empty", "empty field"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "field 'margin': expected a number, got string", "wrong type"),
        ({"prompt": "q", "chosen": [user("a")], "rejected": "b"}, "the last message must be the assistant's response", "malformed conversation"),
    ],
)  # fmt: skip
def test_preference_malformed(record, message, why):
    with pytest.raises(RecordError) as excinfo:
        to_canonical(record, "auto", "preference", W)
    assert str(excinfo.value) == f"{W}: {message}" or message in str(excinfo.value)
    assert reason(excinfo) == why


def test_preference_wrong_type_message_is_exact():
    with pytest.raises(DataError) as excinfo:
        to_canonical({"prompt": "q", "chosen": 3, "rejected": "b"}, "auto", "preference", W)
    assert (
        str(excinfo.value) == "data.jsonl:3: field 'chosen': expected a string or a list of messages, got int"
    )


def test_chosen_identical_to_rejected_is_a_skip():
    with pytest.raises(SkippedRecord) as excinfo:
        to_canonical({"prompt": "q", "chosen": "same", "rejected": "same "}, "auto", "preference", W)
    assert reason(excinfo) == DropReason.IDENTICAL == "chosen identical to rejected"


HH_CHOSEN = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
HH_REJECTED = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: Five, I think."


def test_hh_rlhf_splits_at_the_last_assistant_turn():
    out = to_canonical({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "auto", "preference", W)
    assert out == {
        "prompt": [user("Hi there"), assistant("Hello!"), user("What is 2+2?")],
        "chosen": "It is 4.",
        "rejected": "Five, I think.",
        "margin": None,
    }


def test_hh_rlhf_single_turn_and_message_lists():
    out = to_canonical(
        {"chosen": "Human: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        "auto",
        "preference",
        W,
    )
    assert (out["prompt"], out["chosen"], out["rejected"]) == ([user("q")], "a", "b")
    record = {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
    assert to_canonical(record, "auto", "preference", W)["prompt"] == [user("q")]


def test_hh_rlhf_malformed():
    with pytest.raises(RecordError, match="differ before the last assistant turn"):
        to_canonical(
            {"chosen": HH_CHOSEN, "rejected": "\n\nHuman: other\n\nAssistant: x"}, "auto", "preference", W
        )
    with pytest.raises(RecordError, match="not an HH-RLHF transcript"):
        to_canonical({"chosen": "just text", "rejected": HH_REJECTED}, "auto", "preference", W)
    with pytest.raises(RecordError, match="does not end with an Assistant turn"):
        to_canonical({"chosen": "\n\nHuman: q", "rejected": HH_REJECTED}, "auto", "preference", W)
    with pytest.raises(RecordError) as excinfo:
        to_canonical(
            {"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: b"},
            "auto",
            "preference",
            W,
        )
    assert reason(excinfo) == DropReason.EMPTY_RESPONSE
    with pytest.raises(RecordError, match="field 'rejected': missing"):
        to_canonical({"chosen": HH_CHOSEN}, "auto", "preference", W)


# ---- rankings -------------------------------------------------------------------------------


def test_ranked_and_kway_give_best_first():
    ranked = {
        "context": "q",
        "responses": [{"text": "ok", "rank": 2}, {"text": "best", "rank": 1}, {"text": "bad", "rank": 3}],
    }
    assert to_canonical(ranked, "auto", "ranking", W) == {
        "prompt": [user("q")],
        "responses": ["best", "ok", "bad"],
    }
    kway = {"prompt": "q", "responses": ["best", "ok", "bad"]}
    assert to_canonical(kway, "auto", "ranking", W) == {
        "prompt": [user("q")],
        "responses": ["best", "ok", "bad"],
    }
    kway_ranked = {
        "prompt": "q",
        "responses": [{"text": "bad", "rank": 3.0}, {"text": "best", "rank": 1}, {"text": "ok", "rank": 2}],
    }
    assert to_canonical(kway_ranked, "auto", "ranking", W)["responses"] == ["best", "ok", "bad"]


@pytest.mark.parametrize(
    ("responses", "message", "why"),
    [
        ([{"text": "a", "rank": 1}, {"text": "b", "rank": 3}], "ranks must be a permutation of 1..2, got [1, 3]", "ranks not a permutation"),
        ([{"text": "a", "rank": 1}, {"text": "b", "rank": 1}], "ties are not allowed (rank 1 appears 2 times)", "ranks not a permutation"),
        ([{"text": "a", "rank": 0}, {"text": "b", "rank": 1}], "ranks must be a permutation of 1..2, got [0, 1]", "ranks not a permutation"),
        ([{"text": "a", "rank": 1}], "a ranking needs at least 2 responses", "ranks not a permutation"),
        ([{"text": "a", "rank": 1}, {"text": "", "rank": 2}], "field 'responses[1].text': empty response", "empty response"),
        ([{"text": "a", "rank": 1}, {"text": "b"}], "field 'responses[1].rank': missing", "missing field"),
        ([{"text": "a", "rank": "1"}, {"text": "b", "rank": 2}], "field 'responses[0].rank': expected an integer rank, got string", "wrong type"),
    ],
)  # fmt: skip
def test_rankings_malformed(responses, message, why):
    with pytest.raises(RecordError) as excinfo:
        to_canonical({"context": "q", "responses": responses}, "auto", "ranking", W)
    assert message in str(excinfo.value)
    assert reason(excinfo) == why


def test_ranking_to_pairs():
    record = {"prompt": [user("q")], "responses": ["a", "b", "c"]}
    pairs = ranking_to_pairs(record)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert all(p["prompt"] == [user("q")] and p["margin"] is None for p in pairs)
    assert [p["margin"] for p in ranking_to_pairs(record, margin_from_ranks=True)] == [1.0, 2.0, 1.0]
    assert len(ranking_to_pairs({"prompt": [user("q")], "responses": ["a", "a", "b"]})) == 2


def test_ranking_as_preference_gives_all_pairs():
    record = {"prompt": "q", "responses": ["a", "b", "c", "d"]}
    assert len(canonical_records(record, "auto", "preference", W)) == 6
    with pytest.raises(DataError, match="gives 6 preference pairs"):
        to_canonical(record, "auto", "preference", W)


# ---- conversions between kinds --------------------------------------------------------------


def test_prompts_from_sft_preference_and_ranking():
    conversation = {"messages": [system("s"), user("a"), assistant("b"), user("c"), assistant("d")]}
    assert to_canonical(conversation, "auto", "prompt", W) == {
        "prompt": [system("s"), user("a"), assistant("b"), user("c")]
    }
    assert to_canonical({"prompt": "q", "chosen": "a", "rejected": "b"}, "auto", "prompt", W) == {
        "prompt": [user("q")]
    }
    assert to_canonical({"prompt": "q", "responses": ["a", "b"]}, "auto", "prompt", W) == {
        "prompt": [user("q")]
    }
    assert to_canonical({"prompt": [system("s"), user("q")]}, "auto", "prompt", W) == {
        "prompt": [system("s"), user("q")]
    }


def test_sft_from_preference_and_text_from_sft():
    assert to_canonical({"prompt": "q", "chosen": "a", "rejected": "b"}, "auto", "sft", W) == {
        "messages": [user("q"), assistant("a")]
    }
    assert to_canonical({"messages": [user("q"), assistant("a")]}, "auto", "text", W) == {
        "text": "User: q\n\nAssistant: a"
    }
    assert to_canonical({"prompt": "q", "chosen": "a", "rejected": "b"}, "auto", "ranking", W)[
        "responses"
    ] == ["a", "b"]


def test_kind_that_a_format_cannot_give():
    with pytest.raises(RecordError) as excinfo:
        to_canonical({"text": "doc"}, "auto", "preference", W)
    assert "a 'text' record cannot be used as 'preference' data" in str(excinfo.value)
    assert reason(excinfo) == DropReason.WRONG_KIND
    with pytest.raises(RecordError, match="field 'text': empty"):
        to_canonical({"text": "  "}, "auto", "text", W)


def test_canonical_records_are_fixed_points():
    samples = [
        ({"messages": [system("s"), user("q"), assistant("a")]}, RecordKind.SFT),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 0.5}, RecordKind.PREFERENCE),
        (
            {"context": "q", "responses": [{"text": "b", "rank": 2}, {"text": "a", "rank": 1}]},
            RecordKind.RANKING,
        ),
        ({"instruction": "q", "output": "a"}, RecordKind.PROMPT),
        ({"text": "doc"}, RecordKind.TEXT),
    ]
    for raw, kind in samples:
        canonical = to_canonical(raw, "auto", kind, W)
        assert to_canonical(canonical, "auto", kind, W) == canonical


# ---- round trips between the conversational formats -----------------------------------------

CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
CONVERSATIONS = {
    "single": [user("Say hi."), assistant("hi")],
    "system_multi": [system("be kind"), user("a"), assistant("b"), user("c"), assistant("d")],
    "tools": [
        user("1+2?"),
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL, CALL]},
        {"role": "tool", "content": "3"},
        assistant("3"),
    ],
}
HOLDS = {
    DataFormat.MESSAGES: {"single", "system_multi", "tools"},
    DataFormat.SHAREGPT: {"single", "system_multi", "tools"},
    DataFormat.ALPACA: {"single", "system_multi"},
    DataFormat.PROMPT_COMPLETION: {"single", "system_multi", "tools"},
    DataFormat.DOLLY: {"single"},
    DataFormat.ULTRACHAT: {"single"},
}


@pytest.mark.parametrize("fmt", list(HOLDS))
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_messages_round_trip(fmt, name):
    record = {"messages": CONVERSATIONS[name]}
    if name not in HOLDS[fmt]:
        with pytest.raises(RecordError, match=f"{fmt.value} cannot hold"):
            from_messages(record, fmt)
        return
    written = from_messages(record, fmt)
    assert detect_format(written, W) == fmt
    assert to_messages(written) == record
    assert to_messages(written, fmt) == record
    assert from_messages(to_messages(written), fmt) == written


def test_round_trip_from_each_format():
    alpaca = {"instruction": "Say hi.", "input": "", "output": "hi"}
    sharegpt = {
        "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
        "system": "s",
    }
    pc = {"prompt": "q", "completion": "a"}
    for record, fmt in [(alpaca, "alpaca"), (sharegpt, "sharegpt"), (pc, "prompt_completion")]:
        assert from_messages(to_messages(record), fmt) == record
    # across formats: alpaca -> sharegpt -> prompt_completion -> alpaca
    chain = from_messages(to_messages(from_messages(to_messages(alpaca), "sharegpt")), "prompt_completion")
    assert chain == {"prompt": "Say hi.", "completion": "hi"}
    assert from_messages(to_messages(chain), "alpaca") == alpaca


def test_sharegpt_tools_survive_the_round_trip():
    record = {"messages": [user("a"), assistant("b")], "tools": [{"name": "add"}]}
    written = from_messages(record, "sharegpt")
    assert written["tools"] == '[{"name": "add"}]'
    assert to_messages(written) == record


def test_to_messages_refuses_non_conversational_formats():
    with pytest.raises(DataError, match="'preference' is not a conversational format"):
        to_messages({"prompt": "q", "chosen": "a", "rejected": "b"})
