"""Loading records for a stage: read a source, validate every record, report, fingerprint.

Example:
    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
    >>> _ = path.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\\n")
    >>> data = load_records(str(path), kind="preference")
    >>> data.records[0]["prompt"], data.format, data.report.kept
    ([{'role': 'user', 'content': '2+2?'}], 'preference', 1)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.data import oasst
from alignlab.data.formats import AUTO, FORMATS, canonical_records, detect_format, format_spec, record_kind
from alignlab.data.kinds import RecordKind
from alignlab.data.sources import ARTIFACT_DATA_FILE, Row, open_source
from alignlab.data.validation import RecordError, SkippedRecord
from alignlab.errors import ConfigError, DataError

logger = logging.getLogger("alignlab.data")
EXAMPLES_PER_REASON = 3


@dataclass
class LoadReport:
    """What a load kept and dropped.

    Attributes:
        total: records read from the source.
        kept: canonical records returned (a ranking read as preference data gives several).
        dropped: reason -> number of records dropped for it.
        examples: reason -> up to 3 ``"file:line: message"`` examples.
        source: the source as given.
    """

    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def drop(self, err: RecordError) -> None:
        """Count one dropped record."""
        reason = str(err.reason)
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(str(err))

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """One paragraph: kept / read, then each drop reason with its count and first example."""
        head = f"{self.source + ': ' if self.source else ''}kept {self.kept} records from {self.total} read"
        if not self.dropped:
            return head
        parts = [
            f"{reason}: {count} (e.g. {self.examples[reason][0]})"
            for reason, count in sorted(self.dropped.items(), key=lambda item: -item[1])
        ]
        return f"{head}; dropped {self.n_dropped}: " + "; ".join(parts)


@dataclass
class Records:
    """Canonical records of one kind, with where they came from.

    Attributes:
        records: canonical records (see docs/data.md).
        fingerprint: 16 hex digits of sha256 over the kind and the canonical records; the same
            content read from a .jsonl, a .csv or a .parquet file has the same fingerprint.
        source: the source as given.
        format: the detected format (``"a+b"`` when a file mixes formats).
        report: what was kept and dropped.
        kind: the record kind.
        origin: the id to put in ``Artifact.parents`` (an artifact id, ``path:<abs>``, ``hf:<id>``);
            None for the testbed and in-memory rows.
        artifact: the registry Artifact the records were read from, or None.
    """

    records: list[dict[str, Any]]
    fingerprint: str
    source: str
    format: str
    report: LoadReport
    kind: str = ""
    origin: str | None = None
    artifact: Any = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def data_entry(self, role: str) -> dict[str, Any]:
        """This load as an ``Artifact.data`` entry: ``{"role", "source", "fingerprint", "records"}``."""
        return {
            "role": role,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "records": len(self.records),
        }


def fingerprint_records(records: Iterable[dict[str, Any]], kind: RecordKind | str) -> str:
    """sha256 (first 16 hex digits) of the kind and the records as sorted-key JSON."""
    digest = hashlib.sha256(f"kind={record_kind(kind).value}\n".encode())
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _check_options(kind: RecordKind | str, format: str, limit: int | None) -> tuple[RecordKind, str]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    return record_kind(kind), (AUTO if format == AUTO else str(format_spec(format).name))


def canonicalize_row(
    where: str,
    value: Any,
    kind: RecordKind,
    format: str,
    strict: bool,
    report: LoadReport,
    lenient_hint: str,
) -> tuple[str, list[dict[str, Any]]] | None:
    """One raw row as ``(format, canonical records)``; None when it is dropped (counted in ``report``).

    ``report.total`` counts the row. A bad row raises its :class:`RecordError` when ``strict``
    (with ``lenient_hint`` added as a note: how to drop such rows instead), else is dropped.
    """
    report.total += 1
    try:
        if isinstance(value, RecordError):
            raise value
        fmt = detect_format(value, where, kind) if format == AUTO else format
        return fmt, canonical_records(value, fmt, kind, where)
    except SkippedRecord as err:
        report.drop(err)
        return None
    except RecordError as err:
        if strict:
            if hasattr(err, "add_note"):  # Python 3.11+
                err.add_note(f"{lenient_hint} and get a report of them")
            raise
        report.drop(err)
        return None


def canonicalize(
    rows: Iterable[Row] | Sequence[dict[str, Any]],
    *,
    kind: RecordKind | str,
    format: str = AUTO,
    strict: bool = True,
    source: str = "<memory>",
    limit: int | None = None,
    origin: str | None = None,
    artifact: Any = None,
) -> Records:
    """Validate raw rows into canonical :class:`Records` (what :func:`load_records` does after reading).

    Args:
        rows: ``(where, record)`` pairs, or plain records (numbered ``<source>:record N``).
        kind, format, strict, limit: as for :func:`load_records`.
        source: names the rows in messages and in the result.
        origin, artifact: lineage, passed through to the result.
    """
    from alignlab.data.messages import reset_loose_warnings

    kind, format = _check_options(kind, format, limit)
    reset_loose_warnings()  # each loose form this load converts warns once
    report = LoadReport(source=source)
    records: list[dict[str, Any]] = []
    formats: set[str] = set()
    numbered = (
        row if isinstance(row, tuple) else (f"{source}:record {number}", row)
        for number, row in enumerate(rows, start=1)
    )
    for where, value in oasst.assemble(numbered):
        read = canonicalize_row(
            where, value, kind, format, strict, report, "load with strict=False to drop bad records"
        )
        if read is None:
            continue
        fmt, out = read
        formats.add(str(fmt))
        records.extend(out)
        if limit is not None and len(records) >= limit:
            del records[limit:]
            break
    report.kept = len(records)
    if report.dropped:
        logger.warning("%s", report.summary())
    if report.total == 0:
        raise DataError(f"{source}: the dataset is empty (0 records)")
    if not records:
        raise DataError(
            f"{source}: no usable {kind.value} records: all {report.total} were dropped ({report.summary()})"
        )
    names = (
        sorted(formats, key=list(FORMATS).index) if all(f in FORMATS for f in formats) else sorted(formats)
    )
    return Records(
        records=records,
        fingerprint=fingerprint_records(records, kind),
        source=source,
        format="+".join(names),
        report=report,
        kind=kind.value,
        origin=origin,
        artifact=artifact,
    )


def load_records(
    source: str,
    *,
    kind: RecordKind | str,
    registry: Any = None,
    format: str = AUTO,
    strict: bool = True,
    split: str = "train",
    limit: int | None = None,
) -> Records:
    """Read, validate and canonicalize the records of ``source``.

    Args:
        source: a local file (.jsonl, .json, .parquet, .csv), a dataset folder (an alignlab
            artifact's ``data.jsonl`` or a ``datasets`` save_to_disk folder),
            ``testbed:<name>[?key=value&...]``, a registry reference to a dataset artifact (when
            ``registry`` is given), or a Hugging Face hub dataset name (``hf:`` prefix optional).
        kind: what the stage reads: sft, preference, ranking, prompt or text.
        registry: resolves registry references; None skips that lookup.
        format: ``"auto"`` (detected per record from its keys) or a :class:`DataFormat` name.
        strict: True raises on the first bad record; False drops bad records and reports them
            (in ``Records.report`` and as a logged warning). Chosen identical to rejected is
            dropped and counted in both modes.
        split: the split of a hub dataset or of a saved DatasetDict.
        limit: stop once this many canonical records are kept.

    Raises:
        DataError: a missing or unreadable source, a bad record (strict), or no records at all.
    """
    kind, format = _check_options(kind, format, limit)  # before a hub download, not after
    opened = open_source(source, kind=kind, registry=registry, split=split)
    return canonicalize(
        opened.rows,
        kind=kind,
        format=format,
        strict=strict,
        source=source,
        limit=limit,
        origin=opened.origin,
        artifact=opened.artifact,
    )


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as JSON lines (UTF-8, one record per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def publish_records(
    registry: Any,
    name: str,
    records: Records | Iterable[dict[str, Any]],
    *,
    stage: str = "data",
    parents: Sequence[str] = (),
    data: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> Any:
    """Publish records as a dataset artifact holding ``data.jsonl``; returns the Artifact.

    Load it back with ``load_records("<name>", kind=..., registry=registry)``.
    """
    rows = list(records.records if isinstance(records, Records) else records)
    if not rows:
        raise DataError(f"refusing to publish dataset {name!r}: it has no records")
    if isinstance(records, Records):
        data = data if data is not None else [records.data_entry("records")]
        parents = parents or ((records.origin,) if records.origin else ())
    with registry.publishing(
        name, kind="dataset", stage=stage, parents=tuple(parents), data=data, config=config
    ) as publication:
        write_records(Path(publication.dir) / ARTIFACT_DATA_FILE, rows)
        publication.metrics["records"] = len(rows)
    return publication.artifact
