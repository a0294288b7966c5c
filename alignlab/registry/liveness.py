"""Marks that a folder belongs to a live process, so that ``gc`` leaves it alone.

A live folder has a lock file beside it (``<folder>.alive``) on which its owner holds an
exclusive ``flock`` for as long as it works in the folder. The kernel releases the lock when the
process dies, however it dies (``kill -9`` included), so a folder whose lock file can be locked
by someone else is a leftover, and one whose lock cannot be taken is in use. Beside, not inside:
a staging folder becomes the artifact as it is, and must not carry the mark into it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUFFIX = ".alive"


def lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + SUFFIX)


@contextmanager
def alive(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s live mark for the duration (the folder itself need not exist yet)."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: nobody can take a lock on a removed name
        os.close(fd)


def is_alive(folder: Path) -> bool:
    """True while some process holds ``folder``'s live mark."""
    return is_locked(lock_path(folder))


LOCKS_DIR = ".locks"


@contextmanager
def flocked(
    path: Path, *, shared: bool = False, wait_message: str | None = None, wait: bool = True
) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if needed) for the duration: exclusive, or shared
    (many holders, no exclusive one). Blocks until it is free, logging ``wait_message`` once if
    it has to wait (``wait=False``: raises BlockingIOError instead). The kernel drops it when the
    process dies."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            if wait_message:
                logging.getLogger("alignlab").info(wait_message)
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """True while someone holds an ``flock`` (shared or exclusive) on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
