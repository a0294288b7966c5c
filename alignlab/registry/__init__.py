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

import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, ReferenceNotFound, RegistryError, did_you_mean
from alignlab.registry.index import LATEST, Index
from alignlab.registry.liveness import LOCKS_DIR, SUFFIX, alive, drop_if_free, flocked, is_alive
from alignlab.registry.provenance import (
    alignlab_version,
    checksums,
    fingerprint,
    format_lineage,
    library_versions,
    newest_mtime,
    sha256_of,
)
from alignlab.registry.records import (
    _NAME_RE,
    INDEX_FILE,
    RECORD_FILE,
    STAGING_DIR,
    Artifact,
    ArtifactKind,
    ExternalRef,
    Publication,
    _dumps,
    _now,
    _ordered,
    _plain,
    _write_json,
    check_kind,
    check_name,
)
from alignlab.registry.references import _HUB_RE, _VERSION_RE, package_file


class Registry:
    """A local folder of versioned artifacts with a SQLite index.

    Args:
        root: the registry folder; default ``$ALIGNLAB_HOME`` or ``./artifacts``. Created on first write.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        root = root or os.environ.get("ALIGNLAB_HOME") or "artifacts"
        self.root = Path(root).expanduser().resolve()
        self._db = Index(self.root)

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
        found = self._db.one("SELECT record FROM artifacts WHERE id = ?", (ref,))
        found = found or self._db.one(LATEST, (ref,))
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
            found = self._db.one(LATEST, (name,))
            if found is None:
                raise self._not_found(ref)
            return found
        match = _VERSION_RE.match(version)
        if match is None:
            raise ReferenceNotFound(f"{ref!r}: bad version {version!r}; write {name}:v3 or {name}:latest")
        found = self._db.one(
            "SELECT record FROM artifacts WHERE name = ? AND version = ?", (name, int(match[1]))
        )
        if found is not None:
            return found
        versions = [
            row[0]
            for row in self._db.query(
                "SELECT version FROM artifacts WHERE name = ? ORDER BY version", (name,)
            )
        ]
        if not versions:
            raise self._not_found(ref)
        raise ReferenceNotFound(
            f"{name!r} has no version {match[1]}; it has {', '.join(f'v{v}' for v in versions)} "
            f"(latest: {name}:v{versions[-1]})"
        )

    def _by_alias(self, ref: str, name: str, alias: str) -> Artifact:
        found = self._db.one(
            "SELECT a.record FROM aliases l JOIN artifacts a ON a.id = l.artifact_id "
            "WHERE l.name = ? AND l.alias = ?",
            (name, alias),
        )
        if found is not None:
            return found
        aliases = [
            row[0]
            for row in self._db.query("SELECT alias FROM aliases WHERE name = ? ORDER BY alias", (name,))
        ]
        if not self._db.query("SELECT 1 FROM artifacts WHERE name = ? LIMIT 1", (name,)):
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
            found = self._db.one(
                "SELECT record FROM artifacts WHERE name = ? AND version = ?",
                (rel.parts[0], int(rel.parts[1][1:])),
            )
            if found is not None:
                return found
        return ExternalRef(ref, str(path), is_local=True)

    def _not_found(self, ref: str) -> ReferenceNotFound:
        rows = self._db.query("SELECT id, name, version FROM artifacts ORDER BY name, version")
        names = sorted({name for _, name, _ in rows})
        candidates = names + [f"{name}:v{v}" for _, name, v in rows] + [art_id for art_id, _, _ in rows]
        candidates += [f"{n}@{a}" for n, a in self._db.query("SELECT name, alias FROM aliases")]
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
            return self._db.many("SELECT record FROM artifacts ORDER BY name, version")
        return self._db.many("SELECT record FROM artifacts WHERE name = ? ORDER BY version", (name,))

    def find_fingerprint(self, fingerprint: str) -> Artifact | None:
        """The newest artifact with this fingerprint whose folder still exists, or None."""
        rows = self._db.many(
            "SELECT record FROM artifacts WHERE fingerprint = ? ORDER BY rowid DESC", (fingerprint,)
        )
        return next((art for art in rows if art.path.is_dir()), None)

    def children(self, ref: str | Artifact) -> list[Artifact]:
        """Artifacts that list ``ref`` as a parent."""
        art = self.get(ref)
        return self._db.many(
            "SELECT a.record FROM parents p JOIN artifacts a ON a.id = p.child WHERE p.parent = ? "
            "ORDER BY a.name, a.version",
            (art.id,),
        )

    def metrics_history(self, ref: str | Artifact) -> list[dict[str, Any]]:
        """Every metrics update of ``ref``, oldest first: ``{"source", "metrics", "created_at"}``."""
        art = self.get(ref)
        rows = self._db.query(
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
        found = self._db.one("SELECT record FROM artifacts WHERE id = ?", (parent_id,))
        return found or ExternalRef(parent_id, parent_id, is_local=False, missing=True)

    def verify(self, ref: str | Artifact) -> list[str]:
        """Re-hash the artifact's files; the problems found, [] when intact: files missing, extra or
        changed, symbolic links (an artifact holds plain files only), and an artifact.json that
        differs from the index's record."""
        art = self.get(ref)
        try:
            self._inside(art.path)
        except RegistryError as err:
            return [str(err)]
        if art.path.is_symlink():
            return [f"symlink: {art.path} -> {os.readlink(art.path)} (an artifact folder is a plain folder)"]
        if not art.path.is_dir():
            return [f"folder missing: {art.path}"]
        links = [
            f"symlink: {Path(d, n).relative_to(art.path).as_posix()} -> {os.readlink(Path(d, n))}"
            for d, dirs, files in os.walk(art.path)
            for n in [*dirs, *files]
            if Path(d, n).is_symlink()
        ]
        if links:
            return sorted(links)
        actual = checksums(art.path)
        problems = [f"missing: {rel}" for rel in sorted(set(art.files) - set(actual))]
        problems += [f"extra: {rel}" for rel in sorted(set(actual) - set(art.files))]
        problems += [
            f"changed: {rel}" for rel in sorted(set(art.files) & set(actual)) if art.files[rel] != actual[rel]
        ]
        if not (art.path / RECORD_FILE).is_file():
            problems.append(f"missing: {RECORD_FILE}")
        else:
            row = self._db.query("SELECT record FROM artifacts WHERE id = ?", (art.id,))
            if row and _canonical(_read_record(art.path)) != _canonical(json.loads(row[0][0])):
                problems.append(
                    f"changed: {RECORD_FILE} (differs from the index; `alignlab artifacts gc` rewrites it from the index)"
                )
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
        with alive(staging):  # gc leaves a live publisher's folder alone
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
        record["files"] = checksums(staging)
        record["versions"] = library_versions()
        record["created_at"] = _now()
        moved_to: Path | None = None
        try:
            with self._db.transaction() as conn:
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
            return self._db.artifact(record, [])
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
        with self._db.transaction() as conn:
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
            # inside the transaction: a crash before the commit leaves artifact.json ahead of the
            # index, which verify reports and gc rewrites from the index (the source of truth)
            if art.path.is_dir() and not art.path.is_symlink():
                staging = self.root / STAGING_DIR
                staging.mkdir(parents=True, exist_ok=True)
                _write_json(self._inside(art.path) / RECORD_FILE, _ordered(record), tmp_dir=staging)
        return self.get(art.id)

    def tag(self, ref: str | Artifact, alias: str) -> Artifact:
        """Point ``name@alias`` at ``ref`` (moving the alias from another version of the name)."""
        art = self.get(ref)
        check_name(alias, what="alias")
        if alias == "latest" or _VERSION_RE.match(alias):
            raise ConfigError(f"alias {alias!r} would be confused with a version; pick a word such as 'best'")
        with self._db.transaction() as conn:
            # under the write lock: a remove that won the race has already deleted the row
            if conn.execute("SELECT 1 FROM artifacts WHERE id = ?", (art.id,)).fetchone() is None:
                raise ReferenceNotFound(f"{art.ref} ({art.id}) was removed from the registry; nothing tagged")
            conn.execute(
                "INSERT OR REPLACE INTO aliases (name, alias, artifact_id) VALUES (?, ?, ?)",
                (art.name, alias, art.id),
            )
        return self.get(art.id)

    # ---- runs in progress -----------------------------------------------------------------------

    def fingerprint_lock(self, fingerprint: str) -> Any:
        """Held by the process that trains ``fingerprint``, so that an identical run started
        meanwhile waits for it, then finds and reuses what it published. Does not wait: raises
        BlockingIOError while another process holds it (the caller polls, see
        :func:`alignlab.stages.lifecycle.run_stage`)."""
        return flocked(self.root / LOCKS_DIR / f"fingerprint-{fingerprint}.lock", wait=False)

    def in_use(self, artifact: Artifact) -> Any:
        """Held (shared) by a running stage on each artifact it reads: ``remove`` refuses it meanwhile."""
        return flocked(self.root / LOCKS_DIR / f"in-use-{artifact.id}.lock", shared=True)

    def remove(self, ref: str | Artifact, force: bool = False) -> None:
        """Delete an artifact's folder and index row; refuses while other artifacts derive from it.

        Raises:
            RegistryError: the artifact has children and ``force`` is False.
        """
        art = self.get(ref)
        folder = self._inside(art.path)
        pin = self.root / LOCKS_DIR / f"in-use-{art.id}.lock"
        held = flocked(pin, wait=False)  # exclusive: no stage can start reading it meanwhile
        try:
            held.__enter__()
        except BlockingIOError:
            raise RegistryError(
                f"{art.ref} is an input of a stage that is running now; remove it once that run ends"
            ) from None
        try:
            self._remove(art, folder, force)
        finally:
            pin.unlink(missing_ok=True)
            held.__exit__(None, None, None)

    def _remove(self, art: Artifact, folder: Path, force: bool) -> None:
        with self._db.transaction() as conn:  # checked under the write lock: no child can appear meanwhile
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
        # The index no longer lists it: it is removed. The folder goes after the commit, so a crash
        # at any point leaves either the listed artifact whole or an unlisted folder, which gc removes.
        _delete(folder, self.root / STAGING_DIR)

    def _inside(self, path: Path) -> Path:
        """``path`` (derived from an index row), refused unless it stays under the registry root."""
        absolute = Path(os.path.abspath(path))
        if absolute == self.root or not absolute.is_relative_to(self.root) or ".." in path.parts:
            raise RegistryError(
                f"the index names a folder outside the registry ({path}); the index at "
                f"{self._db.path} was edited by hand or damaged: nothing outside {self.root} is touched"
            )
        return absolute

    def gc(self, max_age_s: float = 3600.0, checkpoint_max_age_s: float = 7 * 86400.0) -> list[Path]:
        """Remove what crashed or finished runs left behind, and repair what a crash left half-done:

        - staging folders untouched for ``max_age_s`` seconds, unless a live process holds them
          (:mod:`alignlab.registry.liveness`), and stray live marks;
        - version folders with an artifact.json but no index row (a publish or a remove cut short);
        - in ``.checkpoints``: partial checkpoints (``.tmp-*``, a step folder without its state
          file) older than ``max_age_s``, and a run's whole checkpoint folder untouched for
          ``checkpoint_max_age_s`` (default a week: a crashed run stays resumable that long),
          unless its run is live;
        - lock files in ``.locks`` that no process holds;
        - an artifact.json that differs from its index row (a metrics update cut short) is
          rewritten from the index.

        Returns the paths removed or rewritten.
        """
        from alignlab.rl.checkpoint import partial_checkpoints

        removed: list[Path] = []
        now = time.time()
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for entry in staging.iterdir():
                if entry.name.endswith(SUFFIX):
                    if now - entry.stat().st_mtime > max_age_s:
                        drop_if_free(entry)
                    continue
                if not is_alive(entry) and now - newest_mtime(entry) > max_age_s:
                    _delete(entry, None)
                    removed.append(entry)
        runs = self.root / CHECKPOINTS_DIR
        if runs.is_dir():
            for mark in runs.glob(f"*{SUFFIX}"):  # a killed run's live mark (its lock died with it)
                drop_if_free(mark)
            for run in sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()):
                if is_alive(run):
                    continue
                if now - newest_mtime(run) > checkpoint_max_age_s:
                    _delete(run, None)
                    removed.append(run)
                    continue
                for part in partial_checkpoints(run):
                    if now - newest_mtime(part) > max_age_s:
                        _delete(part, None)
                        removed.append(part)
        locks = self.root / LOCKS_DIR
        if locks.is_dir():  # per-fingerprint and in-use locks nobody holds now
            for lock in locks.glob("*.lock"):
                drop_if_free(lock)
        if not self._db.path.exists():
            return removed
        with self._db.transaction() as conn:  # the write lock: no publisher is between rename and commit
            rows = {(n, v): r for n, v, r in conn.execute("SELECT name, version, record FROM artifacts")}
            for folder in self.root.glob("*/v*"):
                name, version = folder.parent.name, folder.name[1:]
                if not (_NAME_RE.match(name) and version.isdigit()):
                    continue
                row = rows.get((name, int(version)))
                if row is None and ((folder / RECORD_FILE).is_file() or folder.is_symlink()):
                    _delete(folder, None)
                    removed.append(folder)
                elif row is not None and folder.is_dir() and not folder.is_symlink():
                    if _canonical(_read_record(folder)) != _canonical(json.loads(row)):
                        staging.mkdir(parents=True, exist_ok=True)
                        _write_json(folder / RECORD_FILE, _ordered(json.loads(row)), tmp_dir=staging)
                        removed.append(folder / RECORD_FILE)
        return removed


CHECKPOINTS_DIR = ".checkpoints"


def _read_record(folder: Path) -> Any:
    """An artifact folder's artifact.json, parsed; None when unreadable."""
    try:
        return json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _canonical(record: Any) -> str:
    """A record as one comparable string (NaN equals NaN here, key order does not matter)."""
    return json.dumps(record, sort_keys=True, default=str)


def _delete(path: Path, trash_dir: Path | None) -> None:
    """Remove a folder (moved into ``trash_dir`` first when given, so that no half-deleted folder
    keeps its name), or a symbolic link itself, never what it points to."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    if trash_dir is not None:
        trash_dir.mkdir(parents=True, exist_ok=True)
        trash = trash_dir / f"removed-{uuid.uuid4().hex}"
        os.rename(path, trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "INDEX_FILE",
    "RECORD_FILE",
    "STAGING_DIR",
    "Artifact",
    "ArtifactKind",
    "ExternalRef",
    "Publication",
    "Registry",
    "alignlab_version",
    "check_kind",
    "check_name",
    "fingerprint",
    "format_lineage",
    "library_versions",
    "package_file",
    "sha256_of",
]
