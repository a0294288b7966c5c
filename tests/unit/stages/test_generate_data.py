"""Self-instruct and imitation data: the request, parsing the teacher's reply, Alpaca's filters,
seed files, and the stage end to end against a fake OpenAI-compatible teacher on 127.0.0.1."""

from __future__ import annotations

import json
import re

import pytest

from alignlab.errors import ConfigError, DataError
from alignlab.registry import Registry
from alignlab.stages.generate_data import (
    GenerateData,
    SelfInstructSettings,
    Task,
    TaskFilter,
    load_seed_tasks,
    parse_tasks,
    self_instruct_prompt,
)

SEEDS = [
    {
        "id": "seed_task_0",
        "name": "breakfast_suggestion",
        "instruction": "Is there anything I can eat for a breakfast that doesn't include eggs?",
        "instances": [{"input": "", "output": "Yes, oatmeal with fruit."}],
        "is_classification": False,
    },
    {"instruction": "Sort the numbers from small to large.", "input": "3, 1, 2", "output": "1, 2, 3"},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
]


def write_seeds(tmp_path, rows=SEEDS):
    path = tmp_path / "seed_tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seed_tasks_load_in_alpacas_format_and_the_plain_one(tmp_path):
    tasks = load_seed_tasks(str(write_seeds(tmp_path)))
    assert tasks[0] == Task(
        "Is there anything I can eat for a breakfast that doesn't include eggs?",
        "",
        "Yes, oatmeal with fruit.",
    )
    assert tasks[1] == Task("Sort the numbers from small to large.", "3, 1, 2", "1, 2, 3")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "output": "fine"}\n{"instruction": "", "output": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'instruction' must be a non-empty string"):
        load_seed_tasks(str(bad))
    with pytest.raises(DataError, match="no such file"):
        load_seed_tasks(str(tmp_path / "missing.jsonl"))


def test_the_request_numbers_the_examples_as_alpaca_does():
    prompt = self_instruct_prompt([Task("Say hi.", "", "hi"), Task("Add.", "1 2", "3")], n=5)
    assert "come up with a set of 5 diverse task instructions" in prompt
    assert "###\n1. Instruction: Say hi.\n1. Input:\n<noinput>\n1. Output:\nhi" in prompt
    assert prompt.endswith("###\n3. Instruction:")


REPLY = """Write a haiku about the sea.
3. Input:
<noinput>
3. Output:
Waves fold into foam
###
4. Instruction: Classify the sentiment of the review.
4. Input:
The film was a delight from start to end.
4. Output:
Positive
###
5. Instruction: Describe a picture of a cat.
5. Input:
<noinput>
5. Output:
A cat.
###
6. Instruction: Half a task with no output
6. Input:
"""


def test_a_reply_that_continues_the_request_is_parsed_into_tasks():
    tasks = parse_tasks(REPLY, first=3)
    assert tasks == [
        Task("Write a haiku about the sea.", "", "Waves fold into foam"),
        Task(
            "Classify the sentiment of the review.", "The film was a delight from start to end.", "Positive"
        ),
        Task("Describe a picture of a cat.", "", "A cat."),
    ]
    assert parse_tasks("3. Instruction: Name a river.\n3. Input:\n<noinput>\n3. Output:\nThe Nile.", 3) == [
        Task("Name a river.", "", "The Nile.")
    ]
    assert parse_tasks("I am sorry, I cannot help with that.", 3) == []


def test_alpacas_filters_drop_and_count(tmp_path):
    seeds = load_seed_tasks(str(write_seeds(tmp_path)))
    keep = TaskFilter(SelfInstructSettings(seed_tasks="x"), seeds)
    candidates = [
        Task("Write a haiku about the sea.", "", "x"),
        Task("Write a haiku about the sea!", "", "x"),  # the same instruction, punctuation aside
        Task("Describe a picture of a cat.", "", "x"),
        Task("Go.", "", "x"),
        Task('"Quote" the line back.', "", "x"),
        Task("Give the opposite of the word.", "cold", "hot"),  # a seed's instruction
    ]
    assert [keep.keep(t) for t in candidates] == [True, False, False, False, False, False]
    assert keep.dropped == {
        "repeats an instruction": 2,
        "asks for what a text model cannot do": 1,
        "instruction too short": 1,
        "starts with punctuation": 1,
    }


def test_bad_settings_are_refused_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="self_instruct.seed_tasks: self-instruct needs"):
        GenerateData({"endpoint": {"model": "m"}}).run(Registry(tmp_path / "r"))
    with pytest.raises(
        ConfigError, match="'mode': expected one of 'self_instruct', 'imitation', got 'distill'"
    ):
        GenerateData({"mode": "distill"})
    with pytest.raises(ConfigError, match=r"self_instruct.template must contain \{examples\}"):
        GenerateData({"self_instruct": {"seed_tasks": "s", "template": "{n} tasks"}})
    stage = GenerateData({"self_instruct": {"seed_tasks": str(write_seeds(tmp_path))}})
    with pytest.raises(ConfigError, match="as the 'teacher' input .* or as endpoint.model .* one of them"):
        stage.run(Registry(tmp_path / "r"))
    both = GenerateData(
        {"self_instruct": {"seed_tasks": str(write_seeds(tmp_path))}, "endpoint": {"model": "m"}}
    )
    with pytest.raises(ConfigError, match="not both"):
        both.run(Registry(tmp_path / "r"), teacher="some-model")


# ---- end to end against a fake teacher endpoint ------------------------------------------------


def teacher_reply(prompt: str) -> str:
    """A rule teacher: writes three tasks after the examples, one of them a duplicate and one blocked."""
    if "come up with a set of" not in prompt:  # imitation: answer the question
        return f"A careful answer to: {prompt[:40]}"
    start = int(re.findall(r"(\d+)\. Instruction:\s*$", prompt)[0])
    call = Teacher.calls
    Teacher.calls += 1
    tasks = [
        (f"Explain topic number {call} to a child.", "<noinput>", f"Topic {call} is simple."),
        ("Explain the water cycle briefly.", "<noinput>", "Water evaporates, condenses and falls."),
        ("Draw a map of your town.", "<noinput>", "I cannot draw."),
    ]
    lines = []
    for i, (ins, inp, out) in enumerate(tasks):
        n = start + i
        head = "" if i == 0 else f"{n}. Instruction: "
        lines.append(f"{head}{ins}\n{n}. Input:\n{inp}\n{n}. Output:\n{out}\n###")
    return "\n".join(lines)


class Teacher:
    calls = 0


@pytest.fixture(scope="module")
def teacher_url(fake_chat_server):
    return fake_chat_server(lambda body: teacher_reply(body["messages"][-1]["content"])).url


def test_self_instruct_against_an_endpoint_publishes_a_filtered_cleaned_dataset_with_its_lineage(
    tmp_path, teacher_url
):
    from alignlab.data import load_records

    registry = Registry(tmp_path / "registry")
    seeds = write_seeds(tmp_path)
    Teacher.calls = 0
    cfg = {
        "output": "alpaca_like",
        "self_instruct": {"seed_tasks": str(seeds), "num_tasks": 5, "tasks_per_prompt": 3},
        "endpoint": {"model": "teacher-1", "base_url": teacher_url, "max_retries": 0},
        "sampling": {"batch_size": 2},
    }
    art = GenerateData(cfg).run(registry)
    assert art.kind == "dataset" and art.stage == "generate_data"
    m = art.metrics
    # each request gives one new task, the water cycle once, and a blocked map drawing
    assert m["records"] == 5 and m["requests"] == 4 and m["tasks_parsed"] == 12
    assert m["dropped"] == {
        "repeats an instruction": 2,
        "asks for what a text model cannot do": 3,
    }  # the 5th task ends it
    assert m["teacher"] == f"openai:teacher-1@{teacher_url}"
    roles = {d["role"]: d for d in art.data}
    assert roles["teacher"]["source"] == m["teacher"] and roles["seed_tasks"]["source"] == str(
        seeds.resolve()
    )
    records = load_records(art.ref, kind="sft", registry=registry).records
    assert len(records) == 5 and all(r["messages"][0]["role"] == "user" for r in records)
    assert len((art.path / "teacher_outputs.jsonl").read_text().splitlines()) == 4
    assert GenerateData(cfg).run(registry).id == art.id  # same teacher, seeds, settings: reused
    seeds.write_text(
        seeds.read_text() + json.dumps({"instruction": "Name a colour.", "output": "Red."}) + "\n"
    )
    assert GenerateData(cfg).run(registry).id != art.id  # other seed tasks: generated anew


def test_imitation_answers_every_prompt_with_the_teacher(tmp_path, teacher_url):
    registry = Registry(tmp_path / "registry")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: why is the sky blue?"}) + "\n" for i in range(3))
    )
    art = GenerateData(
        {
            "mode": "imitation",
            "data": {"source": str(prompts)},
            "endpoint": {"model": "t", "base_url": teacher_url},
        }
    ).run(registry)
    rows = [json.loads(x) for x in (art.path / "data.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [
        f"A careful answer to: Question {i}: why is the sky blue?" for i in range(3)
    ]
    assert art.metrics["requests"] == 3 and {d["role"] for d in art.data} >= {"prompts", "teacher"}


def test_a_teacher_that_writes_no_task_publishes_nothing(tmp_path, tiny_lm):
    registry = Registry(tmp_path / "registry")
    teacher = tiny_lm(["Instruction: say hi. Output: hi"], "teacher")
    cfg = {
        "self_instruct": {"seed_tasks": str(write_seeds(tmp_path)), "num_tasks": 2, "max_requests": 2},
        "sampling": {"max_new_tokens": 8},
    }
    with pytest.raises(DataError, match=r"produced no usable record in 2 request\(s\)"):
        GenerateData(cfg).run(registry, teacher=str(teacher))
    assert registry.list() == []
