"""Process-wide state between stages and the collective timeout (issue 19), in one process."""

from __future__ import annotations

import pytest

from alignlab.distributed import runtime
from alignlab.errors import ConfigError, TrainingError


def test_the_collective_timeout_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("ALIGNLAB_COLLECTIVE_TIMEOUT_S", raising=False)
    assert runtime.collective_timeout_s() == runtime.DEFAULT_COLLECTIVE_TIMEOUT_S
    monkeypatch.setenv("ALIGNLAB_COLLECTIVE_TIMEOUT_S", "42")
    assert runtime.collective_timeout_s() == 42.0
    for bad in ("0", "-3", "soon", "nan"):
        monkeypatch.setenv("ALIGNLAB_COLLECTIVE_TIMEOUT_S", bad)
        with pytest.raises(ConfigError, match="ALIGNLAB_COLLECTIVE_TIMEOUT_S"):
            runtime.collective_timeout_s()


def test_collective_failures_are_told_from_other_errors() -> None:
    assert runtime.is_collective_failure(RuntimeError("[gloo] Timed out waiting 300000ms for recv operation"))
    assert runtime.is_collective_failure(RuntimeError("Connection closed by peer [127.0.0.1]:29572"))
    assert not runtime.is_collective_failure(RuntimeError("the training loss is not finite"))
    assert not runtime.is_collective_failure(TrainingError("a timeout in our own words"))
    assert not runtime.is_collective_failure(ValueError("shape mismatch"))


def test_in_one_process_the_stage_helpers_do_nothing_and_leave_a_callers_accelerator(monkeypatch) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    Accelerator(cpu=True)
    runtime.reset_stage_state()
    assert AcceleratorState._shared_state  # a script's own accelerate state is kept
    runtime.doing("anything", stage="sft")
    runtime.check_in("sft", "f" * 16)
    assert runtime.any_process(True) and not runtime.any_process(False)
    assert runtime.wait_for_main("key") is None
    AcceleratorState._reset_state()
