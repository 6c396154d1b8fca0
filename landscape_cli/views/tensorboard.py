"""TensorBoard: a grid's figure as an image and its `landscape stats` as scalars (`plot --tensorboard LOGDIR`).

`log_grid(writer, run, ...)` draws a grid's figure (as `plot` does, writing no file) and logs it into a
writer the caller already has: any object with the `add_image` and `add_scalar` of TensorBoard's
`SummaryWriter` (torch.utils.tensorboard's, tensorboardX's). `log_plot(writer, result)` logs a figure
`plot` already drew, and `log_hessian(writer, figure)` one of curvature results (`plot --hessian`).
`write_plot(logdir, result)` / `write_hessian` open torch's `SummaryWriter` on a directory that
`check_logdir` accepted (made if missing, never a symbolic link, never inside the store) and close it.

What is logged, the epoch as the step (in a run with step checkpoints, the optimizer step of the checkpoint):
- the figure, as an RGB image (the PNG `plot` saved, else the figure drawn at its size and dpi), under
  `landscape/<run>/<grid>` (the run's and the grid's names, else their ids; several runs compared:
  their tags joined by `_vs_`), at the newest epoch it shows;
- per grid and epoch, the metrics of the mean landscape as `landscape stats` computes them (default
  options: ε the whole grid, δ 0.1) under `landscape/<run>/<grid>/<metric>` (`eigenvalue_1`,
  `eigenvalue_2` for the curvature λ, descending); values that are not finite (an epoch whose centre is
  not computed yet, a diverged point's sharpness) and counts are left out;
- curvature results: the figure under `landscape/<run>/hessian/<results>`, and per epoch
  `.../eigenvalue_K` (K from 1), `lambda_min`, `trace`, `trace_stderr`.

torch (and tensorboard) are imported only inside the functions that open a writer: `plot` without
`--tensorboard` never loads them.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli._io import check_writable, make_dirs
from landscape_cli.errors import UsageError
from landscape_cli.store import Store
from landscape_cli.views.figures import PlotResult, plot
from landscape_cli.views.hessian_figure import HessianFigure
from landscape_cli.views.readers import Source

__all__ = ["MISSING", "SCALARS", "Logged", "check_logdir", "grid_tag", "log_grid", "log_hessian", "log_plot",
           "write_hessian", "write_plot"]

MISSING = "--tensorboard needs the tensorboard package: pip install 'landscape-cli[tensorboard]'"
PREFIX = "landscape"
# the numbers of a landscape's `stats` logged as scalars ("eigenvalues": one per eigenvalue)
SCALARS = ("center_loss", "center_accuracy", "eigenvalues", "condition", "fit_residual", "fit_residual_relative",
           "fit_disagreement", "sharpness", "sharpness_relative", "flat_radius", "share_below")


@dataclass
class Logged:
    """What was logged: the image tags with their steps, and how many scalars under which tags."""

    logdir: Path | None = None
    images: dict[str, int] = field(default_factory=dict)  # tag -> step
    scalars: dict[str, list[int]] = field(default_factory=dict)  # tag -> steps

    def to_json(self) -> dict[str, Any]:
        return {"logdir": self.logdir, "images": self.images, "scalars": self.scalars}


# --- where ------------------------------------------------------------------------------------------


def require_tensorboard() -> None:
    """One line (a UsageError) when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError(MISSING) from None


def check_logdir(logdir: str | os.PathLike[str], store: Store | str | os.PathLike[str] | None = None) -> Path:
    """LOGDIR checked before anything is drawn or written: the tensorboard package installed, not a symbolic
    link (nothing is written through one), not a file, not inside the store (links followed)."""
    require_tensorboard()
    if str(logdir).strip() == "":
        raise UsageError("empty --tensorboard: give a log directory")
    path = Path(logdir).expanduser()
    st = Store.of(store)
    if path.is_symlink():
        raise UsageError(f"--tensorboard {path} is a symbolic link: give the directory it points to (nothing is "
                         "written through a link)")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--tensorboard {path} is a file: give a directory (made if missing)")
    if st.holds(path):
        raise UsageError(f"--tensorboard {path} is inside the store {st.root.resolve()}: choose a log directory "
                         "outside it")
    return path


def _open(path: Path) -> Any:
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    make_dirs(path)
    check_writable(path)
    return SummaryWriter(log_dir=str(path))


# --- tags -------------------------------------------------------------------------------------------


def grid_tag(source: Source) -> str:
    """`landscape/<run>/<grid>`: the run's and the grid's names, else their ids (names hold no '/')."""
    return f"{PREFIX}/{source.run.name or source.run_id}/{source.grid.name or source.grid_id}"


def _image_tag(sources: Sequence[Source]) -> str:
    tags = list(dict.fromkeys(grid_tag(s) for s in sources))
    return tags[0] + "".join("_vs_" + t.removeprefix(PREFIX + "/") for t in tags[1:])


# --- logging into a writer -----------------------------------------------------------------------------


def figure_image(fig: Any, saved: Path | None = None) -> np.ndarray:
    """The figure as a PNG, decoded: uint8 [H, W, 3]. The PNG `plot` saved (`saved`) when there is one, so the
    image is that file pixel for pixel (a constrained layout moves a little at every draw); else the figure
    drawn once more at its own dpi (the size `plot` saves it at)."""
    from PIL import Image

    if saved is not None and saved.suffix.lower() == ".png" and saved.is_file():
        source: Any = saved
    else:
        source = io.BytesIO()
        fig.savefig(source, format="png", dpi=fig.dpi)
        source.seek(0)
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def _scalar(writer: Any, logged: Logged, tag: str, value: Any, step: int) -> None:
    if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
        return
    writer.add_scalar(tag, float(value), global_step=step)
    logged.scalars.setdefault(tag, []).append(step)


def _image(writer: Any, logged: Logged, tag: str, fig: Any, saved: Path | None, step: int) -> None:
    writer.add_image(tag, figure_image(fig, saved), global_step=step, dataformats="HWC")
    logged.images[tag] = step


def log_stats(writer: Any, source: Source, logged: Logged | None = None) -> Logged:
    """The `landscape stats` of the grid's mean landscape at every epoch (default options) as scalars."""
    from landscape_cli.curvature.stats import stats

    logged = logged or Logged()
    result = stats(source.run_id, grid=source.grid_id, store=source.store)
    tag = grid_tag(source)
    for e in result.epochs:
        mean, step = e["mean"], int(e.get("step", e["epoch"]))  # a run with step checkpoints: its step
        for name in SCALARS:
            if name == "eigenvalues":
                for k, v in enumerate(mean[name], 1):
                    _scalar(writer, logged, f"{tag}/eigenvalue_{k}", v, step)
            else:
                _scalar(writer, logged, f"{tag}/{name}", mean[name], step)
    return logged


def log_plot(writer: Any, result: PlotResult, *, stats: bool = True) -> Logged:
    """Log a figure `plot` drew (an image at the newest epoch it shows) and, with `stats`, the stats of every
    grid it shows (scalars, the epoch as the step)."""
    logged = Logged()
    epochs = [p.epoch for p in result.panels] + [c.epoch for c in result.curves]
    _image(writer, logged, _image_tag(result.sources), result.figure, result.path, max(epochs, default=0))
    if stats:
        for s in {(s.run_id, s.grid_id): s for s in result.sources}.values():
            log_stats(writer, s, logged)
    return logged


def log_grid(writer: Any, run: str, *, grid: str | None = None, epochs: Sequence[int] | None = None,
             store: Store | str | os.PathLike[str] | None = None, stats: bool = True, **options: Any) -> Logged:
    """Draw a run's grid (`grid`, else the newest) as `plot` draws it (`options`: plot's, e.g. reduce="mean";
    no file written) and log the figure and, with `stats`, the grid's stats into `writer`.

    `writer`: TensorBoard's `SummaryWriter` (or anything with its `add_image` and `add_scalar`); it is
    neither flushed nor closed."""
    result = plot([run], grids=[grid] if grid is not None else (), epochs=epochs, store=store, save=False,
                  **options)
    return log_plot(writer, result, stats=stats)


def log_hessian(writer: Any, figure: HessianFigure, run_name: str | None = None) -> Logged:
    """Log the figure of curvature results (`plot --hessian`) at their newest epoch, and per epoch their
    eigenvalues, λmin, trace and its standard error as scalars (tags under the run's name, else its id)."""
    logged = Logged()
    meta = figure.meta
    tag = f"{PREFIX}/{run_name or meta.run}/hessian/{meta.name or meta.id}"
    _image(writer, logged, tag, figure.figure, figure.path, max(figure.epochs, default=0))
    for i, step in enumerate(figure.epochs):
        for k, v in enumerate(figure.eigenvalues[i], 1):
            _scalar(writer, logged, f"{tag}/eigenvalue_{k}", v, step)
        for name, values in (("lambda_min", figure.lambda_min), ("trace", figure.trace),
                             ("trace_stderr", figure.trace_stderr)):
            _scalar(writer, logged, f"{tag}/{name}", values[i], step)
    return logged


# --- into a log directory -------------------------------------------------------------------------------


def write_plot(logdir: str | os.PathLike[str], result: PlotResult,
               store: Store | str | os.PathLike[str] | None = None) -> Logged:
    """`log_plot` into a new event file in `logdir` (checked by `check_logdir`, made if missing)."""
    path = check_logdir(logdir, store)
    writer = _open(path)
    try:
        logged = log_plot(writer, result)
    finally:
        writer.close()
    logged.logdir = path
    return logged


def write_hessian(logdir: str | os.PathLike[str], figure: HessianFigure,
                  store: Store | str | os.PathLike[str] | None = None) -> Logged:
    """`log_hessian` into a new event file in `logdir` (checked by `check_logdir`, made if missing)."""
    path = check_logdir(logdir, store)
    run_name = Store.of(store).read_run(figure.meta.run).name
    writer = _open(path)
    try:
        logged = log_hessian(writer, figure, run_name)
    finally:
        writer.close()
    logged.logdir = path
    return logged
