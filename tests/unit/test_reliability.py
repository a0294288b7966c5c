"""Bad input is a clear error before anything trains, and the registry's boundaries hold
(issue 17): undecodable data, out-of-range settings, YAML mistakes, over-long names, recipes
checked whole first, paths from the index, symlinks and edited records."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from alignlab.config import load_config
from alignlab.data.loading import load_records
from alignlab.errors import ConfigError, DataError, RegistryError
from alignlab.registry import Registry

GOOD = json.dumps({"prompt": "What is 2 plus 3?"})


def _publish(reg: Registry, name: str = "data") -> object:
    with reg.publishing(name, kind="dataset", stage="test") as pub:
        (pub.dir / "data.txt").write_text("hello")
    return pub.artifact


# ---- data ---------------------------------------------------------------------------------------


def test_non_utf8_bytes_name_the_line_strictly_and_are_dropped_leniently(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "caf\xe9"}\n' + GOOD.encode() + b"\n")
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: not UTF-8 text: byte 0xe9"):
        load_records(str(path), kind="prompt")
    records = load_records(str(path), kind="prompt", strict=False)
    assert len(records) == 2 and "not UTF-8" in records.report.summary()
    as_json = tmp_path / "prompts.json"
    as_json.write_bytes(b'[\n{"prompt": "a"},\n{"prompt": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"prompts\.json:3: not UTF-8"):
        load_records(str(as_json), kind="prompt")


def test_a_record_over_the_size_limit_is_refused_without_being_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIGNLAB_MAX_RECORD_MB", "0.001")  # 1 KB
    path = tmp_path / "prompts.jsonl"
    path.write_text(GOOD + "\n" + json.dumps({"prompt": "x" * 5000}) + "\n" + GOOD + "\n")
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: the line is longer than"):
        load_records(str(path), kind="prompt")
    assert len(load_records(str(path), kind="prompt", strict=False)) == 2  # line 3 still read


# ---- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"train": {"lr": -1e-4}}, "train.lr"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"data": {"max_length": 0}}, "data.max_length"),
    ],
)
def test_out_of_range_sft_settings_name_the_key(changes: dict, key: str) -> None:
    from alignlab.stages.sft import SFTConfig

    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(SFTConfig, changes)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"generation": {"max_new_tokens": 0}}, "generation.max_new_tokens"),
        ({"generation": {"temperature": 0}}, "generation.temperature"),
        ({"generation": {"top_p": 1.5}}, "generation.top_p"),
        ({"data": {"max_prompt_length": 0}}, "data.max_prompt_length"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
    ],
)
def test_out_of_range_ppo_settings_name_the_key(changes: dict, key: str) -> None:
    from alignlab.stages.ppo import PPOConfig

    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(PPOConfig, changes)


def test_epochs_zero_is_fine_with_max_steps() -> None:
    from alignlab.stages.sft import SFTConfig

    assert load_config(SFTConfig, {"train": {"epochs": 0, "max_steps": 3}}).train.max_steps == 3


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    from alignlab.cli import main

    path = tmp_path / "sft.yaml"
    path.write_text("train:\n  lr: 1e-4\n  batch_size: [16\n")
    from alignlab.recipe import load_recipe

    with pytest.raises(ConfigError, match=rf"{path.name}:\d+:\d+: not valid YAML"):
        load_recipe(path)
    assert main(["stage", "sft", "--config", str(path), "--registry", str(tmp_path / "reg")]) == 2


def test_an_over_long_output_name_is_refused_at_config_time() -> None:
    from alignlab.stages.sft import SFT

    with pytest.raises(ConfigError, match=r"300 characters long; at most 100"):
        SFT({"output": "x" * 300})


# ---- recipes ------------------------------------------------------------------------------------


def test_a_bad_reference_in_a_late_entry_fails_before_the_first_entry_trains(tmp_path: Path) -> None:
    from alignlab.recipe import parse_recipe, run_recipe

    recipe = parse_recipe(
        {
            "name": "r",
            "stages": [
                {"name": "base", "stage": "tiny_base", "config": {"size": "test"}},
                {"name": "sft", "stage": "sft", "inputs": {"model": "bsae"}},
            ],
        }
    )
    reg = Registry(tmp_path / "reg")
    with pytest.raises(Exception, match=r"entry 'sft'.*bsae"):
        run_recipe(recipe, reg)
    assert reg.list() == []
    with pytest.raises(ConfigError, match=r"--force 'sfft' names no entry.*did you mean 'sft'"):
        run_recipe(recipe, reg, force=["sfft"])


# ---- registry boundaries ------------------------------------------------------------------------


def test_an_index_row_pointing_outside_the_root_is_never_followed(tmp_path: Path) -> None:
    import sqlite3

    reg = Registry(tmp_path / "reg")
    art = _publish(reg)
    outside = tmp_path / "outside" / "v1"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("precious")
    with sqlite3.connect(reg.root / ".index.sqlite") as conn:
        record = json.loads(conn.execute("SELECT record FROM artifacts").fetchone()[0])
        record["name"] = "../outside"
        conn.execute(
            "UPDATE artifacts SET name = ?, record = ? WHERE id = ?",
            ("../outside", json.dumps(record), art.id),
        )
    with pytest.raises(RegistryError, match="outside the registry"):
        reg.remove(art.id)
    assert (outside / "keep.txt").read_text() == "precious"
    assert any("outside the registry" in p for p in reg.verify(art.id))


def test_verify_reports_symlinks_and_an_edited_record(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    art = _publish(reg)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", art.path / "linked")
    assert any(p.startswith("symlink: linked") for p in reg.verify(art))
    os.unlink(art.path / "linked")
    (art.path / "data.txt").unlink()
    os.symlink(tmp_path / "elsewhere", art.path / "data.txt")
    assert any(p.startswith("symlink: data.txt") for p in reg.verify(art))
    os.unlink(art.path / "data.txt")
    (art.path / "data.txt").write_text("hello")
    assert reg.verify(art) == []
    record = json.loads((art.path / "artifact.json").read_text())
    record["metrics"]["gold"] = 1.0
    (art.path / "artifact.json").write_text(json.dumps(record))
    assert any("artifact.json" in p for p in reg.verify(art))
    assert art.path / "artifact.json" in reg.gc()  # rewritten from the index
    assert reg.verify(art) == []


def test_gc_unlinks_a_symlinked_leftover_and_not_what_it_points_to(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    _publish(reg)
    target = tmp_path / "target"
    target.mkdir()
    (target / "artifact.json").write_text("{}")
    os.symlink(target, reg.root / "data" / "v7")
    assert reg.root / "data" / "v7" in reg.gc()
    assert not (reg.root / "data" / "v7").exists() and (target / "artifact.json").exists()


def test_a_tag_racing_a_remove_leaves_no_alias(tmp_path: Path) -> None:
    from alignlab.errors import ReferenceNotFound

    reg = Registry(tmp_path / "reg")
    art = _publish(reg)
    reg.remove(art)  # the remove won the race: tag still holds the Artifact it resolved
    with pytest.raises(ReferenceNotFound, match="was removed"):
        reg.tag(art, "best")
    assert reg._db.query("SELECT * FROM aliases") == []


def test_an_input_of_a_running_stage_cannot_be_removed(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    art = _publish(reg)
    with reg.in_use(art), pytest.raises(RegistryError, match="input of a stage that is running"):
        reg.remove(art)
    reg.remove(art)
    assert reg.list() == []


def test_reuse_and_loading_refuse_changed_weights(tmp_path: Path) -> None:
    from alignlab.models.loading import check_weights
    from alignlab.stages.lifecycle import reusable

    reg = Registry(tmp_path / "reg")
    with reg.publishing("m", kind="model", stage="test", fingerprint="fp1") as pub:
        (pub.dir / "model.safetensors").write_bytes(b"weights")
    art = pub.artifact
    check_weights(art)
    assert reusable(reg, "fp1", "test") == art
    (art.path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match=r"model\.safetensors does not match.*artifacts verify"):
        check_weights(art)
    with pytest.raises(RegistryError, match=r"does not match its checksums.*changed: model\.safetensors"):
        reusable(reg, "fp1", "test")


def test_sigterm_unwinds_like_ctrl_c() -> None:
    import signal

    from alignlab.cli import Terminated, _terminate_like_interrupt

    previous = _terminate_like_interrupt()
    try:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            import time

            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_reward_model_folder_is_refused_where_a_causal_lm_is_wanted(tmp_path: Path) -> None:
    from alignlab.registry import ExternalRef
    from alignlab.stages.contract import check_kind
    from alignlab.stages.sft import SFT

    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    spec = next(i for i in SFT.inputs if i.role == "model")
    with pytest.raises(ConfigError, match=r"a reward_model artifact; it takes a model or adapter"):
        check_kind("sft", spec, ExternalRef(str(folder), str(folder), is_local=True))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    check_kind("sft", spec, ExternalRef(str(folder), str(folder), is_local=True))


def test_gc_drops_lock_files_nobody_holds_and_keeps_held_ones(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with reg.fingerprint_lock("a" * 16):
        pass
    with reg.fingerprint_lock("b" * 16):
        reg.gc()
        assert sorted(p.name for p in (reg.root / ".locks").iterdir()) == [f"fingerprint-{'b' * 16}.lock"]
    reg.gc()
    assert list((reg.root / ".locks").iterdir()) == []


def test_a_lock_whose_file_was_unlinked_while_waiting_is_retaken_on_the_new_file(tmp_path: Path) -> None:
    """The waiter locks the old, unlinked file once its holder lets go; that lock guards nothing,
    so it must retake the lock on the file the path names now."""
    import fcntl
    import threading

    from alignlab.registry.liveness import flocked, is_locked

    path = tmp_path / "x.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    inside, leave = threading.Event(), threading.Event()

    def waiter() -> None:
        with flocked(path):
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    path.unlink()  # the holder removes its lock file, then lets go
    os.close(fd)
    assert inside.wait(30)
    try:
        assert is_locked(path)  # held on the file that is there now, not on the unlinked one
    finally:
        leave.set()
        thread.join()
