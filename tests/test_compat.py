"""Stores written by the first release (0.1.0) still open, resume, plot and verify, with the same ids.

`data/legacy-0.1.0/store` was written by landscape 0.1.0 (`data/legacy-0.1.0/make_store.py`); `ids.json`
holds the run and grid ids that release computed for a range of configurations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from landscape_cli.config import GridConfig, GridOptions, TrainConfig
from landscape_cli.engine.plan import resolve
from landscape_cli.store import Store

LEGACY = Path(__file__).parent / "data" / "legacy-0.1.0"
FULL = ["grid", "legacy", "--epochs", "0,2", "--width", "5", "--pairs", "2", "--batches", "2", "--batch-size", "64",
        "--name", "full"]
PARTIAL = ["grid", "legacy", "--epochs", "1,2", "--width", "7", "--pairs", "1", "--batches", "1", "--batch-size", "64",
           "--span", "0.5", "--norm", "layer", "--no-gradient", "--name", "partial"]
ARRAYS = ("loss", "accuracy", "done", "diverged", "center_loss", "center_accuracy", "grad_a", "grad_b", "center_done")


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    store = tmp_path / "store"  # the tests' $LANDSCAPE_STORE
    shutil.copytree(LEGACY / "store", store)
    return store


def _arrays(store: Path, grid_id: str) -> dict[str, np.ndarray]:
    import xarray as xr

    [path] = store.glob(f"*/grids/{grid_id}/landscape.zarr")
    ds = xr.open_zarr(path)
    return {name: ds[name].values for name in ARRAYS}


def _grid_id(store: Path, name: str) -> str:
    for meta in store.glob("*/grids/*/grid.json"):
        if json.loads(meta.read_text())["name"] == name:
            return meta.parent.name
    raise AssertionError(name)


def test_ids_of_first_release_configurations_are_unchanged() -> None:
    """The first release's grid options, through the one place configurations are built, give its ids."""
    ids = json.loads((LEGACY / "ids.json").read_text())
    st = Store(LEGACY / "store")
    run = st.read_run(ids["run_id"])
    for g in ids["grids"]:
        cfg, _ = resolve(st, run, GridOptions(**g["config"]))
        assert cfg.grid_id == g["grid_id"], g
        assert GridConfig.from_identity(cfg.identity()) == cfg
    for r in ids["runs"]:
        assert TrainConfig(**r["config"]).run_id == r["run_id"], r


def test_complete_legacy_grid_resumes_with_nothing_to_compute(cli: Any, legacy: Path) -> None:
    grid_id = _grid_id(legacy, "full")
    before = _arrays(legacy, grid_id)
    for extra in ([], ["--resume"]):
        done = cli(*FULL, *extra, "--json")
        assert done.exit_code == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["id"] == grid_id and out["rows_computed"] == 0 and out["rows_done"] == out["rows_total"] == 20
    for name, values in _arrays(legacy, grid_id).items():
        assert np.array_equal(values, before[name], equal_nan=True), name


def test_partial_legacy_grid_resumes_only_its_missing_rows(cli: Any, legacy: Path, tmp_path: Path) -> None:
    grid_id = _grid_id(legacy, "partial")
    before = _arrays(legacy, grid_id)
    missing = before["done"] == 0
    assert missing.sum() == 3
    done = cli(*PARTIAL, "--resume", "--json")
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["id"] == grid_id and out["rows_computed"] == 3 and out["rows_done"] == out["rows_total"] == 14
    after = _arrays(legacy, grid_id)
    kept = np.broadcast_to(~missing[:, :, None, :, None], before["loss"].shape)
    assert np.array_equal(after["loss"][kept], before["loss"][kept])  # the first release's rows, untouched
    # the rows computed now agree with the same grid computed from scratch by this release
    fresh = tmp_path / "fresh"
    shutil.copytree(LEGACY / "store", fresh)
    shutil.rmtree(next(fresh.glob("*/grids")))
    assert cli(*PARTIAL, "--store", str(fresh)).exit_code == 0
    reference = _arrays(fresh, grid_id)
    assert np.allclose(after["loss"], reference["loss"], rtol=1e-6, atol=1e-7)
    assert np.array_equal(after["center_loss"], reference["center_loss"])


def test_legacy_store_lists_plots_and_verifies(cli: Any, legacy: Path, tmp_path: Path) -> None:
    listing = cli("ls", "--json")
    assert listing.exit_code == 0, listing.stderr
    [run] = json.loads(listing.stdout)["runs"]
    assert run["name"] == "legacy" and sorted(g["name"] for g in run["grids"]) == ["full", "partial"]
    for grid in ("full", "partial"):
        done = cli("plot", "legacy", "--grid", grid, "--out", str(tmp_path / f"{grid}.png"), "--json")
        assert done.exit_code == 0, done.stderr
    assert cli("verify").exit_code == 0


# --- the second release's store: every kind of grid, Hessian results, an imported run, shards ----------------

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"


@pytest.fixture
def legacy2(tmp_path: Path) -> Path:
    store = tmp_path / "store"  # the tests' $LANDSCAPE_STORE
    shutil.copytree(LEGACY2 / "store", store)
    return store


def _all_arrays(path: Path) -> dict[str, np.ndarray]:
    import zarr

    group: Any = zarr.open_group(path, mode="r")
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def test_second_release_store_resumes_computing_nothing_plots_exports_and_verifies(cli: Any, legacy2: Path,
                                                                                   tmp_path: Path) -> None:
    ids = json.loads((LEGACY2 / "ids.json").read_text())
    grids = {name: gid for name, gid in ids["grids"].items()}
    grids["plane"] = grids.pop("imported")
    runs = {name: ids["imported_id"] if name == "plane" else ids["run_id"] for name in grids}
    for name, gid in grids.items():
        [zarr_path] = legacy2.glob(f"*/grids/{gid}/landscape.zarr")
        before = _all_arrays(zarr_path)
        done = cli("grid", runs[name], "--grid", name, "--resume", "--json")
        assert done.exit_code == 0, (name, done.stderr)
        out = json.loads(done.stdout)
        assert out["id"] == gid and out["rows_computed"] == 0 and out["rows_done"] == out["rows_total"] > 0, name
        after = _all_arrays(zarr_path)
        assert before.keys() == after.keys(), name
        for array, values in before.items():
            assert np.array_equal(values, after[array], equal_nan=True), (name, array)
        drawn = cli("plot", runs[name], "--grid", name, "--out", str(tmp_path / f"{name}.png"), "--json")
        assert drawn.exit_code == 0, (name, drawn.stderr)
        exported = cli("export", runs[name], "--grid", name, "--format", "npz", "--out", str(tmp_path / f"{name}.npz"),
                       "--json")
        assert exported.exit_code == 0, (name, exported.stderr)
        with np.load(tmp_path / f"{name}.npz") as npz:
            assert np.array_equal(npz["loss"], before["loss"], equal_nan=True), name
    # the Hessian results hold epoch 3: the same command computes nothing, and they plot and export
    again = cli("hessian", "legacy2", "--epochs", "3", "--top", "2", "--probes", "8", "--batches", "1", "--batch-size",
                "64", "--json")
    assert again.exit_code == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["id"] == ids["hessian_id"] and result["computed"] == []
    assert cli("plot", "legacy2", "--hessian", "--out", str(tmp_path / "hessian.png")).exit_code == 0
    assert cli("export", "legacy2", "--hessian", "--format", "csv", "--out", str(tmp_path / "hessian.csv")).exit_code == 0
    listing = json.loads(cli("ls", "--json").stdout)
    assert sorted(r["id"] for r in listing["runs"]) == sorted([ids["run_id"], ids["imported_id"]])
    checked = cli("verify", "--json")
    assert checked.exit_code == 0, checked.stdout + checked.stderr
