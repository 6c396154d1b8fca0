"""Figures: panels, the arrays they show, comparisons, views, missing data, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import private_copy

from landscape_cli import train
from landscape_cli.errors import GridStateError, IntegrityError, UsageError
from landscape_cli.grids import grid
from landscape_cli.gridstore import Rows
from landscape_cli.plotting import plot

G = {"width": 5, "pairs": 2, "batches": 2, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("plots") / "store"
    train("cnn", "digits", epochs=2, store=store, progress=False, name="relu")
    train("cnn", "digits", epochs=2, store=store, progress=False, name="tanh", activation="tanh")
    train("mlp", "digits", epochs=0, store=store, progress=False, name="wild")
    grid("relu", store=store, name="main", **G)
    grid("tanh", store=store, name="main", **G)
    grid("relu", store=store, name="wide", **{**G, "width": 3})
    grid("wild", store=store, span=1e20, name="diverging", **G)
    return store


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
    for text in ("cnn", "relu", "digits", "epoch 1", f"{rec['train_loss']:.3g}", f"{rec['val_loss']:.3g}",
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
    with pytest.raises(UsageError, match="same --width and --span"):
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
    code = "import sys, landscape_cli.plotting; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
