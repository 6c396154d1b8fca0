"""Exports of a grid for other tools: NetCDF-4, long-format CSV, VTK (ParaView) and NumPy's npz.

`export(run, format=...)` chooses the grid exactly as `plot` does (`grid=` names one, else the run's
newest grid), reads its Zarr group and writes:

- ``netcdf``: every array, coordinate and attribute of the group, NetCDF-4 (HDF5) through xarray's
  h5netcdf engine, dtypes kept, no fill-value masking (values are bitwise those of the store), with
  the attributes of CF-1.8: ``Conventions``, ``title``, ``source``, ``history``, ``references``,
  ``comment``; ``units`` "1" on every quantity (losses, accuracies, coefficients and counts are
  dimensionless); ``flag_values``/``flag_meanings`` on ``done`` and ``center_done``; the x (and y) axis'
  ``long_name`` says what it is for the grid's kind (t for an interpolation, PC1/PC2, the Hessian's
  eigenvectors, d1/d2). Lists of numbers (a PCA's ``explained_variance_ratio``) are numeric attributes;
  nested attributes (dicts, other lists, booleans, None) are JSON strings, named in the attribute
  ``json_encoded_attributes``; `open_netcdf` reads a file back with them decoded.
- ``csv``: one row per (epoch, pair, batch, point): ``run,grid,epoch,pair,batch,x[,y],loss,accuracy,done``
  (the run and grid ids, so files of several runs concatenate), floats in the shortest form that reads
  back to the same float32 (coordinates: float64), ``nan`` where the value is NaN. PCA grids also get
  ``<name>_path.csv``: the trajectory, one row per (checkpoint, batch).
- ``vtk``: a directory of XML VTK files for ParaView: ``epoch-0005_pair-0_batch-1.vts`` per (epoch,
  pair, batch) and ``epoch-0005_mean.vts`` (the mean over pairs and batches), the loss as height (z) —
  ``.vtp`` polylines for a 1-D grid — ``path.vtp`` for a PCA trajectory, ``epochs_mean.pvd`` (the means as
  a time series) and ``landscape-export.json`` (what was written, with which options).
  As Li et al.'s ``h52vtp.py``: `zmax` clips the height (values above it become zmax), then `log`
  takes log(height + 0.1). z is the height times `height_scale` (default: 1, 2 or 5 × 10^k chosen so
  that the heights' range is about the grid's width), or 0 with `flat` (for ParaView's Warp By
  Scalar, whose scale factor is then `height_scale`); each file's field data records ``height_scale``
  and ``flat``. Point fields: ``loss``, ``accuracy`` (as stored), ``done``, ``diverged``, ``height``
  (unscaled: the active scalar) and ``vtkGhostType``: points that are missing or not finite are
  HIDDENPOINT, so ParaView leaves them, and every cell touching them (marked HIDDENCELL too), out of
  the surface.
- ``npz``: every array of the group under its name (coordinates included), compressed, plus
  ``attributes_json``: the group's attributes and each array's dimensions and attributes.

A grid (or curvature results) of a run with step checkpoints is named by step: its first dimension is
``checkpoint``, with the coordinates ``step`` and ``epoch`` (the epochs completed) along it, which NetCDF
and npz keep as they are (NetCDF: both coordinate variables), CSV writes as an ``epoch`` and a ``step``
column (a PCA path's ``path_step``), and VTK names its files ``step-000000150_...`` (``steps_mean.pvd``,
the step as the time, ``step`` and ``epoch`` in each file's field data).

Every export carries the rows' ``done`` marks: a point whose row is not done yet is *missing* (CSV
and VTK write NaN values and done 0 for it), a done point with a NaN/Inf loss has *diverged*. NetCDF
and npz keep the arrays as stored (``done`` beside them). Files are written under a temporary name and
renamed into place (a VTK directory as a whole), so a failed (or interrupted) export leaves nothing half-written.

An export never replaces a file it did not write: an existing `out` outside the store is replaced only if its own
metadata names the same grid (or curvature results) — a NetCDF file's global attributes ``run`` and ``grid`` (or
``hessian``), an npz file's attributes, a grid CSV's ``run,grid`` columns, a VTK directory's
``landscape-export.json``; a curvature CSV, which names no ids, by its header and the rows it marks done — or
with `force`.
Nothing is recorded anywhere to know it, so this holds for a read-only store, a moved one, or a copied file.

The writers live beside this module: `tables` (NetCDF, npz, CSV) and `vtk`, over the grid as
`grid_data` reads it, writing through `writing`'s helpers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli._io import now
from landscape_cli._version import __version__
from landscape_cli.errors import UsageError
from landscape_cli.exchange.grid_data import read_grid
from landscape_cli.exchange.tables import (
    JSON_ATTRS,
    NPZ_ATTRS,
    Description,
    csv_files,
    decode_attrs,
    export_ids,
    hessian_tables,
    open_netcdf,
    require_netcdf,
    same_results_table,
    write_csv,
    write_hessian_csv,
    write_netcdf,
    write_npz,
)
from landscape_cli.exchange.vtk import (
    HIDDENCELL,
    HIDDENPOINT,
    LOG_OFFSET,
    MANIFEST,
    VTK_INSTALL,
    default_scale,
    height,
    import_vtk,
    write_vtk,
)
from landscape_cli.exchange.writing import prepare_parent, undone_on_failure
from landscape_cli.store import Store
from landscape_cli.store.meta import HessianMeta
from landscape_cli.views.readers import Source, axis_labels, geometry, select_hessian, select_sources

__all__ = [
    "DEFAULT_NAMES", "FORMATS", "HESSIAN_FORMATS", "HESSIAN_NAMES", "HIDDENCELL", "HIDDENPOINT", "JSON_ATTRS",
    "LOG_OFFSET", "MANIFEST", "NPZ_ATTRS", "VTK_INSTALL", "ExportResult", "decode_attrs", "default_scale", "export",
    "export_hessian", "height", "open_netcdf",
]

FORMATS = ("netcdf", "csv", "vtk", "npz")
DEFAULT_NAMES = {"netcdf": "landscape.nc", "csv": "landscape.csv", "npz": "landscape.npz", "vtk": "vtk"}


@dataclass
class ExportResult:
    """What `export` wrote: `path` (the file, or the directory for vtk) and every file in `files`.

    Point counts are over the grid's loss array (epochs × pairs × batches × points): `points_missing`
    lie in rows not done yet, `points_diverged` are done with a NaN/Inf loss. `points_hidden` (vtk
    only) counts the points left out of the geometry in every file written (surfaces, means, path);
    `height_scale` (vtk only) is the factor from height to z (with `flat`, z is 0 and it is Warp By
    Scalar's factor).
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
    height_scale: float | None = None
    kind: str = ""
    dims: int = 0
    epochs: list[int] = field(default_factory=list)  # a run with step checkpoints: the epochs completed at each
    task: str = "classification"
    bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    steps: list[int] | None = None  # the checkpoints' steps (a run with step checkpoints), else None

    @property
    def complete(self) -> bool:
        return self.points_missing == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format, "path": str(self.path), "files": [str(f) for f in self.files],
            "grid": self.grid_id, "run": self.run_id, "kind": self.kind, "dims": self.dims, "epochs": self.epochs,
            **({"steps": self.steps} if self.steps is not None else {}), "task": self.task,
            "points_total": self.points_total, "points_missing": self.points_missing,
            "points_diverged": self.points_diverged, "points_hidden": self.points_hidden,
            **({"height_scale": self.height_scale} if self.height_scale is not None else {}),
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
    height_scale: float | None = None,
    flat: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ExportResult:
    """Write the grid of `run` (named by `grid`, else the run's newest) as `format`: netcdf, csv, vtk or npz.

    `out` is the file to write (the directory for vtk); an existing directory receives the default
    name; default: ``<grid dir>/exports/landscape.nc|.csv|.npz`` or ``<grid dir>/exports/vtk/``. `zmax`
    and `log` shape the VTK height as Li et al.'s h52vtp does (clip at zmax, then log(z + 0.1));
    z is that height times `height_scale` (default: `default_scale`, the heights' range about the
    grid's width), or 0 with `flat` (the height only as a point field, for ParaView's Warp By Scalar).
    An existing `out` (or a file written beside it) is replaced only if an earlier export of this grid wrote it,
    as its own metadata says (`replaceable`), or with `force`.
    """
    started = time.perf_counter()
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if fmt != "vtk" and (zmax is not None or log or height_scale is not None or flat):
        raise UsageError("--zmax, --log, --height-scale and --flat shape the VTK height: they apply to --format vtk only")
    zmax = _positive(zmax, "--zmax")
    height_scale = _positive(height_scale, "--height-scale")
    vtk = import_vtk() if fmt == "vtk" else None
    if fmt == "netcdf":
        require_netcdf()

    st = Store.of(store)
    source = _select(st, run, grid)
    target = _out_path(out, fmt, st.export_path(source.run_id, source.grid_id, DEFAULT_NAMES[fmt]), st, "grid")
    guarded = out is not None and not force and not st.holds(target)  # the store's own exports/ are the tool's
    with undone_on_failure(prepare_parent(target)):
        data = read_grid(source.zarr_path, source.grid_id)
        if guarded:
            ids = {"run": source.run_id, "grid": source.grid_id}
            planned = [target] if fmt != "csv" else csv_files(data, target)
            _refuse_others(planned, [p for p in planned if not replaceable(p, fmt, ids)], f"grid {source.grid_id}")
        stats = data.counts()
        result = ExportResult(
            format=fmt, path=target, files=[], grid_id=source.grid_id, run_id=source.run_id,
            points_total=stats[0], points_missing=stats[1], points_diverged=stats[2], kind=source.grid.config.kind,
            dims=data.line_dims, epochs=[int(e) for e in data.arrays["epoch"]],
            task=str(source.run.dataset.get("task", "classification")),
            steps=[int(e) for e in data.arrays["step"]] if data.steps else None,
        )
        if fmt == "netcdf":
            result.files = [write_netcdf(data, target, _describe(source))]
        elif fmt == "npz":
            result.files = [write_npz(data, target)]
        elif fmt == "csv":
            result.files = write_csv(data, target, {"run": source.run_id, "grid": source.grid_id})
        else:
            assert vtk is not None
            result.files, result.points_hidden, result.height_scale = write_vtk(vtk, data, target, result, zmax, log,
                                                                                height_scale, flat)
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
                   store: Store | str | os.PathLike[str] | None = None, force: bool = False) -> ExportResult:
    """Write a run's curvature results (`landscape hessian`: named by `hessian`, else the newest) as netcdf, csv
    or npz: eigenvalues, residuals, λmin, |λmin/λmax|, trace (and the spectral density), with `done` per epoch.

    NetCDF and npz hold every array and attribute of the results' Zarr group; CSV has one row per epoch
    and eigenpair (`hessian.csv`) and, with a density, one per epoch and bin (`hessian_density.csv`).
    Default `out`: ``<results dir>/exports/hessian.nc|.csv|.npz``. "Points" in the result are epochs. An existing
    `out` is replaced only if an earlier export of these results wrote it (`replaceable`), or with `force`.
    """
    started = time.perf_counter()
    fmt = str(format).strip().lower()
    if fmt not in HESSIAN_FORMATS:
        raise UsageError(f"curvature results export as {', '.join(HESSIAN_FORMATS)} (numbers per epoch, no surface for "
                         f"VTK), not {format!r}")
    if fmt == "netcdf":
        require_netcdf()
    st = Store.of(store)
    run_id = st.resolve(run)
    meta = select_hessian(st, run_id, hessian)
    zarr_path = st.hessian_zarr(run_id, meta.id)
    target = _out_path(out, fmt, st.hessian_export_path(run_id, meta.id, HESSIAN_NAMES[fmt]),
                       st, "curvature results")
    guarded = out is not None and not force and not st.holds(target)
    with undone_on_failure(prepare_parent(target)):
        data = read_grid(zarr_path, meta.id, ("done", "epoch", "eigenvalues"))
        if guarded:
            if fmt == "csv":  # a CSV of curvature results names no ids: its header and done rows tell
                tables = hessian_tables(data, target)
                foreign = [p for p, (header, columns) in tables.items()
                           if p.exists() and not same_results_table(p, header, columns)]
                planned = list(tables)
            else:
                planned = [target]
                foreign = [p for p in planned if not replaceable(p, fmt, {"run": run_id, "hessian": meta.id})]
            _refuse_others(planned, foreign, f"curvature results {meta.id}")
        done = data.arrays["done"] > 0
        result = ExportResult(format=fmt, path=target, files=[], grid_id=meta.id, run_id=run_id,
                              points_total=int(done.size), points_missing=int((~done).sum()), points_diverged=0,
                              kind="hessian", epochs=[int(e) for e in data.arrays["epoch"]],
                              steps=[int(e) for e in data.arrays["step"]] if data.steps else None)
        if fmt == "netcdf":
            result.files = [write_netcdf(data, target, _describe_hessian(meta))]
        elif fmt == "npz":
            result.files = [write_npz(data, target)]
        else:
            result.files = write_hessian_csv(data, target)
    _measure(result, started)
    if result.points_missing:
        result.notes.append(f"{result.points_missing} of {result.points_total} epochs are not computed yet (done 0)")
    return result


# --- options, descriptions -------------------------------------------------------------------------


def _positive(value: float | None, option: str) -> float | None:
    """A finite positive number (one line if not), or None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number > 0):
        raise UsageError(f"{option} must be a finite positive number, got {value!r}")
    return number


def _history(created: str, versions: dict[str, str], made: str, command: str) -> str:
    """CF's history: one line per step, oldest first, each "time: what"."""
    version = versions.get("landscape")
    first = f"{created}: {made}" + (f" (landscape-cli {version})" if version else "")
    return f"{first}\n{now()}: {command} (landscape-cli {__version__})" if created else f"{now()}: {command}"


def _describe(source: Source) -> Description:
    """A grid's NetCDF title, source, history and axis names."""
    run, grid = source.run, source.grid
    what = f"{run.config.model} on {run.config.dataset}"
    labels = axis_labels(source)
    if source.kind == "interpolate":
        axes = {"x": "t, the interpolation coefficient: the weights are (1 - t)·w_A + t·w_B (A: the epoch, B: the "
                     "target checkpoint)"}
    elif source.kind in ("pca", "hessian", "random"):
        names = {"pca": labels,
                 "hessian": ["v1, the eigenvector of each epoch's largest Hessian eigenvalue",
                             "v2, the eigenvector of each epoch's second-largest Hessian eigenvalue"],
                 "random": ["d1, a random direction", "d2, a random direction"]}[source.kind]
        axes = {axis: f"coefficient of {name}" for axis, name in zip(("x", "y")[:source.dims], names, strict=False)}
    else:
        axes = {}
    return Description(
        title=f"Loss landscape of {source.name} ({what}): {geometry(source)}",
        source=f"landscape-cli: losses of {what} checkpoints (run {source.run_id}) evaluated by grid {source.grid_id}",
        history=_history(grid.created, grid.versions, f"landscape grid computed grid {source.grid_id}",
                         f"landscape export {source.run_id} --grid {source.grid_id} --format netcdf"),
        axes=axes,
    )


def _describe_hessian(meta: HessianMeta) -> Description:
    return Description(
        title=f"Hessian eigenvalues, trace and spectral density of run {meta.run} (results {meta.id})",
        source=f"landscape-cli: Lanczos eigenpairs and Hutchinson trace of the loss Hessian of run {meta.run}",
        history=_history(meta.created, meta.versions, f"landscape hessian computed results {meta.id}",
                         f"landscape export {meta.run} --hessian --grid {meta.id} --format netcdf"),
        axes={"k": "index of the eigenpair (0: the largest eigenvalue)", "bin": "index of the density's bin"},
    )


# --- choosing the grid and the output path ---------------------------------------------------------


def _select(st: Store, run: str, grid: str | None) -> Source:
    return select_sources(st, [run], [grid] if grid is not None else [], "to export")[0]


def _out_path(out: str | os.PathLike[str] | None, fmt: str, default: Path, st: Store, what: str) -> Path:
    """`out` (a directory given for a file: the default name in it), else `default`; refused anywhere inside the
    store (links followed) but the result's own exports/ directory, where `default` is: an export never replaces a
    checkpoint, a grid.json or any other file of the store."""
    if out is None:
        return default
    if str(out).strip() == "":
        raise UsageError("empty --out: give a file (a directory for --format vtk), or leave it out")
    path = Path(out).expanduser()
    if fmt != "vtk" and path.is_dir():
        path = path / default.name
    exports = default.parent
    # the exports/ directory itself (or made where it belongs): never a link to elsewhere in the store
    inside_exports = not exports.is_symlink() and Store._owns(path, exports) and path.resolve() != exports.resolve()
    if st.holds(path) and not inside_exports:
        raise UsageError(f"--out {path} is inside the store ({st.root.resolve()}), where exports go only to the {what}'s "
                         f"own exports/ directory ({exports}, the default): choose a path outside the store")
    if fmt == "vtk":
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file: --format vtk writes a directory (give a new or empty one)")
        if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
            raise UsageError(f"--out {path} is a directory that holds other files: --format vtk needs a new or empty "
                             f"directory (or an earlier VTK export, which it replaces)")
    elif path.exists() and not path.is_file():
        raise UsageError(f"--out {path} exists and is not a regular file: choose another path")
    return path


def replaceable(path: Path, fmt: str, ids: dict[str, str]) -> bool:
    """Whether `path` may be replaced by an export naming `ids` (run, and grid or hessian) without --force: it does
    not exist, or an earlier export of the same grid (or results) wrote it, as the file's own metadata says (a NetCDF
    file's global attributes, an npz file's attributes, a CSV's run and grid columns, a VTK directory's
    landscape-export.json), so re-exporting to the same --out needs no --force however the store was moved
    or copied, and nothing is written anywhere to remember it."""
    if not path.exists():
        return True
    if fmt == "vtk":
        if path.is_dir() and not any(path.iterdir()):
            return True
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        found = {k: str(manifest.get(k)) for k in ("run", "grid")}
    else:
        found = export_ids(path, fmt)
    return all(found.get(k) == v for k, v in ids.items())


def _refuse_others(planned: list[Path], foreign: list[Path], what: str) -> None:
    """One line if an export would replace files no earlier export of `what` wrote."""
    if not foreign:
        return
    first = foreign[0]
    beside = f" (it writes {', '.join(p.name for p in planned)})" if len(planned) > 1 else ""
    kind = "directory" if first.is_dir() else "file"
    raise UsageError(f"--out {first} exists and no earlier export of {what} wrote it{beside}: pass --force to replace "
                     f"the {kind}, or choose another --out")


def _measure(result: ExportResult, started: float) -> None:
    """The written files' total size and the time the export took."""
    result.bytes = sum(f.stat().st_size for f in result.files if f.is_file())
    result.seconds = time.perf_counter() - started
