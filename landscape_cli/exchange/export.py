"""Exports of a grid for other tools: NetCDF-4, long-format CSV, VTK (ParaView) and NumPy's npz.

`export(run, format=...)` chooses the grid exactly as `plot` does (`grid=` names one, else the run's
newest grid), reads its Zarr group and writes:

- ``netcdf``: every array, coordinate and attribute of the group, NetCDF-4 (HDF5) through xarray's
  h5netcdf engine, dtypes kept, no fill-value masking (values are bitwise those of the store). Nested
  attributes (dicts, lists, booleans, None) are JSON strings, named in the attribute
  ``json_encoded_attributes``; `open_netcdf` reads a file back with them decoded.
- ``csv``: one row per (epoch, pair, batch, point): ``epoch,pair,batch,x[,y],loss,accuracy,done``, floats
  in the shortest form that reads back to the same float32 (coordinates: float64), ``nan`` where the
  value is NaN. PCA grids also get ``<name>_path.csv``: the trajectory, one row per (checkpoint, batch).
- ``vtk``: a directory of XML VTK files for ParaView: ``epoch-0005_pair-0_batch-1.vts`` per (epoch,
  pair, batch) and ``epoch-0005_mean.vts`` (the mean over pairs and batches), the loss as height (z) —
  ``.vtp`` polylines for a 1-D grid — ``path.vtp`` for a PCA trajectory, ``epochs_mean.pvd`` (the means as
  a time series) and ``landscape-export.json`` (what was written, with which options).
  As Li et al.'s ``h52vtp.py``: `zmax` clips the height (values above it become zmax), then `log`
  takes log(height + 0.1). Point fields: ``loss``, ``accuracy`` (as stored), ``done``, ``diverged``,
  ``height`` (the z drawn) and ``vtkGhostType``: points that are missing or not finite are HIDDENPOINT,
  so ParaView leaves them, and every cell touching them (marked HIDDENCELL too), out of the surface.
- ``npz``: every array of the group under its name (coordinates included), compressed, plus
  ``attributes_json``: the group's attributes and each array's dimensions and attributes.

Every export carries the rows' ``done`` marks: a point whose row is not done yet is *missing* (CSV
and VTK write NaN values and done 0 for it), a done point with a NaN/Inf loss has *diverged*. NetCDF
and npz keep the arrays as stored (``done`` beside them). Files are written under a temporary name and
renamed into place (a VTK directory as a whole), so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from landscape_cli._io import PARTIAL_SUFFIX, atomic_path, os_error
from landscape_cli.errors import GridStateError, IntegrityError, StoreError, UsageError
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import DECODE_ERRORS, open_group
from landscape_cli.views.readers import Source, select_hessian, select_sources

FORMATS = ("netcdf", "csv", "vtk", "npz")
DEFAULT_NAMES = {"netcdf": "landscape.nc", "csv": "landscape.csv", "npz": "landscape.npz", "vtk": "vtk"}
JSON_ATTRS = "json_encoded_attributes"  # NetCDF: the attributes stored as JSON strings
NPZ_ATTRS = "attributes_json"  # npz: the attributes (and each array's dims and attributes) as one JSON string
MANIFEST = "landscape-export.json"  # in a VTK export directory: also what marks it as one (safe to replace)
LOG_OFFSET = 0.1  # h52vtp's log(z + 0.1)
VTK_INSTALL = "pip install 'landscape-cli[vtk]'"
HIDDENPOINT, HIDDENCELL = 2, 32  # vtkDataSetAttributes' ghost flags (checked against vtk when it is imported)


@dataclass
class ExportResult:
    """What `export` wrote: `path` (the file, or the directory for vtk) and every file in `files`.

    Point counts are over the grid's loss array (epochs × pairs × batches × points): `points_missing`
    lie in rows not done yet, `points_diverged` are done with a NaN/Inf loss. `points_hidden` (vtk
    only) counts the points left out of the geometry in every file written (surfaces, means, path).
    """

    format: str
    path: Path
    files: list[Path]
    grid_id: str
    run_id: str
    points_total: int
    points_missing: int
    points_diverged: int
    points_hidden: int | None = None
    kind: str = ""
    dims: int = 0
    epochs: list[int] = field(default_factory=list)
    task: str = "classification"
    bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.points_missing == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format, "path": str(self.path), "files": [str(f) for f in self.files],
            "grid": self.grid_id, "run": self.run_id, "kind": self.kind, "dims": self.dims, "epochs": self.epochs,
            "task": self.task, "points_total": self.points_total, "points_missing": self.points_missing,
            "points_diverged": self.points_diverged, "points_hidden": self.points_hidden,
            "complete": self.complete, "bytes": self.bytes, "seconds": round(self.seconds, 3), "notes": self.notes,
        }


def export(
    run: str,
    *,
    grid: str | None = None,
    format: str,
    out: str | os.PathLike[str] | None = None,
    zmax: float | None = None,
    log: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Write the grid of `run` (named by `grid`, else the run's newest) as `format`: netcdf, csv, vtk or npz.

    `out` is the file to write (the directory for vtk); an existing directory receives the default
    name; default: ``<grid dir>/exports/landscape.nc|.csv|.npz`` or ``<grid dir>/exports/vtk/``. `zmax`
    and `log` shape the VTK height as Li et al.'s h52vtp does (clip at zmax, then log(z + 0.1)).
    """
    started = time.perf_counter()
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if fmt != "vtk" and (zmax is not None or log):
        raise UsageError("--zmax and --log shape the VTK height: they apply to --format vtk only")
    if zmax is not None:
        given = zmax
        try:
            zmax = float(zmax)
        except (TypeError, ValueError):
            zmax = float("nan")
        if not (np.isfinite(zmax) and zmax > 0):
            raise UsageError(f"--zmax must be a finite positive number, got {given!r}")
    vtk = _import_vtk() if fmt == "vtk" else None
    if fmt == "netcdf":
        _require_netcdf()

    st = Store.of(store)
    source = _select(st, run, grid)
    target = _out_path(out, fmt, st.export_path(source.run_id, source.grid_id, DEFAULT_NAMES[fmt]),
                       partial(st.grid_owns, source.run_id, source.grid_id), st.grid_dir(source.run_id, source.grid_id))
    with _undone_on_failure(_prepare_parent(target)):
        data = _read(source.zarr_path, source.grid_id)
        stats = data.counts()
        result = ExportResult(
            format=fmt, path=target, files=[], grid_id=source.grid_id, run_id=source.run_id,
            points_total=stats[0], points_missing=stats[1], points_diverged=stats[2], kind=source.grid.config.kind,
            dims=data.line_dims, epochs=[int(e) for e in data.arrays["epoch"]],
            task=str(source.run.dataset.get("task", "classification")),
        )
        if fmt == "netcdf":
            result.files = [_write_netcdf(data, target)]
        elif fmt == "npz":
            result.files = [_write_npz(data, target)]
        elif fmt == "csv":
            result.files = _write_csv(data, target)
        else:
            assert vtk is not None
            result.files, result.points_hidden = _write_vtk(vtk, data, target, result, zmax, log)
    _measure(result, started)
    if result.points_missing:
        result.notes.append(f"{result.points_missing} of {result.points_total} points are in rows not computed yet "
                            "(done 0): the grid is partial")
    if result.points_diverged:
        result.notes.append(f"{result.points_diverged} points diverged (done 1, loss NaN or Inf)")
    if result.task == "regression" and "accuracy" in data.arrays:
        result.notes.append("a regression: accuracy is exported as stored (NaN)")
    return result


HESSIAN_FORMATS = ("netcdf", "csv", "npz")
HESSIAN_NAMES = {"netcdf": "hessian.nc", "csv": "hessian.csv", "npz": "hessian.npz"}


def export_hessian(run: str, *, hessian: str | None = None, format: str, out: str | os.PathLike[str] | None = None,
                   store: Store | str | os.PathLike[str] | None = None) -> ExportResult:
    """Write a run's curvature results (`landscape hessian`: named by `hessian`, else the newest) as netcdf, csv
    or npz: eigenvalues, residuals, λmin, |λmin/λmax|, trace (and the spectral density), with `done` per epoch.

    NetCDF and npz hold every array and attribute of the results' Zarr group; CSV has one row per epoch
    and eigenpair (`hessian.csv`) and, with a density, one per epoch and bin (`hessian_density.csv`).
    Default `out`: ``<results dir>/exports/hessian.nc|.csv|.npz``. "Points" in the result are epochs.
    """
    started = time.perf_counter()
    fmt = str(format).strip().lower()
    if fmt not in HESSIAN_FORMATS:
        raise UsageError(f"curvature results export as {', '.join(HESSIAN_FORMATS)} (numbers per epoch, no surface for "
                         f"VTK), not {format!r}")
    if fmt == "netcdf":
        _require_netcdf()
    st = Store.of(store)
    run_id = st.resolve(run)
    meta = select_hessian(st, run_id, hessian)
    zarr_path = st.hessian_zarr(run_id, meta.id)
    target = _out_path(out, fmt, st.hessian_export_path(run_id, meta.id, HESSIAN_NAMES[fmt]),
                       partial(st.hessian_owns, run_id, meta.id), st.hessian_dir(run_id, meta.id))
    with _undone_on_failure(_prepare_parent(target)):
        data = _read(zarr_path, meta.id, ("done", "epoch", "eigenvalues"))
        done = data.arrays["done"] > 0
        result = ExportResult(format=fmt, path=target, files=[], grid_id=meta.id, run_id=run_id,
                              points_total=int(done.size), points_missing=int((~done).sum()), points_diverged=0,
                              kind="hessian", epochs=[int(e) for e in data.arrays["epoch"]])
        if fmt == "netcdf":
            result.files = [_write_netcdf(data, target)]
        elif fmt == "npz":
            result.files = [_write_npz(data, target)]
        else:
            result.files = _write_hessian_csv(data, target)
    _measure(result, started)
    if result.points_missing:
        result.notes.append(f"{result.points_missing} of {result.points_total} epochs are not computed yet (done 0)")
    return result


def _write_hessian_csv(data: _Data, path: Path) -> list[Path]:
    """One row per (epoch, eigenpair) with the epoch's scalars beside it; the density in a second file."""
    a = data.arrays
    done = a["done"] > 0
    epochs, k = a["eigenvalues"].shape

    def per_epoch(name: str) -> np.ndarray:  # NaN where the epoch is not done
        return np.where(done, a[name], np.nan).astype(a[name].dtype)

    def per_pair(name: str) -> np.ndarray:
        return np.where(done[:, None], a[name], np.nan if a[name].dtype.kind == "f" else 0).astype(a[name].dtype)

    scalars = [n for n in ("lambda_min", "lambda_min_residual", "convexity", "trace", "trace_stderr") if n in a]
    header = ["epoch", "k", "eigenvalue", "residual", "converged", *scalars, "done"]
    rows = np.repeat(np.arange(epochs), k)
    columns = [_text(a["epoch"])[rows], _text(np.tile(np.arange(k), epochs)),
               _text(per_pair("eigenvalues").ravel()), _text(per_pair("residual").ravel()),
               _text(per_pair("converged").ravel()), *(_text(per_epoch(n))[rows] for n in scalars),
               _text(done.astype(np.uint8))[rows]]
    with _atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(header) + "\n")
        _write_lines(f, columns)
    files = [path]
    if "density" in a:
        density_path = path.with_name(f"{path.stem}_density{path.suffix or '.csv'}")
        bins = a["density"].shape[1]
        rows = np.repeat(np.arange(epochs), bins)
        with _atomic(density_path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("epoch,bin,lambda,density,done\n")
            _write_lines(f, [_text(a["epoch"])[rows], _text(np.tile(np.arange(bins), epochs)),
                             _text(per_pair("density_lambda").ravel()), _text(per_pair("density").ravel()),
                             _text(done.astype(np.uint8))[rows]])
        files.append(density_path)
    return files


def open_netcdf(path: str | os.PathLike[str]) -> Any:
    """A NetCDF export read back into memory as an xarray Dataset, its JSON-encoded attributes decoded."""
    import xarray as xr

    ds = xr.load_dataset(path, engine="h5netcdf")
    ds.attrs = decode_attrs(ds.attrs)
    for var in ds.variables.values():
        var.attrs = decode_attrs(var.attrs)
    return ds


def decode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes with those named in ``json_encoded_attributes`` decoded (and that marker removed)."""
    out = dict(attrs)
    names = out.pop(JSON_ATTRS, None)
    for name in json.loads(names) if names else []:
        out[name] = json.loads(out[name])
    return out


# --- choosing the grid and the output path ---------------------------------------------------------


def _select(st: Store, run: str, grid: str | None) -> Source:
    return select_sources(st, [run], [grid] if grid is not None else [], "to export")[0]


def _out_path(out: str | os.PathLike[str] | None, fmt: str, default: Path, owned: Callable[[Path], bool],
              home: Path) -> Path:
    """`out` (a directory given for a file: the default name in it), else `default`; refused if it would overwrite
    what `owned` says the store owns (the grid's or results' own files, in `home`)."""
    if out is None:
        return default
    if str(out).strip() == "":
        raise UsageError("empty --out: give a file (a directory for --format vtk), or leave it out")
    path = Path(out).expanduser()
    if fmt != "vtk" and path.is_dir():
        path = path / default.name
    if owned(path):
        raise UsageError(f"--out {path} would overwrite the grid's own files: choose a path outside {home.resolve()}")
    if fmt == "vtk":
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file: --format vtk writes a directory (give a new or empty one)")
        if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
            raise UsageError(f"--out {path} is a directory that holds other files: --format vtk needs a new or empty "
                             f"directory (or an earlier VTK export, which it replaces)")
    elif path.exists() and not path.is_file():
        raise UsageError(f"--out {path} exists and is not a regular file: choose another path")
    return path


@contextlib.contextmanager
def _undone_on_failure(created: list[Path]) -> Iterator[None]:
    """If the block fails, remove the directories this export made (innermost first, only if still empty)."""
    try:
        yield
    except BaseException:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _measure(result: ExportResult, started: float) -> None:
    """The written files' total size and the time the export took."""
    result.bytes = sum(f.stat().st_size for f in result.files if f.is_file())
    result.seconds = time.perf_counter() - started


def _cannot_write(e: OSError, path: Path) -> StoreError:
    """One line for an OSError while writing an export (a full disk says so, as everywhere in the store)."""
    if isinstance(e, StoreError):
        return e
    if e.errno == errno.ENOSPC:
        return os_error(e, path)
    return StoreError(f"cannot write {path} ({(e.strerror or str(e)).lower()}): choose another --out")


def _prepare_parent(path: Path) -> list[Path]:
    """Check that `path` can be written: create its missing parent directories (returned, outermost first)
    and probe the directory. One clear line if not."""
    parent = path.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot write {path}: {ancestor} is a file, not a directory; choose another --out")
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    missing.reverse()
    created: list[Path] = []
    with _undone_on_failure(created):
        try:
            for d in missing:
                d.mkdir()
                created.append(d)
            probe = parent / f".write-test.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise _cannot_write(e, path) from e
    return created


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def _atomic(path: Path) -> contextlib.AbstractContextManager[Path]:
    """A temporary name in `path`'s directory; renamed to `path` only if the block finishes."""
    return atomic_path(path, error=_cannot_write)


# --- reading the grid -----------------------------------------------------------------------------


@dataclass
class _Data:
    """Every array of the grid's Zarr group, read once (done-marks first), with dims and attributes."""

    arrays: dict[str, np.ndarray]
    dims: dict[str, list[str]]
    var_attrs: dict[str, dict[str, Any]]
    attrs: dict[str, Any]

    @property
    def line_dims(self) -> int:
        return 2 if "y" in self.dims["loss"] else 1

    def coord(self, dim: str) -> np.ndarray:
        if dim in self.arrays and self.dims[dim] == [dim]:
            return self.arrays[dim]
        return np.arange(self.arrays["loss"].shape[self.dims["loss"].index(dim)])

    def point_done(self) -> np.ndarray:
        """bool, shaped like loss: the done-mark of each point's row."""
        done = self.arrays["done"] > 0
        loss_dims = self.dims["loss"]
        index = tuple(slice(None) if d in self.dims["done"] else np.newaxis for d in loss_dims)
        order = [d for d in loss_dims if d in self.dims["done"]]
        if order != self.dims["done"]:
            raise IntegrityError("the grid's done array does not follow the loss array's dimensions (damaged)")
        return np.broadcast_to(done[index], self.arrays["loss"].shape)

    def masked(self, name: str) -> np.ndarray:
        """`name` (loss, accuracy) with NaN at the points whose row is not done."""
        return np.where(self.point_done(), self.arrays[name], np.float32(np.nan)).astype(self.arrays[name].dtype)

    def counts(self) -> tuple[int, int, int]:
        """(points, missing, diverged) over the loss array."""
        done = self.point_done()
        loss = self.arrays["loss"]
        return int(loss.size), int((~done).sum()), int((done & ~np.isfinite(loss)).sum())


def _read(zarr_path: Path, grid_id: str, required: tuple[str, ...] = ("loss", "done", "epoch")) -> _Data:
    try:
        root = open_group(zarr_path, "r")
        names = sorted(name for name, _ in root.arrays())
        if not set(required) <= set(names):
            raise KeyError(", ".join(required))
        # the epoch coordinate, then the done-marks, then the values: a row marked done after its values were
        # read cannot be exported as done with the NaN its values had before they were written
        order = ["epoch", "done", *[n for n in names if n not in ("epoch", "done")]]
        arrays: dict[str, np.ndarray] = {}
        dims: dict[str, list[str]] = {}
        var_attrs: dict[str, dict[str, Any]] = {}
        for name in order:
            node: Any = root[name]
            dims[name] = list(node.metadata.dimension_names or [f"{name}_dim_{i}" for i in range(node.ndim)])
            var_attrs[name] = dict(node.attrs)
            arrays[name] = np.asarray(node[...])
        attrs = dict(root.attrs)
    except (*DECODE_ERRORS, KeyError, FileNotFoundError) as e:
        raise IntegrityError(
            f"grid {grid_id} cannot be read ({type(e).__name__}: {e}): `landscape verify` lists what is damaged; the "
            "grid's `landscape grid` command with --resume rebuilds it"
        ) from e
    n = len(arrays["epoch"])  # a grid growing meanwhile: keep the epochs the coordinate was read with
    for name, a in arrays.items():
        if dims[name] and dims[name][0] == "epoch":
            if a.shape[0] < n:
                raise IntegrityError(f"grid {grid_id}: {name} has {a.shape[0]} epochs, the epoch axis {n} (damaged): "
                                     "run `landscape verify`")
            arrays[name] = a[:n]
    if n == 0:
        raise GridStateError(f"grid {grid_id} has no epochs yet: nothing to export")
    return _Data(arrays, dims, var_attrs, attrs)


# --- NetCDF and npz -------------------------------------------------------------------------------


def _require_netcdf() -> None:
    try:
        import h5netcdf  # noqa: F401
        import xarray  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--format netcdf needs xarray and h5netcdf ({e.name} is missing): "
                         "pip install xarray 'h5netcdf[h5py]'") from e


def _encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """NetCDF attributes: strings and numbers as they are, anything else as a JSON string (named in JSON_ATTRS)."""
    out: dict[str, Any] = {}
    encoded = []
    for key, value in attrs.items():
        if isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
            out[key] = value
        else:
            out[key] = json.dumps(value, ensure_ascii=False)
            encoded.append(key)
    if encoded:
        out[JSON_ATTRS] = json.dumps(encoded)
    return out


def _write_netcdf(data: _Data, path: Path) -> Path:
    import xarray as xr

    coords = {n: xr.Variable(data.dims[n], a, _encode_attrs(data.var_attrs[n]))
              for n, a in data.arrays.items() if data.dims[n] == [n]}
    variables = {n: xr.Variable(data.dims[n], a, _encode_attrs(data.var_attrs[n]))
                 for n, a in data.arrays.items() if n not in coords}
    ds = xr.Dataset(variables, coords=coords, attrs=_encode_attrs(data.attrs))
    encoding: dict[str, dict[str, Any]] = {}
    for name, a in data.arrays.items():  # no fill value: nothing is masked on reading, NaNs keep their bits
        encoding[name] = {"_FillValue": None}
        if a.ndim and a.size:
            encoding[name].update(zlib=True, complevel=4, shuffle=True)
    with _atomic(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", format="NETCDF4", encoding=encoding)
    return path


def _write_npz(data: _Data, path: Path) -> Path:
    if NPZ_ATTRS in data.arrays:
        raise IntegrityError(f"the grid has an array named {NPZ_ATTRS}, which npz exports use for the attributes")
    meta = {
        "attributes": data.attrs,
        "arrays": {n: {"dims": data.dims[n], "dtype": str(a.dtype), "attributes": data.var_attrs[n]}
                   for n, a in data.arrays.items()},
    }
    payload: dict[str, Any] = {**data.arrays, NPZ_ATTRS: np.array(json.dumps(meta, ensure_ascii=False))}
    with _atomic(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no ".npz" to the name
        np.savez_compressed(f, **payload)
    return path


# --- CSV ------------------------------------------------------------------------------------------


def _text(values: np.ndarray) -> np.ndarray:
    """Numbers as text: integers plainly, floats in the shortest form that reads back to the same value of
    their own dtype (float32 stays float32), 'nan', 'inf', '-inf'."""
    return np.asarray(values).astype(str)


def _write_lines(f: IO[str], columns: list[np.ndarray]) -> None:
    f.writelines(",".join(row) + "\n" for row in zip(*columns, strict=True))


def _write_csv(data: _Data, path: Path) -> list[Path]:
    loss_dims = data.dims["loss"]
    axes = [d for d in loss_dims if d not in ("epoch", "pair", "batch")]  # [y, x] or [x]
    header = ["epoch", "pair", "batch", *reversed(axes), "loss", "accuracy", "done"]
    loss, done = data.masked("loss"), data.point_done()
    accuracy = data.masked("accuracy") if "accuracy" in data.arrays else np.full_like(loss, np.nan)
    inner = loss.shape[1:]
    index = np.indices(inner).reshape(len(inner), -1)  # one epoch's points, in the loss array's order
    texts = {d: _text(data.coord(d))[index[k]] for k, d in enumerate(loss_dims[1:])}
    epochs = _text(data.coord("epoch"))
    files = [path]
    with _atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(header) + "\n")
        for ei in range(loss.shape[0]):
            epoch = np.full(index.shape[1], epochs[ei])
            _write_lines(f, [epoch, texts["pair"], texts["batch"], *(texts[d] for d in reversed(axes)),
                             _text(loss[ei].ravel()), _text(accuracy[ei].ravel()),
                             _text(done[ei].ravel().astype(np.uint8))])
    if "path_x" in data.arrays and "path_loss" in data.arrays:
        files.append(_write_path_csv(data, path.with_name(f"{path.stem}_path{path.suffix or '.csv'}")))
    return files


def _write_path_csv(data: _Data, path: Path) -> Path:
    """A PCA trajectory: one row per (checkpoint, batch): its coordinates, distance from the plane, own values."""
    loss = data.arrays["path_loss"]  # [path_epoch, batch]
    n, b = loss.shape
    rows = np.repeat(np.arange(n), b)
    cols = ["path_epoch", "batch", "path_x", *(["path_y"] if "path_y" in data.arrays else []), "path_residual",
            "path_loss", "path_accuracy"]
    values: dict[str, np.ndarray] = {
        "path_epoch": _text(data.coord("path_epoch"))[rows],
        "batch": _text(data.coord("batch"))[np.tile(np.arange(b), n)],
        **{c: _text(data.arrays[c])[rows] for c in ("path_x", "path_y", "path_residual") if c in data.arrays},
        "path_loss": _text(loss.ravel()),
        "path_accuracy": _text(data.arrays["path_accuracy"].ravel() if "path_accuracy" in data.arrays
                               else np.full(loss.size, np.nan, np.float32)),
    }
    cols = [c for c in cols if c in values]
    with _atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(cols) + "\n")
        _write_lines(f, [values[c] for c in cols])
    return path


# --- VTK ------------------------------------------------------------------------------------------


def _import_vtk() -> Any:
    """The vtk classes the export uses (imported lazily: vtk is the optional extra `landscape-cli[vtk]`)."""
    try:
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkObject, vtkPoints
        from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkDataSetAttributes, vtkPolyData, vtkStructuredGrid
        from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter, vtkXMLStructuredGridWriter
    except ImportError as e:
        raise UsageError(f"--format vtk needs the vtk package, which is not installed: {VTK_INSTALL}") from e
    assert (vtkDataSetAttributes.HIDDENPOINT, vtkDataSetAttributes.HIDDENCELL) == (HIDDENPOINT, HIDDENCELL)
    return type("Vtk", (), {
        "numpy_support": numpy_support, "vtkDoubleArray": vtkDoubleArray, "vtkObject": vtkObject,
        "vtkPoints": vtkPoints, "vtkCellArray": vtkCellArray, "ghost_name": vtkDataSetAttributes.GhostArrayName(),
        "vtkPolyData": vtkPolyData, "vtkStructuredGrid": vtkStructuredGrid,
        "vtkXMLPolyDataWriter": vtkXMLPolyDataWriter, "vtkXMLStructuredGridWriter": vtkXMLStructuredGridWriter,
    })


def height(loss: np.ndarray, zmax: float | None = None, log: bool = False) -> np.ndarray:
    """The VTK height (float64) of loss values, as h52vtp: clipped at `zmax`, then log(z + 0.1) with `log`."""
    z = np.asarray(loss, np.float64).copy()
    if zmax is not None:
        z[z > zmax] = zmax
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log(z + LOG_OFFSET)
    return z


@dataclass
class _Piece:
    """One VTK file's points: coordinates [n, 2], the height and the fields, and which points are shown."""

    xy: np.ndarray
    z: np.ndarray
    fields: dict[str, np.ndarray]
    visible: np.ndarray
    shape: tuple[int, ...]  # (ny, nx) for a surface, (n,) for a line
    time: float | None = None


def _piece(xy: np.ndarray, loss: np.ndarray, accuracy: np.ndarray, done: np.ndarray, zmax: float | None, log: bool,
           shape: tuple[int, ...], extra: dict[str, np.ndarray] | None = None, time: float | None = None) -> _Piece:
    z = height(loss, zmax, log)
    visible = done & np.isfinite(z)
    diverged = done & ~np.isfinite(loss)
    shown = z[visible]
    z_out = np.where(visible, z, np.nan)
    fields: dict[str, np.ndarray] = {"loss": loss, "accuracy": accuracy, "done": done.astype(np.uint8),
                                     "diverged": diverged.astype(np.uint8), "height": z_out}
    fields.update(extra or {})
    flat = np.where(visible, z, shown.min() if shown.size else 0.0)  # hidden points: a finite z out of the way
    return _Piece(xy, flat, fields, visible, shape, time)


def _vtk_array(vtk: Any, name: str, values: np.ndarray) -> Any:
    arr = np.ascontiguousarray(values.reshape(values.shape[0], -1) if values.ndim > 1 else values)
    out = vtk.numpy_support.numpy_to_vtk(arr, deep=True)
    out.SetName(name)
    return out


def _fill(vtk: Any, dataset: Any, piece: _Piece) -> None:
    points = vtk.vtkPoints()
    points.SetDataTypeToDouble()
    xyz = np.column_stack([piece.xy, piece.z]).astype(np.float64)
    points.SetData(vtk.numpy_support.numpy_to_vtk(np.ascontiguousarray(xyz), deep=True))
    dataset.SetPoints(points)
    pd = dataset.GetPointData()
    for name, values in piece.fields.items():
        pd.AddArray(_vtk_array(vtk, name, values))
    pd.SetActiveScalars("height")
    ghost = np.where(piece.visible, 0, HIDDENPOINT).astype(np.uint8)
    pd.AddArray(_vtk_array(vtk, vtk.ghost_name, ghost))
    if piece.time is not None:
        t = vtk.vtkDoubleArray()
        t.SetName("TimeValue")  # ParaView reads it as the dataset's time: the epoch
        t.InsertNextValue(piece.time)
        dataset.GetFieldData().AddArray(t)


def _polyline(vtk: Any, piece: _Piece) -> Any:
    """A line's points joined in order; hidden points break it (a lone visible point becomes a vertex)."""
    poly = vtk.vtkPolyData()
    _fill(vtk, poly, piece)
    lines, verts = vtk.vtkCellArray(), vtk.vtkCellArray()
    run: list[int] = []
    for i, shown in enumerate([*piece.visible.tolist(), False]):
        if shown:
            run.append(i)
            continue
        if len(run) == 1:
            verts.InsertNextCell(1)
            verts.InsertCellPoint(run[0])
        elif run:
            lines.InsertNextCell(len(run))
            for j in run:
                lines.InsertCellPoint(j)
        run = []
    poly.SetLines(lines)
    poly.SetVerts(verts)
    return poly


def _write_piece(vtk: Any, piece: _Piece, path: Path) -> int:
    """Write one piece (a .vts surface or a .vtp line); returns its hidden points."""
    if len(piece.shape) == 2:
        dataset = vtk.vtkStructuredGrid()
        ny, nx = piece.shape
        dataset.SetDimensions(nx, ny, 1)
        _fill(vtk, dataset, piece)
        if nx > 1 and ny > 1:  # the cells touching a hidden point, hidden too (for readers that look at cells only)
            shown = piece.visible.reshape(ny, nx)
            corners = shown[:-1, :-1] & shown[1:, :-1] & shown[:-1, 1:] & shown[1:, 1:]
            cells = np.where(corners.ravel(), 0, HIDDENCELL).astype(np.uint8)
            dataset.GetCellData().AddArray(_vtk_array(vtk, vtk.ghost_name, cells))
        writer = vtk.vtkXMLStructuredGridWriter()
    else:
        dataset = _polyline(vtk, piece)
        writer = vtk.vtkXMLPolyDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(dataset)
    writer.SetDataModeToAppended()
    writer.EncodeAppendedDataOff()
    writer.SetCompressorTypeToZLib()
    shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()  # a failure is reported below, in one line
    try:
        ok = writer.Write()
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(shown)
    if ok != 1 or not path.is_file():
        raise StoreError(f"cannot write {path} (VTK error code {writer.GetErrorCode()}): check the disk and --out")
    return int((~piece.visible).sum())


def _name(epoch: int, pair: int | None = None, batch: int | None = None) -> str:
    return f"epoch-{epoch:04d}_mean" if pair is None else f"epoch-{epoch:04d}_pair-{pair}_batch-{batch}"


def _write_vtk(vtk: Any, data: _Data, out: Path, result: ExportResult, zmax: float | None,
               log: bool) -> tuple[list[Path], int]:
    plane = data.line_dims == 2
    suffix = ".vts" if plane else ".vtp"
    x = np.asarray(data.coord("x"), np.float64)
    y = np.asarray(data.coord("y"), np.float64) if plane else np.zeros(1)
    gx, gy = np.meshgrid(x, y)  # [y, x]: x varies fastest, VTK's point order
    xy = np.column_stack([gx.ravel(), gy.ravel()])
    shape = (len(y), len(x)) if plane else (len(x),)
    loss, done = data.masked("loss"), data.point_done()
    accuracy = data.masked("accuracy") if "accuracy" in data.arrays else np.full_like(loss, np.nan)
    epochs, pairs, batches = data.coord("epoch"), data.coord("pair"), data.coord("batch")
    names: list[str] = []
    means: list[tuple[int, str]] = []
    hidden = 0
    tmp = _temporary(out)
    try:
        tmp.mkdir()
        for ei, epoch in enumerate(epochs.tolist()):
            for pi, pair in enumerate(pairs.tolist()):
                for bi, batch in enumerate(batches.tolist()):
                    piece = _piece(xy, loss[ei, pi, bi].ravel(), accuracy[ei, pi, bi].ravel(), done[ei, pi, bi].ravel(),
                                   zmax, log, shape, time=float(epoch))
                    name = _name(epoch, pair, batch) + suffix
                    hidden += _write_piece(vtk, piece, tmp / name)
                    names.append(name)
            all_done = done[ei].all(axis=(0, 1))
            with np.errstate(invalid="ignore"):
                mean_loss = np.where(all_done, loss[ei].astype(np.float64).mean(axis=(0, 1)), np.nan)
                mean_acc = np.where(all_done, accuracy[ei].astype(np.float64).mean(axis=(0, 1)), np.nan)
            piece = _piece(xy, mean_loss.ravel(), mean_acc.ravel(), all_done.ravel(), zmax, log, shape,
                           time=float(epoch))
            name = _name(epoch) + suffix
            hidden += _write_piece(vtk, piece, tmp / name)
            names.append(name)
            means.append((epoch, name))
        if "path_x" in data.arrays and "path_loss" in data.arrays:
            hidden += _write_path(vtk, data, tmp / "path.vtp", zmax, log)
            names.append("path.vtp")
        pvd = "epochs_mean.pvd"
        (tmp / pvd).write_text(
            '<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n  <Collection>\n'
            + "".join(f'    <DataSet timestep="{e}" part="0" file="{n}"/>\n' for e, n in means)
            + "  </Collection>\n</VTKFile>\n")
        names.append(pvd)
        manifest = {
            "format": "vtk", "grid": result.grid_id, "run": result.run_id, "kind": result.kind, "dims": result.dims,
            "zmax": zmax, "log": log, "height": ("log(min(loss, zmax) + 0.1)" if zmax is not None else "log(loss + 0.1)")
            if log else ("min(loss, zmax)" if zmax is not None else "loss"),
            "points_total": result.points_total, "points_missing": result.points_missing,
            "points_diverged": result.points_diverged, "points_hidden": hidden, "files": names,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        names.append(MANIFEST)
        _replace_dir(tmp, out)
    except StoreError:
        raise
    except OSError as e:
        raise _cannot_write(e, out) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names], hidden


def _write_path(vtk: Any, data: _Data, path: Path, zmax: float | None, log: bool) -> int:
    """A PCA trajectory as a polyline in training order at (path_x, path_y, mean loss over the batches)."""
    loss = data.arrays["path_loss"]  # [path_epoch, batch]
    accuracy = data.arrays.get("path_accuracy", np.full_like(loss, np.nan))
    n = loss.shape[0]
    px = np.asarray(data.arrays["path_x"], np.float64)
    py = np.asarray(data.arrays["path_y"], np.float64) if "path_y" in data.arrays else np.zeros(n)
    with np.errstate(invalid="ignore"):
        mean_loss, mean_acc = loss.astype(np.float64).mean(axis=1), accuracy.astype(np.float64).mean(axis=1)
    extra = {"epoch": np.asarray(data.coord("path_epoch"), np.int64), "loss_batches": loss,
             "accuracy_batches": accuracy}
    if "path_residual" in data.arrays:
        extra["residual"] = np.asarray(data.arrays["path_residual"], np.float64)
    piece = _piece(np.column_stack([px, py]), mean_loss, mean_acc, np.ones(n, bool), zmax, log, (n,), extra)
    return _write_piece(vtk, piece, path)


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished directory `new` to `out`, replacing an earlier export (or an empty directory) there."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
