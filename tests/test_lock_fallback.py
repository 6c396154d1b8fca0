"""Locks where the filesystem refuses `flock` (NFSv3 without lockd, some FUSE mounts): lock files with a heartbeat.

`flock` is made to fail with ENOLCK in `landscape_cli.store.locks` (as such a filesystem does), here and in the
helper processes that hold a lock. Shards, a shared `--resume` and a refused second process work as with `flock`;
a lock file whose holder is gone is taken over (a killed process, a reused pid, a machine that stopped beating), a
live one never; takeover has one winner; the two kinds on one path never both hold it; links are refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, Cli, StoreFactory, Train, one_thread, subprocess_env, tree

from landscape_cli.engine.compute import grid
from landscape_cli.engine.distributed import Share
from landscape_cli.errors import IntegrityError, LockedError, UsageError
from landscape_cli.store import Store, locks
from landscape_cli.store.grid_arrays import Rows
from landscape_cli.store.locks import FileLock, describe_holder, held_path, holder, is_locked

MLP = Train("mlp", epochs=1, name="mlp")
GRID = ("grid", "mlp", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "64", "--name", "g", "-q")
OPTIONS: dict[str, Any] = {"epochs": [0, 1], "width": 5, "pairs": 2, "batches": 1, "batch_size": 64, "progress": False}
ARRAYS = ("loss", "accuracy", "done", "center_loss", "center_accuracy", "center_done", "grad_a", "grad_b")


class NoFlock:
    """`fcntl` as a filesystem that refuses `flock` makes it look."""

    LOCK_EX, LOCK_SH, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_SH, fcntl.LOCK_NB, fcntl.LOCK_UN

    def __init__(self) -> None:
        self.refused = 0

    def flock(self, fd: int, operation: int) -> None:
        self.refused += 1
        raise OSError(errno.ENOLCK, "No locks available")


# a process that holds the lock at argv[1] where flock is refused, and says so
HOLDER = """
import errno, fcntl, sys, time, types
from pathlib import Path
from landscape_cli.store import locks

def refuse(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")

locks.fcntl = types.SimpleNamespace(flock=refuse, LOCK_EX=fcntl.LOCK_EX, LOCK_SH=fcntl.LOCK_SH, LOCK_NB=fcntl.LOCK_NB,
                                    LOCK_UN=fcntl.LOCK_UN)
lock = locks.FileLock(Path(sys.argv[1]), "it")
assert lock.try_acquire() and lock.kind == "file"
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> NoFlock:
    refuser = NoFlock()
    monkeypatch.setattr(locks, "fcntl", refuser)
    return refuser


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every lock taken while the test runs."""
    taken: list[str] = []
    try_acquire = FileLock.try_acquire

    def spy(self: FileLock) -> bool:
        ok = try_acquire(self)
        if ok:
            taken.append(str(self.kind))
        return ok

    monkeypatch.setattr(FileLock, "try_acquire", spy)
    return taken


@pytest.fixture
def store(trained_store: StoreFactory, tmp_path: Path) -> Path:
    return trained_store.copy(MLP, to=tmp_path / "store")


@pytest.fixture
def holder_process() -> Iterator[Any]:
    """start(path) -> a live process holding the lock file of `path`; killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def arrays(zarr_path: Path) -> dict[str, np.ndarray]:
    rows = Rows(zarr_path, "r")
    return {name: np.asarray(rows[name][...]) for name in ARRAYS}


def forge(path: Path, age: float = 0.0, **record: Any) -> Path:
    """A lock file for `path` as another process would have left it, last beating `age` seconds ago."""
    held = held_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "since": "2024-01-02 03:04:05",
                                "command": "landscape grid", "kind": "file", **record}))
    os.utime(held, (time.time() - age, time.time() - age))
    return held


def one_line(result: Any, *needles: str) -> str:
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- the commands -------------------------------------------------------------------------------


def test_shards_and_a_shared_resume_without_flock_equal_flock(store: Path, tmp_path: Path, trained_store: StoreFactory,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                holder_process: Any, kinds: list[str]) -> None:
    """The grid computed with flock, then without it: by two shards, and by a shard plus a `--resume` that waits for
    a row another process holds and takes it over once that process is killed. Every array is bitwise the same."""
    with one_thread():
        reference = grid("mlp", store=trained_store.copy(MLP, to=tmp_path / "reference"), **OPTIONS)
    assert reference.complete and kinds and set(kinds) == {"flock"}
    want = arrays(reference.zarr_path)
    monkeypatch.setattr(locks, "fcntl", NoFlock())
    kinds.clear()

    sharded = trained_store.copy(MLP, to=tmp_path / "sharded")
    with one_thread():
        parts = [grid("mlp", store=sharded, shard=f"{i}/2", **OPTIONS) for i in range(2)]
    assert [p.computed_rows for p in parts] == [10, 10] and parts[1].complete
    assert kinds and set(kinds) == {"file"}  # each shard prepared the grid under the lock file
    got = arrays(parts[1].zarr_path)
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    with one_thread():
        first = grid("mlp", store=store, shard="0/2", **OPTIONS)
    st, rows = Store(store), Rows(first.zarr_path, "r")
    shard0 = Share(0, 2, "shard")
    missing = [(e, p, y) for e in range(2) for p in range(2) for y in range(5) if not shard0.owns_row(e, p, y, 2, 5)]
    e, p, y = missing[0]
    row = st.row_lock(first.run_id, first.grid_id, e, p, y).path
    other = holder_process(row)
    seen: list[bool] = []

    def kill_when_only_the_held_row_is_left() -> None:
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                done = np.asarray(rows["done"][...]).astype(bool)
                if done.sum() == done.size - 1 and not done[e, p, y]:
                    seen.append(is_locked(row))  # the resume did every other row and waits for this one
                    return
                time.sleep(0.02)
        finally:
            other.send_signal(signal.SIGKILL)  # (also if something went wrong: the resume never waits forever)

    watcher = threading.Thread(target=kill_when_only_the_held_row_is_left)
    watcher.start()
    kinds.clear()
    with one_thread():
        shared = grid("mlp", store=store, resume=True, **OPTIONS)
    watcher.join()
    assert seen == [True] and shared.complete and shared.computed_rows == len(missing)
    assert kinds.count("file") == 1 + len(missing)  # the grid's lock, then one lock file per row
    got = arrays(shared.zarr_path)
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert not [f.name for f in st.locks_dir(first.run_id, first.grid_id).iterdir()]  # no lock file left behind
    assert not list(store.rglob("*.held*"))


def test_a_second_train_is_refused_naming_the_holder_then_takes_over_a_killed_one(
        cli: Any, store: Path, no_flock: NoFlock, holder_process: Any) -> None:
    """A process holds the run's lock file: `train` is refused in one line naming it, the store untouched; SIGKILLed
    (not yet reaped: a zombie), its lock file is taken over."""
    st = Store(store)
    run_lock = st.run_lock_path(st.resolve("mlp"))
    other = holder_process(run_lock)

    def files() -> dict[str, tuple[int, int]]:
        return {k: v for k, v in tree(store).items() if not k.endswith(".held")}  # (its heartbeat touches it)

    before = files()
    line = one_line(cli("train", "mlp", "digits", "--epochs", "2", "--name", "mlp", "--store", str(store)),
                    f"process {other.pid} on {socket.gethostname()}", "wait for that training to finish")
    assert files() == before and no_flock.refused
    assert describe_holder(run_lock) in line

    other.send_signal(signal.SIGKILL)  # not reaped yet: a zombie's lock is taken over too
    lock = FileLock(run_lock, "run")
    deadline = time.monotonic() + 10
    while not lock.try_acquire():
        assert time.monotonic() < deadline, describe_holder(run_lock)
        time.sleep(0.02)
    assert lock.kind == "file" and holder(run_lock) is not None
    assert holder(run_lock)["pid"] == os.getpid()  # type: ignore[index]
    assert f"process {os.getpid()} " in describe_holder(run_lock)
    lock.release()
    assert not held_path(run_lock).exists() and holder(run_lock) is None
    assert [p.name for p in run_lock.parent.iterdir() if ".held" in p.name] == []


def test_a_link_where_the_lock_file_goes_is_refused_and_its_target_untouched(
        trained_store: StoreFactory, tmp_path: Path, cli: Any, no_flock: NoFlock) -> None:
    store = trained_store.copy(MLP, Cli(*GRID), to=tmp_path / "store")
    st = Store(store)
    run_id, grid_id = st.find_grid("g")
    outside = tmp_path / "precious.txt"
    outside.write_text("do not touch me\n")
    link = held_path(st.grid_dir(run_id, grid_id) / ".lock")
    link.symlink_to(outside)
    before = tree(store)
    one_line(cli(*GRID[:-3], "--resume", "--store", str(store)), "symbolic link", ".lock.held")
    assert outside.read_text() == "do not touch me\n" and link.is_symlink() and tree(store) == before

    dangling = tmp_path / "locks" / "row.lock"  # a link to nowhere: nothing is created at its target
    dangling.parent.mkdir()
    held_path(dangling).symlink_to(tmp_path / "nowhere")
    with pytest.raises(IntegrityError, match="symbolic link"):
        FileLock(dangling, "row").try_acquire()
    assert not (tmp_path / "nowhere").exists() and holder(dangling) is None


# --- whose lock file is stale -------------------------------------------------------------------


def _here(**changes: Any) -> dict[str, Any]:
    machine = dict(locks._machine())
    start = locks._proc(os.getpid())
    assert start is not None
    return {**machine, "pid": os.getpid(), "start": start[1], **changes}


@pytest.mark.parametrize(("record", "age", "taken"), [
    ({}, 0.0, False),  # another machine, beating
    ({}, 120.0, True),  # another machine, silent for longer than the timeout
    ("this process", 120.0, False),  # alive here: its pid decides, not its heartbeat
    ("a reused pid", 0.0, True),  # our pid, but a process started at another time
    ("a previous boot", 0.0, True),
    ("another pid namespace", 0.0, False),  # a container on this host: its pid means nothing here, its heartbeat does
    ("another pid namespace", 120.0, True),
    ("unwritten", 0.0, False),  # created, record not written yet
    ("unwritten", 120.0, True),  # ... and its creator died there
], ids=str)
def test_a_lock_file_is_taken_over_only_when_its_holder_is_gone(tmp_path: Path, no_flock: NoFlock, record: Any,
                                                                age: float, taken: bool) -> None:
    path = tmp_path / "grid" / ".lock"
    fields = {
        "this process": _here(), "a reused pid": _here(start=_here()["start"] + 1),
        "a previous boot": _here(boot="another boot", pid=1), "another pid namespace": _here(pidns="pid:[1]"),
    }.get(record, {}) if isinstance(record, str) else record
    held = forge(path, age, **fields)
    if record == "unwritten":
        held.write_text("")
        os.utime(held, (time.time() - age, time.time() - age))
    before = held.read_bytes()
    lock = FileLock(path, "grid g")
    if not taken:
        with pytest.raises(LockedError, match="grid g is in use by"):
            lock.acquire()
        assert held.read_bytes() == before and is_locked(path)
        return
    assert not is_locked(path)
    assert lock.try_acquire() and lock.kind == "file"
    assert json.loads(held.read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock"]


def test_refusals_name_another_machines_holder(tmp_path: Path, no_flock: NoFlock) -> None:
    path = tmp_path / ".lock"
    forge(path, 1.0)
    with pytest.raises(LockedError) as refused:
        FileLock(path, "run r").acquire("wait for that training to finish")
    assert str(refused.value) == ("run r is in use by process 4242 on elsewhere since 2024-01-02 03:04:05 "
                                  "(landscape grid): wait for that training to finish")


def test_the_heartbeat_keeps_a_live_lock_from_another_machine(tmp_path: Path, no_flock: NoFlock,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen from another machine (its pid meaningless there), a holder is judged by its heartbeat alone: one that
    keeps beating is never taken over, however long it holds; the timeout is configurable."""
    monkeypatch.setenv("LANDSCAPE_LOCK_TIMEOUT", "0.6")  # a heartbeat every 0.15 s
    path = tmp_path / ".lock"
    lock = FileLock(path, "it").acquire()
    held = held_path(path)
    os.utime(held, (time.time() - 100, time.time() - 100))  # as if it had stopped beating long ago
    monkeypatch.setattr(locks, "_machine", lambda: {"host": "another machine"})
    time.sleep(1.0)  # longer than the timeout
    assert time.time() - held.stat().st_mtime < 0.5  # it beat meanwhile
    assert not FileLock(path, "it").try_acquire() and is_locked(path)
    lock.release()
    assert not held.exists()
    monkeypatch.setenv("LANDSCAPE_LOCK_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="LANDSCAPE_LOCK_TIMEOUT='soon'"):
        FileLock(path, "it").try_acquire()
    assert not held.exists()


def test_only_one_of_many_contenders_takes_over_a_stale_lock(tmp_path: Path, no_flock: NoFlock) -> None:
    path = tmp_path / "locks" / "e0-p0-y0.lock"

    def contend(lock: FileLock, start: threading.Barrier, won: list[FileLock]) -> None:
        start.wait()
        if lock.try_acquire():
            won.append(lock)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave at every step
    try:
        for _ in range(30):
            forge(path, 120.0)
            contenders = [FileLock(path, "row") for _ in range(6)]
            start = threading.Barrier(len(contenders))
            won: list[FileLock] = []
            threads = [threading.Thread(target=contend, args=(c, start, won)) for c in contenders]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(won) == 1
            won[0].release(remove=True)
            assert list(path.parent.iterdir()) == []  # no claim left behind
    finally:
        sys.setswitchinterval(interval)


def test_a_late_contender_never_removes_the_lock_file_that_replaced_a_stale_one(
        tmp_path: Path, no_flock: NoFlock, monkeypatch: pytest.MonkeyPatch) -> None:
    """B judged a lock file stale, A took it over first: B's removal of what it judged finds A's file, and keeps it.
    A claim left by a contender killed while removing a stale file is cleared once older than the timeout."""
    path = tmp_path / ".lock"
    held = forge(path, 120.0)
    judged = locks._look(held)  # B's judgement
    assert judged is not None and judged.stale()
    a = FileLock(path, "it").acquire()
    mine = held.stat()
    locks._break(held, judged)  # B, late
    assert (held.stat().st_ino, held.stat().st_mtime_ns) == (mine.st_ino, mine.st_mtime_ns)
    assert not FileLock(path, "it").try_acquire() and sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".lock.held"]
    a.release()

    monkeypatch.setenv("LANDSCAPE_LOCK_TIMEOUT", "0.3")
    held = forge(path, 120.0)
    stale = held.stat()
    claim = held.with_name(f"{held.name}.stale-{stale.st_ino}-{stale.st_mtime_ns}")
    os.link(held, claim)  # a contender killed between claiming the stale file and removing it
    assert not FileLock(path, "it").try_acquire() and claim.exists()  # (someone may be removing it right now)
    time.sleep(0.5)
    b = FileLock(path, "it")
    assert b.try_acquire() and not claim.exists()
    b.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# --- the two kinds on one path ------------------------------------------------------------------


def test_a_flock_holder_and_a_lock_file_holder_never_both_hold_a_path(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two machines that disagree about flock: whichever holds the path first, the other is refused and leaves
    nothing of itself behind."""
    path = tmp_path / ".lock"
    refused = NoFlock()
    with FileLock(path, "it") as first:  # flock works here
        assert first.kind == "flock"
        monkeypatch.setattr(locks, "fcntl", refused)
        with pytest.raises(LockedError, match=f"process {os.getpid()} "):
            FileLock(path, "it").acquire()
        assert not held_path(path).exists()
        monkeypatch.undo()
    second = FileLock(path, "it")
    monkeypatch.setattr(locks, "fcntl", refused)
    assert second.try_acquire() and second.kind == "file"
    monkeypatch.undo()
    third = FileLock(path, "it")
    with pytest.raises(LockedError, match=f"process {os.getpid()} "):
        third.acquire()
    assert path.read_bytes() == b""  # it let go, its record removed
    second.release()
    assert third.try_acquire() and third.kind == "flock"
    third.release(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_where_flock_is_refused_a_flock_record_counts_unless_its_holder_is_known_gone(tmp_path: Path,
                                                                                     no_flock: NoFlock) -> None:
    """A record a flock holder wrote into the path (emptied when it lets go): from another machine it cannot be
    checked here, so it counts as held and the refusal says what to do; on this machine its pid decides."""
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "since": "2024-01-02 03:04:05", "command": "landscape"}))
    with pytest.raises(LockedError) as refused:
        FileLock(path, "grid g").acquire()
    assert "process 4242 on elsewhere" in str(refused.value) and f"delete {path}" in str(refused.value)
    assert not held_path(path).exists()
    path.write_text(json.dumps({**_here(start=_here()["start"] + 1), "since": "2024-01-02 03:04:05"}))  # pid reused
    with FileLock(path, "grid g") as lock:
        assert lock.kind == "file"
    assert not held_path(path).exists()
