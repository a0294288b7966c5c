"""`alignlab data prepare`: read raw sources, clean them, mix them, publish a dataset artifact.

Records stream from each source (JSONL line by line) through validation and every cleaning step
to the output file, so files larger than memory work; only the dedup state is held. With several
sources (or a ``mixture.total``), cleaned records are spooled to a temporary file per source and
then drawn by weight with :func:`alignlab.data.mixture.sample_mixture`.

The artifact holds ``data.jsonl`` (canonical records of ``kind``); its metrics hold the data
fingerprint (the one ``load_records`` gives when reading it back), what validation dropped per
source, each cleaning step's report and the mixture's effective epochs. Its parents are the raw
files (``path:<abs>``) or dataset artifacts it was made from, so lineage reaches the raw data.

Example:
    >>> from alignlab.registry import Registry
    >>> config = PrepareConfig(output="sft-data", kind="sft", sources=[SourceConfig("raw/demos.jsonl")])
    >>> result = prepare(config, Registry())  # doctest: +SKIP
    >>> result.artifact.ref, result.artifact.metrics["records"]  # doctest: +SKIP
    ('sft-data:v1', 9712)
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from alignlab.config import to_dict
from alignlab.data.cleaning import (
    CleaningConfig,
    CleaningReport,
    Pipeline,
    Record,
    StepName,
    build_steps,
    record_text,
)
from alignlab.data.formats import AUTO, format_spec, record_kind
from alignlab.data.kinds import RecordKind
from alignlab.data.loading import LoadReport, canonicalize_row
from alignlab.data.mixture import sample_mixture
from alignlab.data.sources import ARTIFACT_DATA_FILE, TESTBED_PREFIX, open_source
from alignlab.errors import ConfigError, DataError, ReferenceNotFound

log = logging.getLogger("alignlab.data")
STAGE = "data"


@dataclass
class SourceConfig:
    """One raw data source.

    Attributes:
        source: a local file (.jsonl, .json, .parquet, .csv) or folder, ``testbed:<name>[?k=v]``,
            a dataset artifact reference, or a hub dataset name.
        weight: sampling weight in the mixture (relative to the other sources).
        format: "auto" to detect each record's format from its keys, or a format name to force.
        name: the source's name in reports (default: the file name, or the source as given).
    """

    source: str = ""
    weight: float = 1.0
    format: str = AUTO
    name: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.source.startswith(TESTBED_PREFIX):
            return self.source
        return Path(self.source).name or self.source


@dataclass
class MixtureConfig:
    """How several sources are mixed (GPT-3 style: a budget split by weight; small sources repeat).

    Attributes:
        total: size of the output in ``unit``; None = the sum of the cleaned sources. With one
            source and no total, records pass through once, in order, without mixing.
        unit: what the budget counts: records, or characters of the record text.
        seed: shuffling seed; the same seed and data give the same mixture.
    """

    total: int | None = None
    unit: Literal["records", "characters"] = "records"
    seed: int = 0


@dataclass
class PrepareConfig:
    """A data preparation run (the YAML of ``alignlab data prepare``).

    Attributes:
        output: name of the dataset artifact to publish; stages then read it as ``data: <output>:vN``.
        kind: the record kind to produce: sft, preference, ranking, prompt or text.
        sources: the raw sources (at least one), each with its mixture weight.
        strict: stop at the first malformed record (true) or drop malformed records and report
            them by reason (false).
        cleaning: the cleaning steps and their settings.
        mixture: how several sources are mixed.
    """

    output: str = "data"
    kind: RecordKind = RecordKind.SFT
    sources: list[SourceConfig] = field(default_factory=list)
    strict: bool = True
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)

    def __post_init__(self) -> None:
        from alignlab.registry import check_name

        check_name(self.output, "output (dataset artifact name)")
        self.kind = record_kind(self.kind)
        if not self.sources:
            raise ConfigError("sources: give at least one source, e.g. sources: [{source: raw.jsonl}]")
        labels = [s.label for s in self.sources]
        for i, s in enumerate(self.sources):
            if not s.source:
                raise ConfigError(f"sources[{i}].source: empty; give a file, testbed:<name> or a reference")
            if s.weight < 0:
                raise ConfigError(f"sources[{i}].weight: must be >= 0, got {s.weight}")
            if s.format != AUTO:
                format_spec(s.format)
            if labels.count(s.label) > 1:
                raise ConfigError(
                    f"sources[{i}]: two sources are named {s.label!r}; give each a distinct name"
                )
        if all(s.weight == 0 for s in self.sources):
            raise ConfigError("sources: at least one weight must be > 0")

    @property
    def mixes(self) -> bool:
        """Whether the run mixes (several sources, or a total to reach)."""
        return len(self.sources) > 1 or self.mixture.total is not None


@dataclass
class PrepareResult:
    """What a preparation run produced.

    Attributes:
        artifact: the published (or reused) dataset artifact.
        reused: True when an artifact with the same fingerprint existed and was returned as is.
        cleaning: the cleaning report (None when reused).
        loads: source name -> what validation kept and dropped (empty when reused).
        mixture: source name -> weight, available, sampled, items, epochs (empty without mixing).
        seconds: wall time of the run.
    """

    artifact: Any
    reused: bool = False
    cleaning: CleaningReport | None = None
    loads: dict[str, LoadReport] = field(default_factory=dict)
    mixture: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


# ---- reading ------------------------------------------------------------------------------------


def _line(record: Record) -> bytes:
    """A record as the JSON line that ``fingerprint_records`` hashes (sorted keys, compact)."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _Fingerprint:
    """``fingerprint_records`` computed incrementally, as records stream past."""

    def __init__(self, kind: RecordKind) -> None:
        self.digest = hashlib.sha256(f"kind={kind.value}\n".encode())

    def update(self, line: bytes) -> None:
        self.digest.update(line)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()[:16]


def stream_canonical(
    rows: Iterator[tuple[str, Any]],
    *,
    kind: RecordKind,
    format: str,
    strict: bool,
    report: LoadReport,
    fingerprint: _Fingerprint | None = None,
) -> Iterator[Record]:
    """Canonical records from raw ``(where, record)`` rows, validated one by one (``canonicalize``, streaming)."""
    for where, value in rows:
        read = canonicalize_row(
            where, value, kind, format, strict, report, "set strict: false to drop malformed records"
        )
        if read is None:
            continue
        for record in read[1]:
            report.kept += 1
            if fingerprint is not None:
                fingerprint.update(_line(record))
            yield record


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def source_key(source: str, registry: Any) -> str:
    """What identifies a source's content for the run's fingerprint, without validating it: the
    hash of a local file's bytes (of every file, for a folder), an artifact id, or the source as given."""
    if source.startswith(TESTBED_PREFIX):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        return f"sha256:{_file_digest(path)}"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return (
            "sha256:"
            + hashlib.sha256(
                ",".join(f"{p.relative_to(path)}={_file_digest(p)}" for p in files).encode()
            ).hexdigest()[:16]
        )
    try:
        resolved = registry.resolve(source)
    except ReferenceNotFound:
        return f"hf:{source.removeprefix('hf:')}"
    return resolved.id


def _key_digest(key: str) -> str:
    """16 hex digits: a file's content hash as is, else the hash of the source's key."""
    if key.startswith("sha256:"):
        return key.removeprefix("sha256:")
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ---- spooling and mixing ------------------------------------------------------------------------


class _Spool:
    """Cleaned records of one source in a temporary JSONL file, with the offset and size of each."""

    def __init__(self, folder: Path, index: int, unit: str) -> None:
        self.path = folder / f"source{index}.jsonl"
        self.file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.offsets = array("q")
        self.sizes = array("q")
        self.unit = unit

    def write(self, record: Record) -> None:
        self.offsets.append(self.file.tell())
        self.sizes.append(1 if self.unit == "records" else len(record_text(record)))
        self.file.write(_line(record))

    def close(self) -> None:
        self.file.close()


class _Items(Sequence[tuple[int, int]]):
    """A lazy sequence of ``(source index, record index)`` for sample_mixture to draw from."""

    def __init__(self, source: int, n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source, i


def _mix(spools: list[_Spool], config: PrepareConfig, out: BinaryIO, fp: _Fingerprint) -> tuple[int, dict]:
    """Draw the spooled records by weight into ``out``; returns the count and the per-source shares."""
    names = [s.label for s in config.sources]
    items = {name: _Items(i, len(spool.offsets)) for i, (name, spool) in enumerate(zip(names, spools))}
    for name, seq in items.items():
        if not len(seq):
            raise DataError(
                f"mixture source {name!r} has no records left after cleaning; see the cleaning report"
            )
    weights = {name: s.weight for name, s in zip(names, config.sources)}
    mixed, shares = sample_mixture(
        items,
        weights,
        config.mixture.total,
        seed=config.mixture.seed,
        size=lambda item: spools[item[0]].sizes[item[1]],
    )
    readers = [open(s.path, "rb") for s in spools]  # noqa: SIM115 - closed below
    try:
        for source, i in mixed:
            reader = readers[source]
            reader.seek(spools[source].offsets[i])
            line = reader.readline()
            out.write(line)
            fp.update(line)
    finally:
        for reader in readers:
            reader.close()
    report = {
        s.name: {
            "weight": s.weight,
            "available": s.available_tokens,
            "sampled": s.sampled_tokens,
            "items": s.documents,
            "epochs": round(s.epochs, 4),
            "unit": config.mixture.unit,
        }
        for s in shares
    }
    return len(mixed), report


# ---- the run ------------------------------------------------------------------------------------


def _judge_input(config: PrepareConfig, registry: Any) -> dict[str, Any]:
    if StepName.JUDGE not in config.cleaning.steps:
        return {}
    return {"judge": registry.resolve(config.cleaning.judge.model)}


def prepare(config: PrepareConfig | dict[str, Any], registry: Any, *, force: bool = False) -> PrepareResult:
    """Read, validate, clean and mix the sources of ``config``; publish the result as a dataset artifact.

    A run whose fingerprint (config, judge model, source contents) matches an existing artifact
    returns that artifact instead (``force=True`` runs anyway).

    Raises:
        ConfigError: a bad config (unknown key, missing model ...).
        DataError: a missing source, a malformed record (strict), or no record left to publish.
    """
    from alignlab.config import load_config
    from alignlab.registry import fingerprint

    started = time.perf_counter()
    config = load_config(PrepareConfig, config)
    resolved = to_dict(config)
    opened = [open_source(s.source, kind=config.kind, registry=registry) for s in config.sources]
    inputs = _judge_input(config, registry)
    input_ids = {role: target.id for role, target in inputs.items()}
    keys = [source_key(s.source, registry) for s in config.sources]
    fp = fingerprint(STAGE, resolved, input_ids, [f"{s.label}:{key}" for s, key in zip(config.sources, keys)])
    if not force:
        hit = registry.find_fingerprint(fp)
        if hit is not None:
            log.info("data prepare: reusing %s (same fingerprint %s; --force reruns)", hit.ref, fp)
            return PrepareResult(hit, reused=True, seconds=time.perf_counter() - started)

    pipeline = Pipeline(build_steps(config.cleaning, registry))
    kind, loads, parents = config.kind, {}, [t.id for t in inputs.values()]
    for o in opened:
        if o.origin and o.origin not in parents:
            parents.append(o.origin)
    raw = [  # the raw sources as the registry records data; validated counts go to the metrics
        {"role": s.label, "source": s.source, "fingerprint": _key_digest(key), "records": None}
        for s, key in zip(config.sources, keys)
    ]
    out_fp, mixture, sources = _Fingerprint(kind), {}, {}
    with (
        registry.publishing(
            config.output,
            kind="dataset",
            stage=STAGE,
            parents=parents,
            data=raw,
            inputs={role: getattr(t, "ref", None) or t.id for role, t in inputs.items()},
            config=resolved,
            fingerprint=fp,
        ) as pub,
        tempfile.TemporaryDirectory(prefix="alignlab-prepare-") as tmp,
    ):
        with open(Path(pub.dir) / ARTIFACT_DATA_FILE, "wb") as out:
            spools = (
                [_Spool(Path(tmp), i, config.mixture.unit) for i in range(len(opened))]
                if config.mixes
                else []
            )
            for i, (spec, o) in enumerate(zip(config.sources, opened)):
                report, in_fp = LoadReport(source=spec.source), _Fingerprint(kind)
                records = stream_canonical(
                    o.rows,
                    kind=kind,
                    format=spec.format,
                    strict=config.strict,
                    report=report,
                    fingerprint=in_fp,
                )
                kept = 0
                for record in pipeline.run(records):
                    kept += 1
                    if spools:
                        spools[i].write(record)
                    else:
                        line = _line(record)
                        out.write(line)
                        out_fp.update(line)
                _check_source(spec.source, kind, report)
                loads[spec.label] = report
                sources[spec.label] = {
                    "source": spec.source,
                    "read": report.total,
                    "valid": report.kept,
                    "dropped": report.dropped,
                    "examples": report.examples,
                    "fingerprint": in_fp.hexdigest(),
                    "after_cleaning": kept,
                }
            for spool in spools:
                spool.close()
            if spools:
                n_out, mixture = _mix(spools, config, out, out_fp)
            else:
                n_out = sum(entry["after_cleaning"] for entry in sources.values())
        cleaning = pipeline.report()
        if n_out == 0:
            raise DataError(
                f"refusing to publish dataset {config.output!r}: no records left after cleaning\n{cleaning.table()}"
            )
        pub.metrics.update(
            {
                "records": n_out,
                "data_fingerprint": out_fp.hexdigest(),
                "kind": kind.value,
                "removed": sum(s.removed for s in cleaning.steps),
                "sources": sources,
                "cleaning": cleaning.to_dict(),
                **({"mixture": mixture} if mixture else {}),
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    log.info("data prepare: published %s (%d records)", pub.artifact.ref, n_out)
    return PrepareResult(
        pub.artifact, cleaning=cleaning, loads=loads, mixture=mixture, seconds=time.perf_counter() - started
    )


def _check_source(source: str, kind: RecordKind, report: LoadReport) -> None:
    if report.total == 0:
        raise DataError(f"{source}: the source is empty (0 records)")
    if report.dropped:
        log.warning("%s", report.summary())
    if report.kept == 0:
        raise DataError(
            f"{source}: no usable {kind.value} records: all {report.total} were dropped ({report.summary()})"
        )
