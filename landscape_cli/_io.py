"""File primitives of the store: canonical ids, hashes, atomic writes and one-line OS errors.

Every file is written under a temporary name and renamed into place (``os.replace``), so a reader
never sees a half-written file; a failed write leaves the old file as it was. Each commit is durable
in order, so that a power cut loses at most the work in flight: the file's data is fsynced, then it is
renamed, then its directory is fsynced (and a new directory's parent, once made), all before the call
returns; whatever is written after it (a done-mark, the metadata naming a file) reaches the disk after it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from landscape_cli.errors import IntegrityError, StoreError

ID_LENGTH = 12
PARTIAL_SUFFIX = ".partial"
# LANDSCAPE_FSYNC=0 opts out (a scratch store on a slow network filesystem: a crash of the machine may then cost
# more than the work in flight); benchmarks/durability.py switches it to measure what the fsyncs cost
FSYNC = os.environ.get("LANDSCAPE_FSYNC", "1").strip() not in ("0", "false", "no", "off")


# --- hashing -----------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of `obj` that ids are computed from (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def short_hash(obj: Any) -> str:
    """A short sha256 of the canonical JSON of `obj`: the id of a run or grid."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:ID_LENGTH]


def file_sha256(path: Path) -> str:
    """The sha256 of a regular file's bytes; a directory, pipe or device (never opened: a pipe would block, a
    device never end) is one IntegrityError line."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise IntegrityError(f"{path} is not a file (a directory, pipe or device is where a file belongs): it is "
                             "damaged; run `landscape verify`, then remove it and rerun the command that made it")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path: Path, expected: str, what: str) -> None:
    """Refuse a file that is missing or no longer matches the hash recorded when it was written."""
    if not path.exists():
        raise IntegrityError(f"{what} is missing: {path}; run `landscape verify` to see what else is damaged")
    actual = file_sha256(path)
    if actual != expected:
        raise IntegrityError(
            f"{what} was modified or damaged since it was written: {path} "
            f"(sha256 {actual[:12]}, recorded {expected[:12]}); run `landscape verify`, then delete "
            "the damaged file and rerun the command that made it"
        )


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")  # "newest" must not tie within a second


# --- durable commits ---------------------------------------------------------------------------


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()  # a forked child has none of the parent's threads: its own pool


os.register_at_fork(after_in_child=_forget_pool)


def all_at_once(call: Callable[[Any], None], items: Iterable[Any]) -> None:
    """`call` on every item, in parallel threads (fsyncs issued together are committed together)."""
    global _POOL
    items = list(items)
    if len(items) <= 1:
        for item in items:
            call(item)
        return
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="landscape-fsync")
    for future in [_POOL.submit(call, item) for item in items]:
        future.result()


def sync_fd(fd: int) -> None:
    """The data of open file `fd` on the disk (fsync)."""
    if FSYNC:
        os.fsync(fd)


def _sync_path(path: Path | str, flags: int) -> None:
    if FSYNC:
        fd = os.open(path, os.O_RDONLY | flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_file(path: Path | str) -> None:
    """The data of the file at `path` on the disk (written by a writer that closed it: fsync by path)."""
    _sync_path(path, os.O_NOFOLLOW)


def sync_dir(path: Path | str) -> None:
    """The entries of directory `path` (files renamed, linked, made or removed in it) on the disk."""
    _sync_path(path, os.O_DIRECTORY)


def sync_tree(path: Path) -> None:
    """Every file and directory under `path` (and `path`) on the disk (all at once): a directory built
    under a temporary name, before it is renamed into place."""
    if not FSYNC:
        return
    files: list[str] = []
    dirs: list[str] = []
    for root, _dirs, names in os.walk(path):
        files.extend(os.path.join(root, name) for name in names)
        dirs.append(root)
    all_at_once(sync_file, files)
    all_at_once(sync_dir, dirs)


def mkdirs(path: Path) -> list[Path]:
    """`path` and its missing parents made; the ones this call made, outermost first, whose entries are not
    synced yet: sync each one's parent (`sync_dir`) before anything in them is committed (raises OSError)."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def mkdirs_durably(path: Path) -> None:
    """`path` and its missing parents made, each new one's entry synced in its parent (raises OSError)."""
    all_at_once(sync_dir, [d.parent for d in mkdirs(path)])


# --- atomic writes -----------------------------------------------------------------------------


def os_error(e: OSError, path: Path | str) -> StoreError:
    """Turn an OSError while writing `path` into one line that says what to do."""
    if e.errno == errno.ENOSPC:
        return StoreError(
            f"disk full while writing {path}: free some space, then run the same command again "
            "(finished work was kept)"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(
            f"cannot write {path} ({e.strerror.lower() if e.strerror else 'permission denied'}): "
            "pass --store with a writable directory or set LANDSCAPE_STORE"
        )
    return StoreError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_path(path: Path, keep_suffix: bool = False,
                error: Callable[[OSError, Path], Exception] | None = None) -> Iterator[Path]:
    """Yield a temporary name to write; it replaces `path` only if the block finishes without error.

    `keep_suffix` ends the temporary name in `path`'s suffix too, for writers that pick the file
    format from the name (matplotlib, Pillow). `error` makes the one-line error of an OSError
    (default: the store's `os_error`).
    """
    tail = path.suffix if keep_suffix else ""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}{tail}")
    try:
        yield tmp
        sync_file(tmp)
        os.replace(tmp, path)
        sync_dir(path.parent)
    except StoreError:
        raise
    except OSError as e:
        raise (error or os_error)(e, path) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a file to write; it replaces `path` only if the block finishes without error."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def check_writable(directory: Path) -> None:
    """Fail with one clear line (a StoreError) if files cannot be created in `directory`."""
    probe = directory / f".write-test.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise os_error(e, directory) from e


@contextlib.contextmanager
def leave_no_trace(new_dirs: list[Path], finished: Path) -> Iterator[None]:
    """On any failure before `finished` exists, remove the directories in `new_dirs` (made by this call).

    A new run or grid that fails before its metadata is written (full disk, Ctrl-C...) then leaves the
    store as it was. `new_dirs` are the ones that did not exist before, outermost first.
    """
    try:
        yield
    except BaseException:
        if not finished.exists():
            for d in reversed(new_dirs):
                shutil.rmtree(d, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise IntegrityError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}): it was damaged; "
            "run `landscape verify`"
        ) from e


def make_dirs(path: Path) -> None:
    """`path` and its missing parents made (durably: `mkdirs_durably`); an OSError as one line."""
    try:
        mkdirs_durably(path)
    except OSError as e:
        raise os_error(e, path) from e


def remove_partials(directory: Path) -> None:
    """Delete temporary files left by a killed writer (call only while holding the lock)."""
    if directory.is_dir():
        for p in directory.glob(f"*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                p.unlink()


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def create_once(path: Path, write: Callable[[IO[bytes]], None]) -> bool:
    """Write `path` with `write` unless it exists (atomically, never replacing); True if this call made it."""
    make_dirs(path.parent)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            sync_fd(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: keep theirs
            return False
        sync_dir(path.parent)
        return True
    except OSError as e:
        raise os_error(e, path) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def figure_directory(path: Path, what: str = "figure", out: str = "FILE") -> None:
    """The directory of output file `path` (a figure, a page) made and checked writable; else one line saying
    to pass --out `out` to write the `what` elsewhere."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent)
    except OSError as e:  # (a StoreError too)
        message = str(e) if isinstance(e, StoreError) else str(os_error(e, path.parent))
        raise StoreError(f"{message}; pass --out {out} to write the {what} elsewhere") from e


def write_figure(fig: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure saved to `path` (its format from the suffix) atomically, its directory made
    (`figure_directory`)."""
    figure_directory(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=dpi)
