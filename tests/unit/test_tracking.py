"""Tracking backends, offline: none, tensorboard event files, a local wandb offline run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.stages.groups import ReportTo, TrackingGroup
from alignlab.tracking import TensorBoardTracker, Tracker, WandbTracker, scalars


@dataclass
class _Config:
    lr: float = 1e-3
    steps: int = 4


def test_none_is_a_no_op_and_unknown_backends_are_named() -> None:
    tracker = Tracker.create(TrackingGroup(), "run", _Config(), {"model": "sft:v1"})
    assert type(tracker) is Tracker and tracker.config == {"lr": 1e-3, "steps": 4}
    with tracker:
        tracker.log({"loss": 1.0}, step=1)
    with pytest.raises(ConfigError, match="'tensorbord'.*did you mean 'tensorboard'"):
        Tracker.create("tensorbord", "run")


def test_scalars_keep_finite_numbers_and_flatten_groups() -> None:
    import torch

    got = scalars(
        {
            "loss": 1,
            "nan": float("nan"),
            "name": "x",
            "flag": True,
            "kl": {"mean": 0.5},
            "t": torch.tensor(2.0),
        }
    )
    assert got == {"loss": 1.0, "kl/mean": 0.5, "t": 2.0}


def test_tensorboard_writes_scalars_config_and_inputs(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    group = TrackingGroup(report_to=ReportTo.TENSORBOARD, run_name="ppo-test")
    tracker = Tracker.create(group, "ppo", _Config(), {"model": "sft:v2"}, log_dir=tmp_path / "runs")
    assert isinstance(tracker, TensorBoardTracker) and tracker.log_dir == tmp_path / "runs" / "ppo-test"
    for step in (1, 2, 3):
        tracker.log({"reward": step / 10, "kl": {"mean": step / 100}}, step=step)
    tracker.finish(artifact="ppo:v1")
    tracker.finish()  # twice is harmless
    events = EventAccumulator(str(tmp_path / "runs" / "ppo-test"))
    events.Reload()
    assert [e.value for e in events.Scalars("reward")] == pytest.approx([0.1, 0.2, 0.3])
    assert [e.step for e in events.Scalars("kl/mean")] == [1, 2, 3]
    texts = {
        tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
        for tag in events.Tags()["tensors"]
        if tag.endswith("text_summary")
    }
    joined = "\n".join(texts.values())
    assert "sft:v2" in joined and '"lr": 0.001' in joined and "ppo:v1" in joined


def test_wandb_runs_offline_into_a_local_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    group = TrackingGroup(report_to=ReportTo.WANDB, project="alignlab-test")
    tracker = Tracker.create(group, "rm", {"lr": 0.01}, {"model": "sft:v2"})
    assert isinstance(tracker, WandbTracker) and tracker.mode == "offline"
    tracker.log({"loss": 0.7, "skip": "text"}, step=1)
    tracker.log({"loss": 0.5}, step=2)
    assert tracker.run.config["inputs"] == {"model": "sft:v2"} and tracker.run.config["lr"] == 0.01
    tracker.finish(artifact="rm:v1")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))  # `wandb sync` uploads it later
    assert len(runs) == 1
    deadline = time.monotonic() + 60  # wandb-core flushes the run file just after finish() returns
    while True:
        records = b"".join(path.read_bytes() for path in runs[0].glob("run-*.wandb"))
        if b"rm:v1" in records or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert b"sft:v2" in records and b"rm:v1" in records  # the input and output artifact references


def test_an_explicit_wandb_mode_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = Tracker.create("wandb", "x", None, {})
    assert tracker.mode == "disabled"
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish()
    assert not list(tmp_path.glob("wandb/offline-run-*"))
