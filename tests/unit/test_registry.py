"""The artifact registry: publishing, references, versions, crashes, concurrency, lineage."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from datetime import datetime
from pathlib import Path

import pytest

from alignlab.errors import ConfigError, ReferenceNotFound, RegistryError
from alignlab.registry import (
    Artifact,
    ArtifactKind,
    ExternalRef,
    Registry,
    fingerprint,
    format_lineage,
)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "reg")


def publish(
    reg: Registry, name: str = "sft", *, kind: str = "model", files: dict[str, str] | None = None, **kwargs
) -> Artifact:
    with reg.publishing(name, kind=kind, stage=kwargs.pop("stage", name), **kwargs) as pub:
        for rel, text in (files or {"weights.txt": f"{name} weights"}).items():
            (pub.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (pub.dir / rel).write_text(text)
        pub.metrics["loss"] = 0.5
    assert pub.artifact is not None
    return pub.artifact


def staging_entries(reg: Registry) -> list[Path]:
    staging = reg.root / ".staging"
    return list(staging.iterdir()) if staging.exists() else []


# ---- publishing ---------------------------------------------------------------------------------


def test_publish_writes_folder_record_and_checksums(reg: Registry) -> None:
    art = publish(
        reg,
        "sft",
        files={"model.safetensors": "w", "tok/vocab.json": "{}"},
        parents=["hf:org/base"],
        inputs={"model": "hf:org/base"},
        config={"lr": 1e-4},
        data=[{"role": "train", "source": "testbed:sft", "fingerprint": "ab12", "records": 3}],
        fingerprint="f" * 16,
    )
    assert re.fullmatch(r"sft-v1-[0-9a-f]{8}", art.id)
    assert art.path == reg.root / "sft" / "v1" and art.ref == "sft:v1"
    record = json.loads((art.path / "artifact.json").read_text())
    for key in (
        "id",
        "name",
        "version",
        "kind",
        "stage",
        "parents",
        "inputs",
        "data",
        "config",
        "fingerprint",
        "metrics",
        "created_at",
        "versions",
        "files",
    ):
        assert key in record, key
    assert (
        record["id"] == art.id and record["parents"] == ["hf:org/base"] and record["config"] == {"lr": 1e-4}
    )
    assert record["metrics"] == {"loss": 0.5}
    assert record["files"] == {
        "model.safetensors": hashlib.sha256(b"w").hexdigest(),
        "tok/vocab.json": hashlib.sha256(b"{}").hexdigest(),
    }
    assert {"python", "alignlab", "torch"} <= set(record["versions"])
    assert (
        datetime.fromisoformat(record["created_at"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    )
    assert staging_entries(reg) == []


def test_versions_increment_per_name_and_list_is_sorted(reg: Registry) -> None:
    assert [publish(reg, "sft").version for _ in range(3)] == [1, 2, 3]
    assert publish(reg, "dpo").version == 1
    assert [a.ref for a in reg.list()] == ["dpo:v1", "sft:v1", "sft:v2", "sft:v3"]
    assert [a.ref for a in reg.list("sft")] == ["sft:v1", "sft:v2", "sft:v3"]
    assert reg.list("nope") == []


def test_removed_version_numbers_are_not_reused(reg: Registry) -> None:
    publish(reg, "sft")
    reg.remove(publish(reg, "sft"))
    assert publish(reg, "sft").version == 3


def test_reading_never_creates_a_registry(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "absent")
    assert reg.list() == [] and reg.find_fingerprint("x") is None
    with pytest.raises(ReferenceNotFound, match="empty"):
        reg.resolve("sft")
    assert not (tmp_path / "absent").exists()


def test_default_root_comes_from_alignlab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNLAB_HOME", str(tmp_path / "home"))
    assert Registry().root == (tmp_path / "home").resolve()
    monkeypatch.delenv("ALIGNLAB_HOME")
    monkeypatch.chdir(tmp_path)
    assert Registry().root == (tmp_path / "artifacts").resolve()


@pytest.mark.parametrize("name", ["a:b", "a@b", "a/b", "", "two words", ".hidden", "-x", "ü"])
def test_bad_names_are_refused(reg: Registry, name: str) -> None:
    with pytest.raises(ConfigError, match="bad artifact name"):
        publish(reg, name)
    assert staging_entries(reg) == []


def test_unknown_kind_is_refused_with_a_suggestion(reg: Registry) -> None:
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        publish(reg, "sft", kind="modle")
    assert publish(reg, "rm", kind=ArtifactKind.REWARD_MODEL).kind == "reward_model"


# ---- crashes ------------------------------------------------------------------------------------


def test_exception_inside_the_block_publishes_nothing(reg: Registry) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with reg.publishing("sft", kind="model", stage="sft") as pub:
            (pub.dir / "half-written.bin").write_text("x")
            raise RuntimeError("boom")
    assert pub.artifact is None
    assert reg.list() == [] and staging_entries(reg) == [] and not (reg.root / "sft").exists()
    assert publish(reg).version == 1


def test_failure_after_rename_before_commit_rolls_the_folder_back(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(reg, "sft")
    real_insert = Registry._insert

    def insert_then_crash(self, conn, record):  # the row is written, then the process "dies"
        real_insert(self, conn, record)
        assert (self.root / "sft" / "v2").is_dir()  # the rename had happened
        raise KeyboardInterrupt

    monkeypatch.setattr(Registry, "_insert", insert_then_crash)
    with pytest.raises(KeyboardInterrupt):
        publish(reg, "sft")
    assert not (reg.root / "sft" / "v2").exists()
    assert [a.ref for a in reg.list()] == ["sft:v1"] and staging_entries(reg) == []
    monkeypatch.setattr(Registry, "_insert", real_insert)
    assert publish(reg, "sft").version == 2


def test_a_killed_publisher_leaves_an_invisible_folder_that_is_replaced(reg: Registry) -> None:
    publish(reg, "sft")
    orphan = reg.root / "sft" / "v2"  # renamed into place, but the process died before the commit
    orphan.mkdir()
    (orphan / "artifact.json").write_text('{"id": "sft-v2-deadbeef"}')
    (orphan / "weights.txt").write_text("stale")
    assert reg.resolve("sft").ref == "sft:v1"
    with pytest.raises(ReferenceNotFound, match="no version 2"):
        reg.resolve("sft:v2")
    assert isinstance(reg.resolve(str(orphan)), ExternalRef)  # a folder without an index row
    art = publish(reg, "sft", files={"weights.txt": "fresh"})
    assert art.version == 2 and (art.path / "weights.txt").read_text() == "fresh"
    assert reg.verify(art) == []
    assert len(reg.gc(max_age_s=0)) == 1 and staging_entries(reg) == []


def test_gc_removes_unindexed_version_folders(reg: Registry) -> None:
    publish(reg, "sft")
    orphan = reg.root / "sft" / "v7"
    orphan.mkdir()
    (orphan / "artifact.json").write_text("{}")
    (reg.root / "notes").mkdir()  # not an artifact folder: left alone
    assert reg.gc() == [orphan]
    assert not orphan.exists() and (reg.root / "notes").exists() and reg.verify("sft") == []


def _publish_many(root: str, worker: int, count: int) -> list[int]:
    reg = Registry(root)
    versions = []
    for i in range(count):
        with reg.publishing("shared", kind="dataset", stage="test", config={"worker": worker}) as pub:
            (pub.dir / "data.jsonl").write_text(f'{{"worker": {worker}, "i": {i}}}\n')
        versions.append(pub.artifact.version)
    return versions


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_publish_many, [(str(root), w, 5) for w in range(4)])
    versions = [v for worker in results for v in worker]
    assert sorted(versions) == list(range(1, 21))
    for worker in results:
        assert worker == sorted(worker)
    reg = Registry(root)
    arts = reg.list("shared")
    assert [a.version for a in arts] == list(range(1, 21)) and len({a.id for a in arts}) == 20
    for art in arts:
        assert art.path.is_dir() and reg.verify(art) == []
    assert staging_entries(reg) == []


# ---- references ---------------------------------------------------------------------------------


def test_resolve_every_reference_form(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = publish(reg, "sft"), publish(reg, "sft")
    reg.tag(v1, "best")
    assert reg.resolve("sft").id == v2.id
    assert reg.resolve("sft:latest").id == v2.id
    assert reg.resolve("sft:v1").id == v1.id
    assert reg.resolve("sft@best").id == v1.id
    assert reg.resolve(v1.id).id == v1.id
    assert reg.resolve(v1) is v1
    assert reg.resolve(str(v1.path)).id == v1.id
    assert reg.resolve(v1.path).id == v1.id
    assert reg.resolve(f"path:{v1.path}").id == v1.id
    monkeypatch.chdir(tmp_path)
    assert reg.resolve("./reg/sft/v2").id == v2.id
    assert reg.get("reg/sft/v1").id == v1.id

    checkpoint = tmp_path / "my-checkpoint"
    checkpoint.mkdir()
    local = reg.resolve("./my-checkpoint")
    assert local == ExternalRef("./my-checkpoint", str(checkpoint), is_local=True)
    assert local.id == f"path:{checkpoint}" and local.kind == "external"
    assert reg.resolve("my-checkpoint").is_local  # a bare name that is no artifact but an existing path

    hub = reg.resolve("hf:org/model")
    assert hub == ExternalRef("hf:org/model", "org/model", is_local=False) and hub.id == "hf:org/model"
    assert reg.resolve("org/model").id == "hf:org/model"
    with pytest.raises(ReferenceNotFound, match="not an artifact"):
        reg.get("org/model")
    with pytest.raises(ReferenceNotFound, match="neither an existing path"):
        reg.resolve("./no/such/dir")


def test_unknown_reference_suggests_close_matches(reg: Registry) -> None:
    publish(reg, "sft")
    publish(reg, "reward")
    with pytest.raises(ReferenceNotFound, match=r"did you mean 'sft'.*known names: reward, sft"):
        reg.resolve("sfft")
    with pytest.raises(ReferenceNotFound, match="did you mean 'sft:v1'"):
        reg.resolve("sfy:v1")
    with pytest.raises(ReferenceNotFound, match=r"'sft' has no version 9; it has v1 \(latest: sft:v1\)"):
        reg.resolve("sft:v9")
    with pytest.raises(ReferenceNotFound, match="bad version"):
        reg.resolve("sft:newest")
    with pytest.raises(ReferenceNotFound, match="no alias 'best'"):
        reg.resolve("sft@best")


# ---- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_sensitive() -> None:
    fp = fingerprint("sft", {"lr": 1e-4, "epochs": 1}, {"model": "base-v1-0a0a0a0a"}, ["train:ab12"])
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fp == fingerprint("sft", {"epochs": 1, "lr": 1e-4}, {"model": "base-v1-0a0a0a0a"}, ["train:ab12"])
    others = [
        fingerprint("dpo", {"lr": 1e-4, "epochs": 1}, {"model": "base-v1-0a0a0a0a"}, ["train:ab12"]),
        fingerprint("sft", {"lr": 2e-4, "epochs": 1}, {"model": "base-v1-0a0a0a0a"}, ["train:ab12"]),
        fingerprint("sft", {"lr": 1e-4, "epochs": 1}, {"model": "base-v2-0a0a0a0a"}, ["train:ab12"]),
        fingerprint("sft", {"lr": 1e-4, "epochs": 1}, {"model": "base-v1-0a0a0a0a"}, ["train:cd34"]),
    ]
    assert len({fp, *others}) == 5


def test_rerun_with_the_same_fingerprint_reuses_the_artifact(reg: Registry) -> None:
    def run(lr: float) -> Artifact:
        fp = fingerprint("sft", {"lr": lr}, {"model": "hf:org/base"}, ["train:ab12"])
        return reg.find_fingerprint(fp) or publish(reg, "sft", fingerprint=fp, config={"lr": lr})

    first = run(1e-4)
    assert run(1e-4).id == first.id and len(reg.list()) == 1
    assert run(2e-4).version == 2
    newer = publish(reg, "sft", fingerprint=first.fingerprint)
    assert reg.find_fingerprint(first.fingerprint).id == newer.id  # the newest wins
    assert reg.find_fingerprint("0" * 16) is None


# ---- lineage, tags, metrics, verify, remove --------------------------------------------------------


def test_lineage_through_three_generations_and_an_external_parent(reg: Registry) -> None:
    base = publish(
        reg,
        "base",
        stage="pretrain",
        parents=["hf:org/tiny"],
        data=[{"role": "train", "source": "testbed:pretrain", "fingerprint": "aa11", "records": 9}],
    )
    sft = publish(
        reg,
        "sft",
        parents=[base],
        inputs={"model": base},
        data=[{"role": "train", "source": "demos.jsonl", "fingerprint": "bb22", "records": 5}],
    )
    rm = publish(reg, "rm", kind="reward_model", stage="reward", parents=[sft.ref])
    assert sft.inputs == {"model": "base:v1"} and rm.parents == [sft.id]

    entries = reg.lineage("rm")
    assert [(d, n.id) for d, n in entries] == [(0, rm.id), (1, sft.id), (2, base.id), (3, "hf:org/tiny")]
    assert isinstance(entries[-1][1], ExternalRef) and not entries[-1][1].is_local
    assert [a.ref for a in reg.children(base)] == ["sft:v1"]

    text = format_lineage(entries)
    lines = text.splitlines()
    assert lines[0].startswith("rm:v1  [reward_model]  stage=reward")
    assert "sft:v1  [model]  stage=sft" in text and "base:v1  [model]  stage=pretrain" in text
    assert "data: demos.jsonl (bb22, 5 records)" in text and "data: testbed:pretrain (aa11" in text
    assert lines[-1].strip().endswith("hf:org/tiny  [external]")
    assert lines[-1].index("hf:") > lines[1].index("sft")  # deeper = further right


def test_tag_moves_an_alias_between_versions(reg: Registry) -> None:
    v1, v2 = publish(reg, "sft"), publish(reg, "sft")
    assert reg.tag("sft:v1", "best").aliases == ["best"]
    assert reg.resolve("sft@best").id == v1.id
    reg.tag(v2, "best")
    assert reg.resolve("sft@best").id == v2.id and reg.get("sft:v1").aliases == []
    for bad in ("latest", "v3", "a@b"):
        with pytest.raises(ConfigError):
            reg.tag(v1, bad)


def test_add_metrics_merges_and_keeps_history(reg: Registry) -> None:
    art = publish(reg, "sft")
    updated = reg.add_metrics("sft", {"gold_score": 0.7}, source="eval")
    reg.add_metrics(art, {"gold_score": 0.8, "ppl": 12.0}, source="eval:v2")
    assert updated.metrics == {"loss": 0.5, "gold_score": 0.7}
    assert reg.get("sft").metrics == {"loss": 0.5, "gold_score": 0.8, "ppl": 12.0}
    record = json.loads((art.path / "artifact.json").read_text())
    assert record["metrics"] == {"loss": 0.5, "gold_score": 0.8, "ppl": 12.0}
    history = reg.metrics_history("sft:v1")
    assert [(h["source"], h["metrics"]) for h in history] == [
        ("sft", {"loss": 0.5}),
        ("eval", {"gold_score": 0.7}),
        ("eval:v2", {"gold_score": 0.8, "ppl": 12.0}),
    ]
    assert reg.verify(art) == []  # artifact.json is metadata, not content


def test_verify_reports_changed_missing_and_extra_files(reg: Registry) -> None:
    art = publish(reg, "sft", files={"a.txt": "a", "b.txt": "b", "sub/c.txt": "c"})
    assert reg.verify(art) == []
    (art.path / "a.txt").write_text("tampered")
    (art.path / "sub" / "c.txt").unlink()
    (art.path / "new.txt").write_text("n")
    assert reg.verify("sft") == ["missing: sub/c.txt", "extra: new.txt", "changed: a.txt"]


def test_remove_refuses_while_children_exist(reg: Registry) -> None:
    base = publish(reg, "base")
    sft = publish(reg, "sft", parents=[base])
    with pytest.raises(RegistryError, match=r"base:v1 is a parent of sft:v1"):
        reg.remove("base")
    assert base.path.is_dir() and reg.get("base").id == base.id
    reg.remove("base", force=True)
    assert not base.path.exists() and reg.list("base") == []
    parent = reg.lineage(sft)[1][1]
    assert isinstance(parent, ExternalRef) and parent.missing and parent.id == base.id
    assert "removed from the registry" in format_lineage(reg.lineage(sft))
    reg.remove(sft)
    assert reg.list() == [] and staging_entries(reg) == []
