"""A clean accelerate state for alignlab's own training loops (RewardModel, PPO).

accelerate keeps one process-wide state, and TRL's trainers turn bf16 on by default: a stage
run after SFT in the same process (a recipe) would otherwise inherit bf16 autocast on the models
it prepares and not on the others.
"""

from __future__ import annotations

from typing import Any


def fresh_accelerator(**kwargs: Any) -> Any:
    """An ``accelerate.Accelerator`` configured by this process's launcher only, not by an earlier stage.

    The precision comes from ``accelerate launch`` (its ``ACCELERATE_MIXED_PRECISION``) or is
    none; the distributed process state is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(**kwargs)


def release_accelerator() -> None:
    """Forget the process-wide accelerate state, so that a later stage configures its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
