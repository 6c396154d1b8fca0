"""Durable commits, in order: the fsync and rename calls of real commands, recorded and checked.

A power cut keeps what reached the disk, in whatever order the kernel wrote it back, unless fsync says
otherwise. So every file the store renames into place must have had its data fsynced before the rename
and its directory fsynced after; every directory made must be synced in its parent; and a mark (a row's
or an epoch's done-mark, run.json, grid.json, hessian.json, a direction's sidecar) may only be committed
once everything committed before it (the values it marks, the checkpoint it names) is on the disk.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Cli, StoreFactory, Train, run_in_process

COMMITS = ("replace", "rename", "link")
M_GRID = (Train("mlp", epochs=1, name="m"), Cli("grid", "m", "--width", "3", "--pairs", "1", "--batches", "1", "-q"))


@dataclass(frozen=True)
class Event:
    kind: str  # fsync, replace, rename, link, mkdir, unlink
    path: str  # what was fsynced, made or removed; a commit's source
    dst: str = ""  # a commit's target


class Journal:
    """The file-system calls that commit data, in the order the process made them (every thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from landscape_cli import _io

        monkeypatch.setattr(_io, "FSYNC", True)  # the rest of the suite runs without fsync (conftest.py)
        self.events: list[Event] = []
        fsync = os.fsync

        def recorded_fsync(fd: Any) -> None:
            number = fd if isinstance(fd, int) else fd.fileno()
            self.events.append(Event("fsync", os.readlink(f"/proc/self/fd/{number}")))
            fsync(fd)

        monkeypatch.setattr(os, "fsync", recorded_fsync)
        for kind in (*COMMITS, "mkdir", "unlink"):
            monkeypatch.setattr(os, kind, self._recording(kind, getattr(os, kind)))

    def _recording(self, kind: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = call(*args, **kwargs)
            if "dir_fd" not in kwargs and "src_dir_fd" not in kwargs:  # (shutil.rmtree's: nothing to commit)
                paths = [os.path.abspath(os.fspath(a)) for a in args[:2 if kind in COMMITS else 1]]
                self.events.append(Event(kind, *paths))
            return out

        return recorded


def violations(events: list[Event], scope: list[Path]) -> list[str]:
    """What in `events` (for files under `scope`) breaks the durable order; empty if nothing does."""
    inside = tuple(str(p) + os.sep for p in scope)

    def within(path: str) -> bool:
        return path.startswith(inside) or path in {str(p) for p in scope}

    fsynced: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if e.kind == "fsync":
            fsynced.setdefault(e.path, []).append(i)

    def synced_between(path: str, start: int, end: int) -> bool:
        return any(start < i < end for i in fsynced.get(path, []))

    out: list[str] = []
    durable_at: dict[int, int] = {}  # a change's index -> the index of the directory fsync that made it durable
    for i, e in enumerate(events):
        target = e.dst if e.kind in COMMITS else e.path
        if e.kind == "fsync" or not within(target):
            continue
        if e.kind == "unlink" and (e.path.endswith(".partial") or ".zarr" + os.sep not in e.path):
            continue  # a temporary file cleaned up; only removed chunks (cleared done-marks) count
        if e.kind in COMMITS:
            if Path(e.dst).is_dir():  # a directory built under a temporary name: all of it synced first
                files = [str(p.relative_to(e.dst)) for p in Path(e.dst).rglob("*") if p.is_file()]
                unsynced = [f for f in files if not synced_between(os.path.join(e.path, f), -1, i)]
                if unsynced or not synced_between(e.path, -1, i):
                    out.append(f"{e.kind} {e.path} -> {e.dst} before fsync of {unsynced or [e.path]}")
            elif not synced_between(e.path, -1, i):
                out.append(f"{e.kind} {e.path} -> {e.dst} before its data was fsynced")
        parent = os.path.dirname(target)
        after = [j for j in fsynced.get(parent, []) if j > i]
        if not after:
            out.append(f"{e.kind} {target}: its directory {parent} never fsynced after it")
        durable_at[i] = after[0] if after else len(events)
    for i, e in enumerate(events):
        if e.kind in COMMITS and within(e.dst) and is_mark(e.dst):
            for j, k in durable_at.items():
                own = events[j].kind == "mkdir" and e.dst.startswith(events[j].path + os.sep)  # (lost with it)
                if j < i < k and not own:
                    out.append(f"mark {e.dst} committed at {i} before {events[j].kind} {events[j].dst or events[j].path} "
                               f"({j}) was durable ({k})")
    return out


MARK = re.compile(r"/(done|center_done)/c/[\d/]+$|/(run|grid|hessian)\.json$|/directions/[^/]+\.json$")


def is_mark(path: str) -> bool:
    return bool(MARK.search(path))


def committed(events: list[Event], pattern: str) -> list[int]:
    """The indices of the commits whose target matches `pattern` (a regular expression, searched)."""
    return [i for i, e in enumerate(events) if e.kind in COMMITS and re.search(pattern, e.dst)]


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> Journal:
    return Journal(monkeypatch)


def test_train_grid_hessian_and_export_commit_in_durable_order(journal: Journal, tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "exports" / "new"
    commands = [["train", "mlp", "digits", "--epochs", "1", "--name", "m", "-q"],
                ["grid", "m", "--width", "3", "--pairs", "1", "--batches", "1", "-q"],
                ["hessian", "m", "--top", "2", "--batches", "1", "--batch-size", "64", "--probes", "2", "-q"],
                ["export", "m", "--format", "npz", "--out", str(out / "m.npz")]]
    if importlib.util.find_spec("vtkmodules") is not None:
        commands.append(["export", "m", "--format", "vtk", "--out", str(out / "vtk")])
    for args in commands:
        result = run_in_process(*args, "--store", str(store))
        assert result.returncode == 0, result.stderr
    events = journal.events
    assert violations(events, [store, out]) == []

    # each kind of commit was seen, marks after what they mark
    checkpoints, runs = committed(events, r"/checkpoints/epoch-000[01]\.pt$"), committed(events, r"/run\.json$")
    assert len(checkpoints) == 2 and runs and checkpoints[-1] < runs[-1]
    grid_json = committed(events, r"/grids/\w+/grid\.json$")
    assert grid_json and committed(events, r"landscape\.zarr/loss/zarr\.json$")[0] < grid_json[0]
    marks = committed(events, r"landscape\.zarr/done/c/\d+/0/\d+$")
    assert len(marks) == 2 * 3  # epochs 0 and 1, three rows each
    for i in marks:
        e, y = re.search(r"done/c/(\d+)/0/(\d+)$", events[i].dst).groups()  # type: ignore[union-attr]
        for values in ("loss", "accuracy"):
            assert [j for j in committed(events, rf"landscape\.zarr/{values}/c/{e}/0/0/{y}/0$") if j < i], (values, e, y)
    centres = committed(events, r"landscape\.zarr/center_done/c/\d+/0$")
    assert len(centres) == 2 and all(committed(events, r"/grad_b/c/\d+/0/0$")[n] < i for n, i in enumerate(centres))
    epochs_done = committed(events, r"hessian\.zarr/done/c/\d+$")
    assert len(epochs_done) == 2
    for n, i in enumerate(epochs_done):
        before = [committed(events, pattern)[n] for pattern in
                  (r"hessian\.zarr/eigenvalues/c/\d+/0$", r"hessian\.zarr/trace/c/\d+$", r"/hessians/\w+/hessian\.json$")]
        assert max(before) < i
    assert committed(events, r"/exports/new/m\.npz$")
    assert not list(store.rglob("*.partial"))


def test_the_order_check_catches_writes_that_are_not_durable(trained_store: StoreFactory, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A row written through Zarr's own LocalStore (no fsync) is caught; the same row through the store's `Rows`
    passes, and so does clearing its done-mark (the removal synced in its directory)."""
    import zarr

    from landscape_cli.store.grid_arrays import Rows

    store = trained_store.copy(*M_GRID, to=tmp_path / "store")
    [path] = store.glob("*/grids/*/landscape.zarr")
    rows = Rows(path)
    loss, accuracy = rows.read_row("loss", 1, 0, 2), rows.read_row("accuracy", 1, 0, 2)
    plain = zarr.open_group(path, mode="r+", use_consolidated=False)

    journal = Journal(monkeypatch)
    plain["loss"][1, 0, :, 2, :] = loss + 1
    plain["done"][1, 0, 2] = 1
    caught = violations(journal.events, [store])
    assert any("before its data was fsynced" in v and "/loss/c/1/0/0/2/0" in v for v in caught), caught
    assert any("never fsynced" in v for v in caught) and any(v.startswith("mark ") for v in caught), caught

    journal.events.clear()
    rows.clear_row(1, 0, 2)
    assert not (path / "done/c/1/0/2").exists()
    rows.write_row(1, 0, 2, loss, accuracy)
    assert violations(journal.events, [store]) == []
    assert [e.kind for e in journal.events if e.path.endswith("done/c/1/0/2")] == ["unlink"]
    assert np.array_equal(Rows(path, "r").read_row("loss", 1, 0, 2), loss) and rows.row_done(1, 0, 2)


def test_landscape_fsync_0_opts_out_of_the_fsyncs_and_nothing_else_does() -> None:
    import subprocess
    import sys

    def fsync_on(value: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "LANDSCAPE_FSYNC"}
        if value is not None:
            env["LANDSCAPE_FSYNC"] = value
        out = subprocess.run([sys.executable, "-c", "from landscape_cli import _io; print(_io.FSYNC)"], env=env,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert [fsync_on(v) for v in (None, "1", "yes", "0", "off")] == ["True", "True", "True", "False", "False"]
