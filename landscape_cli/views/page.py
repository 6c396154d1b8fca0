"""Interactive pages of grids: `landscape plot --html`, one self-contained HTML file per grid.

A plane (2-D grid) is drawn twice side by side, as a 3-D surface that can be rotated (WebGL) and as
a contour map; a line (1-D grid) as curves, one per epoch. A slider moves over the grid's epochs,
selectors choose the direction pair and the batch, or their mean (what `plot --reduce mean` draws):
a change redraws both plots. The page opens on the last epoch and the mean over pairs and batches
(`reduce`: "batches" opens on pair 0 averaged over batches, "pairs" on batch 0 averaged over pairs,
"none" on pair 0, batch 0). `log` and `clip` mean what they mean in `plot`: the mean drawn is capped at
`clip`, and with `log` both plots draw log10 of it (non-positive values are gaps), a line on a log axis.
A PCA plane has its trajectory drawn on both, one marker per checkpoint labelled with its epoch (on
the surface at the checkpoint's own metric). A grid of a run with step checkpoints is the same page over its
steps: the slider, titles and labels say "step".

The page needs no network: a partial bundle of plotly.js (only the trace types the page draws:
surface, scatter3d, scatter, contour; about 1.75 MB, built from plotly.js's own sources as
views/assets/PLOTLY.md records) is written into it, and the grid's values are embedded once as JSON
(7 significant digits, `null` for a point that diverged or is not computed yet); a small script of
the page computes the means and switches the traces with `Plotly.react`. The points of a large grid
are decimated along x and y (every k-th point, the centre and the ends kept) so that the page stays
a few MB, and the page says so.

Reads the grid as `landscape plot` does (through `readers`, with the same titles and conventions); never
imports torch, matplotlib or plotly (the bundle is package data).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli._io import atomic_path, figure_directory
from landscape_cli.errors import GridStateError, LandscapeError, StoreError, UsageError
from landscape_cli.store import Store
from landscape_cli.views.figures import REDUCTIONS
from landscape_cli.views.readers import (
    METRICS,
    Source,
    axis_labels,
    batch_text,
    batchnorm_text,
    check_metric,
    checkpoint_text,
    directions_text,
    geometry,
    keys_json,
    kind_text,
    model_text,
    read_epoch,
    read_line,
    read_path,
    select_sources,
    target_text,
    train_text,
    trajectory,
    val_text,
)

MAX_VALUES = 80_000  # values embedded in one page (about 9 bytes each as JSON: 0.7 MB; with the 1.75 MB bundle <= 2.5 MB)
SUFFIXES = (".html", ".htm")
PLOTLY_BUNDLE = "plotly-partial.min.js"  # plotly.js 4.1.1: surface, scatter3d, scatter, contour (assets/PLOTLY.md)


@dataclass
class HtmlResult:
    """The page written: its path and size, the epochs it shows, and whether (and how) its points were decimated."""

    path: Path
    bytes: int
    decimated: bool
    epochs: list[int]
    step: int = 1  # every `step`-th point along x and y is shown (1: all of them)
    shape: tuple[int, ...] = ()  # points shown along x (and y)
    grid_shape: tuple[int, ...] = ()  # the grid's points along x (and y)
    sources: list[Source] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        first = self.sources[0] if self.sources else None
        keys = keys_json(first.run, self.epochs) if first is not None and first.steps else {"epochs": self.epochs}
        return {"path": str(self.path), "bytes": self.bytes, "decimated": self.decimated, "step": self.step,
                "shape": list(self.shape), "grid_shape": list(self.grid_shape), **keys,
                "grids": [{"run": s.run_id, "grid": s.grid_id, "kind": s.kind, "dims": s.dims} for s in self.sources]}


def write_html(
    runs: Sequence[str],
    *,
    grids: Sequence[str] = (),
    metric: str = "loss",
    out: str | os.PathLike[str] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    max_points: int = 10_000,
    log: bool = False,
    clip: float | None = None,
    reduce: str = "mean",
) -> HtmlResult:
    """Write one interactive HTML page of the grid of each run in `runs` (a run selector when several).

    `grids` picks the grids as `plot` does (one for all runs or one per run; default: each run's
    newest). All epochs of the grid are on the page. `max_points` bounds the points of one plane (one
    surface) shown; the page as a whole holds at most `MAX_VALUES` values: beyond either, every k-th
    point along x and y is kept (the centre and the ends always). `out`: an .html file (default:
    `plots/landscape.html` in the first grid's directory; `landscape-accuracy.html` for accuracy).
    `log`, `clip`: as `plot`'s, applied to what the page draws (the embedded values stay the stored
    ones). `reduce`: what the page opens on: "mean" (over pairs and batches, the default), "batches"
    (pair 0, mean over batches), "pairs" (batch 0, mean over pairs) or "none" (pair 0, batch 0).
    """
    if not metric or not metric.isidentifier():
        raise UsageError(f"unknown --metric {metric!r}: choose one of {', '.join(METRICS)} or a grid's own metric")
    if reduce not in REDUCTIONS:
        raise UsageError(f"unknown --reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float)
                             or not (np.isfinite(clip) and (clip > 0 or metric == "accuracy"))):
        raise UsageError(f"--clip must be a finite positive number, got {clip}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise UsageError(f"max_points must be a positive whole number, got {max_points!r}")
    st = Store.of(store)
    out_path = _check_out(out)
    sources = select_sources(st, runs, grids)
    check_metric(sources, metric)
    for s in sources:
        if not s.grid.epochs:
            raise GridStateError(f"grid {s.grid_id} has no epochs yet: `landscape grid {s.run_id[:8]} --grid "
                                 f"{s.grid_id} --resume` computes them")
    first = sources[0]
    step, keep = _decimation(sources, max_points)
    path = out_path or st.plot_path(first.run_id, first.grid_id,
                                    "landscape.html" if metric == "loss" else f"landscape-{metric}.html")
    if out_path is None:
        figure_directory(path, "page", "FILE.html")
    data = {
        "dims": first.dims,
        "metric": metric,
        "sources": [_source_data(s, metric, keep) for s in sources],
        "decimated": _decimation_note(first, step, keep) if step > 1 else None,
        "log": bool(log),
        "clip": None if clip is None else float(clip),
        # the selection the page opens on: a pair and a batch, -1 for the mean over them
        "open": {"pair": -1 if reduce in ("mean", "pairs") else 0, "batch": -1 if reduce in ("mean", "batches") else 0},
    }
    page = _page(data, sources, metric)
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            tmp.write_bytes(page)
    except StoreError as e:
        if out_path is not None:
            raise
        raise StoreError(f"{e}; pass --out FILE.html to write the page elsewhere") from e
    epochs = sorted({e for s in sources for e in s.grid.epochs})
    shown = tuple(len(k) for k in keep)
    return HtmlResult(path, len(page), step > 1, epochs, step, shown, tuple(len(c) for c in first.coords), sources)


# --- checks -------------------------------------------------------------------------------------


def _check_out(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--out {path}: the page's file name must end in .html")
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory: give a file name ending in .html")
    parent = path.parent
    if not parent.is_dir():
        above = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if above is not None and not above.is_dir():
            raise UsageError(f"--out {path}: {above} is a file, not a directory")
        raise UsageError(f"--out {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {path}: the directory {parent} is not writable")
    return path


# --- decimation ---------------------------------------------------------------------------------


def _anchors(s: Source, axis: int) -> list[int]:
    """The points of an axis a decimated page keeps whatever its step: the centre (the coordinate
    nearest 0, the checkpoint; an interpolation's t = 1 too) and both ends."""
    c = s.coords[axis]
    marks = [0.0, 1.0] if s.kind == "interpolate" else [0.0]
    found = [int(np.argmin(np.abs(c - m))) for m in marks if c[0] <= m <= c[-1] or c[-1] <= m <= c[0]]
    return sorted({0, len(c) - 1, *(found or [len(c) // 2])})


def _kept(s: Source, axis: int, step: int) -> np.ndarray:
    """Every `step`-th index of an axis counted from its centre both ways, with the anchors."""
    n = len(s.coords[axis])
    anchors = _anchors(s, axis)
    centre = anchors[1] if len(anchors) > 2 else anchors[0]
    return np.asarray(sorted({*range(centre, -1, -step), *range(centre, n, step), *anchors}), dtype=np.intp)


def _values_embedded(sources: list[Source], shown: int) -> int:
    """How many values the page embeds with `shown` points per plane (or line)."""
    return sum(len(s.grid.epochs) * s.grid.config.pairs * s.grid.config.batches * shown for s in sources)


def _decimation(sources: list[Source], max_points: int) -> tuple[int, list[np.ndarray]]:
    """The smallest step along x and y that keeps a plane within `max_points` and the page within MAX_VALUES."""
    first = sources[0]  # compared grids have the same coordinates
    sizes = [len(c) for c in first.coords]
    step = 1
    while True:
        keep = [_kept(first, axis, step) for axis in range(first.dims)]
        shown = int(np.prod([len(k) for k in keep]))
        if (shown <= max_points and _values_embedded(sources, shown) <= MAX_VALUES) or step >= max(sizes):
            return step, keep
        step += 1


def _decimation_note(s: Source, step: int, keep: list[np.ndarray]) -> str:
    full = "x".join(str(len(c)) for c in s.coords)
    shown = "x".join(str(len(k)) for k in keep)
    along = "x and y" if s.dims == 2 else "x"
    nth = {2: "2nd", 3: "3rd"}.get(step, f"{step}th")
    return (f"decimated for this page: every {nth} point along {along} ({shown} of the grid's {full} points; the "
            "centre and the ends kept)")


# --- the page's data ------------------------------------------------------------------------------


def _numbers(a: np.ndarray) -> Any:
    """A float array as nested lists of numbers rounded to 7 significant digits (float32 precision),
    None (JSON null) where not finite: a diverged or missing point is a gap, never a number."""
    flat = [float(f"{v:.7g}") if np.isfinite(v) else None for v in np.asarray(a, np.float64).ravel().tolist()]
    if a.ndim <= 1:
        return flat
    n = a.shape[-1]
    rows: Any = [flat[i:i + n] for i in range(0, len(flat), n)]
    for size in reversed(a.shape[1:-1]):
        rows = [rows[i:i + size] for i in range(0, len(rows), size)]
    return rows


def _epoch_text(s: Source, epoch: int) -> str:
    rec = s.epoch_record(epoch)
    if rec is None:
        return ""
    return f"{train_text(s, epoch)}{val_text(rec)}"


def _source_data(s: Source, metric: str, keep: list[np.ndarray]) -> dict[str, Any]:
    """What the page needs of one grid: coordinates, values per epoch, pair and batch, rows computed,
    centre values, labels, and a PCA grid's trajectory."""
    cfg, run = s.grid.config, s.run.config
    epochs = sorted(s.grid.epochs)
    z, done, center = [], [], []
    for e in epochs:
        if s.dims == 2:
            plane = read_epoch(s, e, metric)
            ky, kx = keep[1], keep[0]
            z.append(_numbers(plane.values[:, :, ky][:, :, :, kx]))  # [pair, batch, y, x]
            done.append(plane.done[:, ky].astype(int).tolist())  # [pair, y]
            center.append(_numbers(plane.center))
        else:
            line = read_line(s, e, metric)
            z.append(_numbers(line.values[:, :, keep[0]]))  # [pair, batch, x]
            done.append(line.done.astype(int).tolist())  # [pair]
            center.append([])
    path = None
    raw = read_path(s, metric)
    if raw is not None:
        whole = trajectory(s, raw, list(range(cfg.batches)))
        assert whole is not None
        far = None
        if whole.far:
            where = "plane" if s.dims == 2 else "line"
            drawn = "the surface and contours are" if where == "plane" else "the curves are"
            far = (f"the path lies far from this {where}: up to {100 * whole.off_plane:.0f}% of a checkpoint's distance "
                   f"is off the {where}, so {drawn} not the {metric} along the path")
        path = {"epochs": raw.epochs, "x": _numbers(raw.x), "y": _numbers(raw.y) if raw.y is not None else None,
                "own": _numbers(raw.own), "far": far}  # own: [checkpoint, batch]
    x = s.coords[0][keep[0]]
    data: dict[str, Any] = {
        "run": s.run_id, "grid": s.grid_id, "name": s.name, "model": run.model, "activation": run.activation,
        "dataset": run.dataset, "kind": s.kind, "kindText": kind_text(s), "label": s.label,
        "epochs": epochs, "epochText": [_epoch_text(s, e) for e in epochs],
        "axes": [axis_labels(s, e) for e in epochs],
        "pairs": cfg.pairs, "batches": [batch_text(s, b) for b in range(cfg.batches)],
        "x": _numbers(x), "y": _numbers(s.coords[1][keep[1]]) if s.dims == 2 else None,
        "z": z, "done": done, "center": center, "path": path, "ends": None,
    }
    if s.kind == "interpolate":
        data["ends"] = ["epoch", target_text(s)]
    if s.steps:  # the checkpoints are steps: the slider, titles and labels say so (the epoch each one is in too)
        data["unit"] = "step"
        data["epochOf"] = [checkpoint_text(s, e).partition(" (")[2].rstrip(")") for e in epochs]
    return data


# --- the page -------------------------------------------------------------------------------------


def _page(data: dict[str, Any], sources: list[Source], metric: str) -> bytes:
    plotly_js = _asset(PLOTLY_BUNDLE).replace("</script", "<\\/script")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    s = sources[0]
    where = ", ".join(t for t in (geometry(s), directions_text(s), batchnorm_text(s)) if t)
    if len(sources) == 1:
        heading = f"{s.name} — {model_text(s)}"
        ids = f"run {s.run_id}, grid {s.grid_id}"
    else:
        heading = " vs ".join(x.label for x in sources)
        ids = "; ".join(f"{x.name}: run {x.run_id}, grid {x.grid_id}" for x in sources)
    plots = ('<div id="surface" class="plot"></div><div id="contour" class="plot"></div>' if s.dims == 2
             else '<div id="curves" class="plot wide"></div>')
    values = {"title": escape(f"{heading}: {metric}"), "heading": escape(heading),
              "where": escape(f"{metric}, {where}"), "ids": escape(ids), "plots": plots, "plotly": plotly_js,
              "data": blob, "script": _asset("page.js")}
    # one pass over the template: what is put in (a run named "{{plotly}}", the bundle's own text) is never read
    # again as a placeholder
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _asset("page.html")).encode()


def _asset(name: str) -> str:
    """A file of the page shipped as package data (views/assets/): its HTML template, its script and the
    plotly.js bundle."""
    try:
        return resources.files("landscape_cli.views").joinpath("assets", name).read_text(encoding="utf-8")
    except OSError as e:
        raise LandscapeError(f"the page's {name} is missing from the installed package (views/assets/): "
                             "reinstall landscape-cli") from e
