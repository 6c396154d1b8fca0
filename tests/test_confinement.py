"""Nothing outside its place is ever written: not through a link the store holds, not over a store file by
`--out`, not into the working directory by an empty `--out`.

One tiny mlp run with a small grid (the session's master, copied per test). Each case runs the command a user (or
someone with write access to a shared store) would, and checks the one error line, the exit code and that the store
and the file beside it are byte for byte what they were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, StoreFactory, Train, tree

from landscape_cli.errors import IntegrityError
from landscape_cli.store import Store

GRID = ("grid", "mlp", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "64", "--name", "g", "-q")


@pytest.fixture
def store(trained_store: StoreFactory, tmp_path: Path) -> Path:
    return trained_store.copy(Train("mlp", epochs=1, name="mlp"), Cli(*GRID), to=tmp_path / "store")


def _one_line(result: Any, *needles: str) -> str:
    assert result.exit_code != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _grid_dir(store: Path) -> Path:
    st = Store(store)
    run_id, grid_id = st.find_grid("g")
    return st.grid_dir(run_id, grid_id)


def test_a_lock_file_replaced_by_a_link_never_truncates_its_target(cli: Any, store: Path, tmp_path: Path) -> None:
    """The grid's lock file made a symbolic link to a file outside the store: `grid --resume` refuses in one
    line, and the file it pointed to keeps every byte."""
    outside = tmp_path / "precious.txt"
    outside.write_text("do not truncate me\n")
    lock = _grid_dir(store) / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(outside)
    before = tree(store)
    _one_line(cli(*GRID[:-3], "--resume", "--store", str(store)), "symbolic link", ".lock")
    assert outside.read_text() == "do not truncate me\n"
    assert tree(store) == before and lock.is_symlink()


def test_a_store_directory_replaced_by_a_link_outside_gets_no_lock_file(store: Path, tmp_path: Path) -> None:
    """A grid's locks/ directory made a link to a directory outside the store: no row lock is made there."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    locks = _grid_dir(store) / "locks"
    if locks.exists():
        os.rmdir(locks)
    locks.symlink_to(outside, target_is_directory=True)
    st = Store(store)
    run_id, grid_id = st.find_grid("g")
    with pytest.raises(IntegrityError, match="leads outside the store"):
        st.row_lock(run_id, grid_id, 0, 0, 0).acquire()
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("target", ["checkpoint", "grid.json", "run.json", "store root"])
def test_export_out_never_lands_in_the_store_but_in_the_grids_exports(cli: Any, store: Path, target: str) -> None:
    st = Store(store)
    run_id, grid_id = st.find_grid("g")
    path = {"checkpoint": st.file(run_id, st.read_run(run_id).epochs[-1].checkpoint),
            "grid.json": st.grid_file(run_id, grid_id), "run.json": st.run_file(run_id),
            "store root": store / "exported.csv"}[target]
    before = tree(store)
    _one_line(cli("export", "mlp", "--format", "csv", "--out", str(path), "--store", str(store)),
              "inside the store", "exports/")
    assert tree(store) == before
    inside = st.export_path(run_id, grid_id, "mine.csv")  # the grid's own exports/ directory: allowed
    done = cli("export", "mlp", "--format", "csv", "--out", str(inside), "--store", str(store))
    assert done.exit_code == 0, done.stderr
    assert inside.is_file()


@pytest.mark.parametrize("command", [("export", "mlp", "--format", "csv"), ("plot", "mlp")])
def test_an_empty_out_is_one_line_and_writes_nothing_here(cli: Any, store: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]) -> None:
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    before = tree(store)
    _one_line(cli(*command, "--out", "", "--store", str(store)), "empty --out")
    assert list(here.iterdir()) == [] and tree(store) == before
