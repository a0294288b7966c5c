"""`alignlab data inspect | convert | prepare`, called through argparse as the CLI does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alignlab.commands.data import length_stats, register
from alignlab.data import load_records
from alignlab.registry import Registry


def _write(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Say {i}.", "input": "", "output": "x" * (10 * i + 1)} for i in range(1, 9)]
    return _write(tmp_path / "alpaca.jsonl", [*rows, "{oops", {"instruction": "q", "input": ""}])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``alignlab data ARGS...``; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="alignlab")
        register(parser.add_subparsers())
        args = parser.parse_args(["data", *argv])
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


# ---- inspect ------------------------------------------------------------------------------------


def test_inspect_shows_format_counts_histogram_and_examples(cli, alpaca: Path) -> None:
    code, out, _ = cli("inspect", str(alpaca), "--examples", "2")
    assert code == 0
    assert "format:  alpaca (8)" in out
    assert "records: 10 read, 8 kept as sft, 2 dropped" in out
    assert "not valid JSON: 1 (e.g. " in out and "missing field: 1" in out
    assert "length (characters of the record text): min 18, median 53" in out
    assert "│ █" in out and '[2] {"messages"' in out and "[3]" not in out


def test_inspect_json_and_kind(cli, alpaca: Path) -> None:
    code, out, _ = cli("inspect", str(alpaca), "--json", "--kind", "prompt")
    info = json.loads(out)
    assert code == 0 and info["kind"] == "prompt" and info["kept"] == 8
    assert info["dropped"] == {"not valid JSON": 1, "missing field": 1}
    assert sum(count for _, _, count in info["lengths"]["histogram"]) == 8
    assert info["examples"][0] == {"prompt": [{"role": "user", "content": "Say 1."}]}


def test_inspect_errors_exit_2(cli, tmp_path: Path) -> None:
    code, out, err = cli("inspect", str(tmp_path / "nope.jsonl"))
    assert code == 2 and out == "" and "no such file" in err
    code, _, err = cli(
        "inspect",
        str(_write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])),
        "--kind",
        "text",
    )
    assert code == 0  # every record dropped is a report, not an error


def test_length_histogram_bins():
    stats = length_stats([3, 15, 16, 31, 32, 100])
    assert stats["histogram"] == [[0, 15, 2], [16, 31, 2], [32, 63, 1], [64, 127, 1]]
    assert (stats["min"], stats["max"], stats["median"]) == (3, 100, 23)


# ---- convert ------------------------------------------------------------------------------------


def test_convert_to_messages_on_stdout_and_sharegpt_to_a_file(cli, alpaca: Path, tmp_path: Path) -> None:
    clean = _write(tmp_path / "clean.jsonl", [{"instruction": "Say hi.", "input": "", "output": "hi"}])
    code, out, _ = cli("convert", str(clean), "--to", "messages")
    assert code == 0
    assert json.loads(out) == {
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    }
    target = tmp_path / "out" / "sharegpt.jsonl"
    code, out, _ = cli("convert", str(clean), "--to", "sharegpt", "--out", str(target))
    assert code == 0 and f"wrote 1 sharegpt records to {target}" in out
    assert json.loads(target.read_text()) == {
        "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]
    }
    code, out, _ = cli("convert", str(target), "--to", "alpaca")  # and back
    assert json.loads(out) == {"instruction": "Say hi.", "input": "", "output": "hi"}


def test_convert_strict_stops_with_the_place_and_lenient_skips(cli, alpaca: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.jsonl"
    code, out, err = cli("convert", str(alpaca), "--to", "messages", "--out", str(target))
    assert code == 2 and f"{alpaca}:9: not valid JSON" in err and not target.exists()
    code, out, err = cli("convert", str(alpaca), "--to", "messages", "--out", str(target), "--lenient")
    assert code == 0 and "wrote 8 messages records" in out and "dropped 2" in err
    assert len(target.read_text().splitlines()) == 8
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    code, _, err = cli("convert", str(pairs), "--to", "messages")
    assert code == 2 and "not a conversational format" in err


# ---- prepare ------------------------------------------------------------------------------------


def _yaml(tmp_path: Path, raw: Path, extra: str = "") -> Path:
    path = tmp_path / "prepare.yaml"
    path.write_text(
        f"# alignlab data prepare {path}\noutput: demos\nkind: sft\nstrict: false\n"
        f"sources:\n  - source: {raw}\n{extra}",
        encoding="utf-8",
    )
    return path


def test_prepare_publishes_and_prints_the_report(cli, alpaca: Path, tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    config = _yaml(tmp_path, alpaca, "cleaning:\n  length: {min_chars: 20}\n")
    code, out, err = cli("prepare", str(config), "--registry", str(reg))
    assert code == 0, err
    assert (
        "alpaca.jsonl: read 10, valid 8 (dropped: not valid JSON 1, missing field 1), after cleaning 7" in out
    )
    assert "length" in out and "too short: 1" in out
    assert "published demos:v1" in out and f"parents: path:{alpaca.resolve()}" in out
    assert "data: {source: demos:v1}" in out
    assert len(load_records("demos:v1", kind="sft", registry=Registry(reg))) == 7
    code, out, _ = cli("prepare", str(config), "--registry", str(reg))
    assert code == 0 and out.startswith("reusing demos:v1")
    code, out, _ = cli("prepare", str(config), "cleaning.length.min_chars=1", "--registry", str(reg))
    assert code == 0 and "published demos:v2" in out and "after cleaning 8" in out


def test_prepare_config_errors_name_the_file_and_the_closest_key(cli, alpaca: Path, tmp_path: Path) -> None:
    config = _yaml(tmp_path, alpaca, "cleaning:\n  stepz: [pii]\n")
    code, out, err = cli("prepare", str(config), "--registry", str(tmp_path / "reg"))
    assert code == 2 and out == ""
    assert (
        str(config) in err and "unknown config key 'cleaning.stepz'" in err and "did you mean 'steps'" in err
    )
    code, _, err = cli("prepare", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file not found" in err
