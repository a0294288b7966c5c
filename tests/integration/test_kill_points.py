"""Fault injection: a child process is SIGKILLed at a marked point of a registry or checkpoint
write, and the registry is inspected afterwards.

The child replaces the function at the kill point with one that writes a marker file and then
waits forever; the test waits for the marker, sends SIGKILL (nothing runs after it: no
``finally``, no ``atexit``) and checks what the registry promises (docs/concepts.md, "Crashes
and concurrency"): nothing half-written is ever listed, every listed artifact verifies, and
``gc`` cleans up what the crash left, leaving a live run's folders alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alignlab.registry import Registry

pytestmark = pytest.mark.integration

CHILD = """
import sys, time, pathlib
from alignlab.registry import Registry
import alignlab.registry as registry_module
import alignlab.registry.records as records
import alignlab.rl.checkpoint as checkpoint

root, marker = sys.argv[1], pathlib.Path(sys.argv[2])

def pause(*args, **kwargs):
    marker.write_text("here")
    time.sleep(3600)

def pause_after(fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        pause()
        return out
    return wrapped

reg = Registry(root)
{body}
"""


def _publish(reg: Registry, name: str = "data", text: str = "hello") -> object:
    with reg.publishing(name, kind="dataset", stage="test") as pub:
        (pub.dir / "data.txt").write_text(text)
        pub.metrics["rows"] = 1
    return pub.artifact


def _kill_at(root: Path, body: str, tmp_path: Path) -> None:
    """Run ``body`` in a child that pauses at its marked point; SIGKILL it there."""
    marker = tmp_path / f"marker-{time.monotonic_ns()}"
    script = CHILD.format(body=textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", script, str(root), str(marker)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before its kill point:\n{child.stderr.read().decode()}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("the child never reached its kill point")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()


def _consistent(reg: Registry) -> None:
    for art in reg.list():
        assert reg.verify(art) == [], (art.ref, reg.verify(art))


def test_killed_before_the_index_commit_a_publish_is_invisible_and_gc_cleans_it(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    _publish(reg)
    # after the folder is renamed into place, before the index row is committed
    _kill_at(reg.root, """
        registry_module.Registry._insert = lambda *a, **k: pause()
        with reg.publishing("data", kind="dataset", stage="test") as pub:
            (pub.dir / "data.txt").write_text("second")
    """, tmp_path)  # fmt: skip
    assert [a.ref for a in reg.list()] == ["data:v1"]
    _consistent(reg)
    assert (reg.root / "data" / "v2").is_dir()  # unlisted leftover
    removed = reg.gc(max_age_s=0)
    assert reg.root / "data" / "v2" in removed and not (reg.root / "data" / "v2").exists()
    assert _publish(reg, text="third").ref == "data:v2"  # never listed, so v2 was never taken


def test_a_live_publishers_staging_survives_gc_and_a_killed_ones_does_not(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    _publish(reg)
    marker = tmp_path / "live"
    script = CHILD.format(body=textwrap.dedent("""
        with reg.publishing("data", kind="dataset", stage="test") as pub:
            (pub.dir / "data.txt").write_text("working")
            pause()
    """))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", script, str(reg.root), str(marker)], env=env)
    try:
        while not marker.exists():
            assert child.poll() is None
            time.sleep(0.05)
        staged = [p for p in (reg.root / ".staging").iterdir() if not p.name.endswith(".alive")]
        assert len(staged) == 1
        assert reg.gc(max_age_s=0) == [] and staged[0].is_dir()  # live: left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert reg.gc(max_age_s=0) == staged and not staged[0].exists()  # dead: removed
    assert list((reg.root / ".staging").iterdir()) == []  # its live mark too


def test_killed_inside_remove_the_artifact_is_gone_or_whole_never_listed_without_a_folder(
    tmp_path: Path,
) -> None:
    reg = Registry(tmp_path / "reg")
    _publish(reg, "keep")
    _publish(reg, "drop")
    # after the index commit, before the folder is deleted
    _kill_at(reg.root, """
        registry_module._delete = pause
        reg.remove("drop")
    """, tmp_path)  # fmt: skip
    assert [a.ref for a in reg.list()] == ["keep:v1"]
    _consistent(reg)
    assert (reg.root / "drop" / "v1").is_dir()
    reg.gc(max_age_s=0)
    assert not (reg.root / "drop" / "v1").exists()
    # while the folder is being deleted (moved to the trash first)
    _publish(reg, "drop2")
    _kill_at(reg.root, """
        import shutil
        shutil.rmtree = pause
        reg.remove("drop2")
    """, tmp_path)  # fmt: skip
    assert [a.ref for a in reg.list()] == ["keep:v1"] and not (reg.root / "drop2" / "v1").exists()
    reg.gc(max_age_s=0)
    assert list((reg.root / ".staging").iterdir()) == []


def test_killed_inside_add_metrics_leaves_no_debris_and_gc_repairs_the_record(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    art = _publish(reg)
    # the temporary artifact.json is written, not yet moved into place
    _kill_at(reg.root, """
        import os
        os.replace = lambda *a, **k: pause()
        reg.add_metrics("data", {"gold": 0.5}, source="eval")
    """, tmp_path)  # fmt: skip
    assert sorted(p.name for p in art.path.iterdir()) == ["artifact.json", "data.txt"]  # nothing inside
    _consistent(reg)
    # artifact.json rewritten, the index not yet committed
    _kill_at(reg.root, """
        records_write = registry_module._write_json
        registry_module._write_json = pause_after(records_write)
        reg.add_metrics("data", {"gold": 0.7}, source="eval")
    """, tmp_path)  # fmt: skip
    assert "gold" not in reg.get("data").metrics  # the index is the truth
    assert any("artifact.json" in p for p in reg.verify("data"))  # and the gap is detected
    assert art.path / "artifact.json" in reg.gc(max_age_s=0)
    _consistent(reg)
    assert reg.gc(max_age_s=0) == []


def test_killed_while_checkpointing_the_debris_is_ignored_by_resume_and_removed_by_gc(tmp_path: Path) -> None:
    from alignlab.rl.checkpoint import checkpoints, partial_checkpoints

    reg = Registry(tmp_path / "reg")
    run = reg.root / ".checkpoints" / "run-key"
    save = """
        import torch
        def save(step):
            checkpoint.save_checkpoint(run, step, modules={"policy": torch.nn.Linear(4, 4)},
                                       torch_states={}, state={"history": []})
        run = pathlib.Path(root) / ".checkpoints" / "run-key"
    """
    # a kill while the checkpoint is written: a .tmp- folder
    _kill_at(reg.root, save + """
        save(1)
        import safetensors.torch as st
        st.save_file = lambda *a, **k: pause()
        save(2)
    """, tmp_path)  # fmt: skip
    assert [p.name for p in checkpoints(run)] == ["step-000001"]
    assert [p.name[:5] for p in partial_checkpoints(run)] == [".tmp-"]
    # a kill while the older checkpoint is pruned: renamed first, so no half-deleted step-N
    _kill_at(reg.root, save + """
        import shutil
        real = shutil.rmtree
        def rmtree(p, *a, **k):  # the pruning of step 1, once it is renamed away
            if pathlib.Path(p).name.startswith(".tmp-") and (pathlib.Path(p) / checkpoint.STATE_FILE).exists():
                pause()
            return real(p, *a, **k)
        shutil.rmtree = rmtree
        save(3)
    """, tmp_path)  # fmt: skip
    assert [p.name for p in checkpoints(run)] == ["step-000003"]
    assert partial_checkpoints(run)  # the debris of both kills
    removed = reg.gc(max_age_s=0)
    assert partial_checkpoints(run) == [] and [p.name for p in checkpoints(run)] == ["step-000003"]
    assert removed


def test_gc_removes_a_whole_stale_run_and_leaves_a_live_run_alone(tmp_path: Path) -> None:
    from alignlab.registry.liveness import alive

    reg = Registry(tmp_path / "reg")
    stale, live = reg.root / ".checkpoints" / "stale", reg.root / ".checkpoints" / "live"
    for run in (stale, live):
        (run / "step-000001").mkdir(parents=True)
        (run / "step-000001" / "state.json").write_text("{}")
    with alive(live):
        removed = reg.gc(max_age_s=0, checkpoint_max_age_s=0)
    assert removed == [stale] and live.is_dir()


def test_identical_concurrent_runs_train_once_and_share_the_artifact(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    cmd = [sys.executable, "-m", "alignlab.cli", "stage", "tiny_base", "--registry", str(root), "size=test"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    runs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)
    ]
    outputs = [r.communicate(timeout=600)[0].decode() for r in runs]
    assert all(r.returncode == 0 for r in runs), outputs
    assert [a.ref for a in Registry(root).list()] == ["base:v1"]


WAITER = """
import datetime, os, sys, time
from contextlib import ExitStack
from accelerate.state import PartialState
PartialState(backend="gloo", timeout=datetime.timedelta(seconds=3))  # far shorter than the wait
from alignlab.registry import Registry
from alignlab.stages import lifecycle
start = time.monotonic()
with ExitStack() as held:
    lifecycle._hold_fingerprint(held, Registry(sys.argv[1]), "f" * 16, "test")
print(f"rank {os.environ['RANK']} waited {time.monotonic() - start:.1f}", flush=True)
import torch.distributed as dist
dist.barrier()
dist.destroy_process_group()  # a rank leaving gloo while the other still talks to it aborts
"""


def test_a_multi_process_run_waits_for_an_identical_run_longer_than_the_collective_timeout(
    tmp_path: Path,
) -> None:
    """Rank 0 waits on the fingerprint lock while rank 1 waits with it: in short collectives, so
    a wait longer than the process group's timeout (3 s here) is not cut short by it."""
    reg = Registry(tmp_path / "reg")
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(script),
        str(reg.root),
    ]
    with reg.fingerprint_lock("f" * 16):  # the identical run, training
        waiters = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(8)
    out = waiters.communicate(timeout=120)[0].decode()
    assert waiters.returncode == 0, out[-3000:]
    # both ranks write to one pipe: their lines can interleave ("rank 0 waited 6.0rank 1 waited 6.0")
    waited = sorted(float(t) for _, t in re.findall(r"rank (\d) waited (\d+\.\d)", out))
    assert len(waited) == 2 and waited[0] > 4, out[-3000:]
