"""Resumable training state: save every N steps, continue from the latest one after a stop.

One checkpoint is a folder ``<root>/step-000012/``:

- ``<module>.safetensors``: the trainable parameters of each model (all of them for full
  fine-tuning, the adapter weights for LoRA; frozen weights come back from the input artifacts);
- ``trainer.pt``: optimiser and schedule state dicts, written here with ``torch.save`` and read
  back with ``weights_only=True`` (no pickled code is ever loaded);
- ``rng.safetensors``: torch's CPU and CUDA generator states;
- ``state.json``: the step, the run key, the metric history, small state dicts (KL controller,
  running score moments) and Python's and NumPy's generator states.

A checkpoint is written to a temporary folder and renamed into place, so a crash while saving
leaves the previous checkpoint whole; older checkpoints are removed once the new one is in place.

Example:
    >>> save_checkpoint(root, 12, modules={"policy": policy}, torch_states={"trainer": trainer.state_dict()},
    ...                 state={"history": history})  # doctest: +SKIP
    >>> ckpt = load_checkpoint(latest_checkpoint(root), modules={"policy": policy})  # doctest: +SKIP
    >>> restore_rng(ckpt)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PREFIX = "step-"
STATE_FILE = "state.json"
TORCH_STATE_FILE = "trainer.pt"
RNG_FILE = "rng.safetensors"


@dataclass
class Checkpoint:
    """A loaded checkpoint (its model weights are already in the models passed to the loader)."""

    path: Path
    step: int
    state: dict[str, Any]
    torch_states: dict[str, Any]
    rng: dict[str, Any]


def trainable_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name, detached, contiguous, on the CPU."""
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: torch.nn.Module, tensors: Mapping[str, Tensor], what: str = "model") -> None:
    """Copy ``tensors`` into the trainable parameters of ``model``; every one must be there."""
    params = dict(model.named_parameters())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    unexpected = sorted(n for n in tensors if n not in params)
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's {what} weights do not fit the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (was it written with another adapter or model?)"
        )
    for name, tensor in tensors.items():
        params[name].copy_(tensor)


def capture_rng() -> dict[str, Any]:
    """Every random generator a training step draws from: torch (CPU, CUDA), Python, NumPy."""
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "tensors": tensors,
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_rng(checkpoint: Checkpoint) -> None:
    """Put every random generator back where it was when the checkpoint was written."""
    import numpy as np

    rng = checkpoint.rng
    torch.set_rng_state(rng["tensors"]["torch"])
    cuda = [rng["tensors"][k] for k in sorted(rng["tensors"]) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    modules: Mapping[str, torch.nn.Module],
    torch_states: Mapping[str, Any],
    state: Mapping[str, Any],
) -> Path:
    """Write the checkpoint of ``step`` under ``root`` and remove the older ones.

    Args:
        root: the run's checkpoint folder.
        step: the training step just completed.
        modules: name -> model; its trainable parameters go to ``<name>.safetensors``.
        torch_states: name -> state dict of tensors and numbers (optimiser, schedule).
        state: JSON-able run state (history, controller states, the run key, ...).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, module in modules.items():
            save_file(trainable_state(module), str(tmp / f"{name}.safetensors"))
        torch.save(dict(torch_states), tmp / TORCH_STATE_FILE)
        rng = capture_rng()
        save_file({k: v.contiguous() for k, v in rng["tensors"].items()}, str(tmp / RNG_FILE))
        payload = {**state, "step": step, "rng": {"python": rng["python"], "numpy": rng["numpy"]}}
        (tmp / STATE_FILE).write_text(json.dumps(payload, allow_nan=True))
        final = root / f"{PREFIX}{step:06d}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in [*checkpoints(root), *partial_checkpoints(root, include_tmp=False)]:
        if old != final:
            _discard(old)
    return final


def _discard(path: Path) -> None:
    """Delete a checkpoint folder by first renaming it to ``.tmp-*``: a crash midway leaves a
    folder that no reader takes for a checkpoint (and ``gc`` removes), never a half-deleted step."""
    trash = path.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def partial_checkpoints(root: str | Path, *, include_tmp: bool = True) -> list[Path]:
    """What a crash left under a run's checkpoint folder: step folders without their state file
    (the state file is written last) and, with ``include_tmp``, unfinished writes (``.tmp-*``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.is_symlink():
            continue
        if p.name.startswith(PREFIX) and not (p / STATE_FILE).exists():
            out.append(p)
        elif include_tmp and p.name.startswith(".tmp-"):
            out.append(p)
    return out


def checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, *, modules: Mapping[str, torch.nn.Module]) -> Checkpoint:
    """Load the weights of ``modules`` in place and return the rest of the checkpoint.

    Random generators are not touched: call :func:`restore_rng` once everything that draws
    random numbers while being built (new heads, adapters) has been built.
    """
    from safetensors.torch import load_file

    path = Path(path)
    for name, module in modules.items():
        load_trainable_state(module, load_file(str(path / f"{name}.safetensors")), what=name)
    torch_states = torch.load(path / TORCH_STATE_FILE, map_location="cpu", weights_only=True)
    state = json.loads((path / STATE_FILE).read_text())
    rng = {**state.pop("rng"), "tensors": load_file(str(path / RNG_FILE))}
    return Checkpoint(path=path, step=int(state["step"]), state=state, torch_states=torch_states, rng=rng)


def remove_checkpoints(root: str | Path) -> None:
    """Delete the checkpoints under ``root``, complete or partial (and ``root`` when nothing else
    is left in it)."""
    root = Path(root)
    for path in [*checkpoints(root), *partial_checkpoints(root)]:
        _discard(path)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
