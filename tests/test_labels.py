"""Labels a person reads are true of the model: a factory's model shows no activation (its recorded "relu"
rewrites nothing), a regression no class count, and the BatchNorm mode only a model with BatchNorm layers
(recorded in grid.json when a grid is made; for older grids known for the built-in models, else left out).

What is read is what a person sees: the figure's title and panel titles (matplotlib texts), the HTML
page's heading, `landscape ls`'s table."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import Grid, StoreFactory, Train

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())
USERLAND = Path(__file__).parent / "userland"
SMALL = {"width": 3, "pairs": 1, "batches": 1, "batch_size": 32, "progress": False}


@pytest.fixture(scope="module")
def labelled(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A factory regression (no BatchNorm), a built-in model without BatchNorm (mlp) and one with (cnn), a grid each."""
    return trained_store.copy(
        Train("toy_factories:regressor", "toy_factories:waves", epochs=1, batch_size=32, lr=0.01, name="waves",
              syspath=USERLAND),
        Grid("waves", name="reg", syspath=USERLAND, **SMALL),
        Train("mlp", epochs=1, name="m"),
        Grid("m", name="plane", **SMALL),
        Train("cnn", epochs=1, name="c"),
        Grid("c", name="plane", **SMALL),
        to=tmp_path_factory.mktemp("labels") / "store")


@pytest.fixture
def store(labelled: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(labelled, copy)
    return copy


def _grid_json(store: Path, run: str) -> dict[str, Any]:
    from landscape_cli.store import Store

    st = Store(store)
    run_id = st.resolve(run)
    [grid_id] = [g.id for g in st.grids(run_id)]
    return json.loads(st.grid_file(run_id, grid_id).read_text())


def _figure_texts(store: Path, run: str, **options: Any) -> str:
    """Every text of the figure `plot` draws (title, panel titles, labels), as a person reads them."""
    from landscape_cli import plot

    result = plot([run], store=store, save=False, **options)
    fig = result.figure
    texts = [t.get_text() for t in fig.texts] + [ax.title.get_text() for ax in fig.axes]
    texts += [ax.get_xlabel() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]
    return " ".join(" ".join(t.split()) for t in texts)


def _page_heading(store: Path, run: str, tmp_path: Path) -> str:
    from landscape_cli.views.page import write_html

    page = write_html([run], store=store, out=tmp_path / f"{run}.html")
    html = page.path.read_text()
    heading = re.search(r"<h1>(.*?)</h1>\s*<p class=\"sub\">(.*?)</p>", html, re.S)
    assert heading, html[:2000]
    return f"{heading.group(1)} | {heading.group(2)}"


def _ls_row(cli: Any, store: Path, name: str) -> tuple[str, dict[str, Any]]:
    done = cli("ls", "--store", str(store))
    assert done.exit_code == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if f" {name} " in line and "└" not in line]
    [run] = [r for r in json.loads(cli("ls", "--store", str(store), "--json").stdout)["runs"] if r["name"] == name]
    return row, run


def test_a_factory_regression_shows_neither_activation_classes_nor_batchnorm(store: Path, cli: Any,
                                                                              tmp_path: Path) -> None:
    run_json = next(json.loads(p.read_text()) for p in store.glob("*/run.json")
                    if json.loads(p.read_text()).get("name") == "waves")
    # what the run records (never rewritten: part of the run's id) ...
    assert run_json["config"]["activation"] == "relu" and run_json["dataset"]["num_classes"] == 2
    assert "source" in run_json["model"]
    # ... and what the grid records of the model: no BatchNorm layers
    assert _grid_json(store, "waves")["batchnorm"] is False

    title = _figure_texts(store, "waves")
    assert "toy_factories:regressor / toy_factories:waves, epoch 1" in title, title
    for false_label in ("relu", "BatchNorm", "classes", "num_classes"):
        assert false_label not in title, (false_label, title)

    heading = _page_heading(store, "waves", tmp_path)
    assert "toy_factories:regressor / toy_factories:waves" in heading, heading
    for false_label in ("relu", "BatchNorm", "classes"):
        assert false_label not in heading, (false_label, heading)

    row, run = _ls_row(cli, store, "waves")
    assert "relu" not in row and "classes" not in row and run["activation"] == "-"


def test_a_builtin_model_without_batchnorm_shows_its_activation_but_no_batchnorm_mode(store: Path, cli: Any,
                                                                                       tmp_path: Path) -> None:
    assert _grid_json(store, "m")["batchnorm"] is False
    title = _figure_texts(store, "m")
    assert "mlp / relu / digits" in title and "BatchNorm" not in title, title
    heading = _page_heading(store, "m", tmp_path)
    assert "mlp / relu / digits" in heading and "BatchNorm" not in heading, heading
    row, _ = _ls_row(cli, store, "m")
    assert "relu" in row  # a built-in model's activation is real: --activation rewrote it


def test_a_model_with_batchnorm_shows_the_mode_its_grid_used(store: Path, tmp_path: Path) -> None:
    assert _grid_json(store, "c")["batchnorm"] is True
    title = _figure_texts(store, "c")
    assert "cnn / relu / digits" in title and "BatchNorm train" in title, title
    assert "BatchNorm train" in _page_heading(store, "c", tmp_path)


def test_grids_made_before_the_fact_fall_back_to_what_is_known(store: Path) -> None:
    """No "batchnorm" in grid.json: a built-in model's is known (cnn has BatchNorm, mlp none); a factory's is
    not, and its mode is left out rather than guessed."""
    from landscape_cli.store import Store

    st = Store(store)
    for run in ("waves", "m", "c"):
        run_id = st.resolve(run)
        for g in st.grids(run_id):
            path = st.grid_file(run_id, g.id)
            data = json.loads(path.read_text())
            del data["batchnorm"]
            path.write_text(json.dumps(data))
    assert "BatchNorm train" in _figure_texts(store, "c")
    assert "BatchNorm" not in _figure_texts(store, "m")
    assert "BatchNorm" not in _figure_texts(store, "waves")


def test_the_frozen_mlp_grids_show_no_batchnorm_and_a_grown_one_records_the_fact(tmp_path: Path) -> None:
    from landscape_cli import grid, plot

    store = tmp_path / "frozen"
    shutil.copytree(LEGACY2 / "store", store)
    shards = IDS["grids"]["shards"]
    [path] = store.glob(f"*/grids/{shards}/grid.json")
    assert "batchnorm" not in json.loads(path.read_text())  # written by 0.2.0
    result = plot([IDS["run_id"]], grids=[shards], store=store, save=False)
    assert "BatchNorm" not in result.figure.get_suptitle() and "mlp / relu / digits" in result.figure.get_suptitle()
    grid(IDS["run_id"], from_grid=shards, epochs=[1, 2, 3], store=store, progress=False)  # grows it by epoch 1
    assert json.loads(path.read_text())["batchnorm"] is False


def test_the_builtin_models_known_to_have_batchnorm_are_those_that_do() -> None:
    """readers.BATCHNORM_MODELS (the fallback for old grids) is true of every registered built-in model."""
    from landscape_cli.engine.compute import has_batchnorm
    from landscape_cli.models import create_model, list_models
    from landscape_cli.views.readers import BATCHNORM_MODELS

    with_bn = {name for name in list_models("images") if has_batchnorm(create_model(name, 1, 10, 8))}
    assert with_bn == BATCHNORM_MODELS
    assert "mlp" not in with_bn and "cnn" in with_bn
