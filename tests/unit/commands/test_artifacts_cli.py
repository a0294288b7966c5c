"""`alignlab artifacts ...`: every sub-command, human and JSON output, errors as exit code 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alignlab.commands.artifacts import register
from alignlab.registry import Artifact, Registry


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg")
    base = _publish(
        reg,
        "base",
        parents=["hf:org/tiny"],
        data=[{"role": "train", "source": "testbed:pretrain", "fingerprint": "aa11", "records": 9}],
    )
    _publish(reg, "sft", parents=[base], inputs={"model": "base"})
    _publish(reg, "sft", parents=[base], inputs={"model": "base"})
    return reg


def _publish(reg: Registry, name: str, **kwargs) -> Artifact:
    with reg.publishing(name, kind="model", stage=name, config={"lr": 0.001}, **kwargs) as pub:
        (pub.dir / "weights.txt").write_text(name)
        pub.metrics["loss"] = 0.25
    return pub.artifact


@pytest.fixture
def cli(reg: Registry, capsys: pytest.CaptureFixture[str]):
    """Run ``alignlab artifacts --registry <reg> ARGS...``; returns (exit code, stdout, stderr)."""

    def run(*argv: str, registry: Path | None = reg.root) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="alignlab")
        register(parser.add_subparsers())
        prefix = ["artifacts", "--registry", str(registry)] if registry else ["artifacts"]
        args = parser.parse_args([*prefix, *argv])
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_list_as_table_and_json(cli) -> None:
    code, out, _ = cli("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["REF", "KIND", "STAGE"]
    assert [line.split()[0] for line in lines[1:]] == ["base:v1", "sft:v1", "sft:v2"]
    assert "loss=0.25" in out

    code, out, _ = cli("list", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["ref"] for r in rows] == ["base:v1", "sft:v1", "sft:v2"]
    code, out, _ = cli("list", "--name", "sft", "--json")
    assert [r["version"] for r in json.loads(out)] == [1, 2]
    assert cli()[1].splitlines()[1].startswith("base:v1")  # bare `artifacts` lists


def test_list_of_an_empty_registry(cli, tmp_path: Path) -> None:
    code, out, _ = cli("list", registry=tmp_path / "empty")
    assert code == 0 and "no artifacts" in out
    assert json.loads(cli("list", "--json", registry=tmp_path / "empty")[1]) == []


def test_show_json_and_human(cli, reg: Registry) -> None:
    code, out, _ = cli("show", "sft:v1", "--json")
    record = json.loads(out)
    assert code == 0
    for key in (
        "id",
        "name",
        "version",
        "kind",
        "stage",
        "path",
        "parents",
        "fingerprint",
        "metrics",
        "created_at",
    ):
        assert key in record, key
    assert record["path"] == str(reg.root / "sft" / "v1") and record["metrics"] == {"loss": 0.25}
    assert record["parents"] == [reg.get("base").id]

    code, out, _ = cli("show", "sft")
    assert code == 0 and out.startswith("sft:v2  (sft-v2-")
    assert "model=base" in out and '"lr": 0.001' in out and "loss = 0.25" in out


def test_lineage_text_and_json(cli, reg: Registry) -> None:
    code, out, _ = cli("lineage", "sft")
    assert code == 0
    assert out.splitlines()[0].startswith("sft:v2  [model]  stage=sft")
    assert "└─ base:v1" in out and "data: testbed:pretrain (aa11, 9 records)" in out and "hf:org/tiny" in out

    code, out, _ = cli("lineage", "sft", "--json")
    entries = json.loads(out)
    assert [(e["depth"], e["id"]) for e in entries] == [
        (0, reg.get("sft").id),
        (1, reg.get("base").id),
        (2, "hf:org/tiny"),
    ]
    assert entries[2]["kind"] == "external" and entries[2]["is_local"] is False


def test_tag_then_resolve_by_alias(cli) -> None:
    code, out, _ = cli("tag", "sft:v1", "best")
    assert code == 0 and "sft@best -> sft:v1" in out
    assert json.loads(cli("show", "sft@best", "--json")[1])["version"] == 1
    code, _, err = cli("tag", "sft:v1", "latest")
    assert code == 2 and "confused with a version" in err


def test_verify_ok_then_changed(cli, reg: Registry) -> None:
    code, out, _ = cli("verify", "sft:v1")
    assert code == 0 and "ok" in out
    (reg.get("sft:v1").path / "weights.txt").write_text("tampered")
    code, out, _ = cli("verify", "sft:v1")
    assert code == 1 and "changed: weights.txt" in out


def test_rm_refuses_with_children_unless_forced(cli, reg: Registry) -> None:
    code, out, err = cli("rm", "base")
    assert code == 2 and out == ""
    assert "base:v1 is a parent of sft:v1, sft:v2" in err and "Traceback" not in err
    assert reg.get("base").path.is_dir()
    code, out, _ = cli("rm", "base", "--force")
    assert code == 0 and out.startswith("removed base:v1")
    assert reg.list("base") == []


def test_history_json_and_table(cli, reg: Registry) -> None:
    reg.add_metrics("sft", {"gold_score": 0.75}, source="eval")
    code, out, _ = cli("history", "sft", "--json")
    assert code == 0
    assert [(h["source"], h["metrics"]) for h in json.loads(out)] == [
        ("sft", {"loss": 0.25}),
        ("eval", {"gold_score": 0.75}),
    ]
    code, out, _ = cli("history", "sft")
    assert code == 0 and "gold_score=0.75" in out and "SOURCE" in out


def test_unknown_reference_is_an_error_with_a_suggestion(cli) -> None:
    code, out, err = cli("show", "sfft")
    assert code == 2 and out == ""
    assert err.startswith("error: no artifact 'sfft'") and "did you mean 'sft'" in err
    code, _, err = cli("show", "sft:v9")
    assert code == 2 and "it has v1, v2" in err


def test_registry_from_env_or_after_the_subcommand(
    cli, reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIGNLAB_HOME", str(reg.root))
    assert json.loads(cli("list", "--json", registry=None)[1])[0]["ref"] == "base:v1"
    monkeypatch.delenv("ALIGNLAB_HOME")
    assert (
        json.loads(cli("list", "--json", "--registry", str(reg.root), registry=None)[1])[0]["ref"]
        == "base:v1"
    )


def test_gc_reports_what_it_removed(cli, reg: Registry) -> None:
    stale = reg.root / "sft" / "v9"
    stale.mkdir()
    (stale / "artifact.json").write_text("{}")
    code, out, _ = cli("gc")
    assert code == 0 and str(stale) in out and not stale.exists()
