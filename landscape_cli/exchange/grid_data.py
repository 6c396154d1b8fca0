"""The grid (or curvature results) read into memory for export: every array of its Zarr group, once.

Accuracy (`accuracy`, `center_accuracy`, `path_accuracy`) is read NaN wherever its loss is not finite, as
every reader of the tool reads it (a grid stored before the kernel wrote NaN there is masked, not rewritten).

A grid (or results) of a run with step checkpoints has the first dimension ``checkpoint`` instead of ``epoch``,
with the coordinates ``step`` (the keys) and ``epoch`` (the epochs completed) along it: both are read, and
`GridData.keys` / `steps` / `checkpoint_dim` say which layout it is."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli.errors import GridStateError, IntegrityError
from landscape_cli.store.grid_arrays import (
    ACCURACY_OF,
    CHECKPOINT_AXES,
    DECODE_ERRORS,
    accuracy_where_finite,
    key_array,
    open_group,
)


@dataclass
class GridData:
    """Every array of the grid's Zarr group, read once (done-marks first), with dims and attributes."""

    arrays: dict[str, np.ndarray]
    dims: dict[str, list[str]]
    var_attrs: dict[str, dict[str, Any]]
    attrs: dict[str, Any]

    @property
    def steps(self) -> bool:
        """Whether the checkpoints are named by step (the first dimension is ``checkpoint``)."""
        return "step" in self.arrays and self.dims["step"] == ["checkpoint"]

    @property
    def checkpoint_dim(self) -> str:
        """The first dimension's name: ``epoch``, or ``checkpoint`` (a run with step checkpoints)."""
        return "checkpoint" if self.steps else "epoch"

    @property
    def keys(self) -> np.ndarray:
        """The checkpoints' keys, along the first dimension: their epochs, or their steps."""
        return self.arrays["step" if self.steps else "epoch"]

    @property
    def coordinates(self) -> list[str]:
        """The arrays that are coordinates: one per dimension named as it is, and ``step`` and ``epoch`` along
        ``checkpoint``."""
        return [n for n in self.arrays if self.dims[n] == [n] or (self.steps and n in ("step", "epoch"))]

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


def read_grid(zarr_path: Path, grid_id: str, required: tuple[str, ...] = ("loss", "done", "epoch")) -> GridData:
    try:
        root = open_group(zarr_path, "r")
        with warnings.catch_warnings():  # a member without its metadata (damaged) is refused below, not warned of
            warnings.simplefilter("ignore")
            names = sorted(name for name, _ in root.arrays())
        if not set(required) <= set(names):
            raise KeyError(", ".join(required))
        # the checkpoint coordinate(s), then the done-marks, then the values: a row marked done after its values
        # were read cannot be exported as done with the NaN its values had before they were written
        key = key_array(names)
        first = [key, "epoch"] if key != "epoch" else ["epoch"]
        order = [*first, "done", *[n for n in names if n not in (*first, "done")]]
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
    n = len(arrays[key])  # a grid growing meanwhile: keep the epochs the coordinate was read with
    for name, a in arrays.items():
        if dims[name] and dims[name][0] in CHECKPOINT_AXES:
            if a.shape[0] < n:
                raise IntegrityError(f"grid {grid_id}: {name} has {a.shape[0]} epochs, the epoch axis {n} (damaged): "
                                     "run `landscape verify`")
            arrays[name] = a[:n]
    if n == 0:
        raise GridStateError(f"grid {grid_id} has no epochs yet: nothing to export")
    for accuracy, loss in ACCURACY_OF.items():  # a grid stored before the kernel wrote NaN there
        if accuracy in arrays and loss in arrays and arrays[accuracy].shape == arrays[loss].shape:
            arrays[accuracy] = accuracy_where_finite(arrays[accuracy], arrays[loss])
    return GridData(arrays, dims, var_attrs, attrs)
