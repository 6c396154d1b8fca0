"""The VTK export: XML files for ParaView, the loss as height over the grid's plane (or line).

The height (z) is the loss times a height scale (by default one that makes the surface's height range
about its width, so a zoom of span 0.01 is a surface, not a needle), or 0 with `flat` for ParaView's
Warp By Scalar (the point field ``height``, scaled by the recorded ``height_scale``).

One ``.vts`` surface (``.vtp`` polyline for a 1-D grid) per (epoch, pair, batch) and per epoch's mean,
``path.vtp`` for a PCA trajectory, ``epochs_mean.pvd`` and the manifest; built in a temporary
directory that replaces the output directory only when every file is written. The layout is described
in `landscape_cli.exchange.export`. A grid of a run with step checkpoints is written per step instead
(``step-000000150_pair-0_batch-0.vts``, ``steps_mean.pvd``, the step as the time), each file's field data
holding its ``step`` and ``epoch``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from landscape_cli.errors import StoreError, UsageError
from landscape_cli.exchange.grid_data import GridData
from landscape_cli.exchange.writing import cannot_write, replace_dir, temporary

MANIFEST = "landscape-export.json"  # in a VTK export directory: also what marks it as one (safe to replace)
LOG_OFFSET = 0.1  # h52vtp's log(z + 0.1)
VTK_INSTALL = "pip install 'landscape-cli[vtk]'"
HIDDENPOINT, HIDDENCELL = 2, 32  # vtkDataSetAttributes' ghost flags (checked against vtk when it is imported)


class Summary(Protocol):
    """What the manifest repeats of the export (its `ExportResult`)."""

    grid_id: str
    run_id: str
    kind: str
    dims: int
    points_total: int
    points_missing: int
    points_diverged: int


def import_vtk() -> Any:
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
    """The VTK height (float64) of loss values, as h52vtp: clipped at `zmax`, then log(z + 0.1) with `log`; the
    point field ``height``. The points' z is this times the height scale (0 when flat)."""
    z = np.asarray(loss, np.float64).copy()
    if zmax is not None:
        z[z > zmax] = zmax
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log(z + LOG_OFFSET)
    return z


def nice(value: float) -> float:
    """`value` rounded to 1, 2 or 5 × 10^k (the nearest in ratio), so that a scale reads as a decimal."""
    k = math.floor(math.log10(value))
    mantissa = min((1, 2, 5, 10), key=lambda m: abs(math.log(value / (m * 10.0**k))))
    return float(f"{mantissa}e{k}")


def default_scale(heights: np.ndarray, width: float) -> float:
    """The height scale that makes the range of `heights` (those finite) about `width` (the surface's extent along x
    or y, the larger), rounded by `nice`; 1 when either is 0 or there is no height."""
    shown = heights[np.isfinite(heights)]
    spread = float(shown.max() - shown.min()) if shown.size else 0.0
    if not (spread > 0 and width > 0 and math.isfinite(spread / width)):
        return 1.0
    return nice(width / spread)


@dataclass
class _Piece:
    """One VTK file's points: coordinates [n, 2], the height and the fields, and which points are shown."""

    xy: np.ndarray
    z: np.ndarray
    fields: dict[str, np.ndarray]
    visible: np.ndarray
    shape: tuple[int, ...]  # (ny, nx) for a surface, (n,) for a line
    time: float | None = None
    scale: float = 1.0  # z = height × scale
    flat: bool = False  # z = 0
    labels: dict[str, int] | None = None  # field data naming the checkpoint (a run with steps: step, epoch)


@dataclass(frozen=True)
class Height:
    """How a VTK export draws the loss: h52vtp's `zmax` and `log`, then z = height × `scale` (0 when `flat`)."""

    zmax: float | None = None
    log: bool = False
    scale: float = 1.0
    flat: bool = False


def _piece(xy: np.ndarray, loss: np.ndarray, accuracy: np.ndarray, done: np.ndarray, how: Height,
           shape: tuple[int, ...], extra: dict[str, np.ndarray] | None = None, time: float | None = None,
           labels: dict[str, int] | None = None) -> _Piece:
    z = height(loss, how.zmax, how.log)
    visible = done & np.isfinite(z)
    diverged = done & ~np.isfinite(loss)
    shown = z[visible]
    z_out = np.where(visible, z, np.nan)
    fields: dict[str, np.ndarray] = {"loss": loss, "accuracy": accuracy, "done": done.astype(np.uint8),
                                     "diverged": diverged.astype(np.uint8), "height": z_out}
    fields.update(extra or {})
    drawn = np.where(visible, z, shown.min() if shown.size else 0.0)  # hidden points: a finite z out of the way
    drawn = np.zeros_like(drawn) if how.flat else drawn * how.scale
    return _Piece(xy, drawn, fields, visible, shape, time, how.scale, how.flat, labels)


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
    fd = dataset.GetFieldData()
    fd.AddArray(_vtk_array(vtk, "height_scale", np.array([piece.scale], np.float64)))  # z = height × height_scale
    fd.AddArray(_vtk_array(vtk, "flat", np.array([int(piece.flat)], np.uint8)))  # 1: z = 0, warp by height
    if piece.time is not None:
        t = vtk.vtkDoubleArray()
        t.SetName("TimeValue")  # ParaView reads it as the dataset's time: the epoch
        t.InsertNextValue(piece.time)
        fd.AddArray(t)
    for name, value in (piece.labels or {}).items():
        fd.AddArray(_vtk_array(vtk, name, np.array([value], np.int64)))


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


def write_piece(vtk: Any, piece: _Piece, path: Path) -> int:
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


def _name(epoch: int, pair: int | None = None, batch: int | None = None, step: bool = False) -> str:
    """A file's name: by epoch, or by step (`epoch` is then the step) in a grid of a run with steps."""
    stem = f"step-{epoch:09d}" if step else f"epoch-{epoch:04d}"
    return f"{stem}_mean" if pair is None else f"{stem}_pair-{pair}_batch-{batch}"


def write_vtk(vtk: Any, data: GridData, out: Path, result: Summary, zmax: float | None, log: bool,
              scale: float | None = None, flat: bool = False) -> tuple[list[Path], int, float]:
    """Write the export directory; returns its files, the points hidden and the height scale used (`scale`, else
    `default_scale` of the grid's shown heights over its width)."""
    plane = data.line_dims == 2
    suffix = ".vts" if plane else ".vtp"
    x = np.asarray(data.coord("x"), np.float64)
    y = np.asarray(data.coord("y"), np.float64) if plane else np.zeros(1)
    gx, gy = np.meshgrid(x, y)  # [y, x]: x varies fastest, VTK's point order
    xy = np.column_stack([gx.ravel(), gy.ravel()])
    shape = (len(y), len(x)) if plane else (len(x),)
    loss, done = data.masked("loss"), data.point_done()
    if scale is None:
        width = max(float(np.ptp(x)) if x.size else 0.0, float(np.ptp(y)) if plane and y.size else 0.0)
        scale = default_scale(height(loss, zmax, log), width)
    how = Height(zmax, log, scale, flat)
    accuracy = data.masked("accuracy") if "accuracy" in data.arrays else np.full_like(loss, np.nan)
    steps = data.steps
    epochs, pairs, batches = data.keys, data.coord("pair"), data.coord("batch")
    completed = data.arrays["epoch"].tolist() if steps else None
    names: list[str] = []
    means: list[tuple[int, str]] = []
    hidden = 0
    tmp = temporary(out)
    try:
        tmp.mkdir()
        for ei, epoch in enumerate(epochs.tolist()):
            labels = {"step": int(epoch), "epoch": int(completed[ei])} if completed is not None else None
            for pi, pair in enumerate(pairs.tolist()):
                for bi, batch in enumerate(batches.tolist()):
                    piece = _piece(xy, loss[ei, pi, bi].ravel(), accuracy[ei, pi, bi].ravel(), done[ei, pi, bi].ravel(),
                                   how, shape, time=float(epoch), labels=labels)
                    name = _name(epoch, pair, batch, steps) + suffix
                    hidden += write_piece(vtk, piece, tmp / name)
                    names.append(name)
            all_done = done[ei].all(axis=(0, 1))
            with np.errstate(invalid="ignore"):
                mean_loss = np.where(all_done, loss[ei].astype(np.float64).mean(axis=(0, 1)), np.nan)
                mean_acc = np.where(all_done, accuracy[ei].astype(np.float64).mean(axis=(0, 1)), np.nan)
            piece = _piece(xy, mean_loss.ravel(), mean_acc.ravel(), all_done.ravel(), how, shape, time=float(epoch),
                           labels=labels)
            name = _name(epoch, step=steps) + suffix
            hidden += write_piece(vtk, piece, tmp / name)
            names.append(name)
            means.append((epoch, name))
        if "path_x" in data.arrays and "path_loss" in data.arrays:
            hidden += _write_path(vtk, data, tmp / "path.vtp", how)
            names.append("path.vtp")
        pvd = "steps_mean.pvd" if steps else "epochs_mean.pvd"
        (tmp / pvd).write_text(
            '<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n  <Collection>\n'
            + "".join(f'    <DataSet timestep="{e}" part="0" file="{n}"/>\n' for e, n in means)
            + "  </Collection>\n</VTKFile>\n")
        names.append(pvd)
        manifest = {
            "format": "vtk", "grid": result.grid_id, "run": result.run_id, "kind": result.kind, "dims": result.dims,
            "zmax": zmax, "log": log, "height": ("log(min(loss, zmax) + 0.1)" if zmax is not None else "log(loss + 0.1)")
            if log else ("min(loss, zmax)" if zmax is not None else "loss"), "height_scale": scale, "flat": flat,
            "z": "0 (flat: warp by the point field height, scale factor height_scale)" if flat else "height × height_scale",
            "points_total": result.points_total, "points_missing": result.points_missing,
            "points_diverged": result.points_diverged, "points_hidden": hidden, "files": names,
            **({"steps": [int(e) for e in epochs.tolist()], "epochs": completed} if completed is not None else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        names.append(MANIFEST)
        replace_dir(tmp, out)
    except StoreError:
        raise
    except OSError as e:
        raise cannot_write(e, out) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names], hidden, scale


def _write_path(vtk: Any, data: GridData, path: Path, how: Height) -> int:
    """A PCA trajectory as a polyline in training order at (path_x, path_y, mean loss over the batches)."""
    loss = data.arrays["path_loss"]  # [path_epoch, batch]
    accuracy = data.arrays.get("path_accuracy", np.full_like(loss, np.nan))
    n = loss.shape[0]
    px = np.asarray(data.arrays["path_x"], np.float64)
    py = np.asarray(data.arrays["path_y"], np.float64) if "path_y" in data.arrays else np.zeros(n)
    with np.errstate(invalid="ignore"):
        mean_loss, mean_acc = loss.astype(np.float64).mean(axis=1), accuracy.astype(np.float64).mean(axis=1)
    extra = {"step" if data.steps else "epoch": np.asarray(data.coord("path_epoch"), np.int64), "loss_batches": loss,
             "accuracy_batches": accuracy}
    if "path_residual" in data.arrays:
        extra["residual"] = np.asarray(data.arrays["path_residual"], np.float64)
    piece = _piece(np.column_stack([px, py]), mean_loss, mean_acc, np.ones(n, bool), how, (n,), extra)
    return write_piece(vtk, piece, path)
