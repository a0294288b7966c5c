"""`alignlab data`: inspect a data file, convert between conversational formats, prepare a dataset.

Example:
    alignlab data inspect raw/demos.jsonl
    alignlab data convert raw/alpaca.json --to messages --out demos.jsonl
    alignlab data prepare recipes/data/prepare_example.yaml cleaning.near_dedup.threshold=0.7
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from alignlab.commands import friendly_errors
from alignlab.data.cleaning import record_text
from alignlab.data.formats import (
    AUTO,
    FORMATS,
    canonical_records,
    detect_format,
    format_spec,
    from_messages,
    to_messages,
)
from alignlab.data.kinds import Conversation, Pair, PromptOnly, Ranking, RecordKind, Text
from alignlab.data.loading import LoadReport
from alignlab.data.sources import open_source
from alignlab.data.validation import RecordError
from alignlab.errors import ConfigError, DataError

NATURAL_KIND = {
    Conversation: RecordKind.SFT,
    Pair: RecordKind.PREFERENCE,
    Ranking: RecordKind.RANKING,
    PromptOnly: RecordKind.PROMPT,
    Text: RecordKind.TEXT,
}
BAR = 40


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` command (inspect, convert, prepare) to an argparse sub-parsers object."""
    parser = subparsers.add_parser(
        "data",
        help="inspect, convert and prepare datasets",
        description="Look at data files, convert conversational formats, and run the cleaning pipeline.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    registry_help = "registry folder (default: $ALIGNLAB_HOME or ./artifacts)"

    p = sub.add_parser(
        "inspect", help="detected format, counts, length histogram and examples of a data source"
    )
    p.add_argument(
        "source", metavar="FILE", help="a data file (or testbed:<name>, a dataset artifact, a hub name)"
    )
    p.add_argument(
        "--kind",
        choices=[k.value for k in RecordKind],
        default=None,
        help="read the records as this kind (default: what the first record's format gives)",
    )
    p.add_argument("--format", default=AUTO, help="force a format instead of detecting it from the keys")
    p.add_argument(
        "--examples", type=int, default=3, metavar="N", help="canonical records to show (default: 3)"
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="read only the first N records")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--registry", metavar="PATH", default=None, help=registry_help)
    p.set_defaults(func=friendly_errors(_inspect))

    writable = [name for name, spec in FORMATS.items() if spec.write is not None]
    p = sub.add_parser(
        "convert", help="convert a conversational data file to messages (or alpaca, sharegpt ...)"
    )
    p.add_argument("source", metavar="FILE")
    p.add_argument("--to", required=True, choices=writable, help="the output format")
    p.add_argument("--from", dest="from_format", default=AUTO, help="the input format (default: detected)")
    p.add_argument("--out", metavar="PATH", default=None, help="JSONL file to write (default: stdout)")
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip records that cannot be converted (reported on stderr) instead of stopping",
    )
    p.set_defaults(func=friendly_errors(_convert))

    p = sub.add_parser("prepare", help="clean and mix raw data by a YAML config; publish a dataset artifact")
    p.add_argument("config", metavar="CONFIG.yaml", help="a PrepareConfig in YAML (see recipes/data/)")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. cleaning.near_dedup.threshold=0.7")
    p.add_argument(
        "--force", action="store_true", help="run even if an artifact with the same fingerprint exists"
    )
    p.add_argument("--registry", metavar="PATH", default=None, help=registry_help)
    p.set_defaults(func=friendly_errors(_prepare))

    parser.set_defaults(func=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# ---- inspect ------------------------------------------------------------------------------------


def _bin(n: int) -> tuple[int, int]:
    """Power-of-two length bins: [0, 16), [16, 32), [32, 64) ..."""
    if n < 16:
        return 0, 15
    lo = 1 << (n.bit_length() - 1)
    return lo, 2 * lo - 1


class LengthStats:
    """Streaming length statistics: exact min, max, mean and histogram; median and p95 from a
    reservoir sample of ``cap`` lengths (exact up to ``cap`` records)."""

    def __init__(self, cap: int = 100_000, seed: int = 0) -> None:
        self.n, self.total, self.min, self.max = 0, 0, 0, 0
        self.bins: dict[tuple[int, int], int] = {}
        self.sample: list[int] = []
        self.cap, self.rng = cap, random.Random(seed)

    def add(self, length: int) -> None:
        self.min = length if self.n == 0 else min(self.min, length)
        self.max = max(self.max, length)
        self.n += 1
        self.total += length
        key = _bin(length)
        self.bins[key] = self.bins.get(key, 0) + 1
        if len(self.sample) < self.cap:
            self.sample.append(length)
        else:
            k = self.rng.randrange(self.n)
            if k < self.cap:
                self.sample[k] = length

    def result(self) -> dict[str, Any]:
        """Min, median, mean, p95, max and a power-of-two histogram ``[[lo, hi, count], ...]``."""
        if not self.n:
            return {"min": 0, "median": 0, "mean": 0.0, "p95": 0, "max": 0, "histogram": []}
        ordered = sorted(self.sample)
        return {
            "min": self.min,
            "median": int(statistics.median(ordered)),
            "mean": round(self.total / self.n, 1),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": self.max,
            "histogram": [[lo, hi, count] for (lo, hi), count in sorted(self.bins.items())],
        }


def length_stats(lengths: Iterable[int]) -> dict[str, Any]:
    """:class:`LengthStats` of ``lengths``."""
    stats = LengthStats()
    for n in lengths:
        stats.add(n)
    return stats.result()


def inspect_source(
    source: str,
    *,
    kind: str | None = None,
    format: str = AUTO,
    registry: Any = None,
    examples: int = 3,
    limit: int | None = None,
) -> dict[str, Any]:
    """What ``alignlab data inspect`` shows, as a dict (records are streamed; bad ones are counted)."""
    if format != AUTO:
        format = str(format_spec(format).name)
    wanted = RecordKind(kind) if kind else None
    opened = open_source(source, kind=wanted or RecordKind.SFT, registry=registry)
    report = LoadReport(source=source)
    formats: dict[str, int] = {}
    lengths = LengthStats()
    samples: list[dict[str, Any]] = []
    for where, value in opened.rows:
        if limit is not None and report.total >= limit:
            break
        report.total += 1
        try:
            if isinstance(value, RecordError):
                raise value
            fmt = detect_format(value, where, wanted) if format == AUTO else format
            if wanted is None:
                wanted = NATURAL_KIND[FORMATS[str(fmt)].shape]
            records = canonical_records(value, fmt, wanted, where)
        except RecordError as err:
            report.drop(err)
            continue
        formats[str(fmt)] = formats.get(str(fmt), 0) + 1
        for record in records:
            report.kept += 1
            lengths.add(len(record_text(record)))
            if len(samples) < examples:
                samples.append(record)
    if report.total == 0:
        raise DataError(f"{source}: the dataset is empty (0 records)")
    return {
        "source": source,
        "formats": formats,
        "kind": wanted.value if wanted else None,
        "read": report.total,
        "kept": report.kept,
        "dropped": report.dropped,
        "drop_examples": report.examples,
        "lengths": lengths.result(),
        "examples": samples,
    }


def format_inspection(info: dict[str, Any], width: int = 300) -> str:
    """The human-readable text of :func:`inspect_source`'s result."""
    formats = ", ".join(
        f"{name} ({count})" for name, count in sorted(info["formats"].items(), key=lambda kv: -kv[1])
    )
    dropped = sum(info["dropped"].values())
    lines = [
        f"source:  {info['source']}",
        f"format:  {formats or '-'}",
        f"records: {info['read']} read, {info['kept']} kept as {info['kind'] or '?'}, {dropped} dropped",
    ]
    for reason, count in sorted(info["dropped"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason}: {count} (e.g. {info['drop_examples'][reason][0]})")
    stats = info["lengths"]
    if stats["histogram"]:
        lines.append("")
        lines.append(
            f"length (characters of the record text): min {stats['min']}, median {stats['median']}, "
            f"mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}"
        )
        top = max(count for _, _, count in stats["histogram"])
        label_width = len(f"{stats['histogram'][-1][0]}-{stats['histogram'][-1][1]}")
        for lo, hi, count in stats["histogram"]:
            bar = "█" * max(1, round(BAR * count / top))
            lines.append(f"  {f'{lo}-{hi}':>{label_width}} │ {bar:<{BAR}} {count}")
    if info["examples"]:
        lines.append("")
        lines.append("examples:")
        for i, record in enumerate(info["examples"], start=1):
            text = json.dumps(record, ensure_ascii=False)
            lines.append(f"  [{i}] {text if len(text) <= width else text[: width - 1] + '…'}")
    return "\n".join(lines)


def _registry(args: argparse.Namespace) -> Any:
    from alignlab.registry import Registry

    return Registry(getattr(args, "registry", None))


def _inspect(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be a positive number of records")
    info = inspect_source(
        args.source,
        kind=args.kind,
        format=args.format,
        registry=_registry(args),
        examples=args.examples,
        limit=args.limit,
    )
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.json else format_inspection(info))
    return 0


# ---- convert ------------------------------------------------------------------------------------


def convert_rows(
    rows: Iterator[tuple[str, Any]], to: str, *, from_format: str = AUTO, report: LoadReport | None = None
) -> Iterator[dict[str, Any]]:
    """Conversational records converted to ``to``; with a ``report``, failures are counted and skipped."""
    for where, value in rows:
        if report is not None:
            report.total += 1
        try:
            if isinstance(value, RecordError):
                raise value
            messages = to_messages(value, from_format, where)
            out = messages if to == "messages" else from_messages(messages, to, where)
        except RecordError as err:
            if report is None:
                raise
            report.drop(err)
            continue
        except DataError as err:  # e.g. a preference record: not a conversation at all
            if report is None:
                raise
            report.drop(
                RecordError(where, "format does not give this kind", str(err).removeprefix(f"{where}: "))
            )
            continue
        if report is not None:
            report.kept += 1
        yield out


def _convert(args: argparse.Namespace) -> int:
    from_format = args.from_format if args.from_format == AUTO else str(format_spec(args.from_format).name)
    report = LoadReport(source=args.source) if args.lenient else None
    rows = open_source(args.source, kind=RecordKind.SFT).rows
    written = 0

    def write(stream: TextIO) -> None:
        nonlocal written
        for record in convert_rows(rows, args.to, from_format=from_format, report=report):
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        try:
            with open(partial, "w", encoding="utf-8") as f:
                write(f)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
        print(f"wrote {written} {args.to} records to {out}")
    else:
        write(sys.stdout)
    if report is not None and report.dropped:
        print(f"skipped: {report.summary()}", file=sys.stderr)
    return 0


# ---- prepare ------------------------------------------------------------------------------------


def load_prepare_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """A PrepareConfig from a YAML file and ``key.path=value`` overrides (errors name the file and key)."""

    from alignlab.config import apply_overrides, load_config, read_yaml
    from alignlab.data.prepare import PrepareConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (output, kind, sources, cleaning ...)")
    try:
        return load_config(PrepareConfig, apply_overrides(raw, list(overrides)))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def format_prepared(result: Any) -> str:
    """The summary ``alignlab data prepare`` prints."""
    art = result.artifact
    m = art.metrics
    if result.reused:
        return (
            f"reusing {art.ref} ({art.id}): same config and sources as before (--force to run again); "
            f"{m.get('records', '?')} records"
        )
    lines = [f"sources ({m['kind']}):"]
    for name, s in m["sources"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items())
        lines.append(
            f"  {name}: read {s['read']}, valid {s['valid']}{f' (dropped: {dropped})' if dropped else ''}, "
            f"after cleaning {s['after_cleaning']}"
        )
    lines += ["", "cleaning:", *("  " + line for line in result.cleaning.table().splitlines())]
    examples = [
        f"  {step.name} / {reason}: {example}"
        for step in result.cleaning.steps
        for reason, found in step.examples.items()
        for example in found[:1]
    ]
    if examples:
        lines += ["", "examples:", *examples]
    if result.mixture:
        lines += ["", "mixture:"]
        for name, share in result.mixture.items():
            lines.append(
                f"  {name}: weight {share['weight']:g}, {share['sampled']} {share['unit']} drawn from "
                f"{share['available']} ({share['epochs']:.2f} epochs)"
            )
    lines += [
        "",
        f"published {art.ref} ({art.id}): {m['records']} records, data fingerprint {m['data_fingerprint']}, "
        f"{result.seconds:.1f}s",
        f"  parents: {', '.join(art.parents) or '-'}",
        f"  use it in a stage config as: data: {{source: {art.ref}}}",
    ]
    return "\n".join(lines)


def _prepare(args: argparse.Namespace) -> int:
    from alignlab.data.prepare import prepare

    config = load_prepare_config(args.config, args.overrides)
    result = prepare(config, _registry(args), force=args.force)
    print(format_prepared(result))
    return 0
