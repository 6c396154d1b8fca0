"""Figures: panels and curves, the arrays they show, comparisons, views, PCA paths, missing data, errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import Grid, StoreFactory, Train, private_copy

from landscape_cli import train
from landscape_cli.errors import GridStateError, IntegrityError, UsageError
from landscape_cli.store.grid_arrays import Rows
from landscape_cli.views.figures import plot

G = {"width": 5, "pairs": 2, "batches": 2, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def base_store(trained_store: StoreFactory) -> Path:
    """The session's master (each run trained once per session; read-only): the tests take copies."""
    return trained_store.build(
        Train("cnn", epochs=2, name="relu"),
        Train("cnn", epochs=2, name="tanh", activation="tanh"),
        Train("mlp", epochs=0, name="wild"),
        Grid("relu", name="main", **G),
        Grid("tanh", name="main", **G),
        Grid("relu", name="wide", **{**G, "width": 3}),
        Grid("wild", span=1e20, name="diverging", **G),
    )


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    return private_copy(base_store, tmp_path)


def _ds(store: Path, run: str, name: str) -> xr.Dataset:
    return xr.open_zarr(_grid_dir(store, run, name) / "landscape.zarr")


def _grid_dir(store: Path, run: str, name: str) -> Path:
    [path] = [p for p in store.glob("*/grids/*") if json.loads((p / "grid.json").read_text())["name"] == name
              and json.loads((p.parent.parent / "run.json").read_text())["name"] == run]
    return path


def _images(result: Any) -> list[Any]:
    return [ax.get_images()[0] for ax in result.panel_axes]


def test_reference_figure_panels_show_the_stored_arrays(store: Path) -> None:
    result = plot(["relu"], grids=["main"], store=store)
    assert result.shape == (2, 2) and len(result.panel_axes) == 4
    assert len(result.figure.axes) == 5  # four panels and one colour bar
    ds = _ds(store, "relu", "main").sel(epoch=2)  # the grid's last epoch by default
    for panel, image in zip(result.panels, _images(result), strict=True):
        stored = ds.loss.sel(pair=panel.pair, batch=panel.batch).values
        center = float(ds.center_loss.sel(batch=panel.batch))
        assert np.array_equal(panel.values, stored)
        assert np.allclose(np.asarray(image.get_array()), stored - center)  # centre value subtracted
        assert panel.title == f"pair {panel.pair}, batch {panel.batch}"
    # one shared colour scale
    assert len({(im.norm.vmin, im.norm.vmax) for im in _images(result)}) == 1
    # by default into the grid's plots/ directory
    assert result.path.parent.name == "plots"
    assert json.loads((result.path.parent.parent / "grid.json").read_text())["name"] == "main"
    assert result.path.is_file() and result.path.suffix == ".png"


def test_title_and_arrows(store: Path) -> None:
    result = plot(["relu"], grids=["main"], epochs=[1], store=store)
    title = result.figure._suptitle.get_text()
    run = next(r for r in (json.loads(p.read_text()) for p in store.glob("*/run.json")) if r["name"] == "relu")
    rec = run["epochs"][1]
    for text in ("cnn", "relu", "digits", "epoch 1", f"{rec['checkpoint_train_loss']:.3g}", f"{rec['val_loss']:.3g}",
                 f"{100 * rec['val_accuracy']:.1f}%"):
        assert text in title
    ds = _ds(store, "relu", "main").sel(epoch=1)
    for panel, ax in zip(result.panels, result.panel_axes, strict=True):
        [arrow] = [c for c in ax.texts if getattr(c, "arrow_patch", None) is not None]
        ga = float(ds.grad_a.sel(pair=panel.pair, batch=panel.batch))
        gb = float(ds.grad_b.sel(pair=panel.pair, batch=panel.batch))
        # the arrow points along the negative gradient, scaled by the stated factor
        assert np.allclose(arrow.xy, (-ga * result.arrow_scale, -gb * result.arrow_scale))
    assert f"×{result.arrow_scale:.3g}" in " ".join(t.get_text() for t in result.figure.texts)


def test_epochs_side_by_side_and_reduce(store: Path) -> None:
    result = plot(["relu"], epochs=[0, 1, 2], grids=["main"], store=store, pair=1, batch=0)
    assert result.shape == (1, 3) and [p.epoch for p in result.panels] == [0, 1, 2]
    ds = _ds(store, "relu", "main")
    for p in result.panels:
        assert np.array_equal(p.values, ds.loss.sel(epoch=p.epoch, pair=1, batch=0).values)
    mean = plot(["relu"], epochs=[0, 2], grids=["main"], store=store, reduce="mean")
    assert mean.shape == (1, 2)
    for p in mean.panels:
        assert np.allclose(p.values, ds.loss.sel(epoch=p.epoch).mean(dim=("pair", "batch")).values)
        assert p.grad is None  # no arrow for an average over different planes
    single = plot(["relu"], grids=["main"], store=store, reduce="batches")
    assert single.shape == (2, 1)
    assert np.allclose(single.panels[1].values, ds.loss.sel(epoch=2, pair=1).mean(dim="batch").values)


def test_runs_side_by_side_share_one_scale(store: Path) -> None:
    result = plot(["relu", "tanh"], grids=["main"], epochs=[0, 2], store=store)
    assert result.shape == (2, 2)
    assert [p.source.run.name for p in result.panels] == ["relu", "relu", "tanh", "tanh"]
    assert len({(im.norm.vmin, im.norm.vmax) for im in _images(result)}) == 1
    assert np.array_equal(result.panels[3].values, _ds(store, "tanh", "main").loss.sel(epoch=2, pair=0, batch=0).values)


def test_comparison_refuses_mismatched_grids(store: Path) -> None:
    with pytest.raises(UsageError, match=r"same --width and --span \(or --range and --yrange\)"):
        plot(["relu", "tanh"], grids=["wide", "main"], store=store)


def test_diverged_points_plot_as_missing(store: Path) -> None:
    result = plot(["wild"], store=store, epochs=[0])
    ds = _ds(store, "wild", "diverging").sel(epoch=0)
    expected = int((~np.isfinite(ds.loss.values)).sum())
    assert expected > 0 and result.diverged == expected
    image = _images(result)[0]
    assert np.ma.getmaskarray(image.get_array()).sum() == (~np.isfinite(ds.loss.sel(pair=0, batch=0).values)).sum()
    assert "diverged points" in " ".join(t.get_text() for t in result.figure.texts)


def test_partial_grid_plots_missing_rows(store: Path) -> None:
    gdir = _grid_dir(store, "relu", "main")
    Rows(gdir / "landscape.zarr").clear_row(2, 0, 3)
    result = plot(["relu"], grids=["main"], store=store, pair=0, batch=0)
    [panel] = result.panels
    assert not panel.computed[3].any() and panel.computed[2].all()
    assert np.isnan(panel.values[3]).all()
    assert any(getattr(p, "get_hatch", lambda: None)() == "//" for p in result.panel_axes[0].patches)


@pytest.mark.parametrize("kind", ["contour", "surface", "log", "accuracy"])
def test_other_views(store: Path, kind: str, tmp_path: Path) -> None:
    out = tmp_path / f"{kind}.svg"
    result = plot(["relu"], grids=["main"], store=store, out=out, contour=kind == "contour",
                  surface=kind == "surface", log=kind == "log", metric="accuracy" if kind == "accuracy" else "loss",
                  clip=5.0 if kind == "contour" else None)
    assert result.path == out and out.read_text().startswith("<?xml")
    assert len(result.panel_axes) == 4
    if kind == "surface":
        assert all(ax.name == "3d" for ax in result.panel_axes)
    if kind == "contour":
        assert all(ax.collections for ax in result.panel_axes)


def test_animation_has_one_frame_per_epoch(store: Path, tmp_path: Path) -> None:
    from PIL import Image

    result = plot(["relu"], grids=["main"], store=store, animate=True, reduce="mean", out=tmp_path / "a.gif")
    with Image.open(result.path) as gif:
        assert gif.n_frames == 3


def test_bad_requests(store: Path, tmp_path: Path) -> None:
    train("mlp", "digits", epochs=0, store=store, progress=False, name="nogrid", seed=5)
    with pytest.raises(GridStateError, match="landscape grid"):
        plot(["nogrid"], store=store)
    with pytest.raises(UsageError, match=r"epoch 7 is not in grid .* \(it has epochs 0,1,2\)"):
        plot(["relu"], grids=["main"], epochs=[7], store=store)
    with pytest.raises(UsageError, match="loss, accuracy"):
        plot(["relu"], metric="perplexity", store=store)
    with pytest.raises(UsageError, match=r"\.png, \.pdf, \.svg"):
        plot(["relu"], store=store, out=tmp_path / "x.jpg")
    with pytest.raises(UsageError, match="does not exist"):
        plot(["relu"], store=store, out=tmp_path / "no" / "x.png")
    with pytest.raises(UsageError, match="--pair 5"):
        plot(["relu"], grids=["main"], store=store, pair=5)


def test_edited_grid_metadata_is_refused(store: Path) -> None:
    meta_path = _grid_dir(store, "relu", "main") / "grid.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["span"] = 2.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="does not match its grid id"):
        plot([meta["run"]], grids=[meta["id"]], store=store)


def test_damaged_chunk_is_refused(store: Path) -> None:
    gdir = _grid_dir(store, "relu", "main")
    chunk = gdir / "landscape.zarr/loss/c/2/1/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(IntegrityError, match=r"damaged chunk .* --resume"):
        plot(["relu"], grids=["main"], store=store)


def test_plotting_imports_no_torch() -> None:
    code = "import sys, landscape_cli.views.figures; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# --- lines, interpolations and PCA planes -------------------------------------------------------------

K = {"batches": 2, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def kinds_store(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's copy of the session's master (each run trained once per session): plots are written into it."""
    return trained_store.copy(
        Train("cnn", epochs=5, name="t"),
        Train("cnn", epochs=5, name="u", seed=1),
        Grid("t", dims=1, width=7, pairs=2, name="line", **K),
        Grid("u", dims=1, width=7, pairs=2, name="line", **K),
        Grid("u", dims=1, width=5, pairs=1, name="short", **K),
        Grid("t", directions="interpolate", epochs=[0, 2], to_epoch=5, width=9, name="interp", **K),
        Grid("t", directions="interpolate", epochs=[5], to="u", width=9, name="mode", **K),
        Grid("t", directions="pca", width=7, name="pca", **K),
        Grid("t", directions="pca", dims=1, width=7, name="pca1", **K),
        to=tmp_path_factory.mktemp("kinds") / "store")


@pytest.fixture
def kinds(kinds_store: Path, tmp_path: Path) -> Path:
    """A private copy of the kinds store, for tests that change it."""
    return private_copy(kinds_store, tmp_path)


def _line(ax: Any, label: str) -> Any:
    [line] = [ln for ln in ax.lines if ln.get_label() == label]
    return line


def _gid(ax: Any, gid: str) -> list[Any]:
    return [ln for ln in ax.lines if ln.get_gid() == gid]


def _texts(result: Any) -> str:
    """The figure's own texts (notes), lines joined: what a reader sees."""
    return " ".join(" ".join(t.get_text().split()) for t in result.figure.texts)


@pytest.mark.slow  # eight figures (~4 s)
def test_figures_leave_the_backend_and_pyplot_alone(store: Path, kinds_store: Path, tmp_path: Path) -> None:
    from matplotlib import pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend but Agg: plot() must not switch it
    try:
        plot(["relu"], grids=["main"], store=store)
        plot(["relu"], grids=["main"], store=store, animate=True, reduce="mean", out=tmp_path / "a.gif")
        plot(["t"], grids=["line"], store=kinds_store, out=tmp_path / "line.png")
        surface = plot(["t"], grids=["pca"], store=kinds_store, surface=True, out=tmp_path / "pca.png")
        assert all(ax.name == "3d" for ax in surface.panel_axes)
        assert all(_gid(ax, "trajectory") for ax in surface.panel_axes)  # the path is drawn on the surface too
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []
    finally:
        matplotlib.use(before)


def test_show_opens_a_window_through_pyplot_then_closes_it(kinds_store: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib import pyplot as plt

    shown: list[list[int]] = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(plt.get_fignums()))
    result = plot(["t"], grids=["pca1"], store=kinds_store, show=True, out=tmp_path / "s.png")
    assert len(shown) == 1 and len(shown[0]) == 1  # the figure was pyplot's while its window was open
    assert plt.get_fignums() == [] and result.path.is_file()


def test_line_curves_are_means_with_min_max_bands(kinds_store: Path) -> None:
    ds = _ds(kinds_store, "t", "line")
    result = plot(["t"], grids=["line"], epochs=[0, 5], store=kinds_store)
    assert result.panels == [] and [c.label for c in result.curves] == ["epoch 0", "epoch 5"]
    assert result.path.name == "loss_curve_epochs-0-5.png" and result.path.is_file()
    [ax] = result.panel_axes
    for curve in result.curves:
        stored = ds.loss.sel(epoch=curve.epoch).values  # [pair, batch, x]
        assert np.array_equal(curve.x, ds.x.values)
        assert np.allclose(curve.values, stored.mean(axis=(0, 1)))
        assert np.array_equal(curve.lo, stored.min(axis=(0, 1))) and np.array_equal(curve.hi, stored.max(axis=(0, 1)))
        line = _line(ax, curve.label)
        assert np.array_equal(line.get_xdata(), ds.x.values) and np.allclose(line.get_ydata(), curve.values)
    assert len(ax.collections) == 2  # one band per curve
    assert ax.get_title() == "mean over pairs and batches (band: min–max)" and ax.get_xlabel() == "x (along d1)"
    assert "random line, span ±1" in result.figure._suptitle.get_text()

    per_pair = plot(["t"], grids=["line"], store=kinds_store, reduce="batches", epochs=[5])
    assert [c.label for c in per_pair.curves] == ["epoch 5 · pair 0", "epoch 5 · pair 1"]
    for curve in per_pair.curves:
        stored = ds.loss.sel(epoch=5, pair=curve.pair).values  # [batch, x]
        assert np.allclose(curve.values, stored.mean(axis=0))
        assert np.array_equal(curve.lo, stored.min(axis=0)) and np.array_equal(curve.hi, stored.max(axis=0))
    per_batch = plot(["t"], grids=["line"], store=kinds_store, reduce="pairs", metric="accuracy", log=True,
                     epochs=[5])
    assert [c.batch for c in per_batch.curves] == [0, 1]
    assert np.allclose(per_batch.curves[1].values, ds.accuracy.sel(epoch=5, batch=1).mean(dim="pair").values)
    assert per_batch.panel_axes[0].get_yscale() == "log"
    one = plot(["t"], grids=["line"], store=kinds_store, pair=1, batch=0, clip=2.0, epochs=[5])
    [curve] = one.curves
    assert curve.lo is None and np.array_equal(curve.values, ds.loss.sel(epoch=5, pair=1, batch=0).values)
    drawn = _line(one.panel_axes[0], curve.label).get_ydata()
    assert np.allclose(drawn, np.minimum(curve.values, 2.0)) and "clipped at 2" in _texts(one)


def test_lines_of_several_runs_share_their_coordinates(kinds_store: Path) -> None:
    every = plot(["t"], grids=["line"], store=kinds_store)  # a line's curves: every epoch of the grid by default
    assert [c.epoch for c in every.curves] == sorted(_ds(kinds_store, "t", "line").epoch.values.tolist())
    result = plot(["t", "u"], grids=["line"], store=kinds_store, epochs=[5])
    assert [c.label for c in result.curves] == ["t epoch 5", "u epoch 5"]
    assert np.allclose(result.curves[1].values, _ds(kinds_store, "u", "line").loss.sel(epoch=5).mean(dim=("pair", "batch")))
    with pytest.raises(UsageError, match=r"need the same --width and --span \(or --range and --yrange\)"):
        plot(["t", "u"], grids=["line", "short"], store=kinds_store)
    with pytest.raises(UsageError, match="same --directions and --dims"):
        plot(["t", "t"], grids=["line", "interp"], store=kinds_store)


def test_line_diverged_points_are_gaps_and_missing_rows_are_left_out(kinds: Path) -> None:
    zpath = _grid_dir(kinds, "t", "line") / "landscape.zarr"
    loss = zarr.open_array(zpath / "loss", mode="r+")
    loss[5, 0, 1, 2] = np.inf  # epoch index 5 = epoch 5: pair 0, batch 1, x index 2
    loss[5, 1, 0, 4] = np.nan
    Rows(zpath).clear_row(0, 1, 0)  # epoch 0, pair 1: not computed yet
    result = plot(["t"], grids=["line"], epochs=[0, 5], store=kinds)
    gap, last = result.curves
    assert not gap.computed and np.isnan(gap.values).all()
    assert last.computed and result.diverged == 2 == last.diverged
    assert np.isinf(last.values[2]) and np.isnan(last.values[4])
    [ax] = result.panel_axes
    assert [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")] == ["epoch 5"]
    assert np.isnan(_line(ax, "epoch 5").get_ydata()[[2, 4]]).all()  # gaps, never smoothed away
    [marks] = _gid(ax, "diverged")
    assert marks.get_color() == "magenta" and np.array_equal(marks.get_xdata(), last.x[[2, 4]])
    assert "(2 diverged)" in ax.get_title()
    assert "not computed yet, left out: epoch 0" in _texts(result) and "2 diverged points" in _texts(result)
    per_pair = plot(["t"], grids=["line"], epochs=[0], store=kinds, reduce="batches")
    assert [c.computed for c in per_pair.curves] == [True, False]


def test_interpolation_marks_its_checkpoints(kinds_store: Path) -> None:
    ds = _ds(kinds_store, "t", "interp")
    result = plot(["t"], grids=["interp"], epochs=[0, 2], store=kinds_store)
    [ax] = result.panel_axes
    assert ax.get_xlabel() == "t" and [c.label for c in result.curves] == ["epoch 0", "epoch 2"]
    [start], [end] = _gid(ax, "t=0"), _gid(ax, "t=1")
    assert list(start.get_xdata()) == [0.0, 0.0] and start.get_label() == "epochs 0, 2"
    assert list(end.get_xdata()) == [1.0, 1.0] and end.get_label() == "epoch 5"
    assert {"epochs 0, 2", "epoch 5"} <= {t.get_text() for t in ax.texts}
    for curve in result.curves:
        assert np.array_equal(curve.x, ds.x.values) and {0.0, 1.0} <= set(curve.x)
        assert np.allclose(curve.values, ds.loss.sel(epoch=curve.epoch).mean(dim=("pair", "batch")).values)
    title = result.figure._suptitle.get_text()
    assert "interpolation" in title and "t in [-0.5, 1.5]" in title and "None" not in title
    mode = plot(["t"], grids=["mode"], store=kinds_store)
    [ax] = mode.panel_axes
    assert _gid(ax, "t=0")[0].get_label() == "epoch 5" and _gid(ax, "t=1")[0].get_label() == "u epoch 5"


def test_pca_plane_draws_contours_with_the_path(kinds_store: Path) -> None:
    ds = _ds(kinds_store, "t", "pca")
    ratios = ds.attrs["explained_variance_ratio"]
    result = plot(["t"], grids=["pca"], store=kinds_store)
    assert result.path.name == "loss_contour_epoch-5.png" and result.shape == (1, 2)
    x, y = ds.x.values, ds.y.values
    dx, dy = (x[-1] - x[0]) / (len(x) - 1), (y[-1] - y[0]) / (len(y) - 1)
    epochs = [int(e) for e in ds.path_epoch.values]
    for panel, ax in zip(result.panels, result.panel_axes, strict=True):
        assert ax.collections and not ax.get_images()  # contours, not a heatmap
        assert np.array_equal(panel.values, ds.loss.sel(epoch=5, pair=0, batch=panel.batch).values)
        assert np.allclose(ax.get_xlim(), (x[0] - dx / 2, x[-1] + dx / 2))
        assert np.allclose(ax.get_ylim(), (y[0] - dy / 2, y[-1] + dy / 2))
        [path] = _gid(ax, "trajectory")
        assert np.array_equal(path.get_xdata(), ds.path_x.values) and np.array_equal(path.get_ydata(), ds.path_y.values)
        arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None and not t.get_text()]
        steps = {(tuple(a.xyann), tuple(a.xy)) for a in arrows}
        training = list(zip(ds.path_x.values, ds.path_y.values, strict=True))
        assert {(tuple(a), tuple(b)) for a, b in itertools.pairwise(training)} <= steps
        assert {str(e) for e in epochs} <= {t.get_text() for t in ax.texts}
    assert f"PC1 ({100 * ratios[0]:.1f}% of variance)" == result.panel_axes[0].get_xlabel()
    assert f"PC2 ({100 * ratios[1]:.1f}% of variance)" == result.panel_axes[0].get_ylabel()
    traj = result.paths[0]
    assert np.array_equal(traj.x, ds.path_x.values) and traj.epochs == epochs
    title = result.figure._suptitle.get_text()
    assert "PCA plane" in title and "None" not in title
    distance = np.asarray(json.loads((_grid_dir(kinds_store, "t", "pca") / "grid.json").read_text())["kind"]["path"]["distance"])
    away = distance > 0
    far = float(np.max(ds.path_residual.values[away] / distance[away]))
    assert traj.off_plane == pytest.approx(far)
    assert ("far from this plane" in _texts(result)) == (far > 0.5)


def test_a_path_far_from_its_plane_is_said_in_words(kinds: Path) -> None:
    gdir = _grid_dir(kinds, "t", "pca")
    meta = json.loads((gdir / "grid.json").read_text())
    distance = np.asarray(meta["kind"]["path"]["distance"])
    residual = 0.8 * distance  # 80% of each checkpoint's distance is off the plane
    meta["kind"]["path"]["residual"] = residual.tolist()
    (gdir / "grid.json").write_text(json.dumps(meta))
    zarr.open_array(gdir / "landscape.zarr" / "path_residual", mode="r+")[:] = residual
    result = plot(["t"], grids=["pca"], store=kinds)
    assert result.paths[0].off_plane == pytest.approx(0.8)
    note = "the path lies far from this plane: up to 80% of a checkpoint's distance is off the plane"
    assert note in _texts(result) and any(n.startswith(note) for n in result.notes)
    # rows not computed yet are hatched at their own y coordinate
    Rows(gdir / "landscape.zarr").clear_row(0, 0, 2)
    partial = plot(["t"], grids=["pca"], store=kinds, batch=0)
    ys = _ds(kinds, "t", "pca").y.values
    [hatch] = [p for p in partial.panel_axes[0].patches if p.get_hatch() == "//"]
    assert hatch.get_y() == pytest.approx(ys[2] - (ys[1] - ys[0]) / 2)


def test_pca_line_shows_each_checkpoint_at_its_own_loss(kinds_store: Path) -> None:
    ds = _ds(kinds_store, "t", "pca1")
    result = plot(["t"], grids=["pca1"], store=kinds_store)
    [ax] = result.panel_axes
    [curve] = result.curves
    assert np.allclose(curve.values, ds.loss.sel(epoch=5).mean(dim=("pair", "batch")).values)
    [points] = _gid(ax, "trajectory")
    assert np.array_equal(points.get_xdata(), ds.path_x.values)
    assert np.allclose(points.get_ydata(), ds.path_loss.mean(dim="batch").values)
    assert {str(int(e)) for e in ds.path_epoch.values} <= {t.get_text() for t in ax.texts}
    assert ax.get_xlabel() == f"PC1 ({100 * ds.attrs['explained_variance_ratio'][0]:.1f}% of variance)"
    assert ("far from this line" in _texts(result)) == result.paths[0].far


@pytest.mark.parametrize("option", ["contour", "surface", "animate"])
def test_a_line_refuses_plane_views(kinds_store: Path, option: str, cli: Any) -> None:
    with pytest.raises(UsageError, match=f"--{option} applies to 2-D grids only: .* is a line"):
        plot(["t"], grids=["interp"], store=kinds_store, **{option: True})
    result = cli("plot", "t", "--grid", "line", f"--{option}", "--store", str(kinds_store))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and f"--{option}" in lines[0]


def test_plot_json_names_kinds_and_curves(kinds_store: Path, cli: Any, tmp_path: Path) -> None:
    result = cli("plot", "t", "--grid", "interp", "--epochs", "0,2", "--json", "--store", str(kinds_store),
                 "--out", str(tmp_path / "i.png"))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(g["kind"], g["dims"]) for g in data["grids"]] == [("interpolate", 1)]
    assert [c["label"] for c in data["curves"]] == ["epoch 0", "epoch 2"] and data["panels"] == []
    result = cli("plot", "t", "--grid", "pca", "--json", "--store", str(kinds_store), "--out", str(tmp_path / "p.png"))
    data = json.loads(result.stdout)
    assert [(g["kind"], g["dims"]) for g in data["grids"]] == [("pca", 2)] and len(data["panels"]) == 2
    assert data["paths"][0]["epochs"] == [0, 1, 2, 3, 4, 5]
