"""`alignlab artifacts`: list, show, trace, tag, verify and remove registry artifacts (and gc).

Example:
    alignlab artifacts list
    alignlab artifacts show sft@best --json
    alignlab artifacts lineage ppo
    alignlab artifacts --registry /data/reg rm sft:v1 --force
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from alignlab.commands import Handler, friendly_errors
from alignlab.registry import Registry, format_lineage


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``artifacts`` command (and its sub-commands) to an argparse sub-parsers object."""
    registry_opt = argparse.ArgumentParser(add_help=False)
    registry_opt.add_argument(
        "--registry",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)",
    )
    parser = subparsers.add_parser(
        "artifacts",
        help="list, inspect, tag, verify and remove registry artifacts",
        description="Inspect and manage the artifact registry. A REF is a name (latest version), "
        "name:v3, name:latest, name@alias, an artifact id or an artifact folder.",
    )
    parser.add_argument(
        "--registry",
        metavar="PATH",
        default=None,
        help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[registry_opt])
        p.set_defaults(func=friendly_errors(handler))
        return p

    p = command("list", _list, "list artifacts, sorted by name then version")
    p.add_argument("--name", metavar="N", default=None, help="only the versions of this name")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command("show", _show, "show one artifact's record")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p = command("lineage", _lineage, "show where an artifact came from (parents, recursively)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--json", action="store_true", help="print a JSON array of {depth, ...}")
    p = command("tag", _tag, "point NAME@ALIAS at an artifact (moving it from another version)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("alias", metavar="ALIAS")
    p = command("verify", _verify, "re-hash an artifact's files and compare with the recorded checksums")
    p.add_argument("ref", metavar="REF")
    p = command("rm", _remove, "remove an artifact (refused while others derive from it)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--force", action="store_true", help="remove it even if other artifacts list it as parent")
    p = command("history", _history, "show every metrics update of an artifact")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = command(
        "gc",
        _gc,
        "delete what crashed runs left (dead staging folders, unindexed folders, partial and stale "
        "checkpoints) and rewrite out-of-date artifact.json files from the index",
    )
    p.add_argument(
        "--max-age-hours",
        type=float,
        default=1.0,
        metavar="H",
        help="staging folders and partial checkpoints of dead runs untouched for H hours (default: 1)",
    )
    p.add_argument(
        "--checkpoint-max-age-hours",
        type=float,
        default=168.0,
        metavar="C",
        help="a dead run's whole checkpoint folder untouched for C hours (default: 168, a week)",
    )
    parser.set_defaults(func=friendly_errors(_list), name=None, json=False)  # bare `artifacts` lists
    return parser


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(getattr(args, "registry", None))


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    artifacts = registry.list(getattr(args, "name", None))
    if getattr(args, "json", False):
        _print_json([a.to_dict() for a in artifacts])
        return 0
    if not artifacts:
        print(f"no artifacts in {registry.root}")
        return 0
    rows = [
        [
            a.ref,
            a.kind,
            a.stage,
            ",".join(a.aliases),
            a.created_at[:19].replace("T", " "),
            a.id,
            _short_metrics(a.metrics),
        ]
        for a in artifacts
    ]
    print(_table(["REF", "KIND", "STAGE", "ALIASES", "CREATED (UTC)", "ID", "METRICS"], rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    art = _registry(args).get(args.ref)
    if args.json:
        _print_json(art.to_dict())
        return 0
    print(f"{art.ref}  ({art.id})")
    fields = [
        ("kind", art.kind),
        ("stage", art.stage),
        ("path", str(art.path)),
        ("created", art.created_at),
        ("fingerprint", art.fingerprint or "-"),
        ("aliases", ", ".join(art.aliases) or "-"),
        ("parents", ", ".join(art.parents) or "-"),
        ("inputs", ", ".join(f"{k}={v}" for k, v in art.inputs.items()) or "-"),
        ("files", f"{len(art.files)} (check with: alignlab artifacts verify {art.ref})"),
        ("versions", " ".join(f"{k}={v}" for k, v in art.versions.items())),
    ]
    for key, value in fields:
        print(f"  {key:<12} {value}")
    for item in art.data:
        print(f"  {'data':<12} {item.get('role', '?')}: {item.get('source')} ({item.get('fingerprint')})")
    for key, value in art.metrics.items():
        print(f"  {'metric':<12} {key} = {_short(value, 60)}")
    if art.config:
        print("  config")
        print("\n".join("    " + line for line in json.dumps(art.config, indent=2).splitlines()))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    entries = _registry(args).lineage(args.ref)
    if args.json:
        _print_json([{"depth": depth, **node.to_dict()} for depth, node in entries])
    else:
        print(format_lineage(entries))
    return 0


def _tag(args: argparse.Namespace) -> int:
    art = _registry(args).tag(args.ref, args.alias)
    print(f"{art.name}@{args.alias} -> {art.ref} ({art.id})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    registry = _registry(args)
    art = registry.get(args.ref)
    problems = registry.verify(art)
    if problems:
        print(f"{art.ref}: {len(problems)} problem(s) in {art.path}")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{art.ref}: ok ({len(art.files)} files match their checksums)")
    return 0


def _remove(args: argparse.Namespace) -> int:
    registry = _registry(args)
    art = registry.get(args.ref)
    registry.remove(art, force=args.force)
    print(f"removed {art.ref} ({art.id})")
    return 0


def _history(args: argparse.Namespace) -> int:
    history = _registry(args).metrics_history(args.ref)
    if args.json:
        _print_json(history)
        return 0
    if not history:
        print("no metrics recorded")
        return 0
    rows = [
        [h["created_at"][:19].replace("T", " "), h["source"], _short_metrics(h["metrics"], 100)]
        for h in history
    ]
    print(_table(["WHEN (UTC)", "SOURCE", "METRICS"], rows))
    return 0


def _gc(args: argparse.Namespace) -> int:
    removed = _registry(args).gc(
        max_age_s=args.max_age_hours * 3600, checkpoint_max_age_s=args.checkpoint_max_age_hours * 3600
    )
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} leftover(s) removed or repaired")
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _short(value: Any, width: int) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _short_metrics(metrics: dict[str, Any], width: int = 50) -> str:
    """Scalar metrics as ``k=v`` pairs (curves and tables are left to ``show``)."""
    scalars = [f"{k}={_short(v, 12)}" for k, v in metrics.items() if isinstance(v, (int, float, str, bool))]
    return _short(" ".join(scalars), width)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows]
    ]
    return "\n".join(lines)
