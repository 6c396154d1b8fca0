"""`grid --metric module:function`: user metrics stored beside loss and accuracy, against a recomputation by hand."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Train, run_in_process, tree

M = Train("mlp", epochs=1, name="m")
METRICS = '''
import torch


def margin(out, y):
    """The mean margin: the true class's logit minus the largest other logit."""
    top = out.gather(1, y[:, None])[:, 0]
    others = out.masked_fill(torch.nn.functional.one_hot(y, out.shape[1]).bool(), float("-inf")).amax(1)
    return (top - others).mean()


def class3(out, y):
    """The cross-entropy of the samples of class 3 (a per-class loss), as a float."""
    keep = y == 3
    return float(torch.nn.functional.cross_entropy(out[keep], y[keep])) if keep.any() else float("nan")


def boom(out, y):
    raise RuntimeError("no metric today")


def many(out, y):
    return out.mean(0)
'''


@pytest.fixture
def metrics_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_metrics.py"
    path.write_text(METRICS)
    return path


def test_a_metric_grid_equals_a_recomputation_and_its_exports_carry_it(copy_store: Any, metrics_file: Path,
                                                                        tmp_path: Path) -> None:
    """An interpolation line (hand-buildable weights (1 − t)·w0 + t·w1) with two metrics: each stored value is the
    metric of the hand-built model's outputs on the grid's batch; CSV and netCDF exports carry them by name."""
    import xarray as xr

    from landscape_cli.data import load_dataset
    from landscape_cli.kernel.batches import Batches
    from landscape_cli.models.checkpoints import build_model, load_epoch
    from landscape_cli.store import Store

    store = copy_store(M)
    out = run_in_process("grid", "m", "--directions", "interpolate", "--epochs", "0", "--to-epoch", "1", "--width",
                         "5", "--batches", "2", "--batch-size", "64", "--metric", f"{metrics_file}:margin",
                         "--metric", f"per_class={metrics_file}:class3", "--store", str(store), "-q")
    assert out.returncode == 0, out.stderr
    st = Store(store)
    run = st.read_run(st.resolve("m"))
    [grid] = st.grids(run.id)
    ds = xr.open_zarr(st.zarr_path(run.id, grid.id), consolidated=False)
    assert ds.margin.dims == ds.loss.dims and ds.per_class.dims == ds.loss.dims
    a = load_epoch(st, run.id, run.record(0))
    b = load_epoch(st, run.id, run.record(1))["state_dict"]
    batches = list(Batches(load_dataset("digits"), "train", 2, 64).on(torch.device("cpu"), False))
    for i, t in enumerate(ds.x.values):
        net = build_model(a)
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_((1 - t) * a["state_dict"][name].double() + t * b[name].double())
        net.train()
        for j, (x, y) in enumerate(batches):
            with torch.no_grad():
                logits = net(x)
            top = logits.gather(1, y[:, None])[:, 0]
            others = logits.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).amax(1)
            keep = y == 3
            assert float(ds.loss.values[0, 0, j, i]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
            assert float(ds.margin.values[0, 0, j, i]) == pytest.approx(float((top - others).mean()), rel=1e-4, abs=1e-5)
            assert float(ds.per_class.values[0, 0, j, i]) == pytest.approx(
                float(F.cross_entropy(logits[keep], y[keep])), rel=1e-4)
    exported = tmp_path / "g.csv"
    assert run_in_process("export", "m", "--format", "csv", "--out", str(exported), "--store", str(store)).returncode == 0
    rows = list(csv.DictReader(exported.open()))
    assert {"margin", "per_class"} <= set(rows[0])
    by_point = {(int(r["batch"]), float(r["x"])): float(r["margin"]) for r in rows}
    assert by_point[(1, float(ds.x.values[2]))] == pytest.approx(float(ds.margin.values[0, 0, 1, 2]), rel=1e-6)
    nc = tmp_path / "g.nc"
    assert run_in_process("export", "m", "--format", "netcdf", "--out", str(nc), "--store", str(store)).returncode == 0
    with xr.open_dataset(nc) as exported_ds:
        assert np.allclose(exported_ds.margin.values, ds.margin.values, equal_nan=True)
    figure = run_in_process("plot", "m", "--metric", "margin", "--out", str(tmp_path / "m.png"), "--store", str(store))
    assert figure.returncode == 0, figure.stderr


@pytest.mark.parametrize("ref, needle", [
    ("{f}:boom", "the metric 'boom' ({f}:boom) raised RuntimeError: no metric today"),
    ("{f}:many", "returned a tensor of shape (10,): a metric returns one number per batch"),
    ("{f}:nothing", "has no callable 'nothing'"),
    ("loss={f}:margin", "'loss' cannot name a metric"),
])
def test_a_bad_metric_is_one_line_and_writes_nothing(copy_store: Any, metrics_file: Path, ref: str,
                                                      needle: str) -> None:
    store = copy_store(M)
    before = tree(store)
    out = run_in_process("grid", "m", "--width", "3", "--pairs", "1", "--batches", "1", "--metric",
                         ref.format(f=metrics_file), "--store", str(store), "-q")
    assert out.returncode == 2 and needle.format(f=metrics_file) in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert tree(store) == before


def test_plotting_a_metric_the_grid_lacks_is_one_line(copy_store: Any, tmp_path: Path) -> None:
    store = copy_store(M)
    assert run_in_process("grid", "m", "--width", "3", "--pairs", "1", "--batches", "1", "--store", str(store),
                          "-q").returncode == 0
    out = run_in_process("plot", "m", "--metric", "margin", "--out", str(tmp_path / "p.png"), "--store", str(store))
    assert out.returncode == 2 and "unknown --metric 'margin'" in out.stderr and "loss, accuracy" in out.stderr


def test_the_api_takes_functions_and_equals_the_cli(copy_store: Any, metrics_file: Path) -> None:
    """`landscape_cli.line(model, batches, metrics=[margin])` stores the function's values as the CLI stores the same
    function given by reference."""
    import importlib.util

    import xarray as xr
    from conftest import one_thread

    import landscape_cli
    from landscape_cli.data import load_dataset
    from landscape_cli.kernel.batches import Batches
    from landscape_cli.models.checkpoints import build_model, load_epoch
    from landscape_cli.store import Store

    store = copy_store(M)
    assert run_in_process("grid", "m", "--dims", "1", "--width", "5", "--pairs", "1", "--batches", "1", "--batch-size",
                          "64", "--metric", f"{metrics_file}:margin", "--store", str(store), "-q").returncode == 0
    st = Store(store)
    run = st.read_run(st.resolve("m"))
    [grid] = st.grids(run.id)
    cli = xr.open_zarr(st.zarr_path(run.id, grid.id), consolidated=False)
    spec = importlib.util.spec_from_file_location("my_metrics_api", metrics_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = build_model(load_epoch(st, run.id, run.record(1)))
    batches = list(Batches(load_dataset("digits"), "train", 1, 64).on(torch.device("cpu"), False))
    with one_thread():
        api = landscape_cli.line(model, batches, width=5, pairs=1, metrics=[module.margin])
    assert np.array_equal(api.margin.values[0], cli.margin.sel(epoch=1).values, equal_nan=True)
    assert np.array_equal(api.loss.values[0], cli.loss.sel(epoch=1).values, equal_nan=True)
