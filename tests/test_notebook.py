"""Notebooks: landscape_cli.open gives the grid as an xarray Dataset; ds.landscape.plot draws the CLI's figure."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import REPO, Grid, StoreFactory, Train
from matplotlib.image import imread

import landscape_cli
from landscape_cli.errors import LandscapeError
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows


@pytest.fixture(scope="module")
def made(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The module's copy of the session's master (the run trained once per session), and its two grids."""
    store = trained_store.copy(
        Train("cnn", epochs=1, name="nb"),
        Grid("nb", width=5, pairs=2, batches=2, batch_size=64, name="plane"),
        Grid("nb", dims=1, width=7, pairs=1, batches=1, batch_size=64, name="line"),
        to=tmp_path_factory.mktemp("notebook") / "store")
    st = Store(store)
    grids = {}
    for name in ("plane", "line"):
        run_id, grid_id = st.find_grid(name)
        grids[name] = SimpleNamespace(grid_id=grid_id, zarr_path=st.zarr_path(run_id, grid_id))
    return {"store": store, **grids}


def test_open_gives_the_stored_arrays(made: dict[str, Any]) -> None:
    ds = landscape_cli.open("nb", store=made["store"])  # the run's newest grid, as plot chooses: the line
    assert ds.attrs["landscape_grid"] == made["line"].grid_id
    ds = landscape_cli.open("nb", grid="plane", store=made["store"])
    rows = Rows(made["plane"].zarr_path, "r")
    for name in ("loss", "accuracy", "done", "center_loss", "grad_a"):
        np.testing.assert_array_equal(ds[name].values, np.asarray(rows[name][...]))
        assert ds[name].dtype == rows[name].dtype
    assert ds["loss"].dims == ("epoch", "pair", "batch", "y", "x")
    assert list(ds["epoch"].values) == [0, 1]
    assert landscape_cli.open(made["plane"].grid_id, store=made["store"]).attrs["landscape_grid"] == made["plane"].grid_id


@pytest.mark.parametrize("which, options, cli_options", [
    ("plane", {"epochs": [1], "contour": True}, ["--epoch", "1", "--contour"]),
    ("line", {}, []),
])
def test_the_accessor_draws_the_cli_figure(made: dict[str, Any], cli: Any, tmp_path: Path, which: str,
                                           options: dict[str, Any], cli_options: list[str]) -> None:
    ds = landscape_cli.open("nb", grid=which, store=made["store"])
    ours = tmp_path / "notebook.png"
    fig = ds.landscape.plot(out=ours, **options)
    assert fig.axes  # a matplotlib Figure, which a notebook displays
    theirs = tmp_path / "cli.png"
    r = cli("plot", "nb", "--grid", which, *cli_options, "--out", str(theirs), "--store", str(made["store"]))
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(imread(ours), imread(theirs))  # pixel for pixel


def test_the_accessor_refuses_other_datasets() -> None:
    import xarray as xr

    with pytest.raises(LandscapeError, match="not a landscape grid"):
        xr.Dataset({"v": ("x", [1.0])}).landscape.plot()


def test_readme_notebook_lines_run(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """README's three notebook lines, as written (the run named there is replaced by this test's run)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- recipe: xarray -->\n```python\n(.*?)```", text, re.S)
    assert block is not None
    code = block.group(1).replace('"quickstart"', '"nb"')
    assert len([line for line in code.splitlines() if line.strip() and not line.startswith("#")]) == 3
    monkeypatch.setenv("LANDSCAPE_STORE", str(made["store"]))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["ds"].attrs["landscape_run"]
