"""The exports as tables of numbers: NetCDF-4 (and `open_netcdf` to read one back), npz and CSV.

NetCDF and npz hold every array and attribute of the Zarr group as stored (NetCDF adds the CF
attributes: `Conventions`, `title`, `history`, `source`, units, flags, axis labels per grid kind);
CSV writes one row per point (the grid) or per epoch and eigenpair (curvature results). The layouts
are described in `landscape_cli.exchange.export`. A grid of a run with step checkpoints keeps its
``checkpoint`` dimension with the ``step`` and ``epoch`` coordinates along it (NetCDF: both coordinate
variables; CSV: a ``step`` column beside ``epoch``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.exchange.grid_data import GridData
from landscape_cli.exchange.writing import atomic

JSON_ATTRS = "json_encoded_attributes"  # NetCDF: the attributes stored as JSON strings
NPZ_ATTRS = "attributes_json"  # npz: the attributes (and each array's dims and attributes) as one JSON string
CONVENTIONS = "CF-1.8"  # the newest CF version the CF checker (cfchecker 4.1) checks against
REFERENCES = ("Li, Xu, Taylor, Studer, Goldstein: Visualizing the Loss Landscape of Neural Nets, NeurIPS 2018 "
              "(arXiv:1712.09913)")
DIMENSIONLESS = "1"  # CF's units of a dimensionless quantity: losses, accuracies, coefficients, counts, indices
# CF flag variables: their values and what each means (blank-separated words)
FLAGS: dict[str, tuple[tuple[int, ...], str]] = {
    "done": ((0, 1), "not_computed computed"),
    "center_done": ((0, 1, 2), "not_computed values_only values_and_gradients"),
    "converged": ((0, 1), "not_converged converged"),
}


@dataclass
class Description:
    """What a NetCDF export says of itself: CF's global attributes, and the long_name of each grid axis."""

    title: str
    source: str
    history: str
    axes: dict[str, str] = field(default_factory=dict)  # a coordinate ("x", "y", "k") -> its long_name
    comment: str = ("done marks the computed values: NaN with done 1 diverged, done 0 not computed yet. Nested "
                    f"attributes are JSON strings, named in the attribute {JSON_ATTRS}.")


# --- NetCDF and npz -------------------------------------------------------------------------------


def require_netcdf() -> None:
    try:
        import h5netcdf  # noqa: F401
        import xarray  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--format netcdf needs xarray and h5netcdf ({e.name} is missing): "
                         "pip install xarray 'h5netcdf[h5py]'") from e


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """NetCDF attributes: strings, numbers and numpy arrays as they are, lists of numbers as numeric arrays, anything
    else as a JSON string (named in JSON_ATTRS)."""
    out: dict[str, Any] = {}
    encoded = []
    for key, value in attrs.items():
        if isinstance(value, str | np.ndarray) or _number(value):
            out[key] = value
        elif isinstance(value, list | tuple) and value and all(_number(v) for v in value):
            out[key] = np.asarray(value, np.float64 if any(isinstance(v, float) for v in value) else np.int64)
        else:
            out[key] = json.dumps(value, ensure_ascii=False)
            encoded.append(key)
    if encoded:
        out[JSON_ATTRS] = json.dumps(encoded)
    return out


def cf_attributes(data: GridData, description: Description) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The group's and each array's attributes as a CF-1.8 file carries them: the global attributes first
    (Conventions, title, source, history, references, comment), then the store's; units "1" on every
    quantity (all are dimensionless), flag_values/flag_meanings on the done-marks, the axes' long_name."""
    attrs = {"Conventions": CONVENTIONS, "title": description.title, "source": description.source,
             "history": description.history, "references": REFERENCES, "comment": description.comment,
             **{k: v for k, v in data.attrs.items() if k not in ("Conventions", "title", "source", "history")}}
    var_attrs: dict[str, dict[str, Any]] = {}
    for name, a in data.arrays.items():
        va = dict(data.var_attrs[name])
        if name in description.axes and data.dims[name] == [name]:
            va["long_name"] = description.axes[name]
        if name in FLAGS and a.dtype.kind in "iu":
            values, meanings = FLAGS[name]
            va.update(flag_values=np.asarray(values, a.dtype),
                      flag_meanings=meanings)
        elif a.dtype.kind in "iuf":
            va.setdefault("units", DIMENSIONLESS)
        var_attrs[name] = va
    return attrs, var_attrs


def write_netcdf(data: GridData, path: Path, description: Description | None = None) -> Path:
    """Every array, coordinate and attribute of `data` as NetCDF-4, values bitwise as stored; with a `description`,
    the CF attributes too (`cf_attributes`)."""
    import xarray as xr

    attrs, var_attrs = cf_attributes(data, description) if description else (data.attrs, data.var_attrs)
    # "coordinates" (the store's note that step and epoch are coordinates along `checkpoint`) is written by xarray
    # itself for the coordinate variables below
    var_attrs = {n: {k: v for k, v in va.items() if k != "coordinates"} for n, va in var_attrs.items()}
    named = set(data.coordinates)
    coords = {n: xr.Variable(data.dims[n], a, _encode_attrs(var_attrs[n]))
              for n, a in data.arrays.items() if n in named}
    variables = {n: xr.Variable(data.dims[n], a, _encode_attrs(var_attrs[n]))
                 for n, a in data.arrays.items() if n not in coords}
    ds = xr.Dataset(variables, coords=coords, attrs=_encode_attrs(attrs))
    encoding: dict[str, dict[str, Any]] = {}
    for name, a in data.arrays.items():  # no fill value: nothing is masked on reading, NaNs keep their bits
        encoding[name] = {"_FillValue": None}
        if a.ndim and a.size:
            encoding[name].update(zlib=True, complevel=4, shuffle=True)
    with atomic(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", format="NETCDF4", encoding=encoding)
    return path


def write_npz(data: GridData, path: Path) -> Path:
    if NPZ_ATTRS in data.arrays:
        raise IntegrityError(f"the grid has an array named {NPZ_ATTRS}, which npz exports use for the attributes")
    meta = {
        "attributes": data.attrs,
        "arrays": {n: {"dims": data.dims[n], "dtype": str(a.dtype), "attributes": data.var_attrs[n]}
                   for n, a in data.arrays.items()},
    }
    payload: dict[str, Any] = {**data.arrays, NPZ_ATTRS: np.array(json.dumps(meta, ensure_ascii=False))}
    with atomic(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy appends no ".npz" to the name
        np.savez_compressed(f, **payload)
    return path


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


# --- what an existing file says of itself: which export wrote it ------------------------------------

ID_KEYS = ("run", "grid", "hessian")  # the ids the Zarr group's attributes carry into a NetCDF or npz export


def export_ids(path: Path, fmt: str) -> dict[str, str]:
    """The ids (run, and grid or hessian) an export file of `fmt` names in its own metadata: a NetCDF file's global
    attributes, an npz file's `attributes_json`, a grid CSV's `run,grid` columns. Empty if the file is not such an
    export (or cannot be read as one)."""
    try:
        if fmt == "netcdf":
            import h5py

            with h5py.File(path, "r") as f:
                attrs = {k: f.attrs[k] for k in ID_KEYS if k in f.attrs}
        elif fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                attrs = json.loads(str(z[NPZ_ATTRS][()])).get("attributes", {}) if NPZ_ATTRS in z.files else {}
        elif fmt == "csv":
            with open(path, encoding="utf-8", newline="") as f:
                header, row = f.readline().rstrip("\n").split(","), f.readline().rstrip("\n").split(",")
            attrs = dict(zip(header[:2], row[:2], strict=False)) if header[:2] == ["run", "grid"] else {}
        else:
            return {}
    except Exception:  # not an HDF5 file, not a zip, not text...: not an export
        return {}
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items() if k in ID_KEYS}


def same_results_table(path: Path, header: str, columns: list[np.ndarray]) -> bool:
    """Whether a CSV file without ids (curvature results) is an earlier export of the same results: the header and
    the rows this export writes (`hessian_tables`), every row it marks done identical to one of them (results only
    ever add done epochs, and never change their values)."""
    ours = {",".join(row) for row in zip(*columns, strict=True)}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if f.readline().rstrip("\n") != header:
                return False
            theirs = [line.rstrip("\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    return all(row in ours for row in theirs if row.rpartition(",")[2] == "1")


# --- CSV ------------------------------------------------------------------------------------------


def _text(values: np.ndarray) -> np.ndarray:
    """Numbers as text: integers plainly, floats in the shortest form that reads back to the same value of
    their own dtype (float32 stays float32), 'nan', 'inf', '-inf'."""
    return np.asarray(values).astype(str)


def _write_lines(f: IO[str], columns: list[np.ndarray], chunk: int = 1 << 16) -> None:
    """One line per row of the text columns, `chunk` rows at a time as Python strings (iterating numpy's own string
    scalars can swallow a Ctrl-C, and is slower)."""
    rows = len(columns[0]) if columns else 0
    for start in range(0, rows, chunk):
        part = [np.asarray(c[start:start + chunk]).tolist() for c in columns]
        f.writelines(",".join(row) + "\n" for row in zip(*part, strict=True))


def write_csv(data: GridData, path: Path, keys: dict[str, str] | None = None) -> list[Path]:
    """One row per point: the `keys` columns first (run and grid ids: files of several grids concatenate), then
    ``epoch,pair,batch,x[,y],loss,accuracy,done`` (a grid of a run with step checkpoints: ``epoch,step,pair,...``,
    the epochs completed at each checkpoint and its step), then the grid's arrays stored once over a point's
    dimensions (a curve grid's ``line_loss,line_accuracy,ensemble_accuracy`` over batch and x,
    ``endpoint_ensemble_accuracy`` over batch), each at the point's own batch and x."""
    keys = keys or {}
    loss_dims = data.dims["loss"]
    axes = [d for d in loss_dims if d not in (data.checkpoint_dim, "pair", "batch")]  # [y, x] or [x]
    steps = _text(data.arrays["step"]) if data.steps else None
    # arrays stored once per grid over some of a point's dimensions (a curve grid's straight line and ensembles:
    # [batch, x]) are columns of every point they apply to, after `done`
    extras = [n for n, d in data.dims.items() if d and n not in ("loss", "accuracy") and n not in data.coordinates
              and data.checkpoint_dim not in d and set(d) <= set(loss_dims[1:]) and len(d) == len(set(d))
              and "pair" not in d]
    # user metrics (`grid --metric`): arrays over the loss's own dimensions, a column each after the extras
    user = [n for n, d in data.dims.items() if n not in ("loss", "accuracy") and tuple(d) == tuple(loss_dims)
            and n in data.arrays]
    header = [*keys, "epoch", *(["step"] if steps is not None else []), "pair", "batch", *reversed(axes), "loss",
              "accuracy", "done", *extras, *user]
    loss, done = data.masked("loss"), data.point_done()
    accuracy = data.masked("accuracy") if "accuracy" in data.arrays else np.full_like(loss, np.nan)
    inner = loss.shape[1:]
    index = np.indices(inner).reshape(len(inner), -1)  # one epoch's points, in the loss array's order
    texts = {d: _text(data.coord(d))[index[k]] for k, d in enumerate(loss_dims[1:])}
    extra_texts = [_text(data.arrays[n])[tuple(index[loss_dims[1:].index(d)] for d in data.dims[n])] for n in extras]
    epochs = _text(data.arrays["epoch"] if data.steps else data.coord("epoch"))
    files = [path]
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(header) + "\n")
        for ei in range(loss.shape[0]):
            epoch = [np.full(index.shape[1], epochs[ei])]
            if steps is not None:
                epoch.append(np.full(index.shape[1], steps[ei]))
            _write_lines(f, [*(np.full(index.shape[1], v) for v in keys.values()), *epoch, texts["pair"], texts["batch"],
                             *(texts[d] for d in reversed(axes)),
                             _text(loss[ei].ravel()), _text(accuracy[ei].ravel()),
                             _text(done[ei].ravel().astype(np.uint8)), *extra_texts,
                             *(_text(data.masked(n)[ei].ravel()) for n in user)])
    if len(csv_files(data, path)) > 1:
        files.append(_write_path_csv(data, csv_files(data, path)[1], keys))
    return files


def csv_files(data: GridData, path: Path) -> list[Path]:
    """The files `write_csv` writes for `path`: it, and a PCA grid's trajectory beside it (``<stem>_path.csv``)."""
    if "path_x" in data.arrays and "path_loss" in data.arrays:
        return [path, path.with_name(f"{path.stem}_path{path.suffix or '.csv'}")]
    return [path]


def _write_path_csv(data: GridData, path: Path, keys: dict[str, str]) -> Path:
    """A PCA trajectory: one row per (checkpoint, batch): its coordinates, distance from the plane, own values
    (its checkpoints' keys under ``path_step`` in a grid of a run with step checkpoints)."""
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
    names = ["path_step" if c == "path_epoch" and data.steps else c for c in cols]
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(",".join([*keys, *names]) + "\n")
        _write_lines(f, [*(np.full(n * b, v) for v in keys.values()), *(values[c] for c in cols)])
    return path


def write_hessian_csv(data: GridData, path: Path) -> list[Path]:
    """One row per (epoch, eigenpair) with the epoch's scalars beside it; the density in a second file. Results of
    a run with step checkpoints have a ``step`` column after ``epoch`` (the epochs completed at the checkpoint)."""
    files = []
    for file, (header, columns) in hessian_tables(data, path).items():
        with atomic(file) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(header + "\n")
            _write_lines(f, columns)
        files.append(file)
    return files


def hessian_tables(data: GridData, path: Path) -> dict[Path, tuple[str, list[np.ndarray]]]:
    """What `write_hessian_csv` writes for `path`: each file's header and columns (the results, and their spectral
    density beside them in ``<stem>_density.csv`` where they have one)."""
    a = data.arrays
    done = a["done"] > 0
    epochs, k = a["eigenvalues"].shape

    def per_epoch(name: str) -> np.ndarray:  # NaN where the epoch is not done
        return np.where(done, a[name], np.nan).astype(a[name].dtype)

    def per_pair(name: str) -> np.ndarray:
        return np.where(done[:, None], a[name], np.nan if a[name].dtype.kind == "f" else 0).astype(a[name].dtype)

    scalars = [n for n in ("lambda_min", "lambda_min_residual", "convexity", "trace", "trace_stderr") if n in a]
    stepped = data.steps
    header = ["epoch", *(["step"] if stepped else []), "k", "eigenvalue", "residual", "converged", *scalars, "done"]
    rows = np.repeat(np.arange(epochs), k)

    def checkpoint(rows: np.ndarray) -> list[np.ndarray]:
        return [_text(a["epoch"])[rows], *([_text(a["step"])[rows]] if stepped else [])]

    columns = [*checkpoint(rows), _text(np.tile(np.arange(k), epochs)),
               _text(per_pair("eigenvalues").ravel()), _text(per_pair("residual").ravel()),
               _text(per_pair("converged").ravel()), *(_text(per_epoch(n))[rows] for n in scalars),
               _text(done.astype(np.uint8))[rows]]
    tables = {path: (",".join(header), columns)}
    if "density" in a:
        bins = a["density"].shape[1]
        rows = np.repeat(np.arange(epochs), bins)
        tables[path.with_name(f"{path.stem}_density{path.suffix or '.csv'}")] = (
            f"epoch,{'step,' if stepped else ''}bin,lambda,density,done",
            [*checkpoint(rows), _text(np.tile(np.arange(bins), epochs)), _text(per_pair("density_lambda").ravel()),
             _text(per_pair("density").ravel()), _text(done.astype(np.uint8))[rows]])
    return tables
