"""The run store: content-addressed run directories, atomic writes, hashes and references.

Layout (see ../shared/DESIGN.md): ``<root>/<run-id>/run.json``, ``checkpoints/``, ``directions/``,
``grids/<grid-id>/``. Every file is written under a temporary name and renamed into place, and
metadata is written last, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import AmbiguousReferenceError, IntegrityError, RunNotFoundError, StoreError, UsageError

STORE_ENV = "LANDSCAPE_STORE"
DEFAULT_STORE = "runs"
RUN_FILE = "run.json"
ID_LENGTH = 12
PARTIAL_SUFFIX = ".partial"


# --- hashing -----------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of `obj` that ids are computed from (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def short_hash(obj: Any) -> str:
    """A short sha256 of the canonical JSON of `obj`: the id of a run or grid."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:ID_LENGTH]


def file_sha256(path: Path) -> str:
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
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary name to write; it replaces `path` only if the block finishes without error.

    `keep_suffix` ends the temporary name in `path`'s suffix too, for writers that pick the file
    format from the name (matplotlib, Pillow).
    """
    tail = path.suffix if keep_suffix else ""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}{tail}")
    try:
        yield tmp
        os.replace(tmp, path)
    except StoreError:
        raise
    except OSError as e:
        raise os_error(e, path) from e
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
    try:
        path.mkdir(parents=True, exist_ok=True)
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


# --- the store ---------------------------------------------------------------------------------


def store_root(path: str | os.PathLike[str] | None = None) -> Path:
    """`--store PATH`, else `$LANDSCAPE_STORE`, else `./runs`."""
    if path is None or str(path) == "":
        path = os.environ.get(STORE_ENV) or DEFAULT_STORE
    return Path(path).expanduser()


class Store:
    """A directory of runs. Creating the object touches nothing on disk."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = store_root(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- writing --

    def ensure_writable(self) -> None:
        """Fail with one clear line, before any work, if the store cannot be written."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} is a file, not a directory: pass --store with a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the store {self.root} ({e.strerror}): pass --store with a writable directory"
            ) from e
        check_writable(self.root)

    # -- runs --

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def has_run(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / RUN_FILE).is_file()

    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / RUN_FILE).is_file())

    def read_run(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / RUN_FILE
        if not path.is_file():
            raise RunNotFoundError(f"no run {run_id} in store {self.root}; `landscape ls` lists the runs")
        meta: dict[str, Any] = read_json(path)
        return meta

    def write_run(self, run_id: str, meta: dict[str, Any]) -> None:
        meta["updated"] = now()
        write_json(self.run_dir(run_id) / RUN_FILE, meta)

    def runs(self) -> list[dict[str, Any]]:
        """Metadata of every run; a run whose run.json cannot be read is listed as damaged."""
        out = []
        for run_id in self.run_ids():
            try:
                out.append(self.read_run(run_id))
            except (IntegrityError, OSError) as e:
                out.append({"id": run_id, "damaged": str(e)})
        return out

    def resolve(self, ref: str) -> str:
        """A run id from a run's name or a unique prefix of its id."""
        if not ref or not ref.strip():
            raise UsageError("empty run reference: give a run id (or prefix) or name; `landscape ls` lists them")
        runs = self.runs()
        by_name = [r["id"] for r in runs if r.get("name") == ref]
        if by_name:
            return str(by_name[0])
        matches = [str(r["id"]) for r in runs if str(r["id"]).startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(_label(r) for r in runs[:10]) or "none yet: `landscape train` makes one"
            raise RunNotFoundError(f"no run {ref!r} in store {self.root} (runs: {known})")
        raise AmbiguousReferenceError(
            f"run reference {ref!r} matches {len(matches)} runs ({', '.join(matches)}): give more characters"
        )

    def check_name(self, name: str, run_id: str) -> None:
        """A run name must be unique in the store and not empty."""
        check_label(name, "run")
        for r in self.runs():
            if r.get("name") == name and r.get("id") != run_id:
                raise UsageError(f"the name {name!r} is taken by run {r['id']}: choose another --name")


def check_label(name: str, what: str) -> None:
    """A --name must be non-empty and free of '/', tabs and newlines."""
    if not name.strip() or any(c in name for c in "\n\r\t/"):
        raise UsageError(f"bad {what} name {name!r}: use a non-empty label without '/', tabs or newlines")


def _label(run: dict[str, Any]) -> str:
    return f"{run['id']} ({run['name']})" if run.get("name") else str(run["id"])
