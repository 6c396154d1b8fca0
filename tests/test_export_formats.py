"""Exports that open right in the readers people use.

- NetCDF follows CF-1.8: the CF checker (cfchecker, with UDUNITS-2) finds no error in a plane, an
  interpolation line, a PCA plane, a Hessian plane or curvature results; netCDF4 (and ncdump) read
  the values bitwise as stored, with units, flags and axes named for the grid's kind.
- CSV: coordinates are the decimals of the grid's range (new grids; old ones keep theirs and still
  resume computing nothing), written in their shortest form; the run and grid columns let pandas
  concatenate the files of several runs, and float32 losses read back to the stored values.
- VTK: z is the height times a recorded scale (about the grid's width by default: a span-0.01 zoom is
  a surface, not a needle), or 0 with --flat, read back with vtk's XML readers.

Everything runs on a copy of the frozen second-release store (tests/data/legacy-0.2.0: an MLP run with
a random plane and line, an interpolation line, a PCA plane, a Hessian plane and curvature results, and
an imported run with a plane); the module adds two small grids to it (decimal coordinates, a zoom).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import one_thread, private_copy, tree

from landscape_cli.errors import UsageError
from landscape_cli.exchange.export import MANIFEST, export, export_hessian
from landscape_cli.store import Store

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())
RUN, IMPORTED = IDS["run_id"], IDS["imported_id"]
README = Path(__file__).resolve().parent.parent / "README.md"
DECIMAL_RANGE, DECIMAL_WIDTH = (-0.3, 1.8), 22  # step 0.1: t = -0.3, -0.2, ..., 1.8
ZOOM_SPAN = 0.01
needs_vtk = pytest.mark.skipif(importlib.util.find_spec("vtkmodules") is None,
                               reason="vtk is not installed: pip install 'landscape-cli[vtk]'")


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frozen store's copy, with a new interpolation line over [-0.3, 1.8] and a random plane of span 0.01."""
    from landscape_cli import grid

    store = tmp_path_factory.mktemp("formats") / "store"
    shutil.copytree(LEGACY2 / "store", store)
    small = {"batches": 1, "batch_size": 64, "progress": False, "store": store}
    with one_thread():
        grid(RUN, directions="interpolate", dims=1, epochs=[0], to_epoch=3, width=DECIMAL_WIDTH, range=DECIMAL_RANGE,
             name="decimal", **small)
        grid(RUN, epochs=[3], width=5, span=ZOOM_SPAN, name="zoom", **small)
    return store


@pytest.fixture
def mine(frozen: Path, tmp_path: Path) -> Path:
    """A copy of the module's store that one test may change."""
    return private_copy(frozen, tmp_path)


def _zarr_path(store: Path, grid: str) -> Path:
    st = Store(store)
    run_id, grid_id = st.find_grid(grid)
    return st.zarr_path(run_id, grid_id)


def _stored(store: Path, grid: str) -> dict[str, np.ndarray]:
    root = zarr.open_group(_zarr_path(store, grid), mode="r", use_consolidated=False)
    return {n: np.asarray(a[...]) for n, a in root.arrays()}


def _dims(store: Path, grid: str, name: str) -> list[str]:
    root = zarr.open_group(_zarr_path(store, grid), mode="r", use_consolidated=False)
    return list(root[name].metadata.dimension_names)  # type: ignore[union-attr,arg-type]


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits (NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype and bits, except that any NaN equals any NaN (text writes every NaN as 'nan')."""
    a, b = np.asarray(a), np.asarray(b)
    nan = np.isnan(a)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(nan, np.isnan(b)) \
        and np.array_equal(_bits(a[~nan]), _bits(b[~nan]))


def _masked_loss(store: Path, grid: str) -> np.ndarray:
    """The stored loss, NaN where its row is not done (what CSV and VTK write)."""
    s = _stored(store, grid)
    loss_dims, done_dims = _dims(store, grid, "loss"), _dims(store, grid, "done")
    index = tuple(slice(None) if d in done_dims else None for d in loss_dims)
    return np.where(np.broadcast_to(s["done"][index] > 0, s["loss"].shape), s["loss"], np.float32(np.nan))


# --- NetCDF: CF conventions ---------------------------------------------------------------------------


def _cf_checker(tmp_path: Path) -> Any:
    """cfchecker's checker, with the CF tables it would download given offline: these files use no standard_name,
    area type or region name, so empty tables check everything else the same. Skipped (saying why) without
    cfchecker or UDUNITS-2."""
    try:
        from cfchecker.cfchecks import CFChecker, CFVersion
    except ImportError as e:
        pytest.skip(f"cfchecker is not installed ({e}): pip install 'landscape-cli[test]'")
    except OSError as e:  # cfunits loads UDUNITS-2 when imported
        pytest.skip(f"cfchecker needs UDUNITS-2, which is missing ({e}): apt-get install libudunits2-0")
    tables = {}
    for name, root, date in (("standard_names", "standard_name_table", "last_modified"),
                             ("area_types", "area_type_table", "date"), ("region_names", "standard_region", "date")):
        tables[name] = tmp_path / f"{name}.xml"
        tables[name].write_text(f'<?xml version="1.0"?>\n<{root}><version_number>0</version_number>'
                                f"<{date}>offline</{date}></{root}>\n")
    return CFChecker(cfStandardNamesXML=str(tables["standard_names"]), cfAreaTypesXML=str(tables["area_types"]),
                     cfRegionNamesXML=str(tables["region_names"]), version=CFVersion(), silent=True)


def _cf_check(checker: Any, path: Path) -> dict[str, list[str]]:
    """Every FATAL, ERROR and WARN message of cfchecker on `path` ("variable: message")."""
    checker.checker(str(path))
    results = checker.all_results[str(path)]
    found: dict[str, list[str]] = {"FATAL": [], "ERROR": [], "WARN": []}
    for where, messages in [("global", results["global"]), *results["variables"].items()]:
        for category in found:
            found[category] += [f"{where}: {m}" for m in messages[category]]
    assert str(checker.version) == "CF-1.8", "the checker reads the version from the file's Conventions"
    return found


AXIS_NAMES = {  # the start of x's (and y's) long_name per grid kind
    "shards": ("coefficient of d1", "coefficient of d2"),
    "interpolate": ("t, the interpolation coefficient",),
    "pca": ("coefficient of PC1 (", "coefficient of PC2 ("),
    "hessian": ("coefficient of v1", "coefficient of v2"),
}


@pytest.mark.parametrize("grid", list(AXIS_NAMES))
def test_netcdf_passes_the_cf_checker(frozen: Path, tmp_path: Path, grid: str) -> None:
    """A random plane, an interpolation line, a PCA plane and a Hessian plane: no error, no warning."""
    checker = _cf_checker(tmp_path)
    out = tmp_path / f"{grid}.nc"
    export(RUN, grid=grid, format="netcdf", out=out, store=frozen)
    found = _cf_check(checker, out)
    assert not found["FATAL"] and not found["ERROR"], found
    assert not found["WARN"], found["WARN"]


def test_netcdf_of_curvature_results_passes_the_cf_checker(frozen: Path, tmp_path: Path) -> None:
    checker = _cf_checker(tmp_path)
    out = tmp_path / "hessian.nc"
    export_hessian(RUN, hessian=IDS["hessian_id"], format="netcdf", out=out, store=frozen)
    found = _cf_check(checker, out)
    assert not found["FATAL"] and not found["ERROR"] and not found["WARN"], found


@pytest.mark.parametrize("grid", list(AXIS_NAMES))
def test_netcdf4_reads_the_stored_values_exactly_with_cf_attributes(frozen: Path, tmp_path: Path, grid: str) -> None:
    """netCDF4's default reading (masking on) gives every array bitwise as stored, nothing masked; the CF
    attributes say what each is."""
    import netCDF4

    out = tmp_path / f"{grid}.nc"
    export(RUN, grid=grid, format="netcdf", out=out, store=frozen)
    stored = _stored(frozen, grid)
    with netCDF4.Dataset(out) as ds:
        assert set(ds.variables) == set(stored)
        for name, values in stored.items():
            var = ds.variables[name]
            got = var[...]
            assert not np.ma.is_masked(got), name
            assert _same(np.ma.getdata(got), values), name
            assert list(var.dimensions) == _dims(frozen, grid, name), name
        g = {k: ds.getncattr(k) for k in ds.ncattrs()}
        assert g["Conventions"] == "CF-1.8"
        assert g["title"].startswith("Loss landscape of legacy2 (mlp on digits)")
        assert IDS["grids"][grid] in g["source"] and RUN in g["source"]
        history = g["history"].splitlines()
        assert len(history) == 2 and "landscape grid" in history[0] and "landscape export" in history[1]
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in history)
        for name in ("loss", "accuracy", "center_loss", "x", "epoch", "diverged"):
            assert ds.variables[name].units == "1", name
        done = ds.variables["done"]
        assert list(done.flag_values) == [0, 1] and done.flag_values.dtype == np.uint8
        assert done.flag_meanings == "not_computed computed" and "units" not in done.ncattrs()
        assert list(ds.variables["center_done"].flag_values) == [0, 1, 2]
        assert len(ds.variables["center_done"].flag_meanings.split()) == 3
        for axis, start in zip(("x", "y"), AXIS_NAMES[grid], strict=False):
            assert ds.variables[axis].long_name.startswith(start), ds.variables[axis].long_name
        if grid == "pca":
            ratio = g["explained_variance_ratio"]
            meta = json.loads((_zarr_path(frozen, grid).parent / "grid.json").read_text())
            assert isinstance(ratio, np.ndarray) and ratio.dtype == np.float64
            assert ratio.tolist() == meta["kind"]["explained_variance_ratio"]
            assert "explained_variance_ratio" not in json.loads(g["json_encoded_attributes"])
    if shutil.which("ncdump"):
        header = subprocess.run(["ncdump", "-h", str(out)], capture_output=True, text=True, check=True).stdout
        assert ':Conventions = "CF-1.8"' in header and "done:flag_meanings" in header


def test_xarray_reads_the_cf_file_with_either_engine(frozen: Path, tmp_path: Path) -> None:
    import xarray as xr

    out = tmp_path / "pca.nc"
    export(RUN, grid="pca", format="netcdf", out=out, store=frozen)
    stored = _stored(frozen, "pca")
    for engine in ("h5netcdf", "netcdf4"):
        with xr.open_dataset(out, engine=engine) as ds:
            for name, values in stored.items():
                assert _same(ds[name].values, values), (engine, name)
            assert ds.x.attrs["units"] == "1" and ds.attrs["Conventions"] == "CF-1.8"


# --- coordinates and CSV ------------------------------------------------------------------------------


@pytest.mark.parametrize(("lo", "hi", "count"), [
    (-1.0, 1.0, 51), (-0.05, 0.05, 5), (-0.5, 1.8, 24), (-0.3, 1.7, 41), (0.0, 1.0, 3), (-2.5, 2.5, 101),
    (-0.01, 0.01, 21), (-1.0, 1.0, 1001), (-0.3, 1.7, 10),
])
def test_coordinates_are_the_decimals_the_range_implies(lo: float, hi: float, count: int) -> None:
    from landscape_cli.directions._registry import decimal_points

    x = decimal_points(lo, hi, count)
    a, b = Fraction(repr(lo)), Fraction(repr(hi))
    step = (b - a) / (count - 1)
    assert x.dtype == np.float64 and x[0] == lo and x[-1] == hi and np.all(np.diff(x) > 0)
    assert x.tolist() == [float(a + i * step) for i in range(count)]  # each the float nearest the exact point
    denominator = step.denominator
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    if denominator == 1:  # a terminating decimal step: every point's shortest repr is its exact decimal
        exact = [Decimal(repr(lo)) + i * (Decimal(step.numerator) / Decimal(step.denominator)) for i in range(count)]
        assert [Decimal(repr(v)) for v in x.tolist()] == exact
    else:
        assert count == 10  # 2/9: no decimal; the nearest floats
    if lo == -hi:
        assert np.array_equal(x, -x[::-1])  # symmetric ranges stay symmetric, 0 exactly at the centre
    legacy = np.linspace(lo, hi, count)  # what grids made before 0.3 store: within a few ulps
    assert np.all(np.abs(legacy - x) <= 4 * np.finfo(np.float64).eps * max(abs(lo), abs(hi)))


def _read_csv(path: Path, **kwargs: Any) -> Any:
    import pandas as pd

    return pd.read_csv(path, dtype={"run": str, "grid": str, "loss": "float32", "accuracy": "float32"}, **kwargs)


def test_the_frozen_interpolation_line_exports_clean_decimals(frozen: Path, tmp_path: Path) -> None:
    out = tmp_path / "interpolate.csv"
    export(RUN, grid="interpolate", format="csv", out=out, store=frozen)
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["run", "grid", "epoch"]
    xs = sorted({line.split(",")[header.index("x")] for line in lines[1:]}, key=float)
    assert xs == ["-0.5", "-0.25", "0.0", "0.25", "0.5", "0.75", "1.0", "1.25", "1.5"]
    df = _read_csv(out)
    assert len(df[df.x == 1.25]) == 2  # epochs 0 and 1, one pair, one batch


def test_new_grids_store_and_export_the_decimals_of_their_range(frozen: Path, tmp_path: Path) -> None:
    lo, hi = (Decimal(repr(v)) for v in DECIMAL_RANGE)
    decimals = [lo + i * (hi - lo) / (DECIMAL_WIDTH - 1) for i in range(DECIMAL_WIDTH)]
    stored = _stored(frozen, "decimal")["x"]
    assert stored.tolist() == [float(d) for d in decimals]  # 1.8, not 1.7999999999999998
    assert [Decimal(repr(v)) for v in stored.tolist()] == decimals
    assert _stored(frozen, "zoom")["y"].tolist() == [-0.01, -0.005, 0.0, 0.005, 0.01]
    out = tmp_path / "decimal.csv"
    export(RUN, grid="decimal", format="csv", out=out, store=frozen)
    df = _read_csv(out)
    texts = [line.split(",")[5] for line in out.read_text().splitlines()[1:]]
    assert texts == [repr(float(d)) for d in decimals] and "1.8" in texts and "0.1" in texts
    assert len(df[df.x == 1.8]) == 1 and len(df[df.x == 0.3]) == 1
    assert _same_values(df.loss.to_numpy(), _masked_loss(frozen, "decimal")[0, 0, 0])


def test_coordinates_stay_out_of_the_grid_id(frozen: Path) -> None:
    meta = json.loads((_zarr_path(frozen, "decimal").parent / "grid.json").read_text())
    identity = json.dumps(meta["config"])
    assert "1.7" not in identity and "0.1" not in identity and "-0.3" in identity  # the range, not its points


def test_a_second_release_grid_keeps_its_coordinates_and_resumes_computing_nothing(mine: Path, cli: Any) -> None:
    """The frozen Hessian plane stores np.linspace's 0.02500000000000001, where a new grid has 0.025: the layout
    repair accepts it (the grid's own values are kept), nothing is computed, and verify passes."""
    path = _zarr_path(mine, "hessian")
    before = _stored(mine, "hessian")
    assert before["x"].tolist()[3] == 0.02500000000000001
    r = cli("grid", RUN, "--grid", "hessian", "--resume", "--json", "--store", str(mine))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["id"] == IDS["grids"]["hessian"] and out["rows_computed"] == 0
    assert "rebuilt" not in r.stderr
    after = _stored(mine, "hessian")
    assert all(_same(after[n], v) for n, v in before.items())
    assert cli("verify", RUN, "--store", str(mine)).exit_code == 0
    # coordinates that are really wrong (not a few ulps off) are rebuilt from the layout: decimals now
    zarr.open_array(path / "x", mode="r+")[:] = before["x"] + 1e-6
    r = cli("grid", RUN, "--grid", "hessian", "--resume", "--json", "--store", str(mine))
    assert r.exit_code == 0 and "rebuilt damaged x" in r.stderr, r.output
    assert _stored(mine, "hessian")["x"].tolist() == [-0.05, -0.025, 0.0, 0.025, 0.05]


def test_csvs_of_two_runs_concatenate_in_pandas_with_the_stored_float32(frozen: Path, tmp_path: Path) -> None:
    import pandas as pd

    files = {}
    for run, grid in ((RUN, "shards"), (IMPORTED, "imported")):
        files[run] = tmp_path / f"{run}.csv"
        export(run, grid=IDS["grids"][grid], format="csv", out=files[run], store=frozen)
    df = pd.concat([_read_csv(f) for f in files.values()], ignore_index=True)
    assert list(df.columns) == ["run", "grid", "epoch", "pair", "batch", "x", "y", "loss", "accuracy", "done"]
    assert df.loss.dtype == np.float32 and set(df.run) == {RUN, IMPORTED}
    for (run, grid), part in df.groupby(["run", "grid"]):
        grid_id = IDS["grids"]["shards" if run == RUN else "imported"]
        assert grid == grid_id
        stored = _masked_loss(frozen, grid_id)  # [epoch, pair, batch, y, x]
        coords = _stored(frozen, grid_id)
        index = [np.searchsorted(coords[d], part[d].to_numpy()) for d in ("epoch", "pair", "batch", "y", "x")]
        got = np.full(stored.shape, np.float32(7.0))
        got[tuple(index)] = part.loss.to_numpy()
        assert _same_values(got, stored), run
        widened = pd.read_csv(files[run])  # as float64: the same numbers, widened
        assert np.array_equal(widened.loss.to_numpy().astype(np.float32), part.loss.to_numpy(), equal_nan=True)


def test_the_path_csv_names_its_run_and_grid(frozen: Path, tmp_path: Path) -> None:
    out = tmp_path / "pca.csv"
    result = export(RUN, grid="pca", format="csv", out=out, store=frozen)
    path = _read_csv(result.files[1])
    assert list(path.columns[:3]) == ["run", "grid", "path_epoch"]
    assert set(path.run) == {RUN} and set(path.grid) == {IDS["grids"]["pca"]}


# --- VTK ----------------------------------------------------------------------------------------------


def _read_vtk(path: Path) -> Any:
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLStructuredGridReader

    reader = vtkXMLStructuredGridReader() if path.suffix == ".vts" else vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def _array(data: Any, name: str, where: str = "point") -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    source = data.GetPointData() if where == "point" else data.GetFieldData()
    array = source.GetArray(name)
    assert array is not None, name
    return vtk_to_numpy(array)


def _z(data: Any) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(data.GetPoints().GetData())[:, 2]


def _surfaces(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.suffix in (".vts", ".vtp") and p.name != "path.vtp")


@needs_vtk
@pytest.mark.parametrize("grid", ["hessian", "line", "pca"])
def test_vtk_z_is_the_loss_times_the_recorded_scale_or_zero_when_flat(frozen: Path, tmp_path: Path,
                                                                     grid: str) -> None:
    for options in ({}, {"height_scale": 0.5}, {"flat": True}, {"flat": True, "height_scale": 3.0}):
        out = tmp_path / f"{grid}-{len(options)}-{options.get('height_scale')}"
        result = export(RUN, grid=grid, format="vtk", out=out, store=frozen, **options)
        manifest = json.loads((out / MANIFEST).read_text())
        scale = manifest["height_scale"]
        assert scale == result.height_scale == options.get("height_scale", scale) and scale > 0
        assert manifest["flat"] is bool(options.get("flat"))
        for file in [*_surfaces(out), *([out / "path.vtp"] if grid == "pca" else [])]:
            data = _read_vtk(file)
            loss = _array(data, "loss").astype(np.float64)
            shown = np.isfinite(loss)
            z = _z(data)
            assert _array(data, "height_scale", "field").tolist() == [scale], file.name
            assert _array(data, "flat", "field").tolist() == [int(bool(options.get("flat")))]
            assert np.array_equal(_array(data, "height")[shown], loss[shown])  # the point scalar, unscaled
            if options.get("flat"):
                assert not z.any(), file.name
            else:
                assert np.array_equal(z[shown], loss[shown] * scale), file.name


@needs_vtk
def test_a_zoom_of_span_001_is_a_surface_not_a_needle(frozen: Path, tmp_path: Path) -> None:
    """The default scale makes the heights' range about the grid's width (0.02 here), on every surface."""
    out = tmp_path / "zoom"
    result = export(RUN, grid="zoom", format="vtk", out=out, store=frozen)
    loss = _masked_loss(frozen, "zoom").astype(np.float64)
    raw = float(np.nanmax(loss) - np.nanmin(loss))
    z = np.concatenate([_z(_read_vtk(f)) for f in _surfaces(out)])
    width, scale = 2 * ZOOM_SPAN, result.height_scale
    assert scale is not None and round(scale / 10 ** math.floor(math.log10(scale)), 9) in (1, 2, 5)  # reads plainly
    assert float(np.ptp(z)) == pytest.approx(raw * scale)
    assert 1 / 3 <= float(np.ptp(z)) / width <= 3, (raw, scale)
    assert raw / width < 1 / 3 or raw / width > 3  # unscaled (as before), the zoom was a needle or a sheet


@needs_vtk
def test_the_export_command_takes_height_options_and_refuses_them_elsewhere(mine: Path, cli: Any,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "flat"
    r = cli("export", RUN, "--grid", "zoom", "--format", "vtk", "--flat", "--height-scale", "2", "--out", str(out),
            "--store", str(mine))
    assert r.exit_code == 0, r.output
    assert "× 2)" in r.stdout and json.loads((out / MANIFEST).read_text())["height_scale"] == 2.0
    r = cli("export", RUN, "--grid", "zoom", "--format", "vtk", "--json", "--out", str(tmp_path / "d"),
            "--store", str(mine))
    assert r.exit_code == 0 and json.loads(r.stdout)["height_scale"] > 0
    before = tree(mine)
    for args, says in ((["--format", "csv", "--flat"], "apply to --format vtk only"),
                       (["--format", "netcdf", "--height-scale", "2"], "apply to --format vtk only"),
                       (["--format", "vtk", "--height-scale", "0"], "--height-scale must be a finite positive"),
                       (["--format", "vtk", "--height-scale", "nan"], "--height-scale must be a finite positive"),
                       (["--hessian", "--format", "csv", "--flat"], "curvature results have none")):
        r = cli("export", RUN, "--grid", "zoom", *args, "--store", str(mine))
        assert r.exit_code != 0, args
        [line] = r.output.strip().splitlines()
        assert says in line, line
    assert tree(mine) == before
    with pytest.raises(UsageError, match="finite positive"):
        export(RUN, grid="zoom", format="vtk", height_scale=-1.0, store=mine)


@needs_vtk
@pytest.mark.skipif(not (shutil.which("pvbatch") and shutil.which("xvfb-run")),
                    reason="ParaView's pvbatch and xvfb-run are not installed (Debian: apt-get install paraview xvfb)")
@pytest.mark.slow
def test_readmes_pvbatch_script_draws_a_flat_export(frozen: Path, tmp_path: Path) -> None:
    """README's five-line pvbatch script, run headless on a --flat export, writes its picture."""
    out = tmp_path / "vtk"
    export(RUN, grid="zoom", format="vtk", flat=True, out=out, store=frozen)
    [script] = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                if "paraview.simple" in block]
    script = re.sub(r'FileName=\["[^"]*"\]', f'FileName=["{out / "epoch-0003_mean.vts"}"]', script)
    (tmp_path / "view.py").write_text(script)
    for _attempt in range(2):  # once more if pvbatch crashes (a signal: seen once under xvfb), not if the script fails
        done = subprocess.run(["xvfb-run", "-a", "pvbatch", "view.py"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        if done.returncode == 0 or "Signal:" not in done.stdout + done.stderr:
            break
    else:  # ParaView itself crashed twice (a signal, not an error of the script): not this tool's failure
        pytest.skip(f"pvbatch crashed twice under xvfb: {(done.stdout + done.stderr)[-300:]}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert (tmp_path / "landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
