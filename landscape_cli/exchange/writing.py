"""Writing an export's files so that a failure leaves nothing half-written.

A file is written under a temporary name and renamed into place (`atomic`); a directory is built
under a temporary name (`temporary`) and swapped in whole (`replace_dir`). `prepare_parent` makes
and probes the output's directory, and `undone_on_failure` removes the directories it made if the
export then fails. An OSError becomes one line (`cannot_write`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from landscape_cli._io import PARTIAL_SUFFIX, atomic_path, os_error, sync_dir, sync_tree
from landscape_cli.errors import StoreError, UsageError


@contextlib.contextmanager
def undone_on_failure(created: list[Path]) -> Iterator[None]:
    """If the block fails, remove the directories this export made (innermost first, only if still empty)."""
    try:
        yield
    except BaseException:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def cannot_write(e: OSError, path: Path) -> StoreError:
    """One line for an OSError while writing an export (a full disk says so, as everywhere in the store)."""
    if isinstance(e, StoreError):
        return e
    if e.errno == errno.ENOSPC:
        return os_error(e, path)
    return StoreError(f"cannot write {path} ({(e.strerror or str(e)).lower()}): choose another --out")


def prepare_parent(path: Path) -> list[Path]:
    """Check that `path` can be written: create its missing parent directories (returned, outermost first)
    and probe the directory. One clear line if not."""
    parent = path.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot write {path}: {ancestor} is a file, not a directory; choose another --out")
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    missing.reverse()
    created: list[Path] = []
    with undone_on_failure(created):
        try:
            for d in missing:
                d.mkdir()
                created.append(d)
                sync_dir(d.parent)
            probe = parent / f".write-test.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise cannot_write(e, path) from e
    return created


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def atomic(path: Path) -> contextlib.AbstractContextManager[Path]:
    """A temporary name in `path`'s directory; renamed to `path` only if the block finishes."""
    return atomic_path(path, error=cannot_write)


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished directory `new` to `out`, replacing an earlier export (or an empty directory) there
    (durably: its files and itself fsynced before the rename, their directory after)."""
    sync_tree(new)
    with interrupts_deferred():  # a Ctrl-C never leaves `out` moved aside, or the old one half-removed
        if not out.exists():
            os.rename(new, out)
            sync_dir(out.parent)
            return
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(out, old)
        try:
            os.rename(new, out)
        except OSError:
            os.rename(old, out)
            raise
        sync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) during the block takes effect when the block ends (in the main thread, under Python's own
    handler; elsewhere the block runs as it is)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.default_int_handler:
        yield
        return
    caught: list[Any] = []
    signal.signal(signal.SIGINT, lambda number, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt
