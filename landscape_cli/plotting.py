"""Figures from grids: the reference panels, comparisons across epochs and runs, 3-D and GIF views.

Reads run.json, grid.json and the Zarr arrays; never imports torch. Works headless (Agg) and opens
a window only when asked to (`show=True`).

Layouts:
- one grid, one epoch: the reference figure, one panel per (direction pair, batch), rows = pairs,
  columns = batches (`pair=` / `batch=` keep one row / column; `reduce=` averages);
- several epochs or several runs: rows = runs, columns = epochs, each panel one (pair, batch)
  (default 0, 0) or an average (`reduce="mean"` over pairs and batches, "batches", "pairs").
Compared panels always share one colour scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, check_writable, os_error
from .errors import GridStateError, IntegrityError, RunNotFoundError, StoreError, UsageError
from .gridstore import DECODE_ERRORS, Rows
from .meta import EpochRecord, GridMeta, RunMeta
from .store import Store

METRICS = ("loss", "accuracy")
REDUCTIONS = ("none", "mean", "batches", "pairs")
FORMATS = (".png", ".pdf", ".svg")
DIVERGED_COLOUR = "magenta"


@dataclass
class Source:
    """One grid of one run, as read from the store."""

    run_id: str
    run: RunMeta
    grid_id: str
    grid: GridMeta
    path: Path  # the grid's directory
    zarr_path: Path
    plots_dir: Path

    @property
    def label(self) -> str:
        cfg = self.run.config
        name = self.run.name or self.run_id[:8]
        return f"{name}: {cfg.model}/{cfg.activation}/{cfg.dataset}"

    def epoch_record(self, epoch: int) -> EpochRecord | None:
        return self.run.record(epoch)


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

    @property
    def diverged(self) -> int:
        return int(np.count_nonzero(self.computed & ~np.isfinite(self.values)))


@dataclass
class PlotResult:
    path: Path | None
    figure: Any
    panels: list[Panel]
    shape: tuple[int, int]  # rows, columns of panels
    panel_axes: list[Any] = field(default_factory=list)
    arrow_scale: float | None = None

    @property
    def diverged(self) -> int:
        return sum(p.diverged for p in self.panels)


# --- choosing what to plot ------------------------------------------------------------------------


def select_sources(st: Store, runs: Sequence[str], grids: Sequence[str] = ()) -> list[Source]:
    """The grid of each run: named by `grids` (one for all runs, or one per run), else the newest."""
    if not runs:
        raise UsageError("name at least one run (or grid) to plot; `landscape ls` lists them")
    if grids and len(grids) not in (1, len(runs)):
        raise UsageError(f"give one --grid for all runs or one per run: got {len(grids)} for {len(runs)} runs")
    sources = []
    for i, ref in enumerate(runs):
        try:
            run_id = st.resolve(ref)
            grid_ref = grids[0] if len(grids) == 1 else (grids[i] if grids else None)
            if grid_ref is None:
                newest = st.newest_grid(run_id)
                if newest is None:
                    raise GridStateError(f"run {run_id} has no grid to plot: `landscape grid {run_id[:8]}` makes one")
                grid_id = newest
            else:
                run_id, grid_id = st.find_grid(grid_ref, run_id)
        except RunNotFoundError:
            if grids:
                raise
            run_id, grid_id = st.find_grid(ref)  # a grid named directly
        meta = st.read_grid(run_id, grid_id)
        sources.append(Source(run_id, st.read_run(run_id), grid_id, meta, st.grid_dir(run_id, grid_id),
                              st.zarr_path(run_id, grid_id), st.plots_dir(run_id, grid_id)))
    if len(sources) > 1:
        first = sources[0].grid.config
        for s in sources[1:]:
            cfg = s.grid.config
            if (cfg.width, cfg.span) != (first.width, first.span):
                raise UsageError(
                    f"cannot compare grid {sources[0].grid_id} ({first.width}x{first.width}, span ±{first.span:g}) "
                    f"with grid {s.grid_id} ({cfg.width}x{cfg.width}, span ±{cfg.span:g}): compared grids "
                    "need the same --width and --span"
                )
    return sources


def _epochs_for(sources: list[Source], epochs: Sequence[int] | None, animate: bool) -> list[int]:
    if epochs is None:
        if animate:
            return sorted(sources[0].grid.epochs)
        return [max(sources[0].grid.epochs)] if sources[0].grid.epochs else []
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


# --- reading ------------------------------------------------------------------------------------


@dataclass
class _EpochData:
    values: np.ndarray  # [P, B, H, W]
    done: np.ndarray  # [P, H]
    center: np.ndarray  # [B]
    grad_a: np.ndarray  # [P, B]
    grad_b: np.ndarray


def _read_epoch(source: Source, epoch: int, metric: str) -> _EpochData:
    rows = Rows(source.zarr_path, "r")
    ei = rows.epochs.index(epoch)
    pairs, height = rows["done"].shape[1], rows["done"].shape[2]
    # chunk by chunk, in order: a damaged chunk is named, and no read is left pending when we stop
    values = np.full((pairs, rows["loss"].shape[2], height, rows["loss"].shape[4]), np.nan)
    done = np.zeros((pairs, height), bool)
    ga = np.full((pairs, rows["grad_a"].shape[2]), np.nan)
    gb = np.full_like(ga, np.nan)
    what = "centre values"
    try:
        center = np.asarray(rows["center_loss" if metric == "loss" else "center_accuracy"][ei], np.float64)
        for p in range(pairs):
            what = f"centre gradient of pair {p}"
            ga[p], gb[p] = rows["grad_a"][ei, p], rows["grad_b"][ei, p]
            for y in range(height):
                what = f"row {y} of pair {p}"
                done[p, y] = rows["done"][ei, p, y] > 0
                if done[p, y]:
                    values[p, :, y, :] = rows[metric][ei, p, :, y, :]
    except DECODE_ERRORS as e:
        raise IntegrityError(
            f"grid {source.grid_id} has a damaged chunk ({what}, epoch {epoch}): "
            f"`landscape grid {source.run_id} --grid {source.grid_id} --resume` recomputes it "
            "(`landscape verify` lists everything that is damaged)"
        ) from e
    return _EpochData(values, done, center, ga, gb)


def build_panels(sources: list[Source], epochs: list[int], metric: str, pair: int | None, batch: int | None,
                 reduce: str) -> tuple[list[Panel], tuple[int, int]]:
    """The panels of one figure (one frame) and their rows x columns layout."""
    cfg = sources[0].grid.config
    for s in sources:
        c = s.grid.config
        if pair is not None and pair >= c.pairs:
            raise UsageError(f"--pair {pair}: grid {s.grid_id} has pairs 0..{c.pairs - 1}")
        if batch is not None and batch >= c.batches:
            raise UsageError(f"--batch {batch}: grid {s.grid_id} has batches 0..{c.batches - 1}")
    panels: list[Panel] = []
    if len(sources) == 1 and len(epochs) == 1:
        s, e = sources[0], epochs[0]
        data = _read_epoch(s, e, metric)
        pairs = [pair] if pair is not None else list(range(cfg.pairs))
        batches = [batch] if batch is not None else list(range(cfg.batches))
        if reduce == "mean":
            panels.append(_panel(s, e, data, pairs, batches, "mean over pairs and batches"))
            return panels, (1, 1)
        if reduce == "batches":
            panels += [_panel(s, e, data, [p], batches, f"pair {p}, mean over batches") for p in pairs]
            return panels, (len(pairs), 1)
        if reduce == "pairs":
            panels += [_panel(s, e, data, pairs, [b], f"batch {b}, mean over pairs") for b in batches]
            return panels, (1, len(batches))
        panels += [_panel(s, e, data, [p], [b], f"pair {p}, batch {b}") for p in pairs for b in batches]
        return panels, (len(pairs), len(batches))
    for s in sources:
        for e in epochs:
            data = _read_epoch(s, e, metric)
            c = s.grid.config
            p_sel = list(range(c.pairs)) if reduce in ("mean", "pairs") else [pair or 0]
            b_sel = list(range(c.batches)) if reduce in ("mean", "batches") else [batch or 0]
            what = {"mean": "mean", "batches": f"pair {p_sel[0]}, mean of batches",
                    "pairs": f"batch {b_sel[0]}, mean of pairs"}.get(reduce, f"pair {p_sel[0]}, batch {b_sel[0]}")
            title = f"epoch {e} · {what}" if len(sources) == 1 else f"{s.label}\nepoch {e} · {what}"
            panels.append(_panel(s, e, data, p_sel, b_sel, title))
    return panels, (len(sources), len(epochs))


def _panel(s: Source, epoch: int, data: _EpochData, pairs: list[int], batches: list[int], title: str) -> Panel:
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
                 batches[0] if len(batches) == 1 else None)


# --- drawing ------------------------------------------------------------------------------------


@dataclass
class Style:
    metric: str = "loss"
    contour: bool = False
    surface: bool = False
    log: bool = False
    clip: float | None = None


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
    if not style.contour and not style.surface:
        return v - panel.center
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


def _arrow_scale(panels: list[Panel], span: float) -> float | None:
    norms = [float(np.hypot(*p.grad)) for p in panels if p.grad is not None]
    norms = [n for n in norms if n > 0]
    return 0.3 * span / max(norms) if norms else None


def _label(style: Style) -> str:
    name = style.metric
    if style.log:
        return f"log10 {name}" if style.surface else f"{name} (log scale)"
    if style.contour or style.surface:
        return name
    return f"{name} − {name} at the centre"


def draw(fig: Any, panels: list[Panel], shape: tuple[int, int], style: Style, span: float,
         scale: tuple[float, float], arrow_scale: float | None, suptitle: str) -> list[Any]:
    """Draw `panels` on `fig` (cleared first); returns the panel axes."""
    from matplotlib import colors
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    fig.clear()
    rows, cols = shape
    lo, hi = scale
    norm = colors.LogNorm(vmin=max(lo, 1e-12), vmax=max(hi, lo * 1.001, 1e-11)) if style.log else \
        colors.Normalize(vmin=lo, vmax=hi)
    cmap = plt.get_cmap("viridis").with_extremes(bad=DIVERGED_COLOUR)
    axes = []
    mappable = None
    width = panels[0].values.shape[1]
    xs = np.linspace(-span, span, width)
    X, Y = np.meshgrid(xs, xs)
    step = 2 * span / (width - 1)
    extent = (-span - step / 2, span + step / 2, -span - step / 2, span + step / 2)
    for i, panel in enumerate(panels):
        kw = {"projection": "3d"} if style.surface else {}
        ax = fig.add_subplot(rows, cols, i + 1, **kw)
        axes.append(ax)
        z = _displayed(panel, style)
        diverged = panel.computed & ~np.isfinite(panel.values)
        if style.surface:
            zz = np.log10(z) if style.log else z
            zlo, zhi = (float(np.log10(norm.vmin or 1)), float(np.log10(norm.vmax or 1))) if style.log else (lo, hi)
            mappable = ax.plot_surface(X, Y, np.ma.masked_invalid(zz), cmap=cmap, vmin=zlo, vmax=zhi,
                                       linewidth=0, antialiased=True)
            ax.set_zlim(zlo, zhi)
            ax.set_zlabel(_label(style), fontsize=7)
            if diverged.any():
                ax.scatter(X[diverged], Y[diverged], np.full(int(diverged.sum()), zhi), color=DIVERGED_COLOUR,
                           marker="x", s=12)
        elif style.contour:
            levels = np.geomspace(norm.vmin or 1e-12, norm.vmax or 1, 12) if style.log else np.linspace(lo, hi, 12)
            masked = np.ma.masked_invalid(z)
            if np.isfinite(z).sum() >= 4:
                cs = ax.contour(X, Y, masked, levels=levels, cmap=cmap, norm=norm, linewidths=0.9)
                ax.clabel(cs, fontsize=6, fmt="%.3g")
                mappable = cs
            if diverged.any():
                ax.scatter(X[diverged], Y[diverged], color=DIVERGED_COLOUR, marker="x", s=10, linewidths=0.8)
        else:
            # diverged points are NaN/Inf and take the colour map's "bad" colour
            mappable = ax.imshow(np.ma.masked_invalid(z), origin="lower", extent=extent, cmap=cmap, norm=norm,
                                 interpolation="nearest", aspect="equal")
        if not style.surface:
            missing_rows = np.flatnonzero(~panel.computed[:, 0])
            for r in missing_rows:  # not computed yet: grey, hatched
                ax.add_patch(Rectangle((-span - step / 2, xs[r] - step / 2), 2 * span + step, step,
                                       facecolor="0.85", edgecolor="0.55", hatch="//", linewidth=0))
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            if arrow_scale is not None and panel.grad is not None and style.metric == "loss":
                ga, gb = panel.grad
                ax.annotate("", xy=(-ga * arrow_scale, -gb * arrow_scale), xytext=(0, 0),
                            arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.5})
            ax.plot([0], [0], marker="+", color="red", markersize=6)
        ax.set_title(panel.title + (f"  ({panel.diverged} diverged)" if panel.diverged else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        if i // cols == rows - 1:
            ax.set_xlabel("x (along d1)", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("y (along d2)", fontsize=7)
    if mappable is not None:
        cb = fig.colorbar(mappable, ax=axes, shrink=0.85, pad=0.02)
        cb.set_label(_label(style), fontsize=8)
        cb.ax.tick_params(labelsize=7)
    notes = []
    if arrow_scale is not None and style.metric == "loss" and not style.surface:
        notes.append(f"red arrows: −∇L projected on the plane, ×{arrow_scale:.3g}")
    total_div = sum(p.diverged for p in panels)
    if total_div:
        notes.append(f"{DIVERGED_COLOUR}: {total_div} diverged points (NaN/Inf)")
    if any((~p.computed).any() for p in panels):
        notes.append("hatched grey: not computed yet")
    if style.clip is not None:
        notes.append(f"clipped at {style.clip:g}")
    fig.suptitle(suptitle, fontsize=9)
    if notes:
        fig.text(0.01, 0.005, ";  ".join(notes), fontsize=7, ha="left", va="bottom")
    return axes


def _suptitle(sources: list[Source], epochs: list[int], style: Style) -> str:
    if len(sources) == 1 and len(epochs) == 1:
        s, e = sources[0], epochs[0]
        cfg, rec, g = s.run.config, s.epoch_record(e), s.grid.config
        metrics = ""
        if rec:
            metrics = (f" — train loss {rec.train_loss:.3g}, acc {100 * rec.train_accuracy:.1f}%; "
                       f"val loss {rec.val_loss:.3g}, acc {100 * rec.val_accuracy:.1f}%")
        where = f"layer {g.layer}" if g.layer else f"{g.norm}-normalized"
        return (f"{cfg.model} / {cfg.activation} / {cfg.dataset}, epoch {e}{metrics}\n"
                f"{style.metric}, span ±{g.span:g}, {where}, BatchNorm {g.bn}\nrun {s.run_id}, grid {s.grid_id}")
    if len(sources) == 1:
        cfg, g = sources[0].run.config, sources[0].grid.config
        return (f"{cfg.model} / {cfg.activation} / {cfg.dataset}: {style.metric}, epochs "
                f"{','.join(map(str, epochs))}, span ±{g.span:g} (grid {sources[0].grid_id})")
    return f"{style.metric}, span ±{sources[0].grid.config.span:g}: " + " vs ".join(s.label for s in sources)


# --- the entry point ------------------------------------------------------------------------------


def plot(
    runs: Sequence[str],
    *,
    grids: Sequence[str] = (),
    epochs: Sequence[int] | None = None,
    pair: int | None = None,
    batch: int | None = None,
    metric: str = "loss",
    contour: bool = False,
    surface: bool = False,
    log: bool = False,
    clip: float | None = None,
    reduce: str = "none",
    animate: bool = False,
    out: str | os.PathLike[str] | None = None,
    show: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
    dpi: int = 120,
) -> PlotResult:
    """Draw the landscape of one or more runs' grids and save it (PNG by default, in the grid's plots/).

    Returns the saved path, the matplotlib figure and the panels (with the arrays they show).
    """
    import matplotlib

    if not show:
        matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if metric not in METRICS:
        raise UsageError(f"unknown --metric {metric!r}: choose one of {', '.join(METRICS)}")
    if reduce not in REDUCTIONS:
        raise UsageError(f"unknown --reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
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
    chosen = _epochs_for(sources, epochs, animate)
    style = Style(metric, contour, surface, log, clip)
    span = float(sources[0].grid.config.span or 1.0)

    frames = [[e] for e in chosen] if animate else [chosen]
    built = [build_panels(sources, f, metric, pair, batch, reduce) for f in frames]
    every = [p for panels, _ in built for p in panels]
    scale = _scale(every, style)
    arrow = _arrow_scale(every, span) if metric == "loss" else None
    rows, cols = built[0][1]
    fig = plt.figure(figsize=(max(3.2 * cols + 1.4, 7.0), 3.0 * rows + 1.5), dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))  # type: ignore[union-attr, call-arg]  # notes line
    path = out_path or _default_path(sources[0], chosen, style, pair, batch, reduce, len(sources), animate)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent)
    except OSError as e:  # (a StoreError too)
        message = str(e) if isinstance(e, StoreError) else str(os_error(e, path.parent))
        raise StoreError(f"{message}; pass --out FILE to write the figure elsewhere") from e
    axes: list[Any] = []
    if animate:
        from matplotlib.animation import PillowWriter

        writer = PillowWriter(fps=2)
        with atomic_path(path, keep_suffix=True) as tmp, writer.saving(fig, str(tmp), dpi):
            for (panels, shape), frame in zip(built, frames, strict=True):
                axes = draw(fig, panels, shape, style, span, scale, arrow, _suptitle(sources, frame, style))
                writer.grab_frame()
    else:
        panels, shape = built[0]
        axes = draw(fig, panels, shape, style, span, scale, arrow, _suptitle(sources, chosen, style))
        with atomic_path(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi)
    if show:
        plt.show()
    return PlotResult(path, fig, built[-1][0], built[-1][1], axes, arrow)


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


def _default_path(source: Source, epochs: list[int], style: Style, pair: int | None, batch: int | None,
                  reduce: str, n_sources: int, animate: bool) -> Path:
    mode = "surface" if style.surface else "contour" if style.contour else "heatmap"
    parts = [style.metric, mode]
    if style.log:
        parts.append("log")
    if style.clip is not None:
        parts.append(f"clip{style.clip:g}")
    parts.append("epochs-" + "-".join(map(str, epochs)) if len(epochs) > 1 else f"epoch-{epochs[0]}")
    if pair is not None:
        parts.append(f"pair{pair}")
    if batch is not None:
        parts.append(f"batch{batch}")
    if reduce != "none":
        parts.append(f"{reduce}")
    if n_sources > 1:
        parts.append(f"vs{n_sources - 1}")
    return source.plots_dir / ("_".join(parts) + (".gif" if animate else ".png"))
