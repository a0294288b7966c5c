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
    with flocked(path):
        path.write_text(f"{os.getpid()}\n", encoding="utf-8")  # for a person looking; the lock is what counts
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: nobody can hold a lock on the removed name


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
    process dies.

    A lock file may be unlinked by its last holder (``remove``, ``gc``); a lock taken on a file
    that was unlinked meanwhile guards nothing, so it is retaken on the file the path names now.
    """
    import logging

    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    told = False
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise
                if wait_message and not told:
                    logging.getLogger("alignlab").info(wait_message)
                    told = True
                fcntl.flock(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        if _names(path, fd):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """True when ``path`` still names the file open as ``fd`` (it was not unlinked or replaced)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _taken(path: Path) -> int | None:
    """``path`` opened and locked exclusively without waiting; None when it is missing or held."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def drop_if_free(path: Path) -> bool:
    """Unlink the lock file ``path`` when nobody holds it (taken exclusively first, so that no one
    can be between opening and locking it); True if it was removed."""
    if (fd := _taken(path)) is None:
        return False
    try:
        if not _names(path, fd):
            return False
        path.unlink()
        return True
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """True while someone holds an ``flock`` (shared or exclusive) on ``path``."""
    if (fd := _taken(path)) is None:
        return path.exists()
    os.close(fd)
    return False
