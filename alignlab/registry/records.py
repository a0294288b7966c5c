"""What the registry stores: artifact records, external references, names and kinds, and the
JSON they are written as."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean


class ArtifactKind(StrEnum):
    """What an artifact folder holds."""

    MODEL = "model"
    REWARD_MODEL = "reward_model"
    ADAPTER = "adapter"
    DATASET = "dataset"


INDEX_FILE = ".index.sqlite"

STAGING_DIR = ".staging"

RECORD_FILE = "artifact.json"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@dataclass(frozen=True)
class Artifact:
    """One published, immutable artifact (its record as stored in the index)."""

    id: str
    name: str
    version: int
    kind: str
    stage: str
    path: Path
    parents: list[str]  # artifact ids, or external ids "hf:<hub id>" / "path:<abs path>"
    inputs: dict[str, str]  # role -> reference as given, e.g. {"model": "sft:v2"}
    data: list[dict]  # data sources: {"role", "source", "fingerprint", "records"}
    config: dict
    fingerprint: str | None
    metrics: dict
    created_at: str
    versions: dict[str, str]  # library versions
    files: dict[str, str]  # relative path -> sha256 (every file but artifact.json)
    aliases: list[str] = field(default_factory=list)

    def __hash__(self) -> int:  # the generated hash would fail on the list and dict fields
        return hash(self.id)

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["ref"] = self.ref
        return out


@dataclass(frozen=True)
class ExternalRef:
    """A local path or hub id that is not a registry artifact (never fetched by the registry).

    ``missing`` marks a parent id whose artifact was removed from the registry (lineage only).
    """

    ref: str
    location: str
    is_local: bool
    missing: bool = False

    @property
    def id(self) -> str:
        if self.missing:
            return self.ref
        return ("path:" if self.is_local else "hf:") + self.location

    @property
    def kind(self) -> str:
        return "missing" if self.missing else "external"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "kind": self.kind,
            "location": self.location,
            "is_local": self.is_local,
        }


@dataclass
class Publication:
    """What ``Registry.publishing`` yields: write into ``dir``, fill ``metrics``; ``artifact`` is set
    once the block exits normally and the artifact is published."""

    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    artifact: Artifact | None = None


MAX_NAME_LENGTH = 100  # a folder name; file systems stop at 255 bytes, paths inside need room


def check_name(name: str, what: str = "artifact name") -> str:
    """Refuse names that references could not express (``:``, ``@``, ``/``, spaces, ...), and
    names too long to be a folder."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"bad {what} {name!r}: use letters, digits, '-', '_' and '.', starting with a letter or digit "
            "(':' and '@' separate versions and aliases, '/' separates folders)"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{what} {name[:40]}... is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return name


def check_kind(kind: str) -> str:
    """The kind's value, or a ConfigError naming the valid kinds."""
    try:
        return ArtifactKind(kind).value
    except ValueError:
        valid = [k.value for k in ArtifactKind]
        raise ConfigError(
            f"unknown artifact kind {kind!r}{did_you_mean(str(kind), valid)}; valid kinds: {', '.join(valid)}"
        ) from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (dataclasses and enums converted, Paths as strings)."""
    return json.loads(json.dumps(value, default=_json_default))


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


_RECORD_ORDER = (
    "id name version kind stage parents inputs data config fingerprint metrics created_at versions files"
)


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in _RECORD_ORDER.split() if key in record}


def _write_json(path: Path, value: Any, tmp_dir: Path | None = None) -> None:
    """Write ``path`` atomically: a temporary file (beside it, or in ``tmp_dir`` on the same file
    system, so that a crash leaves nothing inside a published artifact), fsynced, then ``os.replace``."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps(value, indent=2, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
