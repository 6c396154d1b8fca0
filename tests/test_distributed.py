"""Many processes on one grid: job-array shards, torchrun ranks (gloo on CPU), killed ranks; the evaluator
recorded with the grid (batched vs loop, precision) and bad input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, StoreFactory, private_copy, subprocess_env, tree

from landscape_cli.engine.compute import grid
from landscape_cli.engine.distributed import Share, parse_shard, torchrun_ranks
from landscape_cli.errors import LandscapeError, UsageError
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows

OPTIONS = {"epochs": [0, 1], "width": 7, "pairs": 2, "batches": 2, "batch_size": 64}
CLI_OPTIONS = ["--epochs", "0,1", "--width", "7", "--pairs", "2", "--batches", "2", "--batch-size", "64"]
REFERENCE_ID: list[str] = []
ARRAYS = ("loss", "accuracy", "done", "center_loss", "center_accuracy", "center_done", "grad_a", "grad_b")


@pytest.fixture(scope="module")
def trained(trained_store: StoreFactory) -> Path:
    """The session's master (trained once, read-only): the tests take copies."""
    return trained_store("cnn", epochs=1, name="tiny")


@pytest.fixture(scope="module")
def reference(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The grid computed by one process with one thread: what every split of it must equal bitwise."""
    store = private_copy(trained, tmp_path_factory.mktemp("reference"))
    with one_thread():
        result = grid("tiny", store=store, progress=False, **OPTIONS)  # type: ignore[arg-type]
    assert result.complete
    REFERENCE_ID.append(result.grid_id)
    return arrays(result.zarr_path)


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    return private_copy(trained, tmp_path)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def arrays(zarr_path: Path) -> dict[str, np.ndarray]:
    rows = Rows(zarr_path, "r")
    return {name: np.asarray(rows[name][...]) for name in ARRAYS}


def zarr_of(store: Path) -> Path:
    st = Store(store)
    run_id = st.resolve("tiny")
    [grid_dir] = list(st.run_dir(run_id).glob("grids/*"))
    return grid_dir / "landscape.zarr"


def assert_bitwise(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name in ARRAYS:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # NaN == NaN here; values bitwise


def landscape(*args: str, store: Path, threads: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "landscape_cli", *args, "--store", str(store)],
                            env=subprocess_env(threads), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def torchrun(*args: str, store: Path, nproc: int = 2) -> subprocess.Popen[str]:
    env = subprocess_env(1)
    env.pop("OMP_NUM_THREADS")  # the ranks set their threads themselves: cores / local ranks
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(nproc), "-m", "landscape_cli", "grid", *args, "--store", str(store)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


# --- the partition ------------------------------------------------------------------------------


def test_the_partition_covers_every_unit_once() -> None:
    epochs, pairs, rows = 3, 2, 5
    for n in (1, 2, 3, 7):
        shares = [Share(i, n, "shard") for i in range(n)]
        owners = [[s.index for s in shares if s.owns_row(e, p, y, pairs, rows)]
                  for e in range(epochs) for p in range(pairs) for y in range(rows)]
        assert all(len(o) == 1 for o in owners)
        counts = np.bincount([o[0] for o in owners], minlength=n)
        assert counts.max() - counts.min() <= 1  # balanced
        assert all(sum(s.owns_center(e) for s in shares) == 1 for e in range(epochs))


def test_shard_and_rank_parsing() -> None:
    assert parse_shard("1/4") == Share(1, 4, "shard")
    for bad, says in (("2/2", "must be 0 to 1"), ("0/0", "at least 1"), ("a/b", "give I/N"), ("1", "give I/N"),
                      ("-1/2", "must be 0 to 1")):
        with pytest.raises(UsageError, match=says):
            parse_shard(bad)
    assert torchrun_ranks({}) is None
    ranks = torchrun_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                            "TORCHELASTIC_RUN_ID": "x"})
    assert ranks is not None and (ranks.rank, ranks.world, ranks.local_rank, ranks.local_world) == (1, 2, 1, 2)


# --- shards and ranks equal one process bitwise ------------------------------------------------


@pytest.mark.slow
def test_two_shards_at_once_equal_one_process(store: Path, reference: dict[str, np.ndarray]) -> None:
    procs = [landscape("grid", "tiny", *CLI_OPTIONS, "--shard", f"{i}/2", "--json", store=store) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, errs) in zip(procs, outs, strict=True):
        assert p.returncode == 0, errs[-2000:]
    summaries = [json.loads(out) for out, _ in outs]
    assert [s["processes"] for s in summaries] == [{"how": "shard", "index": i, "count": 2} for i in range(2)]
    assert sum(s["rows_computed"] for s in summaries) == 2 * 2 * 7  # each row computed once
    assert all(s["rows_computed"] == 14 for s in summaries)
    assert_bitwise(arrays(zarr_of(store)), reference)


def test_a_shard_alone_leaves_the_rest_to_resume(store: Path, reference: dict[str, np.ndarray], cli: Any) -> None:
    with one_thread():
        first = grid("tiny", store=store, progress=False, shard="1/3", **OPTIONS)  # type: ignore[arg-type]
        assert first.computed_rows == 9 and not first.complete
        done = np.asarray(Rows(first.zarr_path, "r")["done"][...])
        owned = [Share(1, 3, "shard").owns_row(e, p, y, 2, 7) for e in range(2) for p in range(2) for y in range(7)]
        assert done.reshape(-1).astype(bool).tolist() == owned
        listing = json.loads(cli("ls", "--json").output)  # how far it is, whoever wrote it
        [g] = listing["runs"][0]["grids"]
        assert (g["rows_done"], g["rows_total"]) == (9, 28)
        rest = grid("tiny", store=store, progress=False, resume=True, **OPTIONS)  # type: ignore[arg-type]
    assert rest.computed_rows == 19 and rest.complete
    assert_bitwise(arrays(rest.zarr_path), reference)


@pytest.mark.slow
def test_torchrun_ranks_equal_one_process(store: Path, reference: dict[str, np.ndarray]) -> None:
    proc = torchrun("tiny", *CLI_OPTIONS, store=store)
    out, errs = proc.communicate(timeout=600)
    assert proc.returncode == 0, errs[-3000:]
    assert out.count("rank 0 of 2: computed 28 rows") == 1, out  # rank 0 reports every rank's rows; rank 1 is quiet
    assert out.count("grid ") == 1
    assert_bitwise(arrays(zarr_of(store)), reference)


@pytest.mark.slow
def test_bad_input_on_every_rank_is_one_line(store: Path) -> None:
    before = tree(store)
    proc = torchrun("tiny", *CLI_OPTIONS, "--epochs", "7", store=store)
    _, errs = proc.communicate(timeout=600)
    assert proc.returncode != 0
    lines = [line for line in errs.splitlines() if "no checkpoint for epoch 7" in line]
    assert len(lines) == 2, errs[-3000:]  # each rank ends with the same line
    # no traceback through our code (torchrun's launcher adds its own report of failed workers)
    assert not [line for line in errs.splitlines() if line.strip().startswith("File") and "landscape_cli" in line]
    assert tree(store) == before


def _worker(rank: int, parent: int) -> int | None:
    """The pid of torchrun's worker of `rank` (a descendant of `parent`)."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if f"RANK={rank}".encode() in environ and b"landscape_cli" in cmdline and b"torch.distributed.run" not in \
                    cmdline and pid != parent:
                return pid
    return None


@pytest.mark.slow
def test_a_killed_rank_loses_only_its_unfinished_rows(store: Path) -> None:
    options = ["--epochs", "0,1", "--width", "9", "--pairs", "2", "--batches", "8", "--batch-size", "32"]
    proc = torchrun("tiny", *options, store=store)
    shares = [Share(i, 2, "rank") for i in range(2)]
    try:
        deadline = time.monotonic() + 300
        while True:  # until both ranks have finished rows
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
            done = _done(store)
            if done is not None and all(
                    any(done[e, p, y] and s.owns_row(e, p, y, 2, 9) for e, p, y in np.ndindex(*done.shape))
                    for s in shares):
                break
            time.sleep(0.05)
        victim = _worker(1, proc.pid)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    after = _done(store)
    assert after is not None and not after.all()
    zarr_path = zarr_of(store)
    kept = {idx: Rows(zarr_path, "r").read_row("loss", *idx) for idx in np.ndindex(*after.shape) if after[idx]}
    for s in shares:  # every rank's finished rows survived
        assert any(after[idx] and s.owns_row(*idx, 2, 9) for idx in kept)
    with one_thread():
        result = grid("tiny", store=store, progress=False, resume=True, epochs=[0, 1], width=9, pairs=2, batches=8,
                      batch_size=32)
    assert result.complete and result.computed_rows == int((~after.astype(bool)).sum())
    rows = Rows(zarr_path, "r")
    for idx, values in kept.items():  # untouched by the resume
        np.testing.assert_array_equal(rows.read_row("loss", *idx), values)


def _done(store: Path) -> np.ndarray | None:
    try:
        return np.asarray(Rows(zarr_of(store), "r")["done"][...]).astype(bool)
    except (OSError, ValueError, KeyError, LandscapeError):  # not created yet
        return None


# --- the evaluator a grid records ----------------------------------------------------------------


def test_batched_grid_agrees_with_the_loop_and_is_recorded(store: Path, reference: dict[str, np.ndarray]) -> None:
    with one_thread():
        result = grid("tiny", store=store, progress=False, points_per_pass=3, **OPTIONS)  # type: ignore[arg-type]
    got = arrays(result.zarr_path)
    np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["accuracy"], reference["accuracy"], rtol=1e-5, atol=1e-6)
    grid_json = json.loads((result.path / "grid.json").read_text())
    assert grid_json["evaluator"] == {"name": "batched", "points_per_pass": 3, "precision": "fp32", "device": "cpu",
                                      "deterministic": True, "threads": {"one process": [1]}}
    assert [result.grid_id] == REFERENCE_ID  # the evaluator is not part of the grid's identity


def test_resuming_with_another_evaluator_is_refused(store: Path, cli: Any) -> None:
    with one_thread():
        grid("tiny", store=store, progress=False, points_per_pass=2, shard="0/2", **OPTIONS)  # type: ignore[arg-type]
    before = tree(store)
    for extra in (["--resume"], ["--resume", "--shard", "1/2"]):
        r = cli("grid", "tiny", *CLI_OPTIONS, "--points-per-pass", "1", *extra)
        assert r.exit_code != 0
        [line] = r.output.strip().splitlines()
        assert "batched evaluator (2 points per pass, fp32) on cpu" in line and "--points-per-pass 2" in line
    assert tree(store) == before
    with one_thread():  # without the option the recorded evaluator is used
        result = grid("tiny", store=store, progress=False, resume=True, **OPTIONS)  # type: ignore[arg-type]
    assert result.complete and result.evaluation is not None and result.evaluation.points_per_pass == 2


def test_precision_is_part_of_the_identity(store: Path, reference: dict[str, np.ndarray]) -> None:
    with one_thread():
        bf16 = grid("tiny", store=store, progress=False, precision="bf16", **OPTIONS)  # type: ignore[arg-type]
        fp32 = grid("tiny", store=store, progress=False, **OPTIONS)  # type: ignore[arg-type]
    assert bf16.grid_id != fp32.grid_id and bf16.meta.config.identity()["precision"] == "bf16"
    assert "precision" not in fp32.meta.config.identity()  # ids of fp32 grids are what they were
    got, want = arrays(bf16.zarr_path)["loss"], reference["loss"]
    np.testing.assert_allclose(got, want, rtol=5e-2)
    assert not np.array_equal(got, want)


@pytest.mark.parametrize("args, says", [
    (["--shard", "2/2"], "must be 0 to 1"),
    (["--shard", "0/0"], "at least 1"),
    (["--shard", "one"], "give I/N"),
    (["--precision", "fp64"], "unknown --precision 'fp64'"),
    (["--points-per-pass", "0"], "--points-per-pass"),
])
def test_bad_distribution_options_are_one_line(store: Path, cli: Any, args: list[str], says: str) -> None:
    before = tree(store)
    r = cli("grid", "tiny", *CLI_OPTIONS, *args)
    assert r.exit_code != 0
    [line] = r.output.strip().splitlines()
    assert says in line
    assert tree(store) == before
