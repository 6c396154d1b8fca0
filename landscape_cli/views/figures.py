"""Figures from grids: planes as heatmaps, contours and 3-D surfaces, lines as curves, a PCA plane
with its trajectory, comparisons across epochs and runs, and GIFs over epochs.

Reads grids through `readers` (as pages, notebooks and exports do); never imports torch. Figures are built with
`matplotlib.figure.Figure` on an Agg canvas: the process's backend is never switched and pyplot
never holds them, except with `show=True`, which opens a window through pyplot and closes it after.

Every view takes its axes from the grid's stored coordinates (x, and y for a plane).

Layouts of a 2-D grid (a plane):
- one grid, one epoch: the reference figure, one panel per (direction pair, batch), rows = pairs,
  columns = batches (`pair=` / `batch=` keep one row / column; `reduce=` averages);
- several epochs or several runs: rows = runs, columns = epochs (runs at one epoch: side by side),
  each panel one (pair, batch) (default 0, 0) or an average (`reduce="mean"` over pairs and batches,
  "batches", "pairs");
- a PCA plane: labelled contours of the metric (or a surface) with the trajectory drawn on it, one
  marker per checkpoint, arrows in training order, axes labelled with their explained variance.
Panels share one colour scale (`scale="panel"`: each its own colour bar). The figure is sized to its
square panels (nothing left blank beside them), titles are wrapped to the measured width of their
text, and tick labels are round numbers with the digits they need (tiny or huge coordinates and
values in a power of ten that the axis label states).

A 1-D grid (a line: random `--dims 1`, an interpolation, a PCA line) is one axes of curves of the
metric against the coordinate: one per epoch (and run), the mean over pairs and batches with its
min–max band (`reduce="batches"`: one per pair, `"pairs"`: one per batch). An interpolation marks
its two checkpoints (t = 0 and t = 1); a PCA line shows each checkpoint at its own loss.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter

from landscape_cli._io import atomic_path, figure_directory
from landscape_cli.errors import GridStateError, UsageError
from landscape_cli.store import Store
from landscape_cli.views.readers import (
    METRICS,
    CurvePlane,
    EpochData,
    LineData,
    PathData,
    Source,
    TrajectoryPath,
    axis_labels,
    batch_text,
    batchnorm_text,
    check_metric,
    checkpoint_text,
    directions_text,
    eigenvalues,
    geometry,
    kind_text,
    model_text,
    read_curve_line,
    read_curve_plane,
    read_epoch,
    read_line,
    read_path,
    select_keys,
    select_sources,
    target_text,
    train_text,
    trajectory,
    val_text,
)

__all__ = ["Curve", "LandscapeFigure", "Panel", "PlotResult", "Source", "Style", "TrajectoryPath", "build_curves",
           "build_panels", "draw", "draw_curves", "plot", "select_sources"]

REDUCTIONS = ("none", "mean", "batches", "pairs")
SCALES = ("shared", "panel")
FORMATS = (".png", ".pdf", ".svg")
DIVERGED_COLOUR = "magenta"
PATH_COLOUR = "black"


class LandscapeFigure(Figure):
    """The figures `plot` returns: matplotlib Figures that also show themselves in a notebook (IPython
    displays an object's `_repr_png_`), where a bare Figure, held by no pyplot manager, shows only its repr
    until `%matplotlib inline` runs."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=self.dpi)
        return buffer.getvalue()


@dataclass
class Panel:
    """What one panel shows: `values` [y, x] of the metric, NaN where not computed or diverged."""

    title: str
    values: np.ndarray
    computed: np.ndarray  # bool [y, x]: False where the row is not computed yet
    center: float
    grad: tuple[float, float] | None  # (dL/dx, dL/dy) at the centre, for the arrow
    source: Source
    epoch: int
    pair: int | None
    batch: int | None
    path: TrajectoryPath | None = None  # a PCA plane's trajectory, drawn on the panel
    curve: CurvePlane | None = None  # a curve plane's control points and curve, drawn on the panel

    @property
    def diverged(self) -> int:
        return int(np.count_nonzero(self.computed & ~np.isfinite(self.values)))


@dataclass
class Curve:
    """One curve of a line: `values` [x] the mean of the metric over the chosen pairs and batches, `lo`/`hi`
    their min and max (the band; None for a single pair and batch). NaN/Inf where diverged; all NaN, and
    not drawn, while a row it averages is not computed yet (`computed` False)."""

    label: str
    x: np.ndarray
    values: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    computed: bool
    source: Source
    epoch: int
    pair: int | None  # the one pair it shows, None for a mean over several
    batch: int | None
    over: str  # what the mean is over ("pairs and batches", "batches", "pairs"; "" for none)
    linestyle: str = "-"  # a curve grid's straight line and ensembles: dashed, dotted

    @property
    def diverged(self) -> int:
        return int(np.count_nonzero(~np.isfinite(self.values))) if self.computed else 0


@dataclass
class PlotResult:
    path: Path | None
    figure: Any
    panels: list[Panel]  # 2-D grids (empty for a line)
    shape: tuple[int, int]  # rows, columns of panels
    panel_axes: list[Any] = field(default_factory=list)
    arrow_scale: float | None = None
    curves: list[Curve] = field(default_factory=list)  # 1-D grids (empty for a plane)
    paths: list[TrajectoryPath] = field(default_factory=list)  # PCA trajectories drawn
    sources: list[Source] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the figure's note line says

    @property
    def diverged(self) -> int:
        return sum(p.diverged for p in self.panels) + sum(c.diverged for c in self.curves)


# --- choosing what to plot ------------------------------------------------------------------------


def _epochs_for(sources: list[Source], epochs: Sequence[int] | None, animate: bool,
                at_steps: Sequence[int] | None = None) -> list[int]:
    """The checkpoints drawn (their keys: steps in a run with step checkpoints, in step order)."""
    for s in sources:
        if not s.grid.epochs:
            raise GridStateError(f"grid {s.grid_id} holds no checkpoint yet: `landscape grid {s.run_id[:8]} --grid "
                                 f"{s.grid_id} --epochs E --resume` computes one")
    if epochs is None and at_steps is None:
        if animate or sources[0].dims == 1:  # a line's epochs are curves in one panel: all of them
            return sorted(sources[0].grid.epochs)
        return [max(sources[0].grid.epochs)] if sources[0].grid.epochs else []
    if at_steps is not None or any(s.steps for s in sources):
        chosen: list[int] = []
        for s in sources:  # every run compared names the same checkpoints
            keys = select_keys(s.run, s.grid.epochs, epochs, at_steps, f"grid {s.grid_id}",
                               f"`landscape grid {s.run_id[:8]} --at-steps {{missing}}` with the same options")
            chosen = chosen or keys
        return chosen
    assert epochs is not None
    if not epochs:
        raise UsageError("--epochs is empty: give epoch numbers like 0,1,9")
    for s in sources:
        missing = [e for e in epochs if e not in s.grid.epochs]
        if missing:
            have = ",".join(map(str, s.grid.epochs))
            raise UsageError(
                f"epoch {','.join(map(str, missing))} is not in grid {s.grid_id} (it has epochs {have}): "
                f"`landscape grid {s.run_id[:8]} --epochs {','.join(map(str, missing))}` with the same options adds it"
            )
    return list(dict.fromkeys(epochs))


def _check_selection(sources: list[Source], pair: int | None, batch: int | None) -> None:
    for s in sources:
        c = s.grid.config
        if pair is not None and pair >= c.pairs:
            raise UsageError(f"--pair {pair}: grid {s.grid_id} has pairs 0..{c.pairs - 1}")
        if batch is not None and batch >= c.batches:
            raise UsageError(f"--batch {batch}: grid {s.grid_id} has batches 0..{c.batches - 1}")


# --- what the panels and curves show -------------------------------------------------------------


def build_panels(sources: list[Source], epochs: list[int], metric: str, pair: int | None, batch: int | None,
                 reduce: str) -> tuple[list[Panel], tuple[int, int]]:
    """The panels of one figure (one frame) of planes and their rows x columns layout (a curve plane's with its
    control points and curve)."""
    panels, shape = _build_panels(sources, epochs, metric, pair, batch, reduce)
    planes = {id(s): read_curve_plane(s) for s in sources}
    for p in panels:
        p.curve = planes[id(p.source)]
    return panels, shape


def _build_panels(sources: list[Source], epochs: list[int], metric: str, pair: int | None, batch: int | None,
                  reduce: str) -> tuple[list[Panel], tuple[int, int]]:
    cfg = sources[0].grid.config
    _check_selection(sources, pair, batch)
    panels: list[Panel] = []
    if len(sources) == 1 and len(epochs) == 1:
        s, e = sources[0], epochs[0]
        data = read_epoch(s, e, metric)
        path = read_path(s, metric)
        pairs = [pair] if pair is not None else list(range(cfg.pairs))
        batches = [batch] if batch is not None else list(range(cfg.batches))
        if reduce == "mean":
            panels.append(_panel(s, e, data, pairs, batches, "mean over pairs and batches", path))
            return panels, (1, 1)
        if reduce == "batches":
            panels += [_panel(s, e, data, [p], batches, f"pair {p}, mean over batches", path) for p in pairs]
            return panels, (len(pairs), 1)
        if reduce == "pairs":
            panels += [_panel(s, e, data, pairs, [b], f"{batch_text(s, b)}, mean over pairs", path) for b in batches]
            return panels, (1, len(batches))
        panels += [_panel(s, e, data, [p], [b], f"pair {p}, {batch_text(s, b)}", path) for p in pairs for b in batches]
        return panels, (len(pairs), len(batches))
    for s in sources:
        path = read_path(s, metric)
        for e in epochs:
            data = read_epoch(s, e, metric)
            c = s.grid.config
            p_sel = list(range(c.pairs)) if reduce in ("mean", "pairs") else [pair or 0]
            b_sel = list(range(c.batches)) if reduce in ("mean", "batches") else [batch or 0]
            what = {"mean": "mean", "batches": f"pair {p_sel[0]}, mean of batches",
                    "pairs": f"{batch_text(s, b_sel[0])}, mean of pairs"}.get(reduce,
                                                                            f"pair {p_sel[0]}, {batch_text(s, b_sel[0])}")
            title = f"{s.checkpoint_label(e)} · {what}" if len(sources) == 1 else \
                f"{s.label}\n{s.checkpoint_label(e)} · {what}"
            panels.append(_panel(s, e, data, p_sel, b_sel, title, path))
    if len(epochs) == 1:  # runs compared at one epoch: side by side
        return panels, (1, len(sources))
    return panels, (len(sources), len(epochs))


def _panel(s: Source, epoch: int, data: EpochData, pairs: list[int], batches: list[int], title: str,
           path: PathData | None = None) -> Panel:
    v = data.values[np.ix_(pairs, batches)]  # [p, b, H, W]
    done = np.asarray(data.done[pairs])  # [p, H]
    computed_rows = np.asarray(done.all(axis=0))
    computed = np.repeat(computed_rows[:, None], v.shape[-1], axis=1)
    with np.errstate(invalid="ignore"):
        values = v.mean(axis=(0, 1))  # a diverged point stays NaN/Inf in the mean: never smoothed away
    values = np.where(computed, values, np.nan)
    center = float(np.mean(data.center[batches]))
    # the gradient of a batch mean is the mean gradient; across pairs the planes differ: no arrow
    grad = None
    if len(pairs) == 1:
        grad = (float(np.mean(data.grad_a[pairs[0], batches])), float(np.mean(data.grad_b[pairs[0], batches])))
        if not all(np.isfinite(grad)):
            grad = None
    return Panel(title, values, computed, center, grad, s, epoch, pairs[0] if len(pairs) == 1 else None,
                 batches[0] if len(batches) == 1 else None, trajectory(s, path, batches))


def build_curves(sources: list[Source], epochs: list[int], metric: str, pair: int | None, batch: int | None,
                 reduce: str) -> list[Curve]:
    """The curves of lines: per run and epoch the mean over pairs and batches (with its min–max band), or
    with `reduce` "batches" one per pair, "pairs" one per batch; `pair`/`batch` keep one."""
    _check_selection(sources, pair, batch)
    curves: list[Curve] = []
    for s in sources:
        c = s.grid.config
        pairs = [pair] if pair is not None else list(range(c.pairs))
        batches = [batch] if batch is not None else list(range(c.batches))
        if reduce == "batches":
            groups = [([p], batches, f" · pair {p}") for p in pairs]
        elif reduce == "pairs":
            groups = [(pairs, [b], f" · {batch_text(s, b)}") for b in batches]
        else:
            groups = [(pairs, batches, "")]
        for e in epochs:
            data = read_line(s, e, metric)
            for ps, bs, what in groups:
                who = f"{s.name} " if len(sources) > 1 else ""
                curves.append(_curve(s, e, data, ps, bs, f"{who}{s.checkpoint_label(e)}{what}"))
    return curves


def _curve(s: Source, epoch: int, data: LineData, pairs: list[int], batches: list[int], label: str) -> Curve:
    v = data.values[np.ix_(pairs, batches)].reshape(len(pairs) * len(batches), -1)  # [n, W]
    computed = bool(data.done[pairs].all())
    with np.errstate(invalid="ignore"):
        values, lo, hi = v.mean(axis=0), v.min(axis=0), v.max(axis=0)  # NaN/Inf stay: a diverged point is a gap
    if not computed:
        values = lo = hi = np.full(v.shape[1], np.nan)
    over = " and ".join(name for name, n in (("pairs", len(pairs)), ("batches", len(batches))) if n > 1)
    return Curve(label, s.coords[0], values, lo if v.shape[0] > 1 else None, hi if v.shape[0] > 1 else None,
                 computed, s, epoch, pairs[0] if len(pairs) == 1 else None, batches[0] if len(batches) == 1 else None,
                 over)


# --- drawing ------------------------------------------------------------------------------------


@dataclass
class Style:
    metric: str = "loss"
    contour: bool = False
    surface: bool = False
    log: bool = False
    clip: float | None = None
    scale: str = "shared"  # one colour scale for every panel (and frame), or "panel": each its own


def _displayed(panel: Panel, style: Style) -> np.ndarray:
    """The array a panel draws: clipped, and centre-subtracted for heatmaps (not for log/contour/3-D)."""
    v = panel.values.copy()
    if style.clip is not None:
        with np.errstate(invalid="ignore"):
            v = np.where(np.isfinite(v) & (v > style.clip), style.clip, v)
    if style.log:
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(v > 0, v, np.nan)
        return v
    if not style.contour and not style.surface and style.metric in METRICS:  # a user metric: as it is
        return v - panel.center
    return v


def _shown(values: np.ndarray, style: Style) -> np.ndarray:
    """What a curve draws: non-finite values as gaps, clipped, non-positive values gaps on a log scale."""
    v = np.where(np.isfinite(values), values, np.nan)
    with np.errstate(invalid="ignore"):
        if style.clip is not None:
            v = np.where(v > style.clip, style.clip, v)
        if style.log:
            v = np.where(v > 0, v, np.nan)
    return v


def _scale(panels: list[Panel], style: Style) -> tuple[float, float]:
    finite = [d[np.isfinite(d)] for d in (_displayed(p, style) for p in panels)]
    finite = [f for f in finite if f.size]
    if not finite:
        return (0.0, 1.0)
    lo, hi = float(min(f.min() for f in finite)), float(max(f.max() for f in finite))
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-3)
    return lo, hi


def _reach(source: Source) -> float:
    """Half the extent of the grid's shorter axis (the span of a square random grid)."""
    return min(float(c[-1] - c[0]) / 2 for c in source.coords)


def _arrow_scale(panels: list[Panel], reach: float) -> float | None:
    norms = [float(np.hypot(*p.grad)) for p in panels if p.grad is not None]
    norms = [n for n in norms if n > 0]
    return 0.3 * reach / max(norms) if norms else None


def _label(style: Style) -> str:
    name = style.metric
    if style.log:
        return f"log10 {name}" if style.surface else f"{name} (log scale)"
    if style.contour or style.surface or name not in METRICS:
        return name
    return f"{name} − {name} at the centre"


def _step(c: np.ndarray) -> float:
    return float(c[-1] - c[0]) / (len(c) - 1)


def _far_note(paths: list[TrajectoryPath], style: Style) -> str | None:
    far = [p for p in paths if p.far]
    if not far:
        return None
    worst = max(p.off_plane for p in far)
    where = "plane" if far[0].y is not None else "line"
    drawn = "the contours are" if where == "plane" and not style.surface else \
        "the surface is" if where == "plane" else "the curve is"
    return (f"the path lies far from this {where}: up to {100 * worst:.0f}% of a checkpoint's distance is off the "
            f"{where}, so {drawn} not the {style.metric} along the path")


TITLE_SIZE, PANEL_TITLE_SIZE, NOTE_SIZE, LABEL_SIZE, TICK_SIZE = 9.0, 8.0, 7.0, 7.0, 7.0
MIN_WIDTH = 7.4  # inches: a plane figure is at least this wide (a title line of ~110 characters), its panels grown to it
MAX_SIDE = 5.6  # inches: the largest panel


def _text_width(text: str, size: float) -> float:
    """The width of one line of `text` in points, at `size` points, in the figures' font (measured, not guessed)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    width, _, _ = text_to_path.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return float(width)


def _wrap(text: str, width: float, size: float) -> list[str]:
    """The lines of `text`, each broken at spaces to fit `width` points (a longer word stays whole)."""
    lines = []
    for line in text.split("\n"):
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and _text_width(trial, size) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return lines


def _text_room(fig_width: float) -> float:
    """The width in points a line of the figure's title or notes may take (a margin each side)."""
    return fig_width * 72 - 16


def _write_title(fig: Any, title: str) -> None:
    """The figure's title, each line wrapped to the figure's width."""
    fig.suptitle("\n".join(_wrap(title, _text_room(fig.get_figwidth()), TITLE_SIZE)), fontsize=TITLE_SIZE)


def _write_notes(fig: Any, notes: list[str]) -> None:
    """The note line(s) under the panels, with room made for them."""
    lines = _wrap(";  ".join(notes), _text_room(fig.get_figwidth()), NOTE_SIZE) if notes else []
    if lines:
        fig.text(0.01, 0.005, "\n".join(lines), fontsize=NOTE_SIZE, ha="left", va="bottom")
    bottom = min(0.3, (len(lines) * NOTE_SIZE * 1.25 + 5) / (fig.get_figheight() * 72)) if lines else 0.01
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.set(rect=(0, bottom, 1, 1 - bottom))


# --- the geometry of a figure of planes: panels sized to what they hold, nothing left blank ------------


@dataclass(frozen=True)
class _Geometry:
    """Inches around the panels of a row: the y label and ticks on the left, the colour bar(s), the gaps."""

    left: float  # the first column's y label and tick labels
    bar: float  # a colour bar beside each panel (--scale panel), else 0
    gap: float  # between columns: the next panel's tick labels
    right: float  # the shared colour bar and its label (0 with a bar per panel)

    @classmethod
    def of(cls, style: Style) -> _Geometry:
        per_panel = style.scale == "panel"
        if style.surface:  # a 3-D axes holds its own labels
            return cls(0.1, 0.85 if per_panel else 0.0, 0.15, 0.1 if per_panel else 0.95)
        return cls(0.75, 0.95 if per_panel else 0.0, 0.5, 0.1 if per_panel else 1.05)

    def width(self, cols: int, side: float) -> float:
        return self.left + cols * (side + self.bar) + (cols - 1) * self.gap + self.right

    def side(self, fig_width: float, cols: int) -> float:
        """The width of one panel (its axes) in a figure `fig_width` inches wide."""
        return (fig_width - self.left - self.right - (cols - 1) * self.gap) / cols - self.bar


def _plane_size(shape: tuple[int, int], style: Style, titles: list[str], panel_titles: list[str],
                notes: list[list[str]]) -> tuple[float, float]:
    """The figure's size in inches for `shape` panels: square panels (3 in; grown up to 5 in so that the
    figure is MIN_WIDTH wide), and the height of the longest wrapped title, panel titles and notes."""
    rows, cols = shape
    geo = _Geometry.of(style)
    side = 3.3 if style.surface else 3.0
    if geo.width(cols, side) < MIN_WIDTH:
        side = min(MAX_SIDE, geo.side(MIN_WIDTH, cols))
    width = geo.width(cols, side)
    room = _text_room(width)
    title_lines = max(len(_wrap(t, room, TITLE_SIZE)) for t in titles)
    panel_lines = max((len(_wrap(t, side * 72 - 4, PANEL_TITLE_SIZE)) for t in panel_titles), default=1)
    note_lines = max((len(_wrap(";  ".join(n), room, NOTE_SIZE)) for n in notes if n), default=0)
    height = ((title_lines * TITLE_SIZE * 1.25 + 12) / 72
              + rows * (side + (panel_lines * PANEL_TITLE_SIZE * 1.25 + 8) / 72)
              + (rows - 1) * 0.1 + (0.25 if style.surface else 0.5)
              + ((note_lines * NOTE_SIZE * 1.25 + 8) / 72 if note_lines else 0.05))
    return round(width, 2), round(height, 2)


# --- ticks that read: few enough to fit, as many digits as they need, tiny or huge numbers scaled --------


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _exponent(*values: float) -> int:
    """The power of ten the labels of an axis over `values` are given in: 0 unless the numbers are tiny
    (below 0.01) or huge (10 000 and above), whose ticks would otherwise be long strings of digits."""
    finite = [abs(v) for v in values if np.isfinite(v)]
    largest = max(finite, default=0.0)
    if largest == 0:
        return 0
    e = int(np.floor(np.log10(largest)))
    return e if e <= -3 or e >= 4 else 0


def _power(e: int) -> str:
    """", ×10⁻⁴": what an axis label says of its ticks given in a power of ten (nothing for 0)."""
    return f", ×10{str(e).translate(SUPERSCRIPT)}" if e else ""


def _number(value: float, ticks: Sequence[float], e: int) -> str:
    """A tick's label: `value` / 10^e with the fewest decimals that tell every tick apart exactly."""
    factor = 10.0 ** -e
    scaled = sorted({float(t) * factor for t in ticks if np.isfinite(t)})
    steps = np.diff(scaled)
    step = float(steps[steps > 0].min()) if (steps > 0).any() else abs(value * factor) or 1.0
    decimals = next((d for d in range(12) if all(abs(round(v, d) - v) <= 1e-3 * step for v in scaled)), 12)
    text = f"{value * factor:.{decimals}f}"
    if float(text) == 0:
        text = f"{0:.{decimals}f}"
    return text.replace("-", "−")


class _Decimals(Formatter):
    """Tick labels by `_number`: given in 10^e, with the decimals the axis's ticks need."""

    def __init__(self, e: int) -> None:
        self.e = e
        self.ticks: list[float] = []

    def set_locs(self, locs: Any) -> None:
        self.ticks = [float(v) for v in locs]

    def __call__(self, x: float, pos: int | None = None) -> str:
        return _number(x, self.ticks or [x], self.e)


def _formatter(e: int) -> Any:
    return _Decimals(e)


def _ticks(axis: Any, bins: int, e: int) -> None:
    """At most `bins` + 1 round ticks on `axis`, labelled by `_number`."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(_formatter(e))


def _colour_ticks(cb: Any, norm: Any, style: Style) -> int:
    """The colour bar's ticks (no "2.03 × 10⁰"): round numbers on a linear or narrow log scale, powers of
    ten on a log scale over a decade or more; returns the power of ten its labels are given in."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, NullLocator

    lo, hi = float(norm.vmin), float(norm.vmax)
    if style.log and not style.surface and hi / max(lo, 1e-300) >= 10:
        cb.locator = LogLocator(base=10)
        cb.formatter = _formatter_g()
        cb.minorformatter = NullFormatter()
        return 0
    e = _exponent(lo, hi)
    cb.locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    cb.formatter = _formatter(e)
    if style.log and not style.surface:
        cb.minorlocator = NullLocator()
    return e


def _formatter_g() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:g}".replace("-", "−"))


def _tick_bins(side: float) -> int:
    """Intervals between ticks along a panel side of `side` inches: a label (~6 characters) every 0.6 in or more."""
    return max(2, min(6, int(side / 0.6)))


def _plane_notes(panels: list[Panel], style: Style, arrow_scale: float | None) -> list[str]:
    """What the note line under a figure of planes says."""
    paths = [p.path for p in panels if p.path is not None]
    far = _far_note(paths, style)
    notes = [far] if far else []  # first: it says how to read the figure
    if arrow_scale is not None and style.metric == "loss" and not style.surface:
        notes.append(f"red arrows: −∇L projected on the plane, ×{arrow_scale:.3g}")
    if paths and not style.surface:
        notes.append(f"black: the training path (checkpoints by {paths[0].source.unit}, arrows in training order)")
    total_div = sum(p.diverged for p in panels)
    if total_div:
        notes.append(f"{DIVERGED_COLOUR}: {total_div} diverged points (NaN/Inf)")
    if any((~p.computed).any() for p in panels):
        notes.append("hatched grey: not computed yet")
    if style.clip is not None:
        notes.append(f"clipped at {style.clip:g}")
    if style.scale == "panel" and len(panels) > 1:
        notes.append("each panel has its own colour scale")
    return notes


def _panel_title(panel: Panel, one_epoch: set[int]) -> str:
    values = eigenvalues(panel.source, panel.epoch) if len(one_epoch) > 1 else []
    eigen = " · " + ", ".join(f"λ{j + 1} {v:.3g}" for j, v in enumerate(values)) if values else ""
    return panel.title + eigen + (f"  ({panel.diverged} diverged)" if panel.diverged else "")


def _levels(lo: float, hi: float, style: Style) -> tuple[np.ndarray, Any]:
    """About 10 contour levels between `lo` and `hi` and how each is labelled: round numbers (with the
    digits they need), or on a log scale over a decade or more, evenly spaced in the log (3 digits)."""
    from matplotlib.ticker import MaxNLocator

    if style.log and hi / max(lo, 1e-300) >= 10:
        return np.geomspace(lo, hi, 12), (lambda v: f"{v:.3g}")
    levels = np.asarray(MaxNLocator(nbins=12, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi), np.float64)
    levels = levels[(levels >= lo) & (levels <= hi)]
    if len(levels) < 2:
        levels = np.linspace(lo, hi, 12)
    e = _exponent(float(levels[0]), float(levels[-1]))
    return levels, (lambda v: _number(v, list(levels), e))


def _norm(lo: float, hi: float, style: Style) -> Any:
    from matplotlib import colors

    if style.log:
        vmin = max(lo, 1e-12)
        return colors.LogNorm(vmin=vmin, vmax=hi if hi > vmin else vmin * 1.001)
    return colors.Normalize(vmin=lo, vmax=hi)


def draw(fig: Any, panels: list[Panel], shape: tuple[int, int], style: Style, scale: tuple[float, float],
         arrow_scale: float | None, suptitle: str) -> tuple[list[Any], list[str]]:
    """Draw the `panels` of planes on `fig` (cleared first); returns the panel axes and the notes written.
    `scale` is the shared colour scale; with `style.scale` "panel" each panel takes its own."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    fig.clear()
    rows, cols = shape
    per_panel = style.scale == "panel"
    cmap = colormaps["viridis"].with_extremes(bad=DIVERGED_COLOUR)
    axes = []
    mappables: list[tuple[Any, Any, Any]] = []  # (axes, mappable, norm)
    source = panels[0].source  # compared grids have the same coordinates
    xs, ys = source.coords
    X, Y = np.meshgrid(xs, ys)
    dx, dy = _step(xs), _step(ys)
    extent = (xs[0] - dx / 2, xs[-1] + dx / 2, ys[0] - dy / 2, ys[-1] + dy / 2)
    square = bool(np.isclose(extent[1] - extent[0], extent[3] - extent[2]))
    one_epoch = {p.epoch for p in panels}
    xlabel, ylabel = axis_labels(source, next(iter(one_epoch)) if len(one_epoch) == 1 else None)
    ex, ey = _exponent(*extent[:2]), _exponent(*extent[2:])
    side = _Geometry.of(style).side(fig.get_figwidth(), cols)
    bins = _tick_bins(side)
    for i, panel in enumerate(panels):
        lo, hi = _scale([panel], style) if per_panel else scale
        norm = _norm(lo, hi, style)
        mappable = None
        # a path on a surface is drawn over it (never sorted behind it by depth)
        kw: dict[str, Any] = {"projection": "3d", "computed_zorder": panel.path is None} if style.surface else {}
        ax: Any = fig.add_subplot(rows, cols, i + 1, **kw)
        axes.append(ax)
        z = _displayed(panel, style)
        diverged = panel.computed & ~np.isfinite(panel.values)
        if style.surface:
            zz = np.log10(z) if style.log else z
            zlo, zhi = (float(np.log10(norm.vmin or 1)), float(np.log10(norm.vmax or 1))) if style.log else (lo, hi)
            mappable = ax.plot_surface(X, Y, np.ma.masked_invalid(zz), cmap=cmap, vmin=zlo, vmax=zhi,
                                       linewidth=0, antialiased=True)
            ax.set_zlim(zlo, zhi)
            ez = _exponent(zlo, zhi)
            for axis, e in ((ax.xaxis, ex), (ax.yaxis, ey), (ax.zaxis, ez)):
                _ticks(axis, 3, e)
            ax.set_zlabel(_label(style) + _power(ez), fontsize=LABEL_SIZE, labelpad=6)
            ax.set_xlabel(xlabel + _power(ex), fontsize=LABEL_SIZE, labelpad=11)
            ax.set_ylabel(ylabel + _power(ey), fontsize=LABEL_SIZE, labelpad=11)
            ax.tick_params(labelsize=TICK_SIZE - 1, pad=0)
            for axis in (ax.xaxis, ax.yaxis):  # level: a label turned along its axis crosses the tick labels
                axis.set_rotate_label(False)
            ax.set_box_aspect(None, zoom=0.82)
            ax.set_facecolor("none")  # a neighbour's z label is never hidden behind it
            if diverged.any():
                ax.scatter(X[diverged], Y[diverged], np.full(int(diverged.sum()), zhi), color=DIVERGED_COLOUR,
                           marker="x", s=12)
            if panel.path is not None and panel.path.y is not None:
                pz = _shown(panel.path.values, style)
                ax.plot(panel.path.x, panel.path.y, np.log10(pz) if style.log else pz, color=PATH_COLOUR, marker="o",
                        markersize=3, linewidth=0.9, gid="trajectory", zorder=5)
        elif style.contour:
            levels, label = _levels(float(norm.vmin), float(norm.vmax), style)
            masked = np.ma.masked_invalid(z)
            if np.isfinite(z).sum() >= 4:
                cs = ax.contour(X, Y, masked, levels=levels, cmap=cmap, norm=norm, linewidths=0.9)
                ax.clabel(cs, fontsize=6, fmt=label)
                mappable = cs
            if diverged.any():
                ax.scatter(X[diverged], Y[diverged], color=DIVERGED_COLOUR, marker="x", s=10, linewidths=0.8)
        else:
            # diverged points are NaN/Inf and take the colour map's "bad" colour
            mappable = ax.imshow(np.ma.masked_invalid(z), origin="lower", extent=extent, cmap=cmap, norm=norm,
                                 interpolation="nearest", aspect="equal" if square else "auto")
        if not style.surface:
            missing_rows = np.flatnonzero(~panel.computed[:, 0])
            for r in missing_rows:  # not computed yet: grey, hatched
                ax.add_patch(Rectangle((extent[0], ys[r] - dy / 2), extent[1] - extent[0], dy,
                                       facecolor="0.85", edgecolor="0.55", hatch="//", linewidth=0))
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            if arrow_scale is not None and panel.grad is not None and style.metric == "loss":
                ga, gb = panel.grad
                ax.annotate("", xy=(-ga * arrow_scale, -gb * arrow_scale), xytext=(0, 0),
                            arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.5})
            ax.plot([0], [0], marker="+", color="red", markersize=6)
            if panel.path is not None:
                _draw_plane_path(ax, panel.path)
            if panel.curve is not None:
                _draw_curve_plane(ax, panel.curve)
            _ticks(ax.xaxis, bins, ex)
            _ticks(ax.yaxis, bins, ey)
            ax.tick_params(labelsize=TICK_SIZE)
            if i // cols == rows - 1:
                ax.set_xlabel(xlabel + _power(ex), fontsize=LABEL_SIZE)
            if i % cols == 0:
                ax.set_ylabel(ylabel + _power(ey), fontsize=LABEL_SIZE)
        title = "\n".join(_wrap(_panel_title(panel, one_epoch), side * 72 - 4, PANEL_TITLE_SIZE))
        ax.set_title(title, fontsize=PANEL_TITLE_SIZE)
        if mappable is not None:
            mappables.append((ax, mappable, norm))
    bars = mappables if per_panel else mappables[-1:]
    for ax, mappable, norm in bars:
        cb = fig.colorbar(mappable, ax=ax if per_panel else axes, shrink=0.9 if per_panel else 0.85, pad=0.03,
                          fraction=0.08 if per_panel else 0.15)
        e = _colour_ticks(cb, norm if not style.surface else mappable.norm, style)
        if not per_panel or axes.index(ax) % cols == cols - 1:
            cb.set_label(_label(style) + _power(e), fontsize=LABEL_SIZE + 1)
        cb.ax.tick_params(labelsize=TICK_SIZE)
    notes = _plane_notes(panels, style, arrow_scale)
    _write_title(fig, suptitle)
    _write_notes(fig, notes)
    return axes, notes


def _draw_plane_path(ax: Any, path: TrajectoryPath) -> None:
    """The trajectory on a plane: a marker per checkpoint labelled by its epoch, arrows in training order."""
    assert path.y is not None
    ax.plot(path.x, path.y, linestyle="none", marker="o", markersize=3.5, color=PATH_COLOUR, markerfacecolor="white",
            gid="trajectory", zorder=4)
    for i in range(len(path.x) - 1):
        ax.annotate("", xy=(path.x[i + 1], path.y[i + 1]), xytext=(path.x[i], path.y[i]), zorder=4,
                    arrowprops={"arrowstyle": "-|>", "color": PATH_COLOUR, "lw": 0.8, "shrinkA": 3, "shrinkB": 3,
                                "mutation_scale": 7})
    for epoch, x, y in zip(path.epochs, path.x, path.y, strict=True):
        ax.annotate(str(epoch), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color=PATH_COLOUR)


def _draw_curve_plane(ax: Any, plane: CurvePlane) -> None:
    """A curve plane's curve (projected onto it) and its control points: w_A, the bends, w_B, each labelled (a plane
    through three checkpoints: the three, labelled with their checkpoints)."""
    if len(plane.x):
        ax.plot(plane.x, plane.y, color="white", linewidth=1.6, gid="curve", zorder=4)
        ax.plot(plane.x, plane.y, color=PATH_COLOUR, linewidth=0.9, linestyle="--", zorder=4)
    n = len(plane.control_x)
    labels = plane.labels or ["w_A", *[f"θ{k}" if n > 3 else "θ" for k in range(1, n - 1)], "w_B"]
    ax.plot(plane.control_x, plane.control_y, linestyle="none", marker="o", markersize=4.5, color=PATH_COLOUR,
            markerfacecolor="white", gid="control points", zorder=5)
    for label, x, y in zip(labels, plane.control_x, plane.control_y, strict=True):
        ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, color=PATH_COLOUR, zorder=5)


def _curve_companions(sources: list[Source], epochs: list[int], metric: str, batch: int | None,
                      curves: list[Curve]) -> tuple[list[Curve], str]:
    """A curve grid's curves relabelled with their loss barrier, the straight line's (dashed, its barrier too) and
    with --metric accuracy the ensembles' accuracy (dotted); and the axes' title text naming both barriers."""
    from landscape_cli.curvature.stats import barrier

    extra: list[Curve] = []
    texts = []
    for s in sources:
        data = read_curve_line(s, metric)
        if data is None:
            continue
        batches = [batch] if batch is not None else list(range(s.grid.config.batches))
        who = f"{s.name} " if len(sources) > 1 else ""
        with np.errstate(invalid="ignore"):
            line_barrier = barrier(data.x, data.line_loss[batches].mean(axis=0))
            for c in curves:
                if c.source is s and c.computed:
                    loss = c.values if metric == "loss" else read_line(s, c.epoch, "loss").values[0][batches].mean(axis=0)
                    b = barrier(data.x, loss)
                    c.label = f"{who}curve φ(t) (barrier {b:.3g})"
                    texts.append(f"{who}loss barrier: curve {b:.3g}, straight line {line_barrier:.3g}")
            e = epochs[0]
            extra.append(Curve(f"{who}straight line (barrier {line_barrier:.3g})", data.x,
                               data.line[batches].mean(axis=0), None, None, True, s, e, 0, None, "", "--"))
            if metric == "accuracy":
                extra.append(Curve(f"{who}ensemble of φ(t) and its ends", data.x, data.ensemble[batches].mean(axis=0),
                                   None, None, True, s, e, 0, None, "", ":"))
                ends = float(data.endpoints[batches].mean())
                extra.append(Curve(f"{who}ensemble of the two ends ({ends:.3g})", data.x, np.full(len(data.x), ends),
                                   None, None, True, s, e, 0, None, "", "-."))
    return extra, "; ".join(texts)


def _epochs_text(epochs: Sequence[int], unit: str = "epoch") -> str:
    return f"{unit} {epochs[0]}" if len(epochs) == 1 else f"{unit}s " + ", ".join(map(str, epochs))


def _mark_ends(ax: Any, curves: list[Curve]) -> None:
    """An interpolation's two checkpoints: vertical lines at t = 0 and t = 1, labelled."""
    sources = list({id(c.source): c.source for c in curves}.values())
    starts, ends = [], []
    for s in sources:
        who = f"{s.name} " if len(sources) > 1 else ""
        starts.append(who + _epochs_text(sorted({c.epoch for c in curves if c.source is s}), s.unit))
        ends.append(target_text(s))
    for t, texts in ((0.0, starts), (1.0, ends)):
        label = "; ".join(dict.fromkeys(texts))
        ax.axvline(t, color="0.35", linestyle="--", linewidth=0.9, label=label, gid=f"t={t:g}")
        ax.annotate(label, (t, 0.98), xycoords=ax.get_xaxis_transform(), xytext=(-2, 0), textcoords="offset points",
                    rotation=90, rotation_mode="anchor", ha="right", va="bottom", fontsize=7, color="0.25")


def draw_curves(fig: Any, curves: list[Curve], paths: list[TrajectoryPath], style: Style,
                suptitle: str, companions: Sequence[Curve] = (), subtitle: str = "") -> tuple[list[Any], list[str]]:
    """Draw the `curves` of lines on one axes of `fig` (cleared first), and a curve grid's `companions` (its
    straight line, ensembles) with `subtitle` (its barriers) on the axes' title; returns the axes and the notes
    written."""
    fig.clear()
    ax: Any = fig.add_subplot(1, 1, 1)
    source = curves[0].source
    handles = []
    for c in [*curves, *companions]:
        if not c.computed:
            continue
        [line] = ax.plot(c.x, _shown(c.values, style), linewidth=1.4, marker="o" if len(c.x) <= 25 else None,
                         markersize=2.5, label=c.label, linestyle=c.linestyle)
        handles.append(line)
        if c.lo is not None and c.hi is not None:
            ax.fill_between(c.x, _shown(c.lo, style), _shown(c.hi, style), color=line.get_color(), alpha=0.2,
                            linewidth=0)
        bad = ~np.isfinite(c.values)
        if bad.any():  # diverged: a gap in the curve, and a marker at the bottom
            ax.plot(c.x[bad], np.full(int(bad.sum()), 0.03), transform=ax.get_xaxis_transform(), linestyle="none",
                    marker="x", markersize=6, color=DIVERGED_COLOUR, gid="diverged")
    if source.kind in ("interpolate", "curve"):
        _mark_ends(ax, curves)
    for path in paths:
        y = _shown(path.values, style)
        [points] = ax.plot(path.x, y, linestyle="none", marker="o", markersize=4, color=PATH_COLOUR,
                           markerfacecolor="white", gid="trajectory", label=f"checkpoints (their own {style.metric})")
        if path is paths[0]:
            handles.append(points)
        for epoch, x, v in zip(path.epochs, path.x, y, strict=True):
            if np.isfinite(v):
                ax.annotate(str(epoch), (x, v), xytext=(3, 3), textcoords="offset points", fontsize=6,
                            color=PATH_COLOUR)
    if style.log:
        ax.set_yscale("log")
    one_epoch = {c.epoch for c in curves}
    ex = _exponent(float(source.coords[0][0]), float(source.coords[0][-1]))
    _ticks(ax.xaxis, 8, ex)  # a tiny span's coordinates in a power of ten, as on planes
    ax.set_xlabel(axis_labels(source, next(iter(one_epoch)) if len(one_epoch) == 1 else None)[0] + _power(ex),
                  fontsize=8)
    ax.set_ylabel(f"{style.metric} (log scale)" if style.log else style.metric, fontsize=8)
    title = "\n".join(t for t in (_curves_title(curves), subtitle) if t)
    diverged = sum(c.diverged for c in curves)
    ax.set_title(title + (f"  ({diverged} diverged)" if diverged else ""), fontsize=8)
    ax.tick_params(labelsize=7)
    if handles:
        ax.legend(handles=handles, fontsize=7)
    far = _far_note(paths, style)
    notes = [far] if far else []
    if diverged:
        notes.append(f"{DIVERGED_COLOUR} ×: {diverged} diverged points (NaN/Inf), gaps in the curves")
    missing = [c.label for c in curves if not c.computed]
    if missing:
        notes.append(f"not computed yet, left out: {', '.join(missing)}")
    if style.clip is not None:
        notes.append(f"clipped at {style.clip:g}")
    _write_title(fig, suptitle)
    _write_notes(fig, notes)
    return [ax], notes


def _curves_title(curves: list[Curve]) -> str:
    """What the curves are: which pair and batch, or what their means (and bands) are over."""
    parts = []
    for name in ("pair", "batch"):
        shown = {getattr(c, name) for c in curves}
        if len(shown) == 1 and None not in shown:
            parts.append(f"{name} {shown.pop()}")
        elif None not in shown:
            parts.append(f"one curve per {name}")
    over = curves[0].over
    if over:
        parts.append(f"mean over {over} (band: min–max)")
    return ", ".join(parts)


def _suptitle(sources: list[Source], epochs: list[int], style: Style) -> str:
    s = sources[0]
    where = ", ".join(t for t in (geometry(s), directions_text(s), batchnorm_text(s)) if t)
    if len(sources) == 1 and len(epochs) == 1:
        e = epochs[0]
        rec = s.epoch_record(e)
        metrics = f" — {train_text(s, e)}{val_text(rec)}" if rec else ""
        stats = _stats_text(s, e) if s.dims == 2 else ""
        return (f"{model_text(s)}, {checkpoint_text(s, e)}{metrics}\n"
                f"{style.metric}, {where}{stats}\nrun {s.run_id}, grid {s.grid_id}")
    if len(sources) == 1:
        return (f"{model_text(s)}: {style.metric}, {s.unit}s "
                f"{','.join(map(str, epochs))}, {geometry(s)} (grid {s.grid_id})")
    return f"{style.metric}, {geometry(s)}: " + " vs ".join(x.label for x in sources)


def _stats_text(s: Source, epoch: int) -> str:
    """The title's "; ε-sharpness …, flat radius … (δ …)" of the epoch's mean landscape (`landscape stats`,
    cached in the grid), or "" while the epoch is incomplete or its stats cannot be read."""
    from landscape_cli.curvature.stats import summary, title_text

    if s.store is None:
        return ""
    mean = summary(s.store, s.run_id, s.grid, [epoch]).get(epoch)
    return f"; {title_text(mean)}" if mean else ""


# --- the entry point ------------------------------------------------------------------------------


def plot(
    runs: Sequence[str],
    *,
    grids: Sequence[str] = (),
    epochs: Sequence[int] | None = None,
    at_steps: Sequence[int] | None = None,
    pair: int | None = None,
    batch: int | None = None,
    metric: str = "loss",
    contour: bool = False,
    surface: bool = False,
    log: bool = False,
    clip: float | None = None,
    reduce: str = "none",
    scale: str = "shared",
    animate: bool = False,
    out: str | os.PathLike[str] | None = None,
    show: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
    dpi: int = 120,
    save: bool = True,
) -> PlotResult:
    """Draw the landscape of one or more runs' grids and save it (PNG by default, in the grid's plots/).

    A plane (2-D grid) is drawn as heatmaps (or `contour`, `surface`; a PCA plane as contours with its
    path), a line (1-D grid) as curves. Returns the saved path, the matplotlib figure, and what was
    drawn with the arrays it shows: the panels of a plane, the curves of a line, a PCA path. The figure
    is not registered with pyplot (the backend is left as it is); `show=True` opens it in a window.
    `scale="panel"` gives each panel of a plane its own colour scale (default "shared": one for all
    panels and frames, to compare them). `save=False` writes no file unless `out` is given (not with
    `animate`, which is a file); the figure displays itself in a notebook. `epochs` and `at_steps` choose the
    checkpoints (a run with step checkpoints: `at_steps` by step, epoch E its checkpoint at the end of epoch E;
    its panels are titled and ordered by step).
    """
    if not metric or not metric.isidentifier():
        raise UsageError(f"unknown --metric {metric!r}: choose one of {', '.join(METRICS)} or a grid's own metric")
    if reduce not in REDUCTIONS:
        raise UsageError(f"unknown --reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
    if scale not in SCALES:
        raise UsageError(f"unknown --scale {scale!r}: choose one of {', '.join(SCALES)}")
    if clip is not None and not (np.isfinite(clip) and (clip > 0 or metric == "accuracy")):
        raise UsageError(f"--clip must be a finite positive number, got {clip}")
    if contour and surface:
        raise UsageError("choose one of --contour and --surface")
    for option, value in (("--pair", pair), ("--batch", batch)):
        if value is not None and value < 0:
            raise UsageError(f"{option} must be at least 0, got {value}")
    st = Store.of(store)
    out_path = _check_out(out, animate)
    sources = select_sources(st, runs, grids)
    check_metric(sources, metric)
    first = sources[0]
    if first.dims == 1:
        refused = [o for o, v in (("--contour", contour), ("--surface", surface), ("--animate", animate),
                                  ("--scale panel", scale == "panel")) if v]
        if refused:
            verb = "applies" if len(refused) == 1 else "apply"
            raise UsageError(f"{' and '.join(refused)} {verb} to 2-D grids only: grid {first.grid_id} is a line "
                             f"({kind_text(first)}), drawn as curves; leave out {' and '.join(refused)}")
    chosen = _epochs_for(sources, epochs, animate, at_steps)
    # a PCA plane: contours of the metric by default (its path is drawn on them)
    style = Style(metric, contour or (first.kind == "pca" and first.dims == 2 and not surface), surface, log, clip,
                  scale)
    if animate and not save and out_path is None:
        raise UsageError("an animation is a GIF file: give out=FILE.gif (or save=True: the grid's plots/)")
    path = out_path or (_default_path(st, first, chosen, style, pair, batch, reduce, len(sources), animate, scale)
                        if save else None)

    def prepare_dir() -> None:
        if path is not None:
            figure_directory(path)

    if first.dims == 1:
        curves = build_curves(sources, chosen, metric, pair, batch, reduce)
        batches = [batch] if batch is not None else list(range(first.grid.config.batches))
        paths = [p for p in (trajectory(s, read_path(s, metric), batches) for s in sources) if p is not None]
        companions, subtitle = _curve_companions(sources, chosen, metric, batch, curves)
        fig = _figure((7.5, 5.0), dpi, show)
        try:
            prepare_dir()
            line_axes, line_notes = draw_curves(fig, curves, paths, style, _suptitle(sources, chosen, style),
                                                companions, subtitle)
            if path is not None:
                _save(fig, path, dpi)
            _show(fig, show)
        finally:
            _close(fig, show)
        return PlotResult(path, fig, [], (1, 1), line_axes, None, curves, paths, sources, line_notes)

    frames = [[e] for e in chosen] if animate else [chosen]
    built = [build_panels(sources, f, metric, pair, batch, reduce) for f in frames]
    every = [p for panels, _ in built for p in panels]
    shared = _scale(every, style)
    arrow = _arrow_scale(every, _reach(first)) if metric == "loss" else None
    one_epoch = {p.epoch for p in built[0][0]}
    size = _plane_size(built[0][1], style, [_suptitle(sources, f, style) for f in frames],
                       [_panel_title(p, one_epoch) for p in every],
                       [_plane_notes(panels, style, arrow) for panels, _ in built])
    fig = _figure(size, dpi, show)
    axes: list[Any] = []
    notes: list[str] = []
    try:
        prepare_dir()
        if animate:
            from matplotlib.animation import PillowWriter

            writer = PillowWriter(fps=2)
            assert path is not None  # (an animation is always written)
            with atomic_path(path, keep_suffix=True) as tmp, writer.saving(fig, str(tmp), dpi):
                for (panels, shape), frame in zip(built, frames, strict=True):
                    axes, notes = draw(fig, panels, shape, style, shared, arrow, _suptitle(sources, frame, style))
                    writer.grab_frame()
        else:
            panels, shape = built[0]
            axes, notes = draw(fig, panels, shape, style, shared, arrow, _suptitle(sources, chosen, style))
            if path is not None:
                _save(fig, path, dpi)
        _show(fig, show)
    finally:
        _close(fig, show)
    last = built[-1][0]
    paths = list({id(p.path): p.path for p in last if p.path is not None}.values())
    return PlotResult(path, fig, last, built[-1][1], axes, arrow, [], paths, sources, notes)


def _figure(size: tuple[float, float], dpi: int, show: bool) -> Any:
    """A figure with constrained layout: pyplot's only for `show` (a window), else a bare `LandscapeFigure` on Agg."""
    if show:
        from matplotlib import pyplot as plt

        return plt.figure(figsize=size, dpi=dpi, layout="constrained")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = LandscapeFigure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int) -> None:
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=dpi)


def _show(fig: Any, show: bool) -> None:
    if show:
        from matplotlib import pyplot as plt

        plt.show()


def _close(fig: Any, show: bool) -> None:
    if show:  # the window's figure: pyplot no longer holds it
        from matplotlib import pyplot as plt

        plt.close(fig)


def _check_out(out: str | os.PathLike[str] | None, animate: bool) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser()
    allowed = (".gif",) if animate else FORMATS
    if path.suffix.lower() not in allowed:
        raise UsageError(f"--out {path}: the file name must end in {', '.join(allowed)}")
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory: give a file name ending in {', '.join(allowed)}")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: the directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"--out {path}: the directory {path.parent} is not writable")
    return path


def _default_path(st: Store, source: Source, epochs: list[int], style: Style, pair: int | None, batch: int | None,
                  reduce: str, n_sources: int, animate: bool, scale: str = "shared") -> Path:
    mode = "curve" if source.dims == 1 else "surface" if style.surface else "contour" if style.contour else "heatmap"
    parts = [style.metric, mode]
    if style.log:
        parts.append("log")
    if style.clip is not None:
        parts.append(f"clip{style.clip:g}")
    unit = source.unit
    parts.append(f"{unit}s-" + "-".join(map(str, epochs)) if len(epochs) > 1 else f"{unit}-{epochs[0]}")
    if pair is not None:
        parts.append(f"pair{pair}")
    if batch is not None:
        parts.append(f"batch{batch}")
    if reduce != "none":
        parts.append(f"{reduce}")
    if scale != "shared" and source.dims == 2:
        parts.append(f"{scale}-scale")
    if n_sources > 1:
        parts.append(f"vs{n_sources - 1}")
    return st.plot_path(source.run_id, source.grid_id, "_".join(parts) + (".gif" if animate else ".png"))
