"""Experiment tracking for alignlab's own training loops (PPO, reward model): wandb or tensorboard.

One setting chooses the backend — ``tracking.report_to`` in a recipe: ``none``, ``wandb`` or
``tensorboard`` (the Hugging Face Trainer stages pass the same setting to ``TrainingArguments``).
The run name and config come from the recipe, and the input artifact references are logged with
the run, so a curve in wandb or tensorboard leads back to the artifacts it was trained from.

wandb runs offline unless ``WANDB_MODE`` says otherwise: after ``wandb login``, run with
``WANDB_MODE=online`` to sync (``wandb sync wandb/offline-run-*`` uploads offline runs later).
tensorboard writes to ``runs/<run name>``.

Example:
    >>> tracker = Tracker.create(cfg.tracking, "ppo", config=cfg, inputs={"model": "sft:v2"})  # doctest: +SKIP
    >>> tracker.log({"reward": 0.4, "kl": 0.02}, step=1)  # doctest: +SKIP
    >>> tracker.finish(artifact="ppo:v1")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean

log = logging.getLogger("alignlab")

BACKENDS = ("none", "wandb", "tensorboard")
TENSORBOARD_ROOT = "runs"


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numbers of ``metrics``, nested mappings flattened with ``/``; everything else dropped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
        elif hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:  # a torch / numpy scalar
            number = float(value.item())
            if math.isfinite(number):
                out[name] = number
    return out


def _plain(config: Any) -> dict[str, Any]:
    from alignlab.config import to_dict

    if config is None:
        return {}
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=str))
    return json.loads(json.dumps(to_dict(config), default=str))


class Tracker:
    """Logs a run's metrics; this base class is the ``report_to: none`` tracker and does nothing.

    Build one with :meth:`create`; use it as a context manager or call :meth:`finish` at the end.
    """

    backend = "none"

    def __init__(self, run_name: str, config: dict[str, Any], inputs: dict[str, str]) -> None:
        self.run_name = run_name
        self.config = config
        self.inputs = inputs

    @classmethod
    def create(
        cls,
        tracking: Any,
        run_name: str,
        config: Any = None,
        inputs: Mapping[str, str] | None = None,
        *,
        log_dir: str | Path | None = None,
    ) -> Tracker:
        """A tracker for ``tracking.report_to`` (a TrackingGroup, or the backend name itself).

        Args:
            tracking: the stage's ``tracking`` group (``report_to``, ``run_name``, ``project``) or
                ``"none"`` / ``"wandb"`` / ``"tensorboard"``.
            run_name: default run name (the artifact name); ``tracking.run_name`` wins when set.
            config: the resolved stage config (a dataclass or a mapping).
            inputs: input role -> artifact reference, logged with the run.
            log_dir: tensorboard: the folder holding ``<run name>/`` (default ``runs``); wandb:
                its ``dir`` (default ``$WANDB_DIR`` or the working directory).
        """
        backend = str(getattr(tracking, "report_to", tracking) or "none")
        if backend not in BACKENDS:
            raise ConfigError(
                f"tracking.report_to: unknown backend {backend!r}{did_you_mean(backend, BACKENDS)}; "
                f"valid: {', '.join(BACKENDS)}"
            )
        name = getattr(tracking, "run_name", None) or run_name
        plain, refs = _plain(config), {k: str(v) for k, v in (inputs or {}).items()}
        if backend == "wandb":
            return WandbTracker(
                name, plain, refs, project=getattr(tracking, "project", "alignlab"), log_dir=log_dir
            )
        if backend == "tensorboard":
            return TensorBoardTracker(name, plain, refs, log_dir=log_dir)
        return cls(name, plain, refs)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the scalar metrics of one step (non-numbers are skipped, nested dicts flattened)."""

    def finish(self, artifact: str | None = None) -> None:
        """Close the run; ``artifact`` (the published reference) is recorded with it."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


class WandbTracker(Tracker):
    """wandb, offline unless ``WANDB_MODE`` is set to something else (``online`` after ``wandb login``)."""

    backend = "wandb"

    def __init__(
        self,
        run_name: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        *,
        project: str = "alignlab",
        log_dir: str | Path | None = None,
    ) -> None:
        import wandb

        super().__init__(run_name, config, inputs)
        self.mode = os.environ.get("WANDB_MODE") or "offline"
        directory = str(log_dir) if log_dir is not None else os.environ.get("WANDB_DIR")
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=run_name,
            config={**config, "inputs": inputs},
            mode=self.mode,
            dir=directory,
            tags=[f"{role}={ref}"[:64] for role, ref in inputs.items()][:20],
            reinit="create_new",
        )
        self._finished = False
        log.info("wandb run %s (%s mode) in %s", run_name, self.mode, getattr(self.run, "dir", "?"))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        values = scalars(metrics)
        if values:
            self.run.log(values, step=step)

    def finish(self, artifact: str | None = None) -> None:
        if self._finished:
            return
        if artifact:
            self.run.summary["artifact"] = artifact
        self.run.finish()
        self._finished = True


class TensorBoardTracker(Tracker):
    """tensorboard event files in ``<log_dir>/<run name>`` (default ``runs/<run name>``)."""

    backend = "tensorboard"

    def __init__(
        self,
        run_name: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        *,
        log_dir: str | Path | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(run_name, config, inputs)
        self.log_dir = Path(log_dir or TENSORBOARD_ROOT) / run_name
        self.writer: Any = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", _markdown_json(config), 0)
        self.writer.add_text("inputs", _markdown_json(inputs), 0)
        log.info("tensorboard run in %s", self.log_dir)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, step)

    def finish(self, artifact: str | None = None) -> None:
        if self.writer is None:
            return
        if artifact:
            self.writer.add_text("artifact", artifact, 0)
        self.writer.close()
        self.writer = None


def _markdown_json(value: Any) -> str:
    """tensorboard renders text as markdown: indent the JSON so it shows as a code block."""
    return "\n".join("    " + line for line in json.dumps(value, indent=2, default=str).splitlines())
