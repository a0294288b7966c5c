"""Sub-command groups of the `alignlab` CLI; each module exposes ``register(subparsers)``."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from alignlab.errors import AlignlabError

Handler = Callable[[argparse.Namespace], int]


def friendly_errors(handler: Handler) -> Handler:
    """AlignlabError -> its message on stderr and exit code 2, without a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except AlignlabError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run
