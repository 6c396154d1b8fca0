"""Advisory locks that name their holder: `flock` where the filesystem grants it, else a lock file.

Every lock lives at a path the store hands out (`Store.confined` has checked that its directory lies
inside the store) and is one of two kinds, chosen on each acquisition:

- **flock** (local filesystems, NFSv4, Lustre mounted with `-o flock`): an exclusive `flock` on the
  file at the path, into which the holder writes who it is (pid, host, start time, command) and which
  it empties on release. The kernel releases the lock when its holder dies, so a lock left by a killed
  process is taken over without any staleness heuristics.
- **lock file**, where the filesystem refuses `flock` (ENOLCK, EOPNOTSUPP/ENOTSUP or EINVAL: NFSv3
  without lockd, some FUSE mounts): the file `<path>.held`, created with O_CREAT|O_EXCL (which never
  follows a link and which only one process wins, on NFSv3 too), holding the same record; a daemon
  thread of the holder touches it every few seconds (its heartbeat) and release removes it. A lock file
  whose holder is gone is taken over: on the same machine (same host name, boot and pid namespace) as
  soon as its pid no longer exists, is a zombie or belongs to a process started at another time (a
  reused pid); from another machine once it has had no heartbeat for `LANDSCAPE_LOCK_TIMEOUT` seconds
  (default 60: the machines' clocks must agree to well within it, and no holder may stall that long).

Taking over is race-free between any number of contenders. One that judged a lock file stale claims
that very file by hard-linking it under a name made of its inode and modification time (only one
contender can make that link), checks through its link that the file is still the one it judged
(a heartbeat or a new lock file in between would show), and only then removes it; then every
contender competes for the path again with O_EXCL, where only one wins. A live lock file is never
removed. (A contender killed between its link and the removal leaves its claim behind, removed by the
next contender once it is older than the timeout.)

The rule for the two kinds on one path. They meet only where machines disagree (one mounts the store
with working `flock`, another without), and never both hold the path: each writes its own record
first and only then looks for the other kind's. A flock holder writes its record into the path, then
lets go if a live `<path>.held` exists; a lock-file holder creates `<path>.held`, then lets go if the
path holds the record of a live flock holder. Of two that overlap, the later one therefore always sees
the earlier one (at worst both let go, and try again). A machine that cannot flock cannot tell a live
flock holder on another machine from a dead one: such a record counts as held (the refusal names it and
says to delete the file if that process is gone); on the same machine its pid decides. A holder removes
the path itself only while still holding it (`release(remove=True)`), and a flock taker checks, once it
holds the flock, that the path still names the file it locked, so no one holds a removed lock file.
Across machines this rule needs each one to see the other's record as soon as it is written, which an
NFS client caching attributes and writes may delay by its cache time: a store shared by machines that
disagree about flock is safe mounted with `-o noac` (lock files alone need nothing of the sort: their
exclusive create, link, removal and heartbeat all reach the server at once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from landscape_cli._io import mkdirs_durably, os_error
from landscape_cli.errors import IntegrityError, LockedError, StoreError, UsageError

REFUSED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})  # flock refused by the filesystem
HELD_SUFFIX = ".held"  # the lock file of the other kind: <path>.held
CLAIM_INFIX = ".stale-"  # <path>.held.stale-<inode>-<mtime>: a contender removing a stale lock file
TIMEOUT_ENV = "LANDSCAPE_LOCK_TIMEOUT"
STALE_AFTER = 60.0  # seconds without a heartbeat after which another machine's lock file is taken over
BEAT_EVERY = 5.0  # seconds between heartbeats (at most; a quarter of the timeout where that is shorter)
_TRIES = 5  # attempts at a path that changes under us (removed or taken over meanwhile) before reporting it busy
_RECORD_BYTES = 4096


def stale_after() -> float:
    """Seconds without a heartbeat after which a lock file of another machine counts as abandoned."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return STALE_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: give the seconds without a heartbeat after which another machine's "
                         f"lock file is taken over (a number above 0; default {STALE_AFTER:g})")
    return value


def held_path(path: Path) -> Path:
    """The lock file that stands for the lock at `path` where `flock` is refused."""
    return path.with_name(path.name + HELD_SUFFIX)


class FileLock:
    """An exclusive, non-blocking lock on `path`; `what` names the resource in messages."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None
        self._kind: str | None = None  # "flock" or "file" while held
        self._heartbeat: _Heartbeat | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return False if another process holds it."""
        for _ in range(_TRIES):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as e:
                os.close(fd)
                if e.errno in REFUSED:
                    return self._try_lock_file()
                raise os_error(e, self.path) from e
            if not _same_file(fd, self.path):  # its holder removed it before we locked it: lock what is there now
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(_record()).encode(), 0)
            try:  # after our record: a lock-file holder on a machine without flock (see the module's docstring)
                other = _look(held_path(self.path))
                taken = other is not None and not other.stale()
            except BaseException:
                _unlock(fd)
                raise
            if taken:
                _unlock(fd)
                return False
            self._fd, self._kind = fd, "flock"
            return True
        return False

    def _open(self) -> int:
        """The file at the path, opened (made if missing) for flock, never through a link."""
        try:
            mkdirs_durably(self.path.parent)  # the run's (grid's...) directory may be made here first
            # never through a link: a lock file replaced by a symbolic link would have its target truncated
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _link_error(self.path) from e
            raise os_error(e, self.path) from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_a_file(self.path)
        return fd

    def _try_lock_file(self) -> bool:
        """The lock-file kind: create <path>.held exclusively, taking over one whose holder is gone."""
        held = held_path(self.path)
        every = min(BEAT_EVERY, stale_after() / 4)  # (a bad LANDSCAPE_LOCK_TIMEOUT is told before anything is made)
        for _ in range(_TRIES):
            try:
                fd = os.open(held, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:  # (a link there too: O_EXCL never follows it, and _look refuses it)
                seen = _look(held)
                if seen is not None and not seen.stale():
                    return False
                if seen is not None:
                    _break(held, seen)
                continue
            except OSError as e:
                raise os_error(e, held) from e
            try:
                os.write(fd, json.dumps(_record(kind="file")).encode())
                os.fsync(fd)  # the record is read by other machines
                taken = _flock_holder(self.path) is not None  # after our record: see the module's docstring
            except BaseException as e:
                _remove_own(fd, held)
                os.close(fd)
                if isinstance(e, OSError) and not isinstance(e, StoreError):
                    raise os_error(e, held) from e
                raise
            if taken:
                _remove_own(fd, held)
                os.close(fd)
                return False
            self._fd, self._kind = fd, "file"
            self._heartbeat = _Heartbeat(fd, every)
            self._heartbeat.start()
            return True
        return False

    def acquire(self, hint: str = "wait for it to finish or stop it") -> FileLock:
        if not self.try_acquire():
            raise LockedError(f"{self.what} is in use by {describe_holder(self.path)}: {hint}")
        return self

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; `remove`: and remove the file at the path (while still holding it: see the module's
        docstring). A lock file (the kind where flock is refused) is removed either way."""
        fd, kind = self._fd, self._kind
        if fd is None:
            return
        self._fd = self._kind = None
        if kind == "file":
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
            if remove:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            _remove_own(fd, held_path(self.path))
            os.close(fd)
            return
        if remove and _same_file(fd, self.path):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        _unlock(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def kind(self) -> str | None:
        """The kind held: "flock", or "file" (a lock file, where flock is refused); None when not held."""
        return self._kind

    def __enter__(self) -> FileLock:
        return self if self.held else self.acquire()

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holder(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at `path`, of either kind (None if nobody does)."""
    info = _flock_holder(path)
    if info is not None:
        return info
    seen = _look(held_path(path), quiet=True)
    if seen is not None and not seen.stale():
        return seen.info
    return None


def is_locked(path: Path) -> bool:
    return holder(path) is not None


def describe_holder(path: Path) -> str:
    info = holder(path) or {}
    if not info.get("pid"):
        return "another process"
    text = f"process {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')} ({info.get('command', '')})"
    if info.get("unverified"):
        text += f", with a flock this machine cannot check (if that process is gone, delete {path})"
    return text


# --- records and their holders ------------------------------------------------------------------


def _record(kind: str = "flock") -> dict[str, Any]:
    """Who we are: what a refusal names, and what tells another process whether we are still alive."""
    pid = os.getpid()
    info: dict[str, Any] = {
        "pid": pid,
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["landscape", *sys.argv[1:]])[:200],
    }
    info.update({k: v for k, v in _machine().items() if k != "host"})
    proc = _proc(pid)
    if proc is not None:
        info["start"] = proc[1]  # with the pid: a pid reused by a later process is not mistaken for us
    if kind != "flock":
        info["kind"] = kind
    return info


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


@functools.cache
def _machine() -> dict[str, str]:
    """What tells this machine (and pid namespace) apart: a pid means something only where all of it matches."""
    out = {"host": socket.gethostname()}
    with contextlib.suppress(OSError):
        out["boot"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        out["pidns"] = os.readlink("/proc/self/ns/pid")
    return out


def _proc(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of process `pid`, from /proc (None where there is none)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        fields = raw[raw.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _gone(info: dict[str, Any]) -> bool | None:
    """Whether the process a record names is gone: True or False where this machine can tell, else None."""
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    here = _machine()
    if info.get("host") != here["host"]:
        return None
    if "boot" in here and info.get("boot", here["boot"]) != here["boot"]:
        return True  # written before this machine last started
    if info.get("pidns", here.get("pidns")) != here.get("pidns"):
        return None  # another pid namespace (a container): its pids mean nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: alive
    except OSError:
        return False
    proc = _proc(pid)  # a zombie (dead, its parent not told yet), or the pid now names a later process: gone
    return proc is not None and (proc[0] == "Z" or (isinstance(info.get("start"), int) and proc[1] != info["start"]))


@dataclass(frozen=True)
class _Seen:
    """A lock file as read once: which file it was, when it last beat, and its record."""

    dev: int
    ino: int
    mtime_ns: int
    ctime: float
    raw: bytes

    @property
    def info(self) -> dict[str, Any]:
        return _parse(self.raw)

    def same(self, other: _Seen) -> bool:
        return (self.dev, self.ino, self.mtime_ns, self.raw) == (other.dev, other.ino, other.mtime_ns, other.raw)

    def stale(self) -> bool:
        """Its holder is gone: by its pid on this machine, else by its heartbeat (also for a record not written yet)."""
        gone = _gone(self.info)
        if gone is not None:
            return gone
        return time.time() - self.mtime_ns / 1e9 > stale_after()


def _look(path: Path, quiet: bool = False) -> _Seen | None:
    """The lock file at `path` (None if there is none); a link or a non-file there is refused (None if `quiet`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if quiet:
            return None
        if e.errno == errno.ELOOP:
            raise _link_error(path) from e
        raise os_error(e, path) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if quiet:
                return None
            raise _not_a_file(path)
        raw = os.pread(fd, _RECORD_BYTES, 0)
    except OSError as e:
        if quiet:
            return None
        raise os_error(e, path) from e
    finally:
        os.close(fd)
    return _Seen(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime, raw)


def _flock_holder(path: Path) -> dict[str, Any] | None:
    """The record of whoever holds a flock on `path`; where flock is refused, of a flock holder not known to be gone
    (marked "unverified" when it is on another machine)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a link or a FIFO is no lock of ours
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(os.pread(fd, _RECORD_BYTES, 0))
        except OSError as e:
            if e.errno not in REFUSED:
                return None
            info = _parse(os.pread(fd, _RECORD_BYTES, 0))  # emptied on release: a record is a holder, or its remains
            if not info.get("pid") or info.get("kind", "flock") != "flock":
                return None
            gone = _gone(info)
            if gone:
                return None
            return info if gone is False else {**info, "unverified": True}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# --- the lock-file kind -------------------------------------------------------------------------


def _break(held: Path, seen: _Seen) -> None:
    """Remove the stale lock file `seen` if it is still the one at `held` (see the module's docstring)."""
    claim = held.with_name(f"{held.name}{CLAIM_INFIX}{seen.ino}-{seen.mtime_ns}")
    try:
        os.link(held, claim, follow_symlinks=False)
    except FileExistsError:  # another contender is removing it right now, or was killed doing so
        with contextlib.suppress(OSError):
            if time.time() - os.lstat(claim).st_ctime > stale_after():
                os.unlink(claim)
        return
    except FileNotFoundError:  # removed meanwhile
        return
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
            raise StoreError(f"{held} is a lock file whose holder is gone ({_who(seen.info)}), on a filesystem that "
                             "refuses both flock and hard links, so it cannot be taken over safely: delete it and "
                             "run the command again") from e
        raise os_error(e, held) from e
    try:
        now = _look(claim, quiet=True)
        if now is not None and now.same(seen):  # still the file judged stale, and only we hold its claim
            with contextlib.suppress(FileNotFoundError):
                os.unlink(held)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(claim)


def _remove_own(fd: int, held: Path) -> None:
    """Remove the lock file we created, unless (taken over meanwhile) another one is there now."""
    if _same_file(fd, held):
        with contextlib.suppress(OSError):
            os.unlink(held)


class _Heartbeat(threading.Thread):
    """Touches a held lock file every `every` seconds until stopped; never touches it after `stop` returns."""

    def __init__(self, fd: int, every: float) -> None:
        super().__init__(name="landscape-lock-heartbeat", daemon=True)
        self._fd = fd
        self._every = every
        self._stopped = threading.Event()
        self._mutex = threading.Lock()

    def run(self) -> None:
        while not self._stopped.wait(self._every):
            with self._mutex:
                if self._stopped.is_set():
                    return
                with contextlib.suppress(OSError):
                    os.utime(self._fd)

    def stop(self) -> None:
        with self._mutex:
            self._stopped.set()


# --- helpers ------------------------------------------------------------------------------------


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _who(info: dict[str, Any]) -> str:
    return f"process {info['pid']} on {info.get('host', '?')}" if info.get("pid") else "another process"


def _link_error(path: Path) -> IntegrityError:
    return IntegrityError(f"{path} is a symbolic link where the store keeps a lock file (someone replaced it): delete "
                          "the link and run the command again")


def _not_a_file(path: Path) -> IntegrityError:
    return IntegrityError(f"{path} is not a regular file where the store keeps a lock file: delete it and run the "
                          "command again")
