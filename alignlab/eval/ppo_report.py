"""Reporting a PPO run: the per-step history entry, the progress bar, and the report plot.

The plot shows the reward-model score, the KL to the reference and the gold score over PPO steps.
It reads the per-step ``history`` that the PPO stage stores in its artifact's metrics, so a
report can be redrawn from any published PPO artifact.

Example:
    >>> from alignlab.eval.ppo_report import plot_ppo_report
    >>> plot_ppo_report(artifact.metrics["history"], "report.png", title=artifact.ref)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PANELS: tuple[tuple[str, str], ...] = (
    ("reward_score", "reward-model score (raw mean)"),
    ("kl", "KL(policy ‖ reference) per response"),
    ("gold_score", "gold score (held-out testbed prompts)"),
    ("entropy", "policy entropy per token"),
)


def series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the history, skipping steps where it is missing or not finite."""
    steps, values = [], []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(entry["step"]))
            values.append(float(value))
    return steps, values


def plot_ppo_report(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "PPO") -> Path:
    """Draw the report's panels (one per quantity in :data:`PANELS`) into a PNG at ``path``.

    A panel whose quantity was never logged (e.g. the gold score off the testbed) says so instead
    of staying blank. The KL panel also shows β on a second axis.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (key, label) in zip(axes.flat, PANELS):
        steps, values = series(history, key)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("PPO step")
        if not steps:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.grid(alpha=0.3)
        if key == "kl":
            beta_steps, beta = series(history, "kl_coef")
            if beta_steps:
                twin = ax.twinx()
                twin.plot(beta_steps, beta, color="tab:orange", linestyle="--", label="β")
                twin.set_ylabel("β", color="tab:orange")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def step_entry(
    step: int,
    rollout: Any,
    kl: float,
    beta: float,
    stats: dict[str, float],
    seconds: dict[str, float],
    total_seconds: float,
) -> dict[str, Any]:
    """One line of the history: what the rollout and the update measured, and where time went."""
    from alignlab.rl.rollout import logprob_mismatch

    entry: dict[str, Any] = {
        "step": step,
        "reward_score": float(rollout.raw_scores.mean()),
        "reward_score_std": float(rollout.raw_scores.std()) if len(rollout) > 1 else 0.0,
        "reward": float(rollout.scores.mean()),
        "kl": kl,
        "kl_coef": beta,
        "response_length": float(rollout.mask.sum(dim=1).float().mean()),
        "eos_fraction": float(rollout.ended.float().mean()),
        **stats,
        **{f"time_{phase}": s for phase, s in seconds.items()},
        "samples_per_s": len(rollout) / max(total_seconds, 1e-9),
        **logprob_mismatch(rollout),
    }
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}


def progress_bar(start: int, total: int, desc: str = "ppo") -> Any:
    """The console progress bar over RL steps (starts at ``start`` when resuming)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step")
