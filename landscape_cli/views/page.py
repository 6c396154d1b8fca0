"""Interactive pages of grids: `landscape plot --html`, one self-contained HTML file per grid.

A plane (2-D grid) is drawn twice side by side, as a 3-D surface that can be rotated (WebGL) and as
a contour map; a line (1-D grid) as curves, one per epoch. A slider moves over the grid's epochs,
selectors choose the direction pair and the batch, or their mean (what `plot --reduce mean` draws):
a change redraws both plots. A PCA plane has its trajectory drawn on both, one marker per
checkpoint labelled with its epoch (on the surface at the checkpoint's own metric).

The page needs no network: plotly.js is written into it (about 4.8 MB) and the grid's values are
embedded once as JSON (7 significant digits, `null` for a point that diverged or is not computed
yet); a small script of the page computes the means and switches the traces with `Plotly.react`.
The points of a large grid are decimated along x and y (every k-th point, the centre and the ends
kept) so that the page stays a few MB, and the page says so.

Reads the grid as `landscape plot` does (through `readers`, with the same titles and conventions); never
imports torch or matplotlib, and imports plotly only to write a page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli._io import atomic_path, check_writable, os_error
from landscape_cli.errors import GridStateError, LandscapeError, StoreError, UsageError
from landscape_cli.store import Store
from landscape_cli.views.readers import (
    METRICS,
    Source,
    axis_labels,
    batch_text,
    check_metric,
    directions_text,
    geometry,
    kind_text,
    read_epoch,
    read_line,
    read_path,
    select_sources,
    target_text,
    trajectory,
)

MAX_VALUES = 250_000  # values embedded in one page (about 9 bytes each as JSON: 2.2 MB) before x and y are decimated
SUFFIXES = (".html", ".htm")


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
        return {"path": str(self.path), "bytes": self.bytes, "decimated": self.decimated, "step": self.step,
                "shape": list(self.shape), "grid_shape": list(self.grid_shape), "epochs": self.epochs,
                "grids": [{"run": s.run_id, "grid": s.grid_id, "kind": s.kind, "dims": s.dims} for s in self.sources]}


def write_html(
    runs: Sequence[str],
    *,
    grids: Sequence[str] = (),
    metric: str = "loss",
    out: str | os.PathLike[str] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    max_points: int = 10_000,
) -> HtmlResult:
    """Write one interactive HTML page of the grid of each run in `runs` (a run selector when several).

    `grids` picks the grids as `plot` does (one for all runs or one per run; default: each run's
    newest). All epochs of the grid are on the page. `max_points` bounds the points of one plane (one
    surface) shown; the page as a whole holds at most `MAX_VALUES` values: beyond either, every k-th
    point along x and y is kept (the centre and the ends always). `out`: an .html file (default:
    `plots/landscape.html` in the first grid's directory; `landscape-accuracy.html` for accuracy).
    """
    if metric not in METRICS:
        raise UsageError(f"unknown --metric {metric!r}: choose one of {', '.join(METRICS)}")
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_writable(path.parent)
        except OSError as e:  # (a StoreError too)
            message = str(e) if isinstance(e, StoreError) else str(os_error(e, path.parent))
            raise StoreError(f"{message}; pass --out FILE.html to write the page elsewhere") from e
    data = {
        "dims": first.dims,
        "metric": metric,
        "sources": [_source_data(s, metric, keep) for s in sources],
        "decimated": _decimation_note(first, step, keep) if step > 1 else None,
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

    def acc(value: float | None) -> str:
        return "" if value is None else f", acc {100 * value:.1f}%"

    return f"train loss {rec.train_loss:.3g}{acc(rec.train_accuracy)}; val loss {rec.val_loss:.3g}{acc(rec.val_accuracy)}"


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
    return data


# --- the page -------------------------------------------------------------------------------------


def _page(data: dict[str, Any], sources: list[Source], metric: str) -> bytes:
    try:
        from plotly.offline import get_plotlyjs  # a 4.8 MB script: only when a page is written
    except ImportError as e:
        raise LandscapeError("--html needs plotly (its plotly.js is written into the page): pip install plotly") from e

    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    s = sources[0]
    cfg = s.grid.config
    where = ", ".join(t for t in (geometry(s), directions_text(s), f"BatchNorm {cfg.bn}") if t)
    if len(sources) == 1:
        heading = f"{s.name} — {s.run.config.model} / {s.run.config.activation} / {s.run.config.dataset}"
        ids = f"run {s.run_id}, grid {s.grid_id}"
    else:
        heading = " vs ".join(x.label for x in sources)
        ids = "; ".join(f"{x.name}: run {x.run_id}, grid {x.grid_id}" for x in sources)
    plots = ('<div id="surface" class="plot"></div><div id="contour" class="plot"></div>' if s.dims == 2
             else '<div id="curves" class="plot wide"></div>')
    text = (_TEMPLATE.replace("{{title}}", escape(f"{heading}: {metric}"))
            .replace("{{heading}}", escape(heading))
            .replace("{{where}}", escape(f"{metric}, {where}"))
            .replace("{{ids}}", escape(ids))
            .replace("{{plots}}", plots))
    head, rest = text.split("{{plotly}}")
    middle, tail = rest.split("{{data}}")
    return "".join((head, plotly_js, middle, blob, tail.replace("{{script}}", _SCRIPT))).encode()


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 10px 16px; color: #222; }
h1 { font-size: 17px; margin: 0 0 2px; }
.sub { font-size: 12px; color: #555; margin: 0; }
.controls { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center; margin: 8px 0 4px; font-size: 13px; }
.controls input[type=range] { width: 260px; vertical-align: middle; }
.plots { display: flex; flex-wrap: wrap; }
.plot { flex: 1 1 480px; min-width: 360px; height: 540px; }
.plot.wide { height: 560px; }
#notes { font-size: 12px; color: #444; margin: 4px 0; }
#notes div { margin: 1px 0; }
</style>
<script>{{plotly}}</script>
</head>
<body>
<h1>{{heading}}</h1>
<p class="sub">{{where}}</p>
<p class="sub">{{ids}}</p>
<div class="controls">
<label id="run-box" hidden>run <select id="run"></select></label>
<label>epoch <input type="range" id="epoch" min="0" max="0" step="1" value="0"> <b id="epoch-label"></b></label>
<button id="play" type="button" title="step through the epochs">&#9654;</button>
<label id="pair-box">pair <select id="pair"></select></label>
<label id="batch-box">batch <select id="batch"></select></label>
<label><input type="checkbox" id="shared" checked> one scale for all epochs</label>
</div>
<div class="plots">{{plots}}</div>
<div id="notes"></div>
<script type="application/json" id="landscape-data">{{data}}</script>
<script>{{script}}</script>
</body>
</html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("landscape-data").textContent);
  const $ = (id) => document.getElementById(id);
  const METRIC = D.metric;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];
  const DIVERGED = "magenta";
  const CONFIG = {responsive: true, displaylogo: false};
  const state = {src: 0, epoch: 0, pair: 0, batch: 0, shared: true};
  let renders = 0;
  let timer = null;

  function esc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function range(n) { return Array.from({length: n}, (_, i) => i); }
  function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toPrecision(4).replace(/\.?0+$/, ""); }
  function rgba(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }
  function src() { return D.sources[state.src]; }
  function chosen(s) {
    return {pairs: state.pair < 0 ? range(s.pairs) : [state.pair],
            batches: state.batch < 0 ? range(s.batches.length) : [state.batch]};
  }
  function selText(s) {
    const b = state.batch >= 0 ? s.batches[state.batch] : null;
    if (state.pair >= 0 && b !== null) return "pair " + state.pair + ", " + b;
    if (state.pair >= 0) return "pair " + state.pair + ", mean over batches";
    if (b !== null) return b + ", mean over pairs";
    return "mean over pairs and batches";
  }

  // the mean over the chosen pairs and batches, as `plot --reduce` takes it: a point that diverged
  // (null) in any of them is null in the mean; a row not computed for every chosen pair is null
  function plane(s, ei, sel) {
    const Z = s.z[ei], done = s.done[ei], H = s.y.length, W = s.x.length, n = sel.pairs.length * sel.batches.length;
    const z = [], computed = [];
    for (let r = 0; r < H; r++) {
      const ok = sel.pairs.every((p) => done[p][r]);
      computed.push(ok);
      const row = new Array(W).fill(null);
      if (ok) {
        for (let c = 0; c < W; c++) {
          let sum = 0, bad = false;
          for (const p of sel.pairs) for (const b of sel.batches) {
            const v = Z[p][b][r][c];
            if (v === null) { bad = true; break; }
            sum += v;
          }
          if (!bad) row[c] = sum / n;
        }
      }
      z.push(row);
    }
    return {z: z, computed: computed};
  }
  function line(s, ei, sel) {
    const Z = s.z[ei], W = s.x.length, n = sel.pairs.length * sel.batches.length;
    const computed = sel.pairs.every((p) => s.done[ei][p]);
    const v = new Array(W).fill(null), lo = new Array(W).fill(null), hi = new Array(W).fill(null);
    if (computed) {
      for (let c = 0; c < W; c++) {
        let sum = 0, bad = false, mn = Infinity, mx = -Infinity;
        for (const p of sel.pairs) for (const b of sel.batches) {
          const x = Z[p][b][c];
          if (x === null) { bad = true; continue; }
          sum += x; mn = Math.min(mn, x); mx = Math.max(mx, x);
        }
        if (!bad) { v[c] = sum / n; lo[c] = mn; hi[c] = mx; }
      }
    }
    return {v: v, lo: n > 1 ? lo : null, hi: n > 1 ? hi : null, computed: computed};
  }
  function centre(s, ei, sel) {
    const c = s.center[ei];
    if (!c || !c.length) return null;
    let sum = 0;
    for (const b of sel.batches) { if (c[b] === null) return null; sum += c[b]; }
    return sum / sel.batches.length;
  }
  function own(s, sel) {  // each checkpoint's own metric: the mean over the chosen batches
    return s.path.own.map((row) => {
      let sum = 0;
      for (const b of sel.batches) { if (row[b] === null) return null; sum += row[b]; }
      return sum / sel.batches.length;
    });
  }
  function extent(arrays) {
    let lo = Infinity, hi = -Infinity;
    for (const a of arrays) for (const v of a) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!(lo <= hi)) return [0, 1];
    if (hi <= lo) hi = lo + (Math.abs(lo) * 1e-3 || 1e-3);
    return [lo, hi];
  }
  function values(s, ei, sel) {
    if (D.dims === 2) return [].concat(...plane(s, ei, sel).z);
    const l = line(s, ei, sel);
    return l.v.concat(l.hi || [], l.lo || []);
  }
  function zrange(s, sel, extra) {
    const eis = state.shared ? range(s.epochs.length) : [state.epoch];
    return extent(eis.map((ei) => values(s, ei, sel)).concat([extra || []]));
  }
  function title(s, ei) {
    const e = s.epochs[ei], t = s.epochText[ei];
    return "<b>" + esc(s.name) + "</b> · " + esc(s.model) + " / " + esc(s.dataset) + " · " + esc(s.kindText) +
      " · <b>epoch " + e + "</b><br><span style='font-size:11px'>" + esc(selText(s)) + (t ? " — " + esc(t) : "") +
      "</span>";
  }

  function renderPlane() {
    const s = src(), ei = state.epoch, sel = chosen(s), p = plane(s, ei, sel), e = s.epochs[ei];
    const ownz = s.path ? own(s, sel) : null;
    const [lo, hi] = zrange(s, sel, ownz);
    const [xl, yl] = s.axes[ei];
    const diverged = {x: [], y: []};
    p.z.forEach((row, r) => {
      if (!p.computed[r]) return;
      row.forEach((v, c) => { if (v === null) { diverged.x.push(s.x[c]); diverged.y.push(s.y[r]); } });
    });
    const hover = "x %{x:.4g}<br>y %{y:.4g}<br>" + METRIC + " %{z:.5g}<extra></extra>";
    const surface = [{type: "surface", x: s.x, y: s.y, z: p.z, colorscale: "Viridis", cmin: lo, cmax: hi,
                      colorbar: {title: {text: METRIC}, len: 0.75, thickness: 14}, hovertemplate: hover, name: METRIC}];
    const contour = [{type: "contour", x: s.x, y: s.y, z: p.z, colorscale: "Viridis", zmin: lo, zmax: hi, zauto: false,
                      autocontour: false, contours: {start: lo, end: hi, size: (hi - lo) / 12, coloring: "heatmap",
                      showlabels: true, labelfont: {size: 9, color: "white"}}, connectgaps: false, showscale: false,
                      line: {width: 0.6, color: "rgba(255,255,255,0.6)"}, hovertemplate: hover, name: METRIC}];
    if (diverged.x.length) {
      surface.push({type: "scatter3d", mode: "markers", x: diverged.x, y: diverged.y, z: diverged.x.map(() => hi),
                    marker: {color: DIVERGED, symbol: "x", size: 3}, name: "diverged", hoverinfo: "skip"});
      contour.push({type: "scatter", mode: "markers", x: diverged.x, y: diverged.y,
                    marker: {color: DIVERGED, symbol: "x", size: 7}, name: "diverged", hoverinfo: "skip"});
    }
    const c0 = centre(s, ei, sel);
    contour.push({type: "scatter", mode: "markers", x: [0], y: [0], name: "centre",
                  marker: {color: "red", symbol: "cross-thin", size: 12, line: {color: "red", width: 2}},
                  hovertemplate: "centre: " + METRIC + " " + fmt(c0) + "<extra></extra>"});
    const annotations = [];
    if (s.path) {
      const P = s.path, labels = P.epochs.map(String);
      // drawn a little above its points (a 3-D scene has no drawing order): the hover says the true values
      const lift = (hi - lo) * 0.015;
      surface.push({type: "scatter3d", mode: "lines+markers+text", x: P.x, y: P.y, text: labels, customdata: ownz,
                    z: ownz.map((v) => (v === null ? null : v + lift)), textposition: "top center", textfont: {size: 10},
                    line: {color: "black", width: 3}, marker: {color: "white", size: 3, line: {color: "black", width: 1}},
                    name: "trajectory", hovertemplate: "epoch %{text}: own " + METRIC + " %{customdata:.5g}<extra></extra>"});
      contour.push({type: "scatter", mode: "lines+markers+text", x: P.x, y: P.y, text: labels, textposition: "top right",
                    textfont: {size: 10}, line: {color: "black", width: 1},
                    marker: {color: "white", size: 7, line: {color: "black", width: 1.2}}, name: "trajectory",
                    customdata: ownz, hovertemplate: "epoch %{text}: own " + METRIC + " %{customdata:.5g}<extra></extra>"});
      for (let i = 0; i + 1 < P.x.length; i++) {
        annotations.push({x: P.x[i + 1], y: P.y[i + 1], ax: P.x[i], ay: P.y[i], xref: "x", yref: "y", axref: "x", ayref: "y",
                          text: "", showarrow: true, arrowhead: 2, arrowsize: 1, arrowwidth: 1, arrowcolor: "black",
                          standoff: 4, startstandoff: 4});
      }
    }
    const shapes = [];
    const dy = s.y.length > 1 ? (s.y[1] - s.y[0]) / 2 : 0.5;
    p.computed.forEach((ok, r) => {
      if (!ok) shapes.push({type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: s.y[r] - dy, y1: s.y[r] + dy,
                            fillcolor: "rgba(150,150,150,0.35)", line: {width: 0}, layer: "below"});
    });
    const t = title(s, ei);
    const surfaceLayout = {title: {text: t, font: {size: 13}}, margin: {l: 0, r: 0, t: 60, b: 0}, uirevision: "keep",
                           showlegend: false,
                           scene: {xaxis: {title: {text: esc(xl)}}, yaxis: {title: {text: esc(yl)}},
                                   zaxis: {title: {text: METRIC}, range: [lo, hi + (hi - lo) * 0.02]},
                                   aspectmode: "manual", aspectratio: {x: 1, y: 1, z: 0.7}}};
    const contourLayout = {title: {text: "contours · epoch " + e + " · centre " + METRIC + " " + fmt(c0), font: {size: 13}},
                           margin: {l: 60, r: 20, t: 60, b: 50}, uirevision: "keep", showlegend: false,
                           xaxis: {title: {text: esc(xl)}, range: [s.x[0], s.x[s.x.length - 1]], zeroline: false},
                           yaxis: {title: {text: esc(yl)}, range: [s.y[0], s.y[s.y.length - 1]], zeroline: false},
                           annotations: annotations, shapes: shapes};
    const missing = p.computed.filter((ok) => !ok).length;
    notes([diverged.x.length ? diverged.x.length + " diverged points (NaN/Inf): magenta ×, left out of the surface" : "",
           missing ? missing + " rows not computed yet: left out (grey)" : "",
           "red +: the centre (the checkpoint), " + METRIC + " " + fmt(c0),
           s.path ? "black: the training path, one marker per checkpoint labelled by epoch (on the surface at its own " +
             METRIC + ")" : "",
           s.path && s.path.far ? s.path.far : ""]);
    return Promise.all([Plotly.react("surface", surface, surfaceLayout, CONFIG),
                        Plotly.react("contour", contour, contourLayout, CONFIG)]);
  }

  function renderLine() {
    const s = src(), sel = chosen(s), traces = [], left = [];
    const ownz = s.path ? own(s, sel) : null;
    const [lo, hi] = zrange(s, sel, ownz);
    let diverged = 0;
    s.epochs.forEach((e, ei) => {
      const l = line(s, ei, sel), colour = PALETTE[ei % PALETTE.length], on = ei === state.epoch;
      if (!l.computed) { left.push("epoch " + e); return; }
      if (on && l.lo) {
        traces.push({type: "scatter", mode: "lines", x: s.x, y: l.hi, line: {width: 0}, hoverinfo: "skip", showlegend: false});
        traces.push({type: "scatter", mode: "lines", x: s.x, y: l.lo, line: {width: 0}, fill: "tonexty",
                     fillcolor: rgba(colour, 0.2), hoverinfo: "skip", name: "min–max", showlegend: false});
      }
      traces.push({type: "scatter", mode: s.x.length <= 25 ? "lines+markers" : "lines", x: s.x, y: l.v,
                   name: "epoch " + e, line: {color: colour, width: on ? 3 : 1.2}, marker: {size: on ? 6 : 4},
                   opacity: on ? 1 : 0.35, hovertemplate: "epoch " + e + ": " + METRIC + " %{y:.5g}<extra></extra>"});
      if (on) {
        const bad = s.x.filter((_, c) => l.v[c] === null);
        diverged = bad.length;
        if (bad.length) traces.push({type: "scatter", mode: "markers", x: bad, y: bad.map(() => lo), name: "diverged",
                                     marker: {color: DIVERGED, symbol: "x", size: 9}, hoverinfo: "skip"});
      }
    });
    if (s.path) {
      traces.push({type: "scatter", mode: "markers+text", x: s.path.x, y: ownz, text: s.path.epochs.map(String),
                   textposition: "top right", marker: {color: "white", size: 8, line: {color: "black", width: 1.2}},
                   name: "checkpoints (their own " + METRIC + ")",
                   hovertemplate: "epoch %{text}: own " + METRIC + " %{y:.5g}<extra></extra>"});
    }
    const shapes = [], annotations = [];
    if (s.ends) {
      [[0, "epochs " + s.epochs.join(", ")], [1, s.ends[1]]].forEach(([t, label]) => {
        shapes.push({type: "line", x0: t, x1: t, yref: "paper", y0: 0, y1: 1, line: {color: "#555", dash: "dash", width: 1}});
        annotations.push({x: t, y: 1, yref: "paper", text: esc(label), showarrow: false, textangle: -90,
                          xanchor: "right", yanchor: "top", font: {size: 10, color: "#444"}});
      });
    }
    const pad = (hi - lo) * 0.04;
    const layout = {title: {text: title(s, state.epoch), font: {size: 13}}, margin: {l: 70, r: 20, t: 70, b: 50},
                    uirevision: "keep", xaxis: {title: {text: esc(s.axes[state.epoch][0])}, zeroline: false},
                    yaxis: {title: {text: METRIC}, range: [lo - pad, hi + pad]}, shapes: shapes, annotations: annotations,
                    legend: {font: {size: 10}, traceorder: "normal"}};
    notes([sel.pairs.length * sel.batches.length > 1 ? "band: min–max over the " + selText(s).replace(/^.*mean over /, "") +
           " of the selected epoch" : "",
           diverged ? diverged + " diverged points (NaN/Inf): magenta ×, gaps in the curve" : "",
           left.length ? "not computed yet, left out: " + left.join(", ") : "",
           s.path && s.path.far ? s.path.far : ""]);
    return Plotly.react("curves", traces, layout, CONFIG);
  }

  function notes(lines) {
    const all = lines.filter(Boolean);
    if (D.decimated) all.push(D.decimated);
    $("notes").innerHTML = all.map((t) => "<div>" + esc(t) + "</div>").join("");
  }

  function render() {
    const s = src();
    $("epoch-label").textContent = s.epochs[state.epoch] + "  (" + (state.epoch + 1) + " of " + s.epochs.length + ")";
    const done = D.dims === 2 ? renderPlane() : renderLine();
    return Promise.resolve(done).then(() => {
      renders += 1;
      document.body.dataset.renders = String(renders);
    });
  }

  function options(select, items, value) {
    select.innerHTML = items.map(([v, t]) => "<option value='" + v + "'>" + esc(t) + "</option>").join("");
    select.value = String(value);
  }

  function setSource(i) {
    state.src = i;
    const s = src();
    state.epoch = s.epochs.length - 1;
    state.pair = Math.min(Math.max(state.pair, s.pairs > 1 ? -1 : 0), s.pairs - 1);
    state.batch = Math.min(Math.max(state.batch, s.batches.length > 1 ? -1 : 0), s.batches.length - 1);
    const slider = $("epoch");
    slider.max = String(s.epochs.length - 1);
    slider.value = String(state.epoch);
    slider.disabled = s.epochs.length < 2;
    $("play").disabled = s.epochs.length < 2;
    const pairs = range(s.pairs).map((p) => [p, "pair " + p]);
    if (s.pairs > 1) pairs.push([-1, "mean over pairs"]);
    options($("pair"), pairs, state.pair);
    const batches = s.batches.map((b, i) => [i, b]);
    if (s.batches.length > 1) batches.push([-1, "mean over batches"]);
    options($("batch"), batches, state.batch);
  }

  options($("run"), D.sources.map((s, i) => [i, s.label]), 0);
  $("run-box").hidden = D.sources.length < 2;
  setSource(0);
  $("run").addEventListener("change", (ev) => { setSource(Number(ev.target.value)); render(); });
  $("epoch").addEventListener("input", (ev) => { state.epoch = Number(ev.target.value); render(); });
  $("pair").addEventListener("change", (ev) => { state.pair = Number(ev.target.value); render(); });
  $("batch").addEventListener("change", (ev) => { state.batch = Number(ev.target.value); render(); });
  $("shared").addEventListener("change", (ev) => { state.shared = ev.target.checked; render(); });
  $("play").addEventListener("click", () => {
    if (timer !== null) { clearInterval(timer); timer = null; $("play").innerHTML = "&#9654;"; return; }
    $("play").innerHTML = "&#10074;&#10074;";
    timer = setInterval(() => {
      const slider = $("epoch");
      slider.value = String((Number(slider.value) + 1) % (src().epochs.length));
      slider.dispatchEvent(new Event("input"));
    }, 900);
  });
  render();
})();
"""
