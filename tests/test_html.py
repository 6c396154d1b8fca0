"""Interactive pages (`landscape plot --html`): one self-contained HTML file per grid, checked in a real
headless Chromium with software WebGL: it loads without errors, the surface has a WebGL context, the
epoch slider and the pair/batch selectors change what both plots show (the stored values, or their
mean as `plot --reduce mean` takes it); lines and PCA planes load too. Decimation, NaN points and bad
input are checked on the page's embedded data, without a browser.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`) and Python Playwright
(never a downloaded browser): the browser tests skip when it is missing, except under CI=true,
where they fail. LANDSCAPE_HTML_SCREENSHOT=docs/html-page.png regenerates the screenshot in the docs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import Grid, StoreFactory, Train

from landscape_cli.engine.compute import grid
from landscape_cli.errors import UsageError
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows
from landscape_cli.views.page import write_html

USERLAND = Path(__file__).parent / "userland"
G = {"batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def store(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trained run with a plane, a line and a PCA plane (the tests only read it; pages are written beside
    its grids). The module's copy of the session's master (the run trained once per session)."""
    return trained_store.copy(
        Train("cnn", epochs=3, name="relu"),
        Grid("relu", name="plane", width=7, pairs=2, batches=2, **G),
        Grid("relu", name="line", dims=1, width=9, pairs=2, batches=2, **G),
        Grid("relu", name="pca", directions="pca", width=7, batches=2, **G),
        to=tmp_path_factory.mktemp("html") / "store")


class Page:
    """A page opened from its file, with the errors it logged (console errors and uncaught exceptions)."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 700})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # an uncaught error ends the wait for a redraw at once (it is then in `errors`)
        self.page.add_init_script("addEventListener('error', (e) => { document.documentElement.dataset.failed = '1'; });")
        self.page.goto(path.as_uri())
        self.renders = 0
        self.wait()

    def wait(self) -> None:
        """Until the page's script has drawn once more (both plots)."""
        self.renders += 1
        self.page.wait_for_function(f"document.documentElement.dataset.failed || "
                                    f"Number(document.body.dataset.renders || 0) >= {self.renders}", timeout=60_000)
        assert self.errors == []

    def js(self, code: str) -> Any:
        return self.page.evaluate(code)

    def trace(self, div: str, i: int = 0) -> dict[str, Any]:
        return self.js(f"() => {{ const t = document.getElementById('{div}').data[{i}]; "
                       "return {type: t.type, z: t.z, x: t.x, y: t.y, name: t.name, text: t.text}; }")

    def title(self, div: str) -> str:
        return self.js(f"() => document.getElementById('{div}').layout.title.text")

    def set(self, control: str, value: int) -> None:
        """Move the slider (`input`) or choose in a selector (`change`) as a user would, and wait for the redraw."""
        event = "input" if control == "epoch" else "change"
        self.js(f"() => {{ const c = document.getElementById('{control}'); c.value = '{value}'; "
                f"c.dispatchEvent(new Event('{event}')); }}")
        self.wait()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[Path], Page]]:
    pages: list[Page] = []

    def opener(path: Path) -> Page:
        pages.append(Page(browser, path))
        return pages[-1]

    yield opener
    for p in pages:
        p.page.close()


def _ds(store: Path, result: Any) -> xr.Dataset:
    return xr.open_zarr(result.sources[0].zarr_path)


def _data(path: Path) -> dict[str, Any]:
    """The page's embedded data (what its script draws)."""
    m = re.search(r'<script type="application/json" id="landscape-data">(.*?)</script>', path.read_text(), re.S)
    assert m is not None
    return json.loads(m.group(1))


def _z(values: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in values], float)


def test_plane_page_slider_and_selectors(open_page: Callable[[Path], Page], store: Path) -> None:
    result = write_html(["relu"], grids=["plane"], store=store, reduce="none")  # opens on pair 0, batch 0
    source = result.sources[0]
    assert result.path == source.plots_dir / "landscape.html" and result.path.is_file()  # the grid's plots/
    assert result.bytes == result.path.stat().st_size and not result.decimated and result.epochs == [0, 1, 2, 3]
    assert not list(result.path.parent.glob("*.partial*"))  # written under a temporary name, then renamed
    text = result.path.read_text()
    assert "<script src" not in text and "Plotly.react" in text  # self-contained: plotly.js is inline
    assert json.loads(json.dumps(result.to_json()))["grids"][0]["kind"] == "random"
    ds = _ds(store, result)
    page = open_page(result.path)
    # software WebGL: plotly drew the surface on a WebGL canvas
    assert page.js("""() => { const c = document.querySelector('#surface .gl-container canvas');
                              return !!c && !!(c.getContext('webgl2') || c.getContext('webgl')); }""")
    surface, contour = page.trace("surface"), page.trace("contour")
    assert (surface["type"], contour["type"]) == ("surface", "contour")
    stored = ds.loss.sel(epoch=3, pair=0, batch=0).values  # the last epoch, pair 0, batch 0
    assert np.allclose(_z(surface["z"]), stored, rtol=1e-6) and contour["z"] == surface["z"]
    assert np.allclose(surface["x"], ds.x.values) and np.allclose(surface["y"], ds.y.values)
    title = page.title("surface")
    for part in ("relu", "cnn", "digits", "random plane", "epoch 3", "pair 0, batch 0"):
        assert part in title
    # the slider: another epoch's values, in both plots
    page.set("epoch", 0)
    moved = page.trace("surface")
    assert moved["z"] != surface["z"] and np.allclose(_z(moved["z"]), ds.loss.sel(epoch=0, pair=0, batch=0).values,
                                                      rtol=1e-6)
    assert page.trace("contour")["z"] == moved["z"] and "epoch 0" in page.title("surface")
    # the selectors: one pair and batch, or their mean (`plot --reduce mean`: over pairs and batches)
    page.set("batch", 1)
    assert np.allclose(_z(page.trace("surface")["z"]), ds.loss.sel(epoch=0, pair=0, batch=1).values, rtol=1e-6)
    page.set("pair", -1)
    page.set("batch", -1)
    mean = ds.loss.sel(epoch=0).mean(dim=("pair", "batch")).values
    assert np.allclose(_z(page.trace("surface")["z"]), mean, rtol=1e-6)
    assert "mean over pairs and batches" in page.title("surface")
    assert page.errors == []


def test_line_and_pca_pages_load(open_page: Callable[[Path], Page], store: Path, tmp_path: Path) -> None:
    line = write_html(["relu"], grids=["line"], store=store, out=tmp_path / "line.html")
    page = open_page(line.path)
    names = page.js("() => document.getElementById('curves').data.map(t => t.name)")
    assert [n for n in names if n.startswith("epoch")] == ["epoch 0", "epoch 1", "epoch 2", "epoch 3"]  # one curve per epoch
    page.set("epoch", 1)
    assert "epoch 1" in page.title("curves") and page.errors == []

    pca = write_html(["relu"], grids=["pca"], store=store, out=tmp_path / "pca.html")
    page = open_page(pca.path)
    assert page.js("() => !!document.querySelector('#surface .gl-container canvas')")
    traces = page.js("() => ['surface', 'contour'].map(d => document.getElementById(d).data.map(t => t.name))")
    assert all("trajectory" in names for names in traces)  # the path on the surface and on the contour map
    path = page.trace("contour", traces[1].index("trajectory"))
    assert path["text"] == ["0", "1", "2", "3"]  # markers labelled by epoch
    assert "PCA plane" in page.title("surface") and page.errors == []


def test_diverged_and_missing_points_are_gaps_never_zero(copy_store: Any, tmp_path: Path) -> None:
    store = copy_store(Train("mlp", epochs=0, name="wild"))  # trained once per session
    g = grid("wild", store=store, span=1e20, width=5, pairs=1, batches=1, **G)
    Rows(g.zarr_path).clear_row(0, 0, 1)  # row 1 not computed yet
    result = write_html(["wild"], store=store, out=tmp_path / "wild.html")
    stored = _ds(store, result).loss.sel(epoch=0, pair=0, batch=0).values
    assert np.isnan(stored).any()
    source = _data(result.path)["sources"][0]
    assert source["done"][0][0] == [1, 0, 1, 1, 1]  # [epoch][pair][row]: the page greys out row 1
    gaps = ~np.isfinite(stored)
    gaps[1] = True
    assert [[v is None for v in row] for row in source["z"][0][0][0]] == gaps.tolist()  # JSON null: a gap, never 0


def test_a_name_that_looks_like_a_placeholder_is_shown_as_written(copy_store: Any, tmp_path: Path) -> None:
    """A run named "{{plotly}} {{data}}" broke the page's template: its text is now put in once, escaped."""
    store = copy_store(Train("mlp", epochs=0, name="wild"))
    st = Store(store)
    run_id = st.resolve("wild")
    meta = st.read_run(run_id)
    meta.name = "{{plotly}} <b>{{data}}</b>"
    st.write_run(meta)
    grid(run_id, store=store, width=3, pairs=1, batches=1, **G)
    result = write_html([run_id], store=store, out=tmp_path / "named.html")
    page = result.path.read_text()
    assert "{{plotly}} &lt;b&gt;{{data}}&lt;/b&gt;" in page and "<b>{{data}}" not in page
    assert not any(f"{{{{{name}}}}}" in page for name in ("title", "heading", "where", "ids", "plots", "script"))
    assert _data(result.path)["sources"][0]["run"] == run_id


def test_large_grids_are_decimated_keeping_centre_and_ends(store: Path, tmp_path: Path) -> None:
    result = write_html(["relu"], grids=["plane"], store=store, out=tmp_path / "d.html", max_points=16)
    assert result.decimated and result.step == 3 and result.shape == (3, 3) and result.grid_shape == (7, 7)
    data = _data(result.path)
    assert "decimated" in data["decimated"] and "3x3 of the grid's 7x7" in data["decimated"]
    ds = _ds(store, result)
    keep = [0, 3, 6]  # the ends and the centre
    assert data["sources"][0]["x"] == pytest.approx(ds.x.values[keep].tolist())
    z = _z(data["sources"][0]["z"][2][1][0])  # epoch 2, pair 1, batch 0
    assert np.allclose(z, ds.loss.sel(epoch=2, pair=1, batch=0).values[np.ix_(keep, keep)], rtol=1e-6)
    full = write_html(["relu"], grids=["plane"], store=store, out=tmp_path / "f.html")
    assert result.bytes < full.bytes and not full.decimated


def test_accuracy_pages_and_bad_input(store: Path, trained_store: StoreFactory, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    acc = write_html(["relu"], grids=["plane"], store=store, metric="accuracy")
    assert acc.path.name == "landscape-accuracy.html" and _data(acc.path)["metric"] == "accuracy"
    with pytest.raises(UsageError, match="loss, accuracy"):
        write_html(["relu"], store=store, metric="perplexity")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        write_html(["relu"], store=store, out=blocker / "page.html")
    with pytest.raises(UsageError, match=r"\.html"):
        write_html(["relu"], store=store, out=tmp_path / "page.png")
    with pytest.raises(UsageError, match="does not exist"):
        write_html(["relu"], store=store, out=tmp_path / "no" / "page.html")
    # a regression: only a loss
    monkeypatch.syspath_prepend(str(USERLAND))
    regression = trained_store.copy(Train("toy_factories:regressor", "toy_factories:waves", epochs=1, batch_size=32,
                                          name="waves", syspath=USERLAND), to=tmp_path / "regression")
    grid("waves", width=3, pairs=1, batches=1, store=regression, **G)
    with pytest.raises(UsageError, match="regression"):
        write_html(["waves"], store=regression, metric="accuracy", out=tmp_path / "a.html")
    page = write_html(["waves"], store=regression, out=tmp_path / "w.html")
    assert all("acc" not in t for t in _data(page.path)["sources"][0]["epochText"])


def test_html_imports_neither_torch_nor_plotly() -> None:
    code = "import sys, landscape_cli.views.page; print('torch' in sys.modules, 'plotly' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_the_plot_html_command(store: Path, cli: Any, tmp_path: Path) -> None:
    """`landscape plot --html` writes the page write_html writes; options the page cannot honour are one line."""
    page = tmp_path / "page.html"
    r = cli("plot", "relu", "--grid", "plane", "--html", "--out", str(page), "--store", str(store), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["path"] == str(page)
    direct = write_html(["relu"], grids=["plane"], store=store, out=tmp_path / "direct.html")
    assert _data(page) == _data(direct.path)
    r = cli("plot", "relu", "--grid", "plane", "--html", "--contour", "--epoch", "1", "--store", str(store))
    assert r.exit_code != 0
    [line] = r.output.strip().splitlines()
    assert "--html" in line and "--contour, --epoch" in line
