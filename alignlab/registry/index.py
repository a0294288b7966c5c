"""The registry's SQLite index: the source of truth for what exists (a folder without a row is
invisible). One connection per operation; writes take the index's write lock from the start
(``BEGIN IMMEDIATE``), so concurrent publishers never share a version.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignlab.errors import RegistryError
from alignlab.registry.records import INDEX_FILE, Artifact

BUSY_TIMEOUT_S = 60.0

LATEST = "SELECT record FROM artifacts WHERE name = ? ORDER BY version DESC LIMIT 1"

SCHEMA = """
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


class Index:
    """The SQLite index of the registry at ``root`` (created on first write, never on a read)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / INDEX_FILE
        self._schema_ready = False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(SCHEMA)
                self._schema_ready = True
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the index's write lock from the start (BEGIN IMMEDIATE).

        SQLite waits up to ``BUSY_TIMEOUT_S`` for another writer; past that, up to three more
        tries with a growing pause, then a RegistryError that says who to look for."""
        with self.connection() as conn:
            for attempt in range(4):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as err:
                    if "locked" not in str(err) and "busy" not in str(err):
                        raise
                    if attempt == 3:
                        raise RegistryError(
                            f"the registry index {self.path} stayed locked by another writer for over "
                            f"{4 * BUSY_TIMEOUT_S:.0f} s; is a process stuck holding it (look for alignlab "
                            "processes on this registry), or is the registry on a file system without locking?"
                        ) from None
                    time.sleep(2.0**attempt)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self.path.exists():  # reading never creates a registry
            return []
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def many(self, sql: str, params: tuple = ()) -> list[Artifact]:
        records = [json.loads(row[0]) for row in self.query(sql, params)]
        if not records:
            return []
        aliases: dict[str, list[str]] = {}
        for art_id, alias in self.query("SELECT artifact_id, alias FROM aliases ORDER BY alias"):
            aliases.setdefault(art_id, []).append(alias)
        return [self.artifact(r, aliases.get(r["id"], [])) for r in records]

    def one(self, sql: str, params: tuple = ()) -> Artifact | None:
        found = self.many(sql, params)
        return found[0] if found else None

    def artifact(self, r: dict[str, Any], aliases: list[str]) -> Artifact:
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
