"""Exports (NetCDF, CSV, VTK, npz) read back with independent readers equal the grid's Zarr arrays exactly.

Every grid kind (a random plane and line, an interpolation, a PCA plane with its path, a Hessian plane)
and a regression run; a partial grid (rows not done) and diverged points; bad output paths and formats.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import Grid, StoreFactory, Train, private_copy, tree

from landscape_cli.errors import StoreError, UsageError
from landscape_cli.exchange.export import HIDDENPOINT, JSON_ATTRS, LOG_OFFSET, MANIFEST, NPZ_ATTRS, export, height, open_netcdf
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows

USERLAND = Path(__file__).parent / "userland"
SMALL = {"width": 5, "batches": 2, "batch_size": 64, "progress": False}
GRIDS = ["plane", "line", "pca", "interp", "hess", "reg"]
needs_vtk = pytest.mark.skipif(importlib.util.find_spec("vtkmodules") is None,
                               reason="vtk is not installed: pip install 'landscape-cli[vtk]'")


@pytest.fixture(scope="module")
def trained(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store with a grid of every kind (each named), shared by the module's tests.

    The module's copy of the session's master (each run trained once per session)."""
    return trained_store.copy(
        Train("cnn", epochs=3, name="t"),
        Grid("t", epochs=[2, 3], pairs=2, name="plane", **SMALL),
        Grid("t", dims=1, pairs=2, name="line", **SMALL),
        Grid("t", directions="interpolate", epochs=[0], to_epoch=3, name="interp", **SMALL),
        Grid("t", directions="pca", name="pca", **SMALL),
        Train("mlp", epochs=1, name="m"),
        Grid("m", directions="hessian", epochs=[1], span=0.02, layer="3.weight", name="hess", **{**SMALL, "batches": 1}),
        Train("toy_factories:regressor", "toy_factories:waves", epochs=1, batch_size=32, lr=0.01, name="waves",
              syspath=USERLAND),
        Grid("waves", pairs=1, name="reg", syspath=USERLAND, **{**SMALL, "width": 3}),
        to=tmp_path_factory.mktemp("export") / "store")


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    return private_copy(trained, tmp_path)


def _run_of(name: str) -> str:
    return {"hess": "m", "reg": "waves"}.get(name, "t")


def _zarr_path(store: Path, name: str) -> Path:
    st = Store(store)
    run_id, grid_id = st.find_grid(name)
    return st.zarr_path(run_id, grid_id)


def _stored(store: Path, name: str) -> dict[str, Any]:
    """Every array of the grid's Zarr group, with its dimension names, read with zarr itself."""
    root = zarr.open_group(_zarr_path(store, name), mode="r", use_consolidated=False)
    return {n: (np.asarray(a[...]), list(a.metadata.dimension_names)) for n, a in root.arrays()}  # type: ignore[union-attr,index]


def _bits(a: np.ndarray) -> np.ndarray:
    """Floats as their bit patterns (NaN payloads and signs included), anything else as it is."""
    a = np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bits, except that any NaN equals any NaN (a text format writes every NaN as 'nan')."""
    a, b = np.asarray(a), np.asarray(b)
    nan = np.isnan(a)
    return a.shape == b.shape and np.array_equal(nan, np.isnan(b)) and np.array_equal(_bits(a[~nan]), _bits(b[~nan]))


def _point_done(stored: dict[str, Any]) -> np.ndarray:
    done, done_dims = stored["done"]
    loss, loss_dims = stored["loss"]
    index = tuple(slice(None) if d in done_dims else None for d in loss_dims)
    return np.broadcast_to(done[index] > 0, loss.shape)


def _masked(stored: dict[str, Any], name: str) -> np.ndarray:
    return np.where(_point_done(stored), stored[name][0], np.float32(np.nan))


# --- NetCDF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRIDS)
def test_netcdf_reads_back_identical_to_the_zarr_group(trained: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.nc"
    result = export(_run_of(name), grid=name, format="netcdf", out=out, store=trained)
    assert result.path == out and result.files == [out] and out.read_bytes()[:4] == b"\x89HDF"  # NetCDF-4 (HDF5)
    with xr.open_dataset(out, engine="h5netcdf") as raw:
        got = raw.load()
    for var in [got, *got.variables.values()]:  # the JSON-encoded attributes, decoded as a reader would
        encoded = json.loads(var.attrs.pop(JSON_ATTRS, "[]"))
        var.attrs.update({k: json.loads(var.attrs[k]) for k in encoded})
    expected = xr.open_zarr(_zarr_path(trained, name)).load()
    xr.testing.assert_equal(got, expected)  # the CF attributes added: tests/test_export_formats.py
    for key in [None, *expected.variables]:  # the store's attributes kept, but the axes' names and numeric lists
        have, want = (got.attrs, expected.attrs) if key is None else (got[key].attrs, expected[key].attrs)
        assert {k: v for k, v in want.items() if k not in ("long_name", "explained_variance_ratio")}.items() \
            <= have.items(), key
    assert "config" in got.attrs and isinstance(got.attrs["config"], dict)
    for key, var in expected.variables.items():
        assert _same(got[key].values, var.values), key  # dtypes (float32, uint8, int64) and bits
    for key, (values, dims) in _stored(trained, name).items():
        assert _same(got[key].values, values) and list(got[key].dims) == dims, key
    xr.testing.assert_equal(open_netcdf(out), expected)
    if name == "reg":
        assert result.task == "regression" and bool(np.isnan(got.accuracy.values).all())
        assert any("regression" in n for n in result.notes)


# --- npz --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRIDS)
def test_npz_holds_every_array_bitwise(trained: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.npz"
    result = export(_run_of(name), grid=name, format="npz", out=out, store=trained)
    assert result.files == [out]
    stored = _stored(trained, name)
    with np.load(out, allow_pickle=False) as f:
        got = {k: f[k] for k in f.files}
    assert set(got) == {*stored, NPZ_ATTRS}
    for key, (values, _dims) in stored.items():
        assert _same(got[key], values), key
    meta = json.loads(str(got[NPZ_ATTRS]))
    root = zarr.open_group(_zarr_path(trained, name), mode="r", use_consolidated=False)
    assert meta["attributes"] == dict(root.attrs)
    assert {k: v["dims"] for k, v in meta["arrays"].items()} == {k: d for k, (_v, d) in stored.items()}
    assert meta["arrays"]["loss"]["attributes"] == dict(root["loss"].attrs)


# --- CSV --------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.parametrize("name", GRIDS)
def test_csv_long_format_reads_back_to_the_same_float32(trained: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.csv"
    result = export(_run_of(name), grid=name, format="csv", out=out, store=trained)
    stored = _stored(trained, name)
    loss, dims = stored["loss"]
    header, rows = _read_csv(out)
    axes = ["x", "y"] if "y" in dims else ["x"]
    assert header == ["run", "grid", "epoch", "pair", "batch", *axes, "loss", "accuracy", "done"]
    assert len(rows) == loss.size == result.points_total
    # every row's coordinates name its point: put the values back where they belong
    index = {d: {v: i for i, v in enumerate(stored[d][0].tolist())} for d in dims}
    got_loss, got_acc = np.full(loss.shape, 7.0, np.float32), np.full(loss.shape, 7.0, np.float32)
    got_done = np.full(loss.shape, 9, np.uint8)
    for row in rows:
        at = tuple(index[d][int(row[d]) if d in ("epoch", "pair", "batch") else float(row[d])] for d in dims)
        got_loss[at], got_acc[at] = np.float32(row["loss"]), np.float32(row["accuracy"])
        got_done[at] = int(row["done"])
    assert _same_values(got_loss, _masked(stored, "loss")) and _same_values(got_acc, _masked(stored, "accuracy"))
    assert np.array_equal(got_done, _point_done(stored).astype(np.uint8))
    if name == "pca":
        path_csv = tmp_path / f"{name}_path.csv"
        assert result.files == [out, path_csv]
        header, rows = _read_csv(path_csv)
        assert header == ["run", "grid", "path_epoch", "batch", "path_x", "path_y", "path_residual", "path_loss",
                          "path_accuracy"]
        path_loss = stored["path_loss"][0]
        assert len(rows) == path_loss.size
        for row in rows:
            e = stored["path_epoch"][0].tolist().index(int(row["path_epoch"]))
            assert np.float32(row["path_loss"]) == path_loss[e, int(row["batch"])]
            assert float(row["path_x"]) == stored["path_x"][0][e] and float(row["path_y"]) == stored["path_y"][0][e]
    else:
        assert result.files == [out]


# --- VTK --------------------------------------------------------------------------------------------


def _read_vtk(path: Path) -> Any:
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLStructuredGridReader

    reader = vtkXMLStructuredGridReader() if path.suffix == ".vts" else vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def _field(data: Any, name: str) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    array = data.GetPointData().GetArray(name)
    assert array is not None, name
    return vtk_to_numpy(array)


def _points(data: Any) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(data.GetPoints().GetData())


def _check_piece(data: Any, xs: np.ndarray, ys: np.ndarray, loss: np.ndarray, done: np.ndarray,
                 zmax: float | None = None, log: bool = False, scale: float = 1.0) -> int:
    """A file's points against the stored values: (x, y, height) where shown, hidden where missing or not
    finite, the `loss` field as stored. Returns the hidden points."""
    gx, gy = np.meshgrid(xs, ys)
    z = height(loss, zmax, log).ravel()
    shown = done.ravel() & np.isfinite(z)
    points = _points(data)
    assert points.shape == (z.size, 3)
    assert np.array_equal(points[:, 0], gx.ravel()) and np.array_equal(points[:, 1], gy.ravel())
    assert np.array_equal(points[shown, 2], z[shown] * scale) and np.isfinite(points[:, 2]).all()
    assert _same_values(_field(data, "loss"), np.where(done, loss, np.nan).ravel())
    assert np.array_equal(_field(data, "done"), done.ravel().astype(np.uint8))
    assert np.array_equal(_field(data, "height")[shown], z[shown]) and np.isnan(_field(data, "height")[~shown]).all()
    ghost = _field(data, "vtkGhostType")
    assert np.array_equal(ghost, np.where(shown, 0, HIDDENPOINT))
    assert [bool(data.IsPointVisible(i)) for i in range(z.size)] == shown.tolist() if hasattr(data, "IsPointVisible") \
        else True
    return int((~shown).sum())


def _check_surface_cells(data: Any, shown: np.ndarray) -> None:
    """ParaView draws the cells whose four corners are all shown: a cell touching a hidden point is blanked."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkFiltersGeometry import vtkGeometryFilter

    ny, nx = shown.shape
    corners = shown[:-1, :-1] & shown[1:, :-1] & shown[:-1, 1:] & shown[1:, 1:]
    assert [bool(data.IsCellVisible(c)) for c in range((ny - 1) * (nx - 1))] == corners.ravel().tolist()
    cells = vtk_to_numpy(data.GetCellData().GetArray("vtkGhostType"))
    assert np.array_equal(cells, np.where(corners.ravel(), 0, 32))
    surface = vtkGeometryFilter()  # what ParaView's and VTK's surface rendering extracts
    surface.SetInputData(data)
    surface.Update()
    assert surface.GetOutput().GetNumberOfCells() == int(corners.sum())


def _check_line_cells(data: Any, shown: np.ndarray) -> None:
    """A line's polylines join consecutive shown points only."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    joined = vtk_to_numpy(data.GetLines().GetConnectivityArray()).tolist() if data.GetNumberOfLines() else []
    loners = vtk_to_numpy(data.GetVerts().GetConnectivityArray()).tolist() if data.GetNumberOfVerts() else []
    assert sorted(joined + loners) == np.flatnonzero(shown).tolist()


def _check_vtk_export(store: Path, name: str, out: Path, result: Any, zmax: float | None = None,
                      log: bool = False) -> int:
    stored = _stored(store, name)
    loss, dims = stored["loss"]
    accuracy = stored["accuracy"][0]
    done = _point_done(stored)
    plane = "y" in dims
    xs = stored["x"][0]
    ys = stored["y"][0] if plane else np.zeros(1)
    suffix = ".vts" if plane else ".vtp"
    expected = []
    hidden = 0
    scale = json.loads((out / MANIFEST).read_text())["height_scale"]
    for ei, epoch in enumerate(stored["epoch"][0].tolist()):
        for p in range(loss.shape[1]):
            for b in range(loss.shape[2]):
                file = out / f"epoch-{epoch:04d}_pair-{p}_batch-{b}{suffix}"
                data = _read_vtk(file)
                hidden += _check_piece(data, xs, ys, loss[ei, p, b], done[ei, p, b], zmax, log, scale)
                known = done[ei, p, b] & np.isfinite(loss[ei, p, b])  # (a diverged point's accuracy reads NaN)
                assert _same_values(_field(data, "accuracy"), np.where(known, accuracy[ei, p, b], np.nan).ravel())
                shown = (done[ei, p, b] & np.isfinite(height(loss[ei, p, b], zmax, log))).reshape(len(ys), len(xs))
                _check_surface_cells(data, shown) if plane else _check_line_cells(data, shown.ravel())
                expected.append(file.name)
        mean_file = out / f"epoch-{epoch:04d}_mean{suffix}"
        complete = done[ei].all(axis=(0, 1))
        mean = np.where(complete, loss[ei].astype(np.float64).mean(axis=(0, 1)), np.nan)
        hidden += _check_piece(_read_vtk(mean_file), xs, ys, mean, complete, zmax, log, scale)
        expected.append(mean_file.name)
    if "path_x" in stored:
        path = _read_vtk(out / "path.vtp")
        path_loss = stored["path_loss"][0]
        z = height(path_loss.astype(np.float64).mean(axis=1), zmax, log)
        points = _points(path)
        assert np.array_equal(points[:, 0], stored["path_x"][0]) and np.array_equal(points[:, 1], stored["path_y"][0])
        assert np.array_equal(points[:, 2], z * scale)
        assert _same(_field(path, "loss_batches"), path_loss)
        assert np.array_equal(_field(path, "epoch"), stored["path_epoch"][0])
        _check_line_cells(path, np.ones(len(z), bool))
        expected.append("path.vtp")
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, "epochs_mean.pvd", MANIFEST])
    assert sorted(result.files) == sorted(out / n for n in [*expected, "epochs_mean.pvd", MANIFEST])
    assert result.points_hidden == hidden
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["grid"] == result.grid_id and manifest["zmax"] == zmax and manifest["log"] == log
    return hidden


@needs_vtk
@pytest.mark.parametrize("name", GRIDS)
def test_vtk_surfaces_lines_and_path_read_back(trained: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = export(_run_of(name), grid=name, format="vtk", out=out, store=trained)
    assert result.path == out and result.points_missing == 0
    assert _check_vtk_export(trained, name, out, result) == 0


@needs_vtk
def test_vtk_height_is_clipped_at_zmax_then_logged_as_h52vtp(trained: Path, tmp_path: Path) -> None:
    loss = _stored(trained, "plane")["loss"][0]
    zmax = float(np.median(loss))  # half the points are clipped
    clipped = export("t", grid="plane", format="vtk", out=tmp_path / "clip", zmax=zmax, store=trained)
    _check_vtk_export(trained, "plane", tmp_path / "clip", clipped, zmax=zmax)
    z = _points(_read_vtk(tmp_path / "clip" / "epoch-0002_pair-0_batch-0.vts"))[:, 2]
    assert clipped.height_scale is not None
    top = zmax * clipped.height_scale
    assert z.max() == top and (z == top).sum() == (loss[0, 0, 0] >= zmax).sum()
    both = export("t", grid="plane", format="vtk", out=tmp_path / "log", zmax=zmax, log=True, store=trained)
    _check_vtk_export(trained, "plane", tmp_path / "log", both, zmax=zmax, log=True)
    z = _points(_read_vtk(tmp_path / "log" / "epoch-0003_pair-1_batch-1.vts"))[:, 2]
    assert np.array_equal(z, np.log(np.minimum(loss[1, 1, 1].astype(np.float64), zmax) + LOG_OFFSET).ravel()
                          * both.height_scale)
    line = export("t", grid="line", format="vtk", out=tmp_path / "line", log=True, store=trained)
    _check_vtk_export(trained, "line", tmp_path / "line", line, log=True)


# --- partial grids, diverged points -----------------------------------------------------------------


@needs_vtk
def test_missing_rows_and_diverged_points_are_told_apart(store: Path, tmp_path: Path) -> None:
    """A row whose done-mark is cleared is missing (values NaN, done 0, hidden) even though its old values are
    still stored; a done row with NaN/Inf losses has diverged (done 1, hidden in VTK)."""
    zarr_path = _zarr_path(store, "plane")
    rows = Rows(zarr_path)
    rows.clear_row(1, 0, 2)  # epoch 3, pair 0, the middle row: values stay, the mark goes
    loss = rows.read_row("loss", 0, 1, 4)
    loss[0, 1], loss[1, 3] = np.nan, np.inf
    rows.write_row(0, 1, 4, loss, rows.read_row("accuracy", 0, 1, 4))  # epoch 2, pair 1, last row: 2 diverged
    stored = _stored(store, "plane")
    width, batches = 5, 2
    assert not np.isnan(stored["loss"][0][1, 0, :, 2]).any()  # the cleared row still holds values

    nc = export("t", grid="plane", format="netcdf", out=tmp_path / "p.nc", store=store)
    assert (nc.points_missing, nc.points_diverged) == (batches * width, 2)
    assert any("partial" in n for n in nc.notes) and not nc.complete
    got = open_netcdf(tmp_path / "p.nc")
    assert _same(got.loss.values, stored["loss"][0]) and _same(got.done.values, stored["done"][0])
    assert got.done.values[1, 0, 2] == 0 and got.done.values[0, 1, 4] == 1

    export("t", grid="plane", format="csv", out=tmp_path / "p.csv", store=store)
    _header, lines = _read_csv(tmp_path / "p.csv")
    missing = [r for r in lines if r["done"] == "0"]
    assert len(missing) == batches * width and all(r["loss"] == r["accuracy"] == "nan" for r in missing)
    assert {(r["epoch"], r["pair"], r["y"]) for r in missing} == {("3", "0", "0.0")}
    diverged = [r for r in lines if r["done"] == "1" and r["loss"] in ("nan", "inf")]
    assert sorted(r["loss"] for r in diverged) == ["inf", "nan"]

    vtk = export("t", grid="plane", format="vtk", out=tmp_path / "vtk", store=store)
    hidden = _check_vtk_export(store, "plane", tmp_path / "vtk", vtk)
    # per batch: the missing row (5 points, twice) and the two diverged points; in the means: the epoch-3 mean
    # lacks its row (5) and the epoch-2 mean is not finite at the two diverged points
    assert hidden == batches * width + 2 + width + 2 == vtk.points_hidden
    mean = _read_vtk(tmp_path / "vtk" / "epoch-0003_mean.vts")
    assert _field(mean, "done").reshape(5, 5)[2].tolist() == [0] * 5

    npz = export("t", grid="plane", format="npz", out=tmp_path / "p.npz", store=store)
    assert npz.points_missing == batches * width
    with np.load(tmp_path / "p.npz") as f:
        assert _same(f["loss"], stored["loss"][0]) and _same(f["done"], stored["done"][0])


# --- choosing the grid, default paths ---------------------------------------------------------------


@needs_vtk
def test_the_grid_is_chosen_as_plot_chooses_it_and_files_go_beside_it(store: Path, tmp_path: Path) -> None:
    from landscape_cli.views.readers import select_sources

    [source] = select_sources(Store(store), ["t"])
    zarr_before = tree(source.zarr_path)
    result = export("t", format="csv", store=store)
    assert result.grid_id == source.grid_id  # the run's newest grid, as `plot t` draws
    assert result.path == source.path / "exports" / "landscape.csv"
    path_csv = [source.path / "exports" / "landscape_path.csv"] if source.kind == "pca" else []
    assert result.files == [result.path, *path_csv]
    pca = export("t", grid="pca", format="csv", store=store)
    assert [f.name for f in pca.files] == ["landscape.csv", "landscape_path.csv"]
    assert export("plane", format="npz", store=store).path.parent.parent.name == Store(store).find_grid("plane")[1]
    first = export("t", grid="line", format="vtk", store=store)
    assert first.path.name == "vtk" and first.path.parent.name == "exports"
    again = export("t", grid="line", format="vtk", store=store)  # an earlier export is replaced as a whole
    assert sorted(again.files) == sorted(first.files) and not list(first.path.parent.glob(".*"))
    (tmp_path / "dir").mkdir()
    into = export("t", grid="interp", format="netcdf", out=tmp_path / "dir", store=store)
    assert into.path == tmp_path / "dir" / "landscape.nc"
    assert json.dumps(into.to_json()) and into.to_json()["points_missing"] == 0
    assert tree(source.zarr_path) == zarr_before  # the grid itself is never touched


# --- bad input --------------------------------------------------------------------------------------


def test_unknown_formats_and_options_are_one_line(trained: Path) -> None:
    with pytest.raises(UsageError) as e:
        export("t", format="hdf5", store=trained)
    assert str(e.value) == "unknown export format 'hdf5': choose one of netcdf, csv, vtk, npz"
    with pytest.raises(UsageError, match="vtk only"):
        export("t", format="csv", zmax=3.0, store=trained)
    with pytest.raises(UsageError, match="finite positive"):
        export("t", format="vtk", zmax=float("nan"), store=trained)
    with pytest.raises(UsageError, match="no grid 'nope'"):
        export("t", grid="nope", format="csv", store=trained)
    assert not list(trained.glob("*/grids/*/exports"))


def test_unwritable_outputs_fail_in_one_line_and_leave_nothing(store: Path, tmp_path: Path) -> None:
    before = tree(store)
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    for fmt in ("netcdf", "csv", "vtk", "npz"):
        with pytest.raises(UsageError) as e:
            export("t", grid="plane", format=fmt, out=regular / "sub" / "out", store=store)
        assert "is a file, not a directory" in str(e.value) and "\n" not in str(e.value)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="holds other files"):
        export("t", grid="plane", format="vtk", out=foreign, store=store)
    with pytest.raises(UsageError, match="is a file"):
        export("t", grid="plane", format="vtk", out=regular, store=store)
    with pytest.raises(UsageError, match=r"inside the store .* the grid's own exports/ directory"):
        export("t", grid="plane", format="csv", out=_zarr_path(store, "plane") / "x.csv", store=store)
    read_only = Path("/sys/landscape-export-test.nc")  # sysfs refuses new files, even to root
    try:
        read_only.write_bytes(b"")
        read_only.unlink()
        writable = True
    except OSError:
        writable = False
    if not writable:
        with pytest.raises(StoreError) as err:
            export("t", grid="plane", format="netcdf", out=read_only, store=store)
        assert str(err.value).startswith(f"cannot write {read_only}") and "\n" not in str(err.value)
    assert regular.read_text() == "not a directory" and [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "mine", "store"]
    assert tree(store) == before


@needs_vtk
def test_a_failure_while_writing_leaves_nothing_half_written(store: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import landscape_cli.exchange.vtk as ex

    calls = []

    def failing(vtk: Any, piece: Any, path: Path) -> int:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(vtk, piece, path)

    original = ex.write_piece
    monkeypatch.setattr(ex, "write_piece", failing)
    out = tmp_path / "new" / "deeper" / "vtk"
    with pytest.raises(StoreError, match="disk full"):
        export("t", grid="plane", format="vtk", out=out, store=store)
    assert len(calls) == 3 and not (tmp_path / "new").exists()

    def broken_netcdf(self: Any, path: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"\x89HDF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken_netcdf)
    with pytest.raises(StoreError, match="disk full"):
        export("t", grid="plane", format="netcdf", out=tmp_path / "x.nc", store=store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_vtk_missing_says_how_to_install_it(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [m for m in sys.modules if m == "vtk" or m.startswith(("vtkmodules", "vtk."))]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "vtkmodules", None)
    with pytest.raises(UsageError) as e:
        export("t", format="vtk", store=trained)
    assert "pip install 'landscape-cli[vtk]'" in str(e.value)
    assert not list(trained.glob("*/grids/*/exports"))


def test_the_export_command(store: Path, cli: Any, tmp_path: Path) -> None:
    """`landscape export` end to end: the file it names reads back; bad input is one line and writes nothing."""
    out = tmp_path / "plane.npz"
    r = cli("export", "t", "--grid", "plane", "--format", "npz", "--out", str(out), "--store", str(store), "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert Path(result["path"]) == out and result["format"] == "npz" and result["complete"]
    with np.load(out) as z:
        np.testing.assert_array_equal(z["loss"], _stored(store, "plane")["loss"][0])
    before = tree(store)
    for args, says in ((["--format", "hdf4"], "unknown export format 'hdf4'"),
                       (["--format", "csv", "--out", str(out / "x.csv")], "is a file")):
        r = cli("export", "t", "--grid", "plane", *args, "--store", str(store))
        assert r.exit_code != 0
        [line] = r.output.strip().splitlines()
        assert says in line
    assert tree(store) == before


def test_curvature_results_export(store: Path, cli: Any, tmp_path: Path) -> None:
    """`landscape export --hessian`: the results of `landscape hessian` as netcdf, npz and csv, read back exactly."""
    from landscape_cli.curvature.hessian import hessian

    result = hessian("m", epochs=[0, 1], top=2, density=True, bins=10, steps=10, density_probes=1, batches=1,
                     batch_size=64, probes=5, layer="3.weight", store=store, progress=False)
    root = zarr.open_group(result.zarr_path, mode="r", use_consolidated=False)
    stored = {n: np.asarray(a[...]) for n, a in root.arrays()}
    files = {}
    for fmt, name in (("netcdf", "h.nc"), ("npz", "h.npz"), ("csv", "h.csv")):
        r = cli("export", "m", "--hessian", "--format", fmt, "--out", str(tmp_path / name), "--store", str(store),
                "--json")
        assert r.exit_code == 0, r.output
        files[fmt] = json.loads(r.output)["files"]
    ds = open_netcdf(tmp_path / "h.nc")
    with np.load(tmp_path / "h.npz") as z:
        for n, a in stored.items():
            assert _same(ds[n].values, a) and ds[n].dtype == a.dtype, n
            assert _same(z[n], a) and z[n].dtype == a.dtype, n
    header, rows = _read_csv(tmp_path / "h.csv")
    assert header[:5] == ["epoch", "k", "eigenvalue", "residual", "converged"] and len(rows) == 2 * 2
    got = np.array([float(row["eigenvalue"]) for row in rows]).reshape(2, 2)
    assert _same(got, stored["eigenvalues"])
    assert [float(row["trace"]) for row in rows][::2] == list(stored["trace"])
    assert files["csv"] == [str(tmp_path / "h.csv"), str(tmp_path / "h_density.csv")]
    _, density = _read_csv(tmp_path / "h_density.csv")
    assert _same(np.array([float(row["density"]) for row in density]).reshape(2, 10), stored["density"])
    r = cli("export", "m", "--hessian", "--format", "vtk", "--store", str(store))
    assert r.exit_code != 0
    [line] = r.output.strip().splitlines()
    assert "netcdf, csv, npz" in line
