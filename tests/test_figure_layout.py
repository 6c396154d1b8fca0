"""Figures that read: measured on the rendered figure (matplotlib's Agg renderer, each text's window extent).

For 1 panel, 2 panels side by side and 3x3 panels, at spans 1, 0.01 and 1e-4, as heatmaps, contours and
3-D surfaces: no two visible texts overlap (the title, panel titles, tick labels, axis labels, colour-bar
ticks and label, notes), nothing is cut by the figure's edge, and the panels and their labels take the
figure's width (a single panel once left ~40 % of it blank). Tick labels are numbers a person reads
(no "2.03109 × 10⁰"), tiny spans in a power of ten the axis label states, and `scale="panel"` gives each
panel its own colour limits.

The grids are computed once for the module on a copy of the frozen second-release store's trained MLP
(`data/legacy-0.2.0`): 3 pairs x 3 batches x 5 x 5 points at epochs 0 and 3, no training.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_thread

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())
RUN = IDS["run_id"]
SPANS = {"1": 1.0, "0.01": 0.01, "1e-4": 1e-4}
LAYOUTS = {"1 panel": {"reduce": "mean"}, "2 panels": {"epochs": [0, 3], "reduce": "mean"}, "3x3 panels": {}}
VIEWS = {"heatmap": {}, "contour": {"contour": True}, "surface": {"surface": True}}


@pytest.fixture(scope="module")
def spans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frozen store with a 3-pair, 3-batch plane at each span (named "span-1", "span-0.01", "span-1e-4")."""
    from landscape_cli import grid

    store = tmp_path_factory.mktemp("layout") / "store"
    shutil.copytree(LEGACY2 / "store", store)
    with one_thread():
        for name, span in SPANS.items():
            grid(RUN, epochs=[0, 3], width=5, span=span, pairs=3, batches=3, batch_size=32, name=f"span-{name}",
                 store=store, progress=False)
    return store


@pytest.fixture
def store(spans: Path) -> Iterator[Path]:
    yield spans  # shared: every figure is drawn with save=False or to --out, never into the store
    assert _figures_in(spans) == []


# --- measuring a rendered figure -------------------------------------------------------------------------


def _shown_ticks(axis: Any) -> list[Any]:
    """The tick labels drawn on `axis`: those of ticks inside its view (matplotlib keeps others, undrawn)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-6
    return [t for tick in axis.get_major_ticks() if lo - eps <= tick.get_loc() <= hi + eps
            for t in (tick.label1, tick.label2) if t.get_visible()]


def texts(fig: Any) -> list[tuple[str, str, Any]]:
    """(what, text, window extent in pixels) of every visible, non-empty text of the figure, after drawing it."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found: list[tuple[str, Any]] = [("title", fig._suptitle)] if fig._suptitle is not None else []
    found += [("note", t) for t in fig.texts if t is not fig._suptitle]
    for i, ax in enumerate(fig.axes):
        found.append((f"axes {i} title", ax.title))
        for axis in (ax.xaxis, ax.yaxis, *([ax.zaxis] if hasattr(ax, "zaxis") else [])):
            name = f"axes {i} {axis.axis_name}"
            found += [(f"{name} label", axis.label), (f"{name} offset", axis.offsetText)]
            found += [(f"{name} tick", t) for t in _shown_ticks(axis)]
    return [(what, t.get_text(), t.get_window_extent(renderer)) for what, t in found
            if t.get_visible() and t.get_text().strip()]


def problems(fig: Any) -> list[str]:
    """Texts cut by the figure's edge, and pairs of texts that overlap (by more than half a pixel each way)."""
    boxes = texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    found = [f"cut by the edge: {what} {text!r} {box}" for what, text, box in boxes
             if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5]
    for (w1, t1, b1), (w2, t2, b2) in itertools.combinations(boxes, 2):
        if min(b1.x1, b2.x1) - max(b1.x0, b2.x0) > 0.5 and min(b1.y1, b2.y1) - max(b1.y0, b2.y0) > 0.5:
            found.append(f"overlap: {w1} {t1!r} / {w2} {t2!r}")
    return found


def blank(fig: Any) -> float:
    """The fraction of the figure's width that no axes (panel or colour bar, with its labels) covers."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    covered, end = 0.0, -np.inf
    for x0, x1 in sorted((b.x0, b.x1) for b in (ax.get_tightbbox(renderer) for ax in fig.axes)):
        x0 = max(x0, end)
        if x1 > x0:
            covered, end = covered + x1 - x0, x1
    return 1 - covered / fig.bbox.width


def _plot(store: Path, **options: Any) -> Any:
    from landscape_cli import plot

    return plot([RUN], store=store, save=False, **options)


# --- every layout, span and view -------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("span", SPANS)
@pytest.mark.parametrize("layout", [pytest.param(name, marks=pytest.mark.slow) if name == "3x3 panels" else name
                                    for name in LAYOUTS])  # (the quick subset keeps 3x3 in the scale panel's test)
def test_no_text_overlaps_or_is_cut_and_the_panels_fill_the_width(store: Path, layout: str, span: str,
                                                                   view: str) -> None:
    result = _plot(store, grids=[f"span-{span}"], **LAYOUTS[layout], **VIEWS[view])
    assert result.shape == {"1 panel": (1, 1), "2 panels": (1, 2), "3x3 panels": (3, 3)}[layout]
    fig = result.figure
    assert problems(fig) == []
    assert blank(fig) < 0.12, f"{blank(fig):.2f} of the width is blank"
    title = fig.get_suptitle()
    assert title.count("\n") + 1 <= 4, title  # three lines of facts, at most one of them wrapped
    for what, text, _ in texts(fig):
        if "tick" in what:  # plain numbers: no "× 10⁰", no "1e-6" offset above the axis
            float(text.replace("−", "-"))


@pytest.mark.parametrize("span", SPANS)
def test_log_colour_bars_read_as_plain_numbers(store: Path, span: str) -> None:
    """A log colour bar over less than a decade once printed every tick as "2.03109 × 10⁰"."""
    fig = _plot(store, grids=[f"span-{span}"], reduce="mean", log=True).figure
    assert problems(fig) == []
    [bar] = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    labels = [t.get_text() for t in _shown_ticks(bar.yaxis)]
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    values = [float(t.replace("−", "-")) for t in labels]  # "1.6507250", never mathtext
    lo, hi = bar.get_ylim()
    assert all(lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9) for v in values)


def test_tiny_spans_label_their_axes_with_the_power_of_ten(store: Path) -> None:
    fig = _plot(store, grids=["span-1e-4"], reduce="mean").figure
    fig.canvas.draw()
    [ax] = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert ax.get_xlabel().endswith("×10⁻⁴") and ax.get_ylabel().endswith("×10⁻⁴")
    shown = [float(t.get_text().replace("−", "-")) for t in _shown_ticks(ax.xaxis)]
    assert min(shown) == pytest.approx(-1) and max(shown) == pytest.approx(1)  # x = -1e-4 .. 1e-4
    [bar] = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert "×10⁻" in bar.get_ylabel()  # loss − loss at the centre, in its own power of ten
    # a span of 0.01 keeps its numbers as they are
    fig = _plot(store, grids=["span-0.01"], reduce="mean").figure
    fig.canvas.draw()
    [ax] = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert "×10" not in ax.get_xlabel() and "0.010" in [t.get_text() for t in _shown_ticks(ax.xaxis)]


def test_a_single_panel_leaves_no_blank_column_and_a_short_title(store: Path) -> None:
    fig = _plot(store, grids=["span-1"], reduce="mean").figure
    assert blank(fig) < 0.08
    [panel] = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    box = panel.get_window_extent()
    assert box.width / fig.bbox.width > 0.6  # the panel itself is most of the figure
    assert fig.get_suptitle().count("\n") + 1 <= 4


def test_two_runs_at_one_epoch_are_side_by_side_with_whole_titles(store: Path) -> None:
    from landscape_cli import plot

    result = plot([RUN, IDS["imported_id"]], grids=[IDS["grids"]["shards"], IDS["grids"]["imported"]], epochs=[3],
                  reduce="mean", store=store, save=False)
    assert result.shape == (1, 2)
    fig = result.figure
    assert problems(fig) == [] and blank(fig) < 0.12
    left, right = (ax.get_window_extent() for ax in result.panel_axes)
    assert right.x0 > left.x1 and abs(right.y0 - left.y0) < 1  # one row
    for ax in result.panel_axes:  # the run's name and model in each panel's title, inside its column
        title = ax.title.get_window_extent()
        assert ":" in ax.get_title() and title.width <= ax.get_window_extent().width + 2


# --- colour scales ---------------------------------------------------------------------------------------


def _limits(ax: Any) -> tuple[float, float]:
    [image] = ax.images
    return float(image.norm.vmin), float(image.norm.vmax)


def _own_range(panel: Any) -> tuple[float, float]:
    shown = panel.values - panel.center  # what a heatmap draws
    return float(np.nanmin(shown)), float(np.nanmax(shown))


def test_scale_panel_gives_each_panel_its_own_colour_limits(store: Path) -> None:
    shared = _plot(store, grids=["span-1"], epochs=[0, 3], reduce="mean")
    limits = [_limits(ax) for ax in shared.panel_axes]
    assert limits[0] == limits[1]  # one scale: the union of both panels
    ranges = [_own_range(p) for p in shared.panels]
    assert limits[0] == pytest.approx((min(r[0] for r in ranges), max(r[1] for r in ranges)))
    assert len(shared.figure.axes) == 3  # two panels, one colour bar

    own = _plot(store, grids=["span-1"], epochs=[0, 3], reduce="mean", scale="panel")
    limits = [_limits(ax) for ax in own.panel_axes]
    assert limits[0] != limits[1]
    for ax, panel in zip(own.panel_axes, own.panels, strict=True):
        assert _limits(ax) == pytest.approx(_own_range(panel))  # each panel spans its whole colour map
    assert len(own.figure.axes) == 4  # a colour bar beside each panel
    assert problems(own.figure) == [] and blank(own.figure) < 0.2
    assert "each panel has its own colour scale" in " ".join(t.get_text() for t in own.figure.texts)


def test_scale_panel_on_surfaces_and_contours_and_a_3x3_figure(store: Path) -> None:
    surfaces = _plot(store, grids=["span-0.01"], scale="panel", surface=True)
    zlims = {tuple(np.round(ax.get_zlim(), 12)) for ax in surfaces.panel_axes}
    assert len(zlims) == 9  # each of the nine panels its own height and colour range
    assert problems(surfaces.figure) == []
    contours = _plot(store, grids=["span-1e-4"], scale="panel", contour=True)
    assert problems(contours.figure) == [] and blank(contours.figure) < 0.2
    # every panel draws contour lines of its own (on the shared scale a zoomed panel may draw none)
    assert all(ax.collections for ax in contours.panel_axes)


def _figures_in(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.suffix in (".png", ".gif", ".pdf", ".svg")]


def test_plot_scale_through_the_cli(cli: Any, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "own.png"
    done = cli("plot", RUN, "--grid", "span-1", "--epochs", "0,3", "--reduce", "mean", "--scale", "panel",
               "--out", str(out), "--store", str(store), "--json")
    assert done.exit_code == 0, done.stderr
    assert out.is_file() and "each panel has its own colour scale" in json.loads(done.stdout)["notes"]
    gif = tmp_path / "own.gif"
    done = cli("plot", RUN, "--grid", "span-1", "--reduce", "mean", "--scale", "panel", "--animate", "--out",
               str(gif), "--store", str(store))
    assert done.exit_code == 0 and gif.is_file(), done.stderr
    bad = cli("plot", RUN, "--grid", "span-1", "--scale", "each", "--store", str(store))
    assert bad.exit_code != 0 and bad.stderr.strip() == "Error: unknown --scale 'each': choose one of shared, panel"
    line = cli("plot", RUN, "--grid", IDS["grids"]["line"], "--scale", "panel", "--store", str(store))
    assert line.exit_code != 0 and len(line.stderr.strip().splitlines()) == 1 and "--scale panel" in line.stderr
    assert _figures_in(store) == []  # every figure went to --out
    assert "--scale" in cli("plot", "--help").stdout
