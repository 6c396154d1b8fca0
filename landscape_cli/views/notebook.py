"""Notebooks: a grid as an xarray Dataset, and `ds.landscape.plot()` drawing what `landscape plot` draws.

    import landscape_cli
    ds = landscape_cli.open("quickstart")      # a run (its newest grid) or a grid, by id, prefix or name
    ds.landscape.plot(epochs=[0, 5], contour=True)

`open` reads the grid's Zarr group lazily (`xarray.open_zarr`) and notes in the Dataset's attributes
which store, run and grid it came from; the accessor hands those to `landscape_cli.plot`, so the
figure is the CLI's own (same panels, scales, arrows, PCA path), returned as a matplotlib Figure
that a notebook displays.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import xarray as xr

from landscape_cli.errors import UsageError
from landscape_cli.store import Store
from landscape_cli.views.figures import PlotResult
from landscape_cli.views.figures import plot as plot_grids
from landscape_cli.views.readers import select_sources

STORE_ATTR, RUN_ATTR, GRID_ATTR = "landscape_store", "landscape_run", "landscape_grid"


def open(ref: str, *, grid: str | None = None, store: Store | str | os.PathLike[str] | None = None) -> xr.Dataset:
    """The grid of `ref` (a run: its newest grid, or `grid`; or a grid named directly) as an xarray Dataset.

    The grid is chosen as `landscape plot` chooses it. Variables: `loss`, `accuracy` [epoch, pair,
    batch, y, x] (a line: no y), `done` (which rows are computed: a NaN with done 1 diverged, with
    done 0 is not computed yet), the centre values and gradients, and a PCA grid's path.
    """
    st = Store.of(store)
    [source] = select_sources(st, [ref], [grid] if grid is not None else [])
    ds = xr.open_zarr(source.zarr_path)
    ds.attrs.update({STORE_ATTR: str(st.root), RUN_ATTR: source.run_id, GRID_ATTR: source.grid_id})
    return ds


@xr.register_dataset_accessor("landscape")
class LandscapeAccessor:
    """`ds.landscape`: the `landscape` view of a grid opened with `landscape_cli.open`."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def where(self) -> tuple[Path, str, str]:
        """(store, run id, grid id) of the grid this Dataset was read from."""
        attrs = self._ds.attrs
        run, grid = attrs.get(RUN_ATTR) or attrs.get("run"), attrs.get(GRID_ATTR) or attrs.get("grid")
        if not run or not grid:
            raise UsageError("this Dataset is not a landscape grid: open one with landscape_cli.open(RUN or GRID)")
        store = attrs.get(STORE_ATTR)
        return (Path(store) if store else Store.of(None).root), str(run), str(grid)

    def plot(self, **options: Any) -> Any:
        """The figure `landscape plot` draws for this grid (options as `landscape_cli.plot`'s: epochs, pair,
        batch, metric, contour, surface, log, clip, reduce, ...); also saved in the grid's plots/ as the CLI
        saves it. Returns the matplotlib Figure (a notebook shows it)."""
        return self.plot_result(**options).figure

    def plot_result(self, **options: Any) -> PlotResult:
        """As `plot`, with what was drawn (panels or curves, the saved path)."""
        store, run, grid = self.where
        unknown = builtins.set(options) & {"grids", "store", "show"}
        if unknown:
            raise UsageError(f"ds.landscape.plot() draws this Dataset's grid: drop {', '.join(sorted(unknown))}")
        return plot_grids([run], grids=[grid], store=store, **options)
