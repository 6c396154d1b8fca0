"""Notebooks: a grid as an xarray Dataset, and `ds.landscape.plot()` drawing what `landscape plot` draws.

    import landscape_cli
    ds = landscape_cli.open("quickstart")      # a run (its newest grid) or a grid, by id, prefix or name
    ds.landscape.plot(epochs=[0, 5], contour=True)

`open` reads the grid's Zarr group lazily (`xarray.open_zarr`; the accuracy arrays and their losses are
read when masked, lazily only where dask is installed) and notes in the Dataset's attributes which
store, run and grid it came from; the accessor hands those to `landscape_cli.plot`, so the
figure is the CLI's own (same panels, scales, arrows, PCA path), returned as a matplotlib Figure
that displays itself as an image in a notebook (`_repr_png_`: no `%matplotlib inline` needed). A
notebook's figure is written to no file unless asked (`out=`, or `save=True`: the grid's plots/).
A Hessian result of `landscape_cli.hessian` draws the figure of `landscape plot RUN --hessian` the same way.
"""

from __future__ import annotations

import builtins
import os
import warnings
from pathlib import Path
from typing import Any

import xarray as xr

from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import ACCURACY_OF, DECODE_ERRORS, Rows, accuracy_where_finite
from landscape_cli.views.figures import PlotResult
from landscape_cli.views.figures import plot as plot_grids
from landscape_cli.views.hessian_figure import HessianFigure, plot_hessian
from landscape_cli.views.readers import select_sources

STORE_ATTR, RUN_ATTR, GRID_ATTR = "landscape_store", "landscape_run", "landscape_grid"
HESSIAN_ATTR = "landscape_hessian"  # a Hessian result's id (`landscape_cli.hessian`'s Datasets), beside the run's
HESSIAN_OPTIONS = frozenset({"out", "dpi"})  # what a Hessian result's figure takes


def open(ref: str, *, grid: str | None = None, store: Store | str | os.PathLike[str] | None = None) -> xr.Dataset:
    """The grid of `ref` (a run: its newest grid, or `grid`; or a grid named directly) as an xarray Dataset.

    The grid is chosen as `landscape plot` chooses it. Variables: `loss`, `accuracy` [epoch, pair,
    batch, y, x] (a line: no y; a grid of a run with step checkpoints: [checkpoint, pair, ...], with the
    coordinates `step` and `epoch` along `checkpoint`; `ds.landscape.plot(at_steps=[...])` draws steps),
    `done` (which rows are computed: a NaN with done 1 diverged, with done 0 is not computed yet), the
    centre values and gradients, and a PCA grid's path. Accuracy (`accuracy`, `center_accuracy`,
    `path_accuracy`) is NaN wherever the loss is not finite, in grids stored before the tool stored it so
    too (masked here; the Zarr arrays are not rewritten).

    Every chunk is decoded once before the Dataset is returned (one checkpoint at a time), so a damaged grid is
    one IntegrityError here, naming the array, never an error of zarr's when its values are read later.
    """
    st = Store.of(store)
    [source] = select_sources(st, [ref], [grid] if grid is not None else [])
    _check_decodes(source.grid_id, source.run_id, Rows(source.zarr_path, "r"))
    try:
        with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": read from the arrays
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(source.zarr_path, consolidated=False)
    except (OSError, KeyError, *DECODE_ERRORS) as e:  # zarr's own errors are ValueErrors
        raise IntegrityError(
            f"grid {source.grid_id} cannot be read ({type(e).__name__}: {e}): `landscape verify` lists what is "
            f"damaged; `landscape grid {source.run_id[:8]} --grid {source.grid_id} --resume` rebuilds it"
        ) from e
    for accuracy, loss in ACCURACY_OF.items():
        if accuracy in ds and loss in ds:
            ds[accuracy] = accuracy_where_finite(ds[accuracy], ds[loss])
    ds.attrs.update({STORE_ATTR: str(st.root), RUN_ATTR: source.run_id, GRID_ATTR: source.grid_id})
    return ds


def _check_decodes(grid_id: str, run_id: str, rows: Rows) -> None:
    """Every chunk of the grid's arrays decoded (one checkpoint's slice at a time: memory stays bounded)."""
    root: Any = rows.root
    with warnings.catch_warnings():  # a member without its metadata: refused below, not warned of
        warnings.simplefilter("ignore")
        names = sorted(name for name, _ in root.arrays())
    for name in names:
        where = name
        try:
            array = root[name]
            if array.ndim <= 1:
                array[...]
            for i in range(array.shape[0] if array.ndim > 1 else 0):
                where = f"{name}[{i}]"
                array[i]
        except (OSError, KeyError, *DECODE_ERRORS) as e:  # zarr's own errors are ValueErrors
            raise IntegrityError(
                f"grid {grid_id} has a damaged chunk ({where}: {type(e).__name__}): `landscape grid {run_id[:8]} --grid "
                f"{grid_id} --resume` recomputes it (`landscape verify` lists everything that is damaged)"
            ) from e


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

    def plot(self, *, save: bool = False, **options: Any) -> Any:
        """The figure `landscape plot` draws for this grid (options as `landscape_cli.plot`'s: epochs, pair,
        batch, metric, contour, surface, log, clip, reduce, scale, ...). Returns a matplotlib Figure that a
        notebook displays as an image by itself (no `%matplotlib inline` needed). Writes no file unless asked:
        `out="fig.png"` (.pdf, .svg), or `save=True` for the grid's plots/ as the CLI saves it; an `animate`
        GIF needs one of them.

        For a Hessian result (`landscape_cli.hessian`): the figure of `landscape plot RUN --hessian` (top
        eigenvalues and λmin, the trace, and the spectral density where computed), options `out` and `dpi`."""
        return self.plot_result(save=save, **options).figure

    def plot_result(self, *, save: bool = False, **options: Any) -> PlotResult | HessianFigure:
        """As `plot`, with what was drawn (panels or curves, the saved path: None when nothing was written)."""
        attrs = self._ds.attrs
        if attrs.get(HESSIAN_ATTR) and attrs.get(RUN_ATTR):
            unknown = builtins.set(options) - HESSIAN_OPTIONS
            if unknown:
                raise UsageError(f"a Hessian result's figure takes {', '.join(sorted(HESSIAN_OPTIONS))}, not "
                                 f"{', '.join(sorted(unknown))}")
            store = attrs.get(STORE_ATTR)
            return plot_hessian(str(attrs[RUN_ATTR]), hessian=str(attrs[HESSIAN_ATTR]), store=store, write=save,
                                **options)
        store_root, run, grid = self.where
        unknown = builtins.set(options) & {"grids", "store", "show"}
        if unknown:
            raise UsageError(f"ds.landscape.plot() draws this Dataset's grid: drop {', '.join(sorted(unknown))}")
        return plot_grids([run], grids=[grid], store=store_root, save=save, **options)
