"""load_records: files, folders, testbed / registry / hub sources, strict and lenient validation."""

from __future__ import annotations

import csv
import json
import logging
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data import (
    DataFormat,
    DropReason,
    RecordError,
    canonicalize,
    load_records,
    publish_records,
    write_records,
)
from alignlab.errors import ConfigError, DataError, ReferenceNotFound

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "margin": 1.5},
    {"prompt": "Say hi.", "chosen": "hi", "rejected": "go away"},
]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))  # from_pylist only looks at the first row
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), path)
    return path


# ---- JSONL and JSON -------------------------------------------------------------------------


def test_jsonl_preference_loads(tmp_path):
    data = load_records(str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), kind="preference")
    assert len(data.records) == 3
    assert data.records[1] == {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": "Paris",
        "rejected": "Lyon",
        "margin": 1.5,
    }
    assert data.format == DataFormat.PREFERENCE
    assert data.source == str(tmp_path / "pairs.jsonl")
    assert data.origin == f"path:{(tmp_path / 'pairs.jsonl').resolve()}"
    assert (data.report.total, data.report.kept, data.report.dropped) == (3, 3, {})
    assert len(data.fingerprint) == 16


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    lines = [PAIRS[0], "", PAIRS[1], PAIRS[2], PAIRS[0], PAIRS[1], '{"text": 1 2}']
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError) as excinfo:
        load_records(str(path), kind="preference")
    assert str(excinfo.value) == f"{path}:7: not valid JSON: Expecting ',' delimiter (column 12)"
    assert excinfo.value.reason == DropReason.INVALID_JSON


def test_strict_fails_on_the_first_bad_record(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl", [PAIRS[0], {"prompt": "q", "chosen": 3, "rejected": "b"}, {"x": 1}]
    )
    with pytest.raises(RecordError) as excinfo:
        load_records(str(path), kind="preference")
    assert str(excinfo.value) == f"{path}:2: field 'chosen': expected a string or a list of messages, got int"
    assert any("strict=False" in note for note in getattr(excinfo.value, "__notes__", []))


def test_lenient_mode_drops_counts_and_warns(tmp_path, caplog):
    lines = [
        PAIRS[0],
        "not json",
        {"prompt": "q", "chosen": "a"},
        {"prompt": "q", "rejected": "a"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "a", "rejected": ""},
        [1, 2],
        PAIRS[1],
    ]
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="alignlab.data"):
        data = load_records(str(path), kind="preference", strict=False)
    report = data.report
    assert (report.total, report.kept) == (8, 2)
    assert report.dropped == {
        "not valid JSON": 1,
        "missing field": 2,
        "chosen identical to rejected": 1,
        "empty response": 1,
        "not a record": 1,
    }
    assert report.examples["missing field"] == [
        f"{path}:3: field 'rejected': missing",
        f"{path}:4: field 'chosen': missing",
    ]
    assert report.examples["not valid JSON"][0].startswith(f"{path}:2: not valid JSON: Expecting value")
    summary = report.summary()
    assert (
        "kept 2 records from 8 read" in summary and "dropped 6" in summary and "missing field: 2" in summary
    )
    assert summary in caplog.text


def test_examples_are_capped_at_three(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [PAIRS[0]] + [{"prompt": "q", "chosen": "a"}] * 5)
    report = load_records(str(path), kind="preference", strict=False).report
    assert report.dropped == {"missing field": 5}
    assert [e.split(": ")[0] for e in report.examples["missing field"]] == [f"{path}:{n}" for n in (2, 3, 4)]


def test_chosen_identical_to_rejected_is_dropped_in_strict_mode_too(tmp_path, caplog):
    path = write_jsonl(tmp_path / "data.jsonl", [PAIRS[0], {"prompt": "q", "chosen": "x", "rejected": "x"}])
    with caplog.at_level(logging.WARNING, logger="alignlab.data"):
        data = load_records(str(path), kind="preference", strict=True)
    assert len(data.records) == 1
    assert data.report.dropped == {"chosen identical to rejected": 1}
    assert data.report.examples["chosen identical to rejected"] == [
        f"{path}:2: chosen is identical to rejected; the pair carries no preference"
    ]
    assert "chosen identical to rejected: 1" in caplog.text


def test_json_list_is_numbered_by_line(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(PAIRS, indent=2))
    data = load_records(str(path), kind="preference")
    assert len(data.records) == 3
    bad = [PAIRS[0], {"prompt": "q", "chosen": 3, "rejected": "b"}]
    path.write_text(json.dumps(bad, indent=2))
    start = json.dumps(bad, indent=2).splitlines().index("  {", 2) + 1
    with pytest.raises(DataError, match=rf"pairs.json:{start}: field 'chosen'"):
        load_records(str(path), kind="preference")


def test_json_file_with_json_lines_and_broken_json(tmp_path):
    path = write_jsonl(tmp_path / "pairs.json", PAIRS)
    assert len(load_records(str(path), kind="preference").records) == 3
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"\n]')
    with pytest.raises(DataError, match=r"pairs.json:4: not valid JSON: Expecting ',' delimiter"):
        load_records(str(path), kind="text", strict=False)  # a broken array cannot be read in part


# ---- CSV and parquet ------------------------------------------------------------------------


def test_csv_alpaca_rows_are_numbered(tmp_path):
    rows = [
        {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
        {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi.", "input": "", "output": ""},
    ]
    path = write_csv(tmp_path / "sft.csv", rows)
    with pytest.raises(DataError, match=r"sft.csv:row 3: field 'output': empty response"):
        load_records(str(path), kind="sft")
    data = load_records(str(path), kind="sft", strict=False)
    assert data.records[0]["messages"][1] == {"role": "assistant", "content": "4"}  # stays text, not an int
    assert data.records[1]["messages"][0]["content"] == "Translate.\n\nbonjour"
    assert data.format == "alpaca"


def test_csv_with_json_cells_and_margins(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "[not a list"}]},
    ]
    data = load_records(str(write_csv(tmp_path / "chat.csv", rows)), kind="sft")
    assert data.records[0]["messages"][1]["content"] == "[not a list"
    pairs = load_records(str(write_csv(tmp_path / "pairs.csv", PAIRS)), kind="preference")
    assert [r["margin"] for r in pairs.records] == [None, 1.5, None]


def test_parquet_with_nested_messages(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": ""}]},
    ]
    path = write_parquet(tmp_path / "chat.parquet", rows)
    with pytest.raises(
        DataError, match=r"chat.parquet:row 2: field 'messages': the last assistant turn is empty"
    ):
        load_records(str(path), kind="sft")
    data = load_records(str(path), kind="sft", strict=False)
    assert data.records == [{"messages": rows[0]["messages"]}]
    assert data.report.dropped == {"empty response": 1}


def test_fingerprint_is_the_same_across_file_formats(tmp_path):
    sources = [
        write_jsonl(tmp_path / "pairs.jsonl", PAIRS),
        write_csv(tmp_path / "pairs.csv", PAIRS),
        write_parquet(tmp_path / "pairs.parquet", PAIRS),
    ]
    (tmp_path / "pairs.json").write_text(json.dumps(PAIRS))
    sources.append(tmp_path / "pairs.json")
    # the same pairs written in another format (messages lists instead of strings)
    as_messages = [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
            **({"margin": p["margin"]} if "margin" in p else {}),
        }
        for p in PAIRS
    ]
    sources.append(write_jsonl(tmp_path / "pairs_messages.jsonl", as_messages))
    fingerprints = {load_records(str(s), kind="preference").fingerprint for s in sources}
    assert len(fingerprints) == 1
    other = write_jsonl(tmp_path / "other.jsonl", [*PAIRS[:2], {**PAIRS[2], "chosen": "hello"}])
    assert load_records(str(other), kind="preference").fingerprint not in fingerprints
    as_prompts = load_records(str(sources[0]), kind="prompt").fingerprint
    assert as_prompts not in fingerprints


# ---- folders, errors, options ---------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    for missing in (tmp_path / "nope.jsonl", tmp_path / "sub" / "nope"):
        with pytest.raises(DataError, match=f"no such file or folder: {missing}"):
            load_records(str(missing), kind="sft")


def test_empty_dataset_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="the dataset is empty"):
        load_records(str(empty), kind="sft")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(
        DataError, match=r"no usable preference records: all 1 were dropped .*missing field: 1"
    ):
        load_records(str(bad), kind="preference", strict=False)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '.txt'"):
        load_records(str(path), kind="text")


def test_mixed_formats_limit_and_format_override(tmp_path):
    rows = [
        {"instruction": "a", "output": "b"},
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
        {"prompt": "e", "completion": "f"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    data = load_records(str(path), kind="sft")
    assert data.format == "messages+alpaca+prompt_completion"
    assert len(load_records(str(path), kind="sft", limit=2).records) == 2
    with pytest.raises(DataError, match=r"mixed.jsonl:2: field 'instruction': missing"):
        load_records(str(path), kind="sft", format="alpaca")
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        load_records(str(path), kind="sft", limit=0)
    with pytest.raises(ConfigError, match="unknown record kind 'sftt'"):
        load_records(str(path), kind="sftt")


def test_ranking_file_as_preference_pairs(tmp_path):
    rows = [
        {"context": "q", "responses": [{"text": t, "rank": r} for t, r in (("b", 2), ("a", 1), ("c", 3))]}
    ]
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    data = load_records(str(path), kind="preference")
    assert [(p["chosen"], p["rejected"]) for p in data.records] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert (data.report.total, data.report.kept) == (1, 3)
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{**rows[0], "responses": rows[0]["responses"][:2] + [{"text": "c", "rank": 2}]}],
    )
    with pytest.raises(
        DataError, match=r"bad.jsonl:1: field 'responses': ranks must be a permutation of 1..3"
    ):
        load_records(str(bad), kind="ranking")


def test_write_records_round_trip_and_artifact_folder(tmp_path):
    data = load_records(str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), kind="preference")
    folder = tmp_path / "artifact"
    write_records(folder / "data.jsonl", data.records)
    (folder / "artifact.json").write_text("{}")
    again = load_records(str(folder), kind="preference")
    assert again.records == data.records and again.fingerprint == data.fingerprint
    assert again.report.examples == {}


def test_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"text": "one"}, {"text": "two"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert load_records(str(tmp_path / "saved"), kind="text").records == rows
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_records(str(tmp_path / "dd"), kind="text", split="test").records) == 2
    with pytest.raises(DataError, match="no split 'train'; it has test"):
        load_records(str(tmp_path / "dd"), kind="text")


def test_canonicalize_in_memory_rows():
    data = canonicalize([{"text": "a"}, {"text": ""}], kind="text", strict=False, source="gen")
    assert data.records == [{"text": "a"}]
    assert data.report.examples == {"empty field": ["gen:record 2: field 'text': empty"]}


# ---- testbed, registry and hub sources (stand-ins: those modules are written elsewhere) -----


@pytest.fixture
def fake_testbed(monkeypatch):
    calls = []

    def source(name, **kwargs):
        calls.append((name, kwargs))
        if name == "pretrain":
            return ["doc one", "doc two"]
        if name == "sft":
            return [
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": f"a{i}"},
                    ]
                }
                for i in range(kwargs.get("n", 3))
            ]
        raise DataError(f"unknown testbed source '{name}'")

    module = types.ModuleType("alignlab.testbed")
    module.source = source
    monkeypatch.setitem(sys.modules, "alignlab.testbed", module)
    return calls


def test_testbed_source_with_arguments(fake_testbed):
    data = load_records("testbed:sft?n=4&seed=7&temperature=0.5&sloppy=true&style=terse", kind="sft")
    assert fake_testbed == [
        ("sft", {"n": 4, "seed": 7, "temperature": 0.5, "sloppy": True, "style": "terse"})
    ]
    assert len(data.records) == 4 and data.origin is None and data.source.startswith("testbed:sft")
    assert load_records("testbed:pretrain", kind="text").records == [{"text": "doc one"}, {"text": "doc two"}]
    with pytest.raises(DataError, match="unknown testbed source 'nope'"):
        load_records("testbed:nope", kind="sft")
    with pytest.raises(
        DataError, match=r"testbed:sft:record 1: a 'messages' record cannot be used as 'ranking'"
    ):
        load_records("testbed:sft", kind="ranking")


@dataclass(frozen=True)
class FakeArtifact:
    id: str
    name: str
    version: int
    kind: str
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"


@dataclass
class FakePublication:
    dir: Path
    metrics: dict = field(default_factory=dict)
    artifact: FakeArtifact | None = None


class FakeRegistry:
    """Registry.resolve / Registry.publishing as in docs/dev/interfaces.md."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.artifacts: dict[str, FakeArtifact] = {}
        self.published: list[dict] = []

    def resolve(self, ref):
        name = str(ref).split(":")[0]
        if name in self.artifacts:
            return self.artifacts[name]
        raise ReferenceNotFound(f"no artifact named {ref!r}")

    @contextmanager
    def publishing(
        self, name, *, kind, stage, parents=(), inputs=None, data=None, config=None, fingerprint=None
    ):
        folder = self.root / name / "v1"
        folder.mkdir(parents=True)
        publication = FakePublication(folder)
        yield publication
        self.published.append(
            {"kind": kind, "stage": stage, "parents": list(parents), "data": data, "config": config}
        )
        publication.artifact = self.artifacts[name] = FakeArtifact(f"{name}-0001", name, 1, kind, folder)


def test_publish_then_load_by_reference(tmp_path):
    registry = FakeRegistry(tmp_path / "registry")
    data = load_records(str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)), kind="preference")
    artifact = publish_records(registry, "pairs", data, config={"note": "x"})
    assert artifact.kind == "dataset" and (artifact.path / "data.jsonl").is_file()
    published = registry.published[0]
    assert published["stage"] == "data" and published["parents"] == [data.origin]
    assert published["data"] == [
        {"role": "records", "source": data.source, "fingerprint": data.fingerprint, "records": 3}
    ]
    again = load_records("pairs:v1", kind="preference", registry=registry)
    assert again.records == data.records and again.fingerprint == data.fingerprint
    assert again.origin == "pairs-0001" and again.artifact is registry.artifacts["pairs"]


def test_registry_reference_of_the_wrong_kind(tmp_path):
    registry = FakeRegistry(tmp_path)
    registry.artifacts["policy"] = FakeArtifact("policy-0001", "policy", 1, "model", tmp_path)
    with pytest.raises(
        DataError, match=r"'policy' is a registry artifact of kind 'model' \(policy:v1\), not a dataset"
    ):
        load_records("policy", kind="sft", registry=registry)


def test_unknown_name_falls_through_to_the_hub(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    asked = []

    def unreachable(name, split):
        asked.append((name, split))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError) as excinfo:
        load_records("someone/missing-set", kind="sft", registry=FakeRegistry(tmp_path), split="test")
    message = str(excinfo.value)
    assert (
        "neither a local file or folder, a testbed source" in message and "reachable hub dataset" in message
    )
    assert "(registry: no artifact named 'someone/missing-set')" in message
    assert asked == [("someone/missing-set", "test")]

    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: [{"text": "hub doc"}])
    data = load_records("hf:org/set", kind="text")
    assert data.records == [{"text": "hub doc"}] and data.origin == "hf:org/set"
