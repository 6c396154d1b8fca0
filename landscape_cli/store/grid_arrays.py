"""A grid's Zarr group: the array layout, growth of the epoch axis, rows and their done-marks.

The layout follows from the grid's axes. Arrays (Zarr v3, every one with ``dimension_names`` and a
coordinate array per dimension, so ``xarray.open_zarr`` gives named, labelled data), for a 2-D grid
(a 1-D grid, a line, has no y: ``loss[epoch, pair, batch, x]``, ``done[epoch, pair]``, no grad_b):

    loss, accuracy         float32 [epoch, pair, batch, y, x]  one chunk per row (all batches, all x)
    done                   uint8   [epoch, pair, y]            1 once the row's values are written
    diverged               int32   [epoch, pair, y]            non-finite losses in the row
    center_loss/_accuracy  float32 [epoch, batch]              at x = y = 0
    grad_a, grad_b         float32 [epoch, pair, batch]        dL/dx, dL/dy at the centre
    center_done            uint8   [epoch, pair]
    epoch, pair, batch, y, x                                   coordinates (x along d1, y along d2)

plus what the grid's direction kind stores once (a PCA plane's path: ``path_x``...).

The first axis of a grid of a run with step checkpoints (`train --checkpoint-every`, the recorder) is
``checkpoint`` instead of ``epoch``, with two coordinates along it: ``step`` (the key the grid names its
checkpoints by) and ``epoch`` (the epochs completed at each checkpoint); every per-checkpoint array says so in
its ``coordinates`` attribute, so xarray reads both as coordinates. Grids of runs without steps are laid out
exactly as before.

A row is the unit of work: its values are written first, its done-mark after, each chunk its own
file written atomically and durably (`DurableStore`: fsynced, renamed, its directory fsynced, before
the next write starts), so a kill or a power cut loses at most the row in flight and a NaN from a diverged
point is a value, never a hole (its accuracy is NaN too: `accuracy_where_finite`; older grids hold the
argmax accuracy of NaN logits there, which every reader of the tool masks on read). Every chunk
carries a CRC32C checksum, so a damaged chunk fails to decode instead of being read as numbers.
Done-marks are one-element chunks, so several workers can mark rows of one grid without rewriting
each other's chunks.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from landscape_cli._io import os_error
from landscape_cli.config import GridConfig
from landscape_cli.errors import IntegrityError
from landscape_cli.store.durable import DurableStore

CHECKPOINT_AXES = ("epoch", "checkpoint")  # the first dimension's name: runs without steps, runs with steps
CENTER_VALUES, CENTER_WITH_GRADIENT = 1, 2  # center_done: values only (grid --no-gradient), or with gradients
DECODE_ERRORS = (ValueError, RuntimeError, TypeError)  # what Zarr raises for a chunk it cannot decode
GRADIENTS = ("grad_a", "grad_b")  # one per axis
ACCURACY_OF = {"accuracy": "loss", "center_accuracy": "center_loss", "path_accuracy": "path_loss"}  # its loss


def accuracy_where_finite(accuracy: Any, loss: Any) -> Any:
    """`accuracy` with NaN wherever `loss` (the same points) is NaN or ±Inf: a diverged point has no accuracy
    (the argmax of NaN logits counts as a class, e.g. 0.098 on ten classes, and means nothing).

    The one rule of the tool, applied by the kernel to every value it returns and by every reader to grids
    stored before it did (masked on read, never rewritten): numpy arrays (and scalars) give a numpy array of
    the accuracy's dtype, xarray DataArrays a DataArray (lazily, `DataArray.where`)."""
    finite = np.isfinite(loss)
    if hasattr(accuracy, "where") and not isinstance(accuracy, np.ndarray):  # an xarray DataArray
        return accuracy.where(finite)
    a = np.asarray(accuracy)
    return np.where(finite, a, np.asarray(np.nan, a.dtype if a.dtype.kind == "f" else np.float64))


class CenterValues(Protocol):
    """What a grid stores at its centre (the kernel's `Center`): per batch, and the gradient per direction."""

    loss: np.ndarray  # [batch]
    accuracy: np.ndarray  # [batch]
    grads: np.ndarray  # [direction, batch]


@dataclass
class ExtraArray:
    """An array stored once in the group, beside the per-epoch arrays (dimensions named for xarray)."""

    dims: list[str]
    values: np.ndarray
    long_name: str


@dataclass
class Layout:
    """Everything the group holds, derived from the configuration and the resolved axis coordinates."""

    cfg: GridConfig
    coords: list[np.ndarray]  # x (and y) coefficients
    formula: str = "w + x·d1 + y·d2"  # what the values are the loss at (for the arrays' descriptions)
    extras: dict[str, ExtraArray] = field(default_factory=dict)
    extra_coords: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    steps: bool = False  # the run has step checkpoints: the first axis is `checkpoint`, keyed by `step`

    def arrays(self) -> dict[str, dict[str, Any]]:
        """The per-epoch arrays: dimensions, shape without the epoch axis, chunks, dtype, fill, description."""
        cfg = self.cfg
        P, B, W = cfg.pairs, cfg.batches, cfg.axes[0].count
        nan = float("nan")
        if cfg.dims == 2:
            H = cfg.axes[1].count
            values = {"dims": ["epoch", "pair", "batch", "y", "x"], "shape": (P, B, H, W), "chunks": (1, 1, B, 1, W)}
            rows = {"dims": ["epoch", "pair", "y"], "shape": (P, H), "chunks": (1, 1, 1)}
        else:
            values = {"dims": ["epoch", "pair", "batch", "x"], "shape": (P, B, W), "chunks": (1, 1, B, W)}
            rows = {"dims": ["epoch", "pair"], "shape": (P,), "chunks": (1, 1)}
        out = {
            "loss": {**values, "dtype": "float32", "fill": nan, "long_name": f"cross-entropy loss at {self.formula}"},
            "accuracy": {**values, "dtype": "float32", "fill": nan, "long_name": f"accuracy at {self.formula}"},
            "done": {**rows, "dtype": "uint8", "fill": 0, "long_name": "1 once the row's values are written"},
            "diverged": {**rows, "dtype": "int32", "fill": 0,
                         "long_name": "number of non-finite losses in the row (all batches)"},
            "center_loss": {"dims": ["epoch", "batch"], "shape": (B,), "chunks": (1, B), "dtype": "float32",
                            "fill": nan, "long_name": "loss at the centre"},
            "center_accuracy": {"dims": ["epoch", "batch"], "shape": (B,), "chunks": (1, B), "dtype": "float32",
                                "fill": nan, "long_name": "accuracy at the centre"},
        }
        for metric in cfg.metrics or ():  # user metrics (`--metric`): beside the loss, named as the user named them
            out[metric.name] = {**values, "dtype": "float32", "fill": nan,
                                "long_name": f"{metric.name} ({metric.ref}) at {self.formula}"}
        for name, axis, d in list(zip(GRADIENTS, ("x", "y"), ("d1", "d2"), strict=True))[:cfg.dims]:
            out[name] = {"dims": ["epoch", "pair", "batch"], "shape": (P, B), "chunks": (1, 1, B), "dtype": "float32",
                         "fill": nan, "long_name": f"dL/d{axis} at the centre: the loss gradient projected on {d}"}
        out["center_done"] = {"dims": ["epoch", "pair"], "shape": (P,), "chunks": (1, 1), "dtype": "uint8", "fill": 0,
                              "long_name": "1 once the centre values are written, 2 once its gradients are too"}
        out["epoch"] = {"dims": ["epoch"], "shape": (), "chunks": (1,), "dtype": "int64", "fill": -1,
                        "long_name": "training epoch of the checkpoint"}
        if self.steps:
            out = {name: {**spec, "dims": ["checkpoint", *spec["dims"][1:]], "coordinates": "step epoch"}  # type: ignore[index]
                   for name, spec in out.items() if name != "epoch"}
            out["step"] = {"dims": ["checkpoint"], "shape": (), "chunks": (1,), "dtype": "int64", "fill": -1,
                           "long_name": "optimizer steps taken at the checkpoint"}
            out["epoch"] = {"dims": ["checkpoint"], "shape": (), "chunks": (1,), "dtype": "int64", "fill": -1,
                            "long_name": "training epochs completed at the checkpoint"}
        return out

    def coordinates(self) -> dict[str, tuple[np.ndarray, str]]:
        cfg = self.cfg
        out = {
            "pair": (np.arange(cfg.pairs), "direction pair"),
            "batch": (np.arange(cfg.batches), f"all of the {cfg.split} split, pooled (the loss averaged over samples; "
                      f"pieces of {cfg.batch_size})" if cfg.whole else
                      f"{'training' if cfg.split == 'train' else 'validation'} mini-batch ({cfg.batch_size} images, "
                      "unshuffled)"),
        }
        if cfg.dims == 2:
            out["y"] = (np.asarray(self.coords[1], np.float64), "coefficient of d2")
        out["x"] = (np.asarray(self.coords[0], np.float64), "coefficient of d1")
        return {**out, **self.extra_coords}


def _codecs() -> dict[str, Any]:
    return {"compressors": [ZstdCodec(level=3), Crc32cCodec()]}


def batched(root: zarr.Group) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """A block of writes to a group opened to write, committed together when it ends (`DurableStore.batched`);
    yields the barrier: what is written after calling it reaches the disk after what was written before."""
    store = root.store
    return store.batched() if isinstance(store, DurableStore) else contextlib.nullcontext(lambda: None)


def _create_nodes(root: zarr.Group, layout: Layout, names: list[str], n_epochs: int) -> None:
    arrays, coords = layout.arrays(), layout.coordinates()
    for name in names:
        if name in arrays:
            spec = arrays[name]
            attributes = {"long_name": spec["long_name"]}
            if "coordinates" in spec:
                attributes["coordinates"] = spec["coordinates"]
            root.create_array(name, shape=(n_epochs, *spec["shape"]), chunks=spec["chunks"], dtype=spec["dtype"],
                              fill_value=spec["fill"], dimension_names=spec["dims"], attributes=attributes, **_codecs())
        elif name in layout.extras:
            extra = layout.extras[name]
            a = root.create_array(name, shape=extra.values.shape, dtype=extra.values.dtype, dimension_names=extra.dims,
                                  attributes={"long_name": extra.long_name}, **_codecs())
            a[...] = extra.values
        else:
            values, long_name = coords[name]
            a = root.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=[name],
                                  attributes={"long_name": long_name}, **_codecs())
            a[:] = values


def _names(layout: Layout) -> list[str]:
    return [*layout.arrays(), *layout.coordinates(), *layout.extras]


def create(path: Path, layout: Layout, attrs: dict[str, Any]) -> None:
    """Create the empty group (no epochs yet). Call with the grid lock held."""
    try:
        root = zarr.open_group(DurableStore(path), mode="w", zarr_format=3, attributes=attrs)
        with batched(root):
            _create_nodes(root, layout, _names(layout), 0)
    except OSError as e:
        raise os_error(e, path) from e


def repair(path: Path, layout: Layout, attrs: dict[str, Any], epochs: list[int]) -> list[str]:
    """Rebuild damaged metadata (zarr.json files), coordinates and stored-once arrays from the layout.

    Chunks of values are left alone: a damaged one is found when it is read, and its row recomputed.
    Returns what was rebuilt. Call with the grid lock held.
    """
    rebuilt: list[str] = []
    arrays, coords = layout.arrays(), layout.coordinates()
    constant = {**{k: v[0] for k, v in coords.items()}, **{k: v.values for k, v in layout.extras.items()}}
    try:
        try:
            root = open_group(path, "r+")
        except (*DECODE_ERRORS, KeyError, FileNotFoundError):
            (path / "zarr.json").unlink(missing_ok=True)
            root = zarr.open_group(DurableStore(path), mode="a", zarr_format=3, attributes=attrs)
            rebuilt.append("zarr.json")
        broken = []
        for name in _names(layout):
            expected = (len(epochs), *arrays[name]["shape"]) if name in arrays else constant[name].shape
            try:
                a = zarr.open_array(path / name, mode="r", zarr_format=3)
                if a.shape != expected and not (name in arrays and a.shape[1:] == expected[1:]):
                    raise ValueError(f"shape {a.shape}, expected {expected}")
                if name in constant and not _same_constant(name, np.asarray(a[...]), constant[name]):
                    raise ValueError("wrong stored values")
            except (*DECODE_ERRORS, KeyError, FileNotFoundError):
                broken.append(name)
        for name in broken:
            (path / name / "zarr.json").unlink(missing_ok=True)
            rebuilt.append(f"{name}/zarr.json")
        with batched(root):
            _create_nodes(root, layout, broken, len(epochs))
    except OSError as e:
        raise os_error(e, path) from e
    return rebuilt


AXES = ("x", "y")
AXIS_ULPS = 16  # how far (in ulps of the axis's largest |value|) a stored coordinate may lie from the layout's


def _same_constant(name: str, stored: np.ndarray, expected: np.ndarray) -> bool:
    """Whether a stored-once array holds the layout's values. The x and y coordinates of grids made before 0.3
    are np.linspace's, a few ulps from the decimal points made now: those are the grid's, and kept."""
    if np.array_equal(stored, expected, equal_nan=True):
        return True
    if name not in AXES or stored.shape != expected.shape or stored.dtype.kind != "f" or not expected.size:
        return False
    tolerance = AXIS_ULPS * np.finfo(np.float64).eps * float(np.max(np.abs(expected)))
    return bool(np.all(np.abs(stored.astype(np.float64) - expected) <= tolerance))


def key_array(names: Any) -> str:
    """The name of the array holding the keys of a group's checkpoints: `step` in a grid of a run with steps."""
    return "step" if "step" in names else "epoch"


def grow(path: Path, epochs: list[int], completed: list[int] | None = None) -> None:
    """Make the checkpoint axis exactly `epochs` long (idempotent; the keys: epochs, or steps in a grid of a run
    with steps, whose `completed` epochs are written beside them). Call with the grid lock held."""
    root = open_group(path, "r+")
    n = len(epochs)
    try:
        with batched(root):
            for _name, a in root.arrays():
                names = a.metadata.dimension_names  # type: ignore[union-attr]
                if names and names[0] in CHECKPOINT_AXES and a.shape[0] != n:
                    a.resize((n, *a.shape[1:]))
            root[key_array(root)][:] = np.asarray(epochs, dtype=np.int64)  # type: ignore[index]
            if "step" in root and completed is not None:
                root["epoch"][:] = np.asarray(completed, dtype=np.int64)  # type: ignore[index]
            with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": xarray reads it
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(root.store)
    except OSError as e:
        raise os_error(e, path) from e


def stored_epochs(path: Path) -> list[int]:
    """The keys on the checkpoint axis (those whose coordinate was written): epochs, or steps."""
    try:
        key = "step" if (path / "step" / "zarr.json").exists() else "epoch"
        values = np.asarray(zarr.open_array(path / key, mode="r", zarr_format=3)[:])
    except (*DECODE_ERRORS, KeyError, FileNotFoundError):
        return []
    return [int(e) for e in values if int(e) >= 0]


def open_group(path: Path, mode: str = "r") -> zarr.Group:
    """The group, read from the arrays' own metadata (never a stale consolidated copy); opened to write (any
    `mode` but "r"), every write is durable before it returns (`DurableStore`), so writes reach the disk in
    the order they were made: a row's done-mark after its values."""
    store = path if mode == "r" else DurableStore(path)
    return zarr.open_group(store, mode=mode, use_consolidated=False)  # type: ignore[arg-type]


class Rows:
    """Reading and writing the rows of one grid (one process's handle).

    A row is indexed by (epoch index, pair, y index); a 1-D grid has one row per (epoch, pair), y = 0.
    """

    BASE = ("loss", "accuracy", "done", "diverged", "center_loss", "center_accuracy", "center_done", "epoch", "x")

    def __init__(self, path: Path, mode: str = "r+") -> None:
        self.path = path
        try:
            self.root = open_group(path, mode)
            self.arrays: dict[str, Any] = {name: self.root[name] for name in self.BASE}
            self.dims = len(self.arrays["loss"].shape) - 3
            for name in (*GRADIENTS[:self.dims], *(("y",) if self.dims == 2 else ())):
                self.arrays[name] = self.root[name]
            epochs = self.root[key_array(set(self.root.array_keys()))][:]  # type: ignore[index]
        except (*DECODE_ERRORS, KeyError, FileNotFoundError) as e:
            raise IntegrityError(
                f"the Zarr metadata of {path} is damaged ({type(e).__name__}: {e}): the same `landscape grid` "
                "command with --resume rebuilds it (`landscape verify` lists what is damaged)"
            ) from e
        self._epochs = [int(x) for x in np.asarray(epochs)]

    def __getitem__(self, name: str) -> Any:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.root

    @property
    def epochs(self) -> list[int]:
        return list(self._epochs)

    @property
    def pairs(self) -> int:
        return int(self.arrays["done"].shape[1])

    @property
    def height(self) -> int:
        """Rows per (epoch, pair): the points along y, or 1 for a line."""
        return int(self.arrays["done"].shape[2]) if self.dims == 2 else 1

    def _row(self, ei: int, p: int, y: int) -> tuple[int, ...]:
        """The index of a row's done-mark (and diverged count)."""
        return (ei, p, y) if self.dims == 2 else (ei, p)

    def _values(self, ei: int, p: int, y: int) -> tuple[Any, ...]:
        """The index of a row's values ([batch, x])."""
        return (ei, p, slice(None), y, slice(None)) if self.dims == 2 else (ei, p, slice(None), slice(None))

    def done(self, ei: int, p: int, on_damage: Callable[[str], None] | None = None) -> np.ndarray:
        """Which rows of (epoch index, pair) are done; a damaged done-mark counts as not done."""
        try:
            marks = self.arrays["done"][ei, p, :] if self.dims == 2 else self.arrays["done"][ei, p:p + 1]
            return np.asarray(marks) > 0
        except DECODE_ERRORS:
            out = np.zeros(self.height, bool)
            for y in range(len(out)):
                out[y] = self.row_done(ei, p, y, on_damage)
            return out

    def row_done(self, ei: int, p: int, y: int, on_damage: Callable[[str], None] | None = None) -> bool:
        try:
            return bool(self.arrays["done"][self._row(ei, p, y)] > 0)
        except DECODE_ERRORS:
            if on_damage:
                on_damage(f"done-mark of epoch index {ei}, pair {p}, row {y}")
            return False

    def row_readable(self, ei: int, p: int, y: int) -> bool:
        """Whether a row's loss and accuracy chunks decode (checksums match) and its loss chunk is there: Zarr reads
        a missing chunk as its fill (NaN), so a deleted chunk would pass for a diverged row. A row whose every value
        diverged has no loss chunk (Zarr writes no chunk of fill values), and says so in its diverged count."""
        try:
            loss = self.arrays["loss"][self._values(ei, p, y)]
            self.arrays["accuracy"][self._values(ei, p, y)]
            diverged = int(self.arrays["diverged"][self._row(ei, p, y)])
        except DECODE_ERRORS:
            return False
        index = (ei, p, 0, y, 0) if self.dims == 2 else (ei, p, 0, 0)
        chunk = self.path / "loss" / self.arrays["loss"].metadata.encode_chunk_key(index)
        return chunk.is_file() or diverged >= int(np.size(loss))

    def read_row(self, name: str, ei: int, p: int, y: int) -> np.ndarray:
        """A row's values of `name` (loss or accuracy): [batch, x]."""
        return np.asarray(self.arrays[name][self._values(ei, p, y)])

    def write_row(self, ei: int, p: int, y: int, loss: np.ndarray, accuracy: np.ndarray,
                  metrics: dict[str, np.ndarray] | None = None) -> None:
        """Values first, then the done-mark: `loss`/`accuracy` (and each user metric's values) are [batch, x]; all on
        the disk, in that order, when this returns."""
        try:
            with batched(self.root) as barrier:
                self.arrays["loss"][self._values(ei, p, y)] = loss
                self.arrays["accuracy"][self._values(ei, p, y)] = accuracy
                for name, values in (metrics or {}).items():
                    self.root[name][self._values(ei, p, y)] = values  # type: ignore[index]
                self.arrays["diverged"][self._row(ei, p, y)] = int(np.count_nonzero(~np.isfinite(loss)))
                barrier()
                self.arrays["done"][self._row(ei, p, y)] = 1
        except OSError as e:
            raise os_error(e, self.path) from e

    def clear_row(self, ei: int, p: int, y: int) -> None:
        with batched(self.root):
            self.arrays["done"][self._row(ei, p, y)] = 0

    def center_done(self, ei: int, p: int, gradient: bool = True) -> bool:
        """Whether the centre values (and gradients) of (epoch index, pair) are written and still decode."""
        try:
            if not self.arrays["center_done"][ei, p] >= (CENTER_WITH_GRADIENT if gradient else CENTER_VALUES):
                return False
            self.arrays["center_loss"][ei, :]
            self.arrays["center_accuracy"][ei, :]
            for name in GRADIENTS[:self.dims]:
                self.arrays[name][ei, p, :]
        except DECODE_ERRORS:
            return False
        return True

    def write_center(self, ei: int, p: int, c: CenterValues, gradient: bool = True) -> None:
        try:
            with batched(self.root) as barrier:
                self.arrays["center_loss"][ei, :] = c.loss
                self.arrays["center_accuracy"][ei, :] = c.accuracy
                for name, values in zip(GRADIENTS[:self.dims], c.grads, strict=True):
                    self.arrays[name][ei, p, :] = values
                barrier()
                self.arrays["center_done"][ei, p] = CENTER_WITH_GRADIENT if gradient else CENTER_VALUES
        except OSError as e:
            raise os_error(e, self.path) from e

    def progress(self) -> tuple[int, int, int]:
        """(rows done, rows in total, diverged points) over every epoch of the grid."""
        done = self.arrays["done"]
        total = int(np.prod(done.shape))
        if total == 0:
            return 0, 0, 0
        try:
            d = np.asarray(done[...])
            diverged = int(np.asarray(self.arrays["diverged"][...])[d > 0].sum())
        except DECODE_ERRORS:  # a damaged chunk: count the readable ones
            d = np.zeros(done.shape, np.uint8)
            diverged = 0
            for idx in np.ndindex(*done.shape):
                try:
                    d[idx] = done[idx]
                    if d[idx]:
                        diverged += int(self.arrays["diverged"][idx])
                except DECODE_ERRORS:
                    pass
        return int((d > 0).sum()), total, diverged
