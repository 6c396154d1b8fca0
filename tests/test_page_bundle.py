"""The page's partial plotly.js bundle and what the page opens on (`plot --html`, issue 17), checked in
headless Chromium as in tests/test_html.py: the bundle shipped as package data registers only the trace
types the page draws, a page draws its surface and contour map with no console error and stays under
2.5 MB, it opens on the mean over pairs and batches (or what --reduce asks), and --log / --clip change
the drawn values as they change `plot`'s figures: compared with values computed here from the stored
Zarr array with numpy.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`) and Python Playwright: the
browser tests skip when either is missing, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from landscape_cli.engine.compute import grid
from landscape_cli.store import Store
from landscape_cli.views.figures import build_panels
from landscape_cli.views.page import PLOTLY_BUNDLE, write_html
from landscape_cli.views.readers import select_sources

LEGACY = Path(__file__).parent / "data" / "legacy-0.2.0" / "store"  # frozen: copied, never written
LIMIT = 2_500_000  # bytes of one page
TRACES = ["contour", "scatter", "scatter3d", "surface"]  # what page.js draws


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the frozen store with one more plane of 2 pairs x 2 batches (its planes have one of each),
    computed from the trained MLP's checkpoints (no training)."""
    store = tmp_path_factory.mktemp("bundle") / "store"
    shutil.copytree(LEGACY, store)
    grid("legacy2", store=store, name="means", epochs=[0, 3], width=7, pairs=2, batches=2, batch_size=64,
         progress=False)
    return store


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[Path], Any]]:
    """open_page(path) -> a Playwright page once the page's script has drawn, with `errors` (console
    errors and uncaught exceptions) attached; the test checks they stay empty."""
    pages: list[Any] = []

    def opener(path: Path) -> Any:
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        pages.append(page)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.add_init_script("addEventListener('error', () => { document.documentElement.dataset.failed = '1'; });")
        page.goto(path.as_uri())
        page.wait_for_function("document.documentElement.dataset.failed || Number(document.body.dataset.renders || 0) >= 1",
                               timeout=60_000)
        page.errors = errors
        return page

    yield opener
    for p in pages:
        p.close()


def _trace(page: Any, div: str, i: int = 0) -> dict[str, Any]:
    return page.evaluate(f"() => {{ const t = document.getElementById('{div}').data[{i}]; "
                         "return {type: t.type, x: t.x, y: t.y, z: t.z || null}; }")


def _z(rows: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], float)


def _stored(store: Path, grid_name: str) -> xr.Dataset:
    [path] = [p for p in (store / "75ab2acc2a00" / "grids").glob("*/grid.json")
              if json.loads(p.read_text()).get("name") == grid_name]
    return xr.open_zarr(path.parent / "landscape.zarr")


def test_the_bundle_is_package_data_with_its_licence_and_record() -> None:
    assets = resources.files("landscape_cli.views").joinpath("assets")
    bundle = assets.joinpath(PLOTLY_BUNDLE).read_text(encoding="utf-8")
    assert 1_000_000 < len(bundle.encode()) < 2_000_000  # plotly.js's full bundle: 4.8 MB
    assert bundle.startswith("/* plotly.js v4.1.1 (partial bundle") and "</script" not in bundle
    assert "MIT License" in assets.joinpath("plotly-LICENSE.txt").read_text(encoding="utf-8")
    record = assets.joinpath("PLOTLY.md").read_text(encoding="utf-8")
    assert "plotly.js@4.1.1" in record and "require('plotly.js/lib/contour')" in record


def test_the_page_draws_with_only_its_trace_types_opened_on_the_mean(open_page: Callable[[Path], Any], store: Path,
                                                                      tmp_path: Path) -> None:
    result = write_html(["legacy2"], grids=["means"], store=store, out=tmp_path / "page.html")
    size = result.path.stat().st_size
    assert size == result.bytes < LIMIT and not result.decimated
    text = result.path.read_text()
    assert "<script src" not in text and "https://" not in text.split("landscape-data")[-1]  # offline
    page = open_page(result.path)
    # the bundle: exactly the trace types the page draws, no map, geo, gl2d, pie...
    assert sorted(page.evaluate("() => Object.keys(Plotly.PlotSchema.get().traces)")) == TRACES
    assert page.evaluate("() => Plotly.version") == "4.1.1"
    assert page.evaluate("""() => { const c = document.querySelector('#surface .gl-container canvas');
                                    return !!c && !!(c.getContext('webgl2') || c.getContext('webgl')); }""")
    surface, contour = _trace(page, "surface"), _trace(page, "contour")
    assert (surface["type"], contour["type"]) == ("surface", "contour") and surface["z"] == contour["z"]
    # opened on the last epoch and the mean over pairs and batches (`plot --reduce mean`)
    ds = _stored(store, "means")
    mean = ds.loss.sel(epoch=3).values.astype(np.float64).mean(axis=(0, 1))
    assert np.allclose(_z(surface["z"]), mean, rtol=1e-6)
    assert page.evaluate("() => [document.getElementById('pair').value, document.getElementById('batch').value]") == \
        ["-1", "-1"]
    assert "mean over pairs and batches" in page.evaluate("() => document.getElementById('surface').layout.title.text")
    assert page.errors == []


@pytest.mark.parametrize(("reduce", "pair", "batch"), [("none", "0", "0"), ("batches", "0", "-1"), ("pairs", "-1", "0")])
def test_reduce_chooses_what_the_page_opens_on(open_page: Callable[[Path], Any], store: Path, tmp_path: Path, cli: Any,
                                               reduce: str, pair: str, batch: str) -> None:
    out = tmp_path / "page.html"
    r = cli("plot", "legacy2", "--grid", "means", "--html", "--reduce", reduce, "--out", str(out), "--store", str(store))
    assert r.exit_code == 0, r.output
    page = open_page(out)
    assert page.evaluate("() => [document.getElementById('pair').value, document.getElementById('batch').value]") == \
        [pair, batch]
    loss = _stored(store, "means").loss.sel(epoch=3).values.astype(np.float64)
    p = slice(None) if pair == "-1" else [0]
    b = slice(None) if batch == "-1" else [0]
    assert np.allclose(_z(_trace(page, "surface")["z"]), loss[p][:, b].mean(axis=(0, 1)), rtol=1e-6)
    assert page.errors == []


def test_log_and_clip_draw_what_plot_draws(open_page: Callable[[Path], Any], store: Path, tmp_path: Path,
                                           cli: Any) -> None:
    loss = _stored(store, "means").loss.sel(epoch=3).values.astype(np.float64)
    mean = loss.mean(axis=(0, 1))
    clip = float(np.quantile(mean, 0.5))  # half the plane capped
    out = tmp_path / "page.html"
    r = cli("plot", "legacy2", "--grid", "means", "--html", "--log", "--clip", str(clip), "--out", str(out),
            "--store", str(store), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["path"] == str(out)
    page = open_page(out)
    expected = np.log10(np.minimum(mean, clip))  # clipped, then log10 (plot's 3-D surfaces with --log)
    surface, contour = _trace(page, "surface"), _trace(page, "contour")
    assert np.allclose(_z(surface["z"]), expected, rtol=1e-6, atol=1e-7) and contour["z"] == surface["z"]
    assert (np.isclose(_z(surface["z"]), np.log10(clip), rtol=1e-6)).sum() >= mean.size // 2
    # the mean is the one `plot --reduce mean` draws (and clips, and takes the log10 of on a surface)
    [panel], _ = build_panels(select_sources(Store.of(store), ["legacy2"], ["means"]), [3], "loss", None, None, "mean")
    assert np.allclose(panel.values, mean, rtol=1e-6)
    layout = page.evaluate("() => document.getElementById('surface').layout.scene.zaxis.title.text")
    assert layout == "log10 loss"
    notes = page.evaluate("() => document.getElementById('notes').textContent")
    assert "clipped at" in notes and "log10" in notes
    # a line: the clipped mean on a logarithmic y axis
    line = tmp_path / "line.html"
    r = cli("plot", "legacy2", "--grid", "line", "--html", "--log", "--clip", "2", "--out", str(line),
            "--store", str(store))
    assert r.exit_code == 0, r.output
    page = open_page(line)
    assert page.evaluate("() => document.getElementById('curves').layout.yaxis.type") == "log"
    curves = page.evaluate("() => document.getElementById('curves').data.filter(t => t.name === 'epoch 3')[0].y")
    stored = _stored(store, "line").loss.sel(epoch=3).values.astype(np.float64).mean(axis=(0, 1))
    assert np.allclose(curves, np.minimum(stored, 2.0), rtol=1e-6)
    assert page.errors == []


def test_html_still_refuses_what_the_page_cannot_honour(store: Path, cli: Any) -> None:
    r = cli("plot", "legacy2", "--grid", "means", "--html", "--contour", "--store", str(store))
    assert r.exit_code != 0 and "--contour" in r.output
    r = cli("plot", "legacy2", "--grid", "means", "--html", "--reduce", "median", "--store", str(store))
    assert r.exit_code != 0 and "median" in r.output and "none, mean, batches, pairs" in r.output
    r = cli("plot", "legacy2", "--grid", "means", "--html", "--clip", "-1", "--store", str(store))
    assert r.exit_code != 0 and "--clip" in r.output
