"""Ctrl-C (a real SIGINT, to a fresh interpreter) while `landscape import` or `landscape export` is at work, and a
damaged chunk met by a Zarr read: exit 130 (or 1), exactly one line on stderr, nothing half-written (temporary files
removed), the store and an existing --out file as they were. No asyncio noise from zarr's event loop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Grid, StoreFactory, Train, private_copy, subprocess_env, tree

pytestmark = pytest.mark.slow

# a wide grid of which one row is computed (`--shard 0/701`): writing it as CSV takes seconds, computing it does not
GRIDS = (Train("mlp", epochs=1, name="m"),
         Grid("m", epochs=[0], width=701, pairs=1, batches=1, batch_size=64, shard="0/701", name="wide"),
         Grid("m", epochs=[0], width=41, pairs=1, batches=1, batch_size=64, name="plane"))


@pytest.fixture(scope="module")
def grids(trained_store: StoreFactory) -> Path:
    return trained_store.build(*GRIDS)


def interrupted(args: list[str], ready: Path, pattern: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`landscape ARGS` in a fresh interpreter, sent SIGINT as soon as a file matching `pattern` appears under `ready`
    (the work is then under way); its exit code and output."""
    proc = subprocess.Popen([sys.executable, "-m", "landscape_cli", *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not list(ready.glob(pattern)):
        time.sleep(0.002)
    assert proc.poll() is None, f"the command ended before the work was under way: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_ctrl_c_during_an_export_keeps_the_file_it_would_replace(grids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "wide.csv"
    out.parent.mkdir()
    out.write_text("the user's own file\n")
    store_before = tree(grids)
    result = interrupted(["export", "m", "--grid", "wide", "--format", "csv", "--out", str(out), "--force",
                          "--store", str(grids)], out.parent, "*.partial")
    one_line(result, 130, "export interrupted", "nothing half-written", str(out))
    assert [p.name for p in out.parent.iterdir()] == ["wide.csv"] and out.read_text() == "the user's own file\n"
    assert tree(grids) == store_before


def test_ctrl_c_during_an_export_into_new_directories_leaves_none(grids: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "wide.csv"
    result = interrupted(["export", "m", "--grid", "wide", "--format", "csv", "--out", str(out), "--store", str(grids)],
                         tmp_path, "new/deeper/*.partial")
    one_line(result, 130, "export interrupted")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_an_import_keeps_no_run(trained_store: StoreFactory, tmp_path: Path) -> None:
    source = trained_store("cnn", epochs=5)  # six checkpoints to score (the run test_export.py grids)
    [checkpoints] = list(source.glob("*/checkpoints"))
    store = tmp_path / "store"
    result = interrupted(["import", "cnn", "digits", str(checkpoints), "-q", "--store", str(store)], store,
                         "*/checkpoints/epoch-0000.pt")
    one_line(result, 130, "import interrupted", "no half-imported run")
    assert tree(store) == {}


def test_a_damaged_chunk_is_one_line_without_asyncio_noise(grids: Path, tmp_path: Path) -> None:
    """Many chunk reads in flight when one fails its checksum: their tasks, pending at exit, printed hundreds of
    lines ("Task was destroyed but it is pending", "Exception ignored in <coroutine>") after the error."""
    from landscape_cli.store import Store

    store = private_copy(grids, tmp_path)
    st = Store(store)
    chunks = sorted((st.zarr_path(*st.find_grid("plane")) / "loss").rglob("c/**/*"))
    chunks = [c for c in chunks if c.is_file()]
    assert len(chunks) >= 41
    for chunk in chunks:
        chunk.write_bytes(b"damaged!")
    before = tree(store)
    for _ in range(2):  # the noise came in about half the runs
        result = subprocess.run([sys.executable, "-m", "landscape_cli", "export", "m", "--grid", "plane", "--format",
                                 "npz", "--out", str(tmp_path / "x.npz"), "--store", str(store)], cwd=REPO,
                                env=subprocess_env(), capture_output=True, text=True, timeout=120)
        one_line(result, 1, "cannot be read", "checksum")
    assert tree(store) == before and not (tmp_path / "x.npz").exists()
