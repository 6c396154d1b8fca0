"""`--threads N`: torch's threads for a computation, recorded by the grid or Hessian results it computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from conftest import Train, run_in_process

M = Train("mlp", epochs=1, name="m")
GRID = ["grid", "m", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "64", "-q"]


def _threads(store: Path) -> dict[str, list[int]]:
    [meta] = list(store.glob("*/grids/*/grid.json"))
    return dict(json.loads(meta.read_text())["evaluator"]["threads"])


def test_the_grid_runs_and_records_the_threads_asked_for(copy_store: Any, cli: Any) -> None:
    store = copy_store(M)
    before = torch.get_num_threads()
    try:
        result = cli(*GRID, "--threads", "2", "--epochs", "0", "--store", str(store))
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2 and _threads(store) == {"one process": [2]}
    finally:
        torch.set_num_threads(before)
    # resumed with another count: recorded beside the first, and the user is told
    out = run_in_process(*GRID, "--threads", "1", "--epochs", "1", "--store", str(store))
    assert out.returncode == 0, out.stderr
    assert _threads(store) == {"one process": [2, 1]} and "computed with 2 torch thread(s) and continues with 1" in \
        " ".join(out.stderr.split())


def test_a_bad_thread_count_is_one_line(copy_store: Any) -> None:
    store = copy_store(M)
    for bad in ("0", "-1", "many"):
        out = run_in_process(*GRID, "--threads", bad, "--store", str(store))
        assert out.returncode == 2 and "--threads" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_hessian_results_record_the_device_and_threads_of_each_checkpoint(copy_store: Any) -> None:
    store = copy_store(M)
    hessian = ["hessian", "m", "--top", "1", "--probes", "2", "--batches", "1", "--batch-size", "64", "-q",
               "--store", str(store)]
    assert run_in_process(*hessian, "--epochs", "0", "--threads", "2").returncode == 0
    [path] = list(store.glob("*/*/*/hessian.json"))
    assert json.loads(path.read_text())["computed_with"] == {"0": {"device": "cpu", "threads": 2}}
    assert run_in_process(*hessian, "--epochs", "0,1", "--threads", "1").returncode == 0  # epoch 0 is kept as it was
    assert json.loads(path.read_text())["computed_with"] == {"0": {"device": "cpu", "threads": 2},
                                                             "1": {"device": "cpu", "threads": 1}}
