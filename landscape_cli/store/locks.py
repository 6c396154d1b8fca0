"""Advisory file locks (``flock``) that name their holder.

The kernel releases a ``flock`` when its process dies, so a lock left by a killed process is
taken over by the next one without any staleness heuristics. The lock file records who holds
it so that a refused process can say which one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from landscape_cli._io import os_error
from landscape_cli.errors import IntegrityError, LockedError


class FileLock:
    """An exclusive, non-blocking lock on `path`; `what` names the resource in messages."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return False if another process holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # never through a link: a lock file replaced by a symbolic link would have its target truncated
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IntegrityError(f"{self.path} is a symbolic link where the store keeps a lock file (someone "
                                     "replaced it): delete the link and run the command again") from e
            raise os_error(e, self.path) from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IntegrityError(f"{self.path} is not a regular file where the store keeps a lock file: delete it and "
                                 "run the command again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["landscape", *sys.argv[1:]])[:200],
        }
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        return True

    def acquire(self, hint: str = "wait for it to finish or stop it") -> FileLock:
        if not self.try_acquire():
            raise LockedError(f"{self.what} is in use by {describe_holder(self.path)}: {hint}")
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self if self.held else self.acquire()

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at `path` (None if nobody does)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a link or a FIFO is no lock of ours
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info: dict[str, Any] = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            return info
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    return holder(path) is not None


def describe_holder(path: Path) -> str:
    info = holder(path) or {}
    if not info.get("pid"):
        return "another process"
    return f"process {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')} ({info.get('command', '')})"
