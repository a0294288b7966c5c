"""`alignlab report REF`: write an HTML report of an artifact's lineage, metrics and curves.

Example:
    alignlab report ppo                      # -> reports/ppo-v1/index.html
    alignlab report sft:v2 --out /tmp/sft-report
"""

from __future__ import annotations

import argparse
from typing import Any

from alignlab.commands import friendly_errors
from alignlab.registry import Registry


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` command to an argparse sub-parsers object."""
    parser = subparsers.add_parser(
        "report",
        help="write an HTML report (lineage, metrics, plots) of an artifact",
        description="Write index.html and its PNG plots for an artifact and its lineage; prints the page's path.",
    )
    parser.add_argument("ref", metavar="REF", help="artifact reference (name, name:v3, name@alias, id)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="folder to write (default: ./reports/<name>-v<N>)"
    )
    parser.add_argument(
        "--registry",
        metavar="PATH",
        default=None,
        help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)",
    )
    parser.set_defaults(func=friendly_errors(_report))
    return parser


def _report(args: argparse.Namespace) -> int:
    from alignlab.eval.report import write_report

    print(write_report(Registry(args.registry), args.ref, args.out))
    return 0
