"""What `landscape ls` shows, on a copy of the frozen second-release store (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())


def test_ls_lists_each_runs_hessian_results_in_its_table(cli: Any, store: Path) -> None:
    shutil.copytree(LEGACY2 / "store", store)
    done = cli("ls")
    assert done.exit_code == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if IDS["hessian_id"] in line]
    assert len(rows) == 1, done.stdout
    row = rows[0]
    assert "curvature" in row and "hessian top 2" in row and "batches 1x64" in row and "ep 3" in row
    assert "complete" in row
    # the same results as `ls --json` reports them
    [run] = [r for r in json.loads(cli("ls", "--json").stdout)["runs"] if r["id"] == IDS["run_id"]]
    [h] = [h for h in run["hessians"] if h["id"] == IDS["hessian_id"]]
    assert h["name"] == "curvature" and h["epochs_done"] == [3] and h["batches"] == 1


def test_ls_shows_partial_hessian_results_with_their_progress(cli: Any, store: Path) -> None:
    import zarr

    shutil.copytree(LEGACY2 / "store", store)
    [results] = store.glob(f"*/hessians/{IDS['hessian_id']}/hessian.zarr")
    zarr.open_array(results / "done", mode="r+")[0] = 0  # as a kill before the epoch's done-mark leaves it
    row = next(line for line in cli("ls").stdout.splitlines() if IDS["hessian_id"] in line)
    assert "0/1 epochs done" in row and "complete" not in row
