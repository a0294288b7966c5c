"""Provenance: fingerprints (what decides an artifact), library versions, file checksums, and
lineage as text."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from alignlab.registry.records import RECORD_FILE, Artifact, ExternalRef, _json_default, _plain

_LIBRARIES = ("alignlab", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed")


def fingerprint(
    stage: str, config: Mapping[str, Any] | Any, inputs: Mapping[str, str], data: Iterable[str]
) -> str:
    """16 hex chars of sha256 over the stage, resolved config, input ids, data fingerprints and
    the alignlab version: equal fingerprints mean a re-run would compute the same artifact."""
    payload = {
        "stage": stage,
        "config": _plain(config),
        "inputs": dict(inputs),
        "data": list(data),
        "alignlab": alignlab_version(),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def format_lineage(entries: list[tuple[int, Artifact | ExternalRef]]) -> str:
    """Tree text of :meth:`Registry.lineage`: ref, kind, stage and data sources of each node."""
    lines = []
    for depth, node in entries:
        pad = "   " * (depth - 1) + "└─ " if depth else ""
        if isinstance(node, ExternalRef):
            note = "removed from the registry" if node.missing else node.kind
            lines.append(f"{pad}{node.id}  [{note}]")
            continue
        aliases = f"  @{', @'.join(node.aliases)}" if node.aliases else ""
        lines.append(f"{pad}{node.ref}  [{node.kind}]  stage={node.stage}  id={node.id}{aliases}")
        for item in node.data:
            records = f", {item['records']} records" if item.get("records") is not None else ""
            lines.append(f"{'   ' * depth}   data: {item.get('source')} ({item.get('fingerprint')}{records})")
    return "\n".join(lines)


def alignlab_version() -> str:
    """``alignlab.__version__``, else the installed distribution's version, else ``"0+unknown"``."""
    version = getattr(sys.modules.get("alignlab"), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("alignlab")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    found = []
    for lib in _LIBRARIES[1:]:  # read from package metadata: importing torch & co. would be slow
        try:
            found.append((lib, importlib.metadata.version(lib)))
        except importlib.metadata.PackageNotFoundError:
            pass
    return tuple(found)


def library_versions() -> dict[str, str]:
    """Versions of Python, alignlab and the training libraries that are installed."""
    return {
        "python": platform.python_version(),
        "alignlab": alignlab_version(),
        **dict(_installed_versions()),
    }


def checksums(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != RECORD_FILE:
            out[rel] = sha256_of(path)
    return out


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    if path.is_dir():
        for sub in path.rglob("*"):
            newest = max(newest, sub.lstat().st_mtime)
    return newest
