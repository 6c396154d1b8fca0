"""The `landscape` command end to end (in-process through CliRunner), and its error boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, Train, run_cli, tree

from landscape_cli import __version__


def ok(result: Any) -> Any:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def one_error_line(result: Any, code: int, *needles: str) -> str:
    """The result failed with `code` and exactly one 'Error: ...' line naming every needle."""
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return str(lines[0])


# Stores the tests below start from, each trained once per session (conftest's trained_store) and copied to
# the test's $LANDSCAPE_STORE: the same as running these commands there first.
TINY = Train("cnn", epochs=1, name="tiny")  # landscape train cnn digits --epochs 1 --name tiny
M_GRID = (Train("mlp", epochs=1, name="m"), Cli("grid", "m", "--width", "3", "--pairs", "1", "--batches", "1", "-q"))


def test_version_and_help(cli: Any) -> None:
    assert ok(cli("--version")).stdout.strip() == f"landscape {__version__}"
    top = ok(cli("--help")).stdout
    for command in ("train", "ls", "models", "datasets"):
        assert command in top


def test_every_command_has_help_with_an_example(cli: Any) -> None:
    from landscape_cli.cli import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
    assert len(names) >= 4
    for name in names:
        text = ok(cli(name, "--help")).stdout
        assert "Example: landscape " + name in " ".join(text.split()), name


def test_train_then_ls(cli: Any, store: Path) -> None:
    result = ok(cli("train", "cnn", "digits", "--epochs", "2", "--name", "tiny", "-q"))
    assert "val acc" in result.stdout and "tiny" in result.stdout
    listing = ok(cli("ls")).stdout
    assert "tiny" in listing and "cnn" in listing and "digits" in listing and "2/2" in listing
    data = json.loads(ok(cli("ls", "--json")).stdout)
    [run] = data["runs"]
    assert run["name"] == "tiny" and run["epochs_done"] == 2 and run["status"] == "complete"
    assert run["size_bytes"] > 0 and 0 <= run["val_accuracy"] <= 1
    # the same command again trains nothing and says so
    again = ok(cli("train", "cnn", "digits", "--epochs", "2", "-q"))
    assert "nothing to train" in again.stderr


def test_train_json(cli: Any) -> None:
    data = json.loads(ok(cli("train", "mlp", "digits", "--epochs", "1", "--json", "-q")).stdout)
    assert data["trained"] == [0, 1] and len(data["epochs"]) == 2 and data["config"]["model"] == "mlp"


def test_models_and_datasets(cli: Any) -> None:
    models = json.loads(ok(cli("models", "--json")).stdout)
    resnet = next(m for m in models if m["name"] == "resnet")
    assert 4_800_000 < resnet["parameters_3x32x32"] < 5_000_000
    assert "resnet" in ok(cli("models")).stdout
    names = [d["name"] for d in json.loads(ok(cli("datasets", "--json")).stdout)]
    assert names == ["cifar-10", "digits", "fashion-mnist", "mnist"]


def test_ls_on_an_empty_store(cli: Any) -> None:
    assert "no runs" in ok(cli("ls")).stdout
    assert json.loads(ok(cli("ls", "--json")).stdout)["runs"] == []


BAD_TRAIN = [
    (["train", "alexnet", "digits"], 2, ["alexnet", "resnet, "]),
    (["train", "cnn", "imagenet"], 2, ["imagenet", "digits"]),
    (["train", "cnn", "digits", "--activation", "gelu"], 2, ["gelu", "relu, sigmoid, tanh"]),
    (["train", "cnn", "digits", "--optimizer", "rmsprop"], 2, ["rmsprop", "adam, sgd"]),
    (["train", "cnn", "digits", "--epochs", "-1"], 2, ["--epochs", "-1"]),
    (["train", "cnn", "digits", "--batch-size", "0"], 2, ["--batch-size", "0"]),
    (["train", "cnn", "digits", "--lr", "nan"], 2, ["--lr", "nan"]),
    (["train", "cnn", "digits", "--lr", "-1"], 2, ["--lr"]),
    (["train", "cnn", "digits", "--momentum", "0.9"], 2, ["--momentum", "sgd"]),
    (["train", "cnn", "digits", "--epochs", "many"], 2, ["--epochs", "many"]),
    (["train", "cnn", "digits", "--device", "tpu"], 2, ["tpu", "auto, cpu, cuda, mps"]),
    (["train", "cnn"], 2, ["dataset"]),
    (["train", "cnn", "digits", "--bogus"], 2, ["--bogus"]),
    (["frobnicate"], 2, ["frobnicate"]),
]


@pytest.mark.parametrize(("args", "code", "needles"), BAD_TRAIN, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_and_changes_nothing(cli: Any, copy_store: Any, args: list[str], code: int,
                                                   needles: list[str]) -> None:
    store = copy_store(Train("mlp", epochs=0))  # `landscape train mlp digits --epochs 0`, trained once
    before = tree(store)
    one_error_line(cli(*args), code, *needles)
    assert tree(store) == before


def test_unwritable_store(cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    one_error_line(cli("train", "mlp", "digits", "--store", str(blocker / "runs")), 1, str(blocker), "--store")
    assert blocker.read_text() == ""


def test_missing_dataset_is_one_line_and_creates_no_run(cli: Any, store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    one_error_line(cli("train", "cnn", "fashion-mnist", "--data-dir", str(tmp_path / "d")), 1,
                   "fashion-mnist", "FashionMNIST/raw", "--data-dir")
    assert not store.exists() or not any(store.iterdir())


def test_debug_shows_the_traceback(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDSCAPE_DEBUG", "1")
    result = cli("train", "alexnet", "digits")
    assert result.exit_code == 2 and "Traceback" in result.stderr and "Error: unknown model" in result.stderr


@pytest.mark.slow  # two fresh interpreters; CliRunner checks the same boundary above
def test_console_script_exit_codes() -> None:
    """The installed entry point (not just CliRunner) uses the same boundary and exit codes."""
    bad = run_cli("train", "alexnet", "digits")
    assert bad.returncode == 2 and bad.stderr.startswith("Error: unknown model 'alexnet'")
    assert run_cli("--version").stdout.strip() == f"landscape {__version__}"


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = (
        "import sys, landscape_cli.cli, landscape_cli;"
        "heavy = [m for m in ('torch', 'matplotlib', 'zarr', 'torchvision', 'numpy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


@pytest.mark.slow  # a fresh interpreter; test_importing_the_cli_loads_no_heavy_library stays quick
def test_plot_ls_and_help_never_import_torch(copy_store: Any, tmp_path: Path) -> None:
    """`plot` (with --epochs parsed), `ls` and `--help` read the store without torch (~1.4 s saved per call)."""
    copy_store(*M_GRID)
    code = (
        "import sys; from landscape_cli.cli import app; "
        f"app(['plot', 'm', '--epochs', '0,1', '--out', {str(tmp_path / 'p.png')!r}], standalone_mode=False); "
        "app(['ls'], standalone_mode=False); app(['grid', '--help'], standalone_mode=False); "
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "False", done.stderr
    assert (tmp_path / "p.png").is_file()


def test_grid_through_the_cli(cli: Any, copy_store: Any) -> None:
    copy_store(TINY)  # `landscape train cnn digits --epochs 1 --name tiny`, trained once
    args = ["grid", "tiny", "--width", "5", "--pairs", "1", "--batches", "2", "--batch-size", "64", "-q"]
    data = json.loads(ok(cli(*args, "--json")).stdout)
    assert data["rows_done"] == data["rows_total"] == 2 * 5 and data["epochs"] == [0, 1]
    assert Path(data["zarr"]).is_dir() and data["diverged_points"] == 0
    again = ok(cli(*args))
    assert "already complete" in again.stderr and data["id"] in again.stdout
    [run] = json.loads(ok(cli("ls", "--json")).stdout)["runs"]
    [g] = run["grids"]
    assert g["id"] == data["id"] and g["done"] == 1.0 and g["shape"] == [2, 1, 2, 5, 5]
    assert data["id"] in ok(cli("ls")).stdout
    layers = json.loads(ok(cli("layers", "tiny", "--json")).stdout)
    assert layers[0] == {"name": "features.0.weight", "shape": [16, 1, 3, 3], "parameters": 144, "kind": "conv",
                         "perturbed_by_default": True}


BAD_GRID = [
    (["grid", "nosuchrun"], 2, ["nosuchrun"]),
    (["grid", "tiny", "--epochs", "7"], 2, ["epoch 7", "0,1"]),
    (["grid", "tiny", "--epochs", "a,b"], 2, ["--epochs", "a,b"]),
    (["grid", "tiny", "--width", "1"], 2, ["--width", "1"]),
    (["grid", "tiny", "--span", "0"], 2, ["--span"]),
    (["grid", "tiny", "--span", "nan"], 2, ["--span", "nan"]),
    (["grid", "tiny", "--pairs", "0"], 2, ["--pairs"]),
    (["grid", "tiny", "--batches", "0"], 2, ["--batches"]),
    (["grid", "tiny", "--batches", "9"], 2, ["1437 training images", "at most 5 batches"]),
    (["grid", "tiny", "--layer", "conv9"], 2, ["conv9", "features.0.weight"]),
    (["grid", "tiny", "--single-kernel"], 2, ["--layer"]),
    (["grid", "tiny", "--norm", "unit"], 2, ["unit", "filter, filter-std, layer, none"]),
    (["grid", "tiny", "--bn", "frozen"], 2, ["frozen", "train, eval"]),
    (["grid", "tiny", "--directions-from", "nogrid"], 2, ["nogrid"]),
    (["grid", "tiny", "--directions-from", "mlpgrid"], 2, ["same architecture"]),
    (["layers", "nosuchrun"], 2, ["nosuchrun"]),
    (["grid", "tiny", "--dims", "3"], 2, ["--dims", "3"]),
    (["grid", "tiny", "--batches", "many"], 2, ["--batches", "many", "all"]),
    (["grid", "tiny", "--split", "test"], 2, ["test", "train, val"]),
    (["grid", "tiny", "--directions", "sideways"], 2, ["sideways", "random, interpolate, pca"]),
    (["grid", "tiny", "--directions", "interpolate", "--epochs", "0"], 2, ["--to-epoch"]),
    (["grid", "tiny", "--directions", "interpolate", "--epochs", "1", "--to-epoch", "1"], 2, ["two different"]),
    (["grid", "tiny", "--directions", "interpolate", "--epochs", "0", "--to", "mlp"], 2, ["--to mlp", "same model"]),
    (["grid", "tiny", "--directions", "interpolate", "--epochs", "0", "--to-epoch", "1", "--range", "1,0"], 2,
     ["--range", "low end"]),
    (["grid", "tiny", "--directions", "interpolate", "--epochs", "0", "--to-epoch", "1", "--range", "-inf,2"], 2,
     ["--range", "finite"]),
    (["grid", "tiny", "--range", "0.5"], 2, ["--range", "LO,HI"]),
    (["grid", "tiny", "--directions", "pca"], 2, ["at least 4 checkpoints", "2"]),
    (["grid", "tiny", "--dims", "1", "--yrange", "-1,1"], 2, ["--yrange", "one axis"]),
]


@pytest.mark.parametrize(("args", "code", "needles"), BAD_GRID, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_grid_input_is_one_line_and_changes_nothing(cli: Any, copy_store: Any, args: list[str], code: int,
                                                        needles: list[str]) -> None:
    store = copy_store(TINY, Train("mlp", epochs=0, name="mlp"),
                       Cli("grid", "mlp", "--width", "2", "--pairs", "1", "--batches", "1", "--name", "mlpgrid", "-q"))
    before = tree(store)
    one_error_line(cli(*args), code, *needles)
    assert tree(store) == before


def test_partial_grid_says_how_far_it_got(cli: Any, copy_store: Any) -> None:
    from landscape_cli.store.grid_arrays import Rows

    store = copy_store(Train("mlp", epochs=0, name="m"))
    args = ["grid", "m", "--width", "4", "--pairs", "1", "--batches", "1", "-q"]
    data = json.loads(ok(cli(*args, "--json")).stdout)
    Rows(Path(data["zarr"])).clear_row(0, 0, 1)
    before = tree(store)
    one_error_line(cli(*args), 1, "75% done", "3 of 4 rows", "--resume")
    assert tree(store) == before
    assert json.loads(ok(cli(*args, "--resume", "--json")).stdout)["rows_computed"] == 1


def test_plot_through_the_cli(cli: Any, copy_store: Any, tmp_path: Path) -> None:
    copy_store(*M_GRID)
    result = ok(cli("plot", "m"))
    path = Path(result.stdout.strip())
    assert path.is_file() and path.parent.name == "plots"
    data = json.loads(ok(cli("plot", "m", "--epochs", "0,1", "--out", str(tmp_path / "e.pdf"), "--json")).stdout)
    assert data["columns"] == 2 and (tmp_path / "e.pdf").read_bytes().startswith(b"%PDF")


BAD_PLOT = [
    (["plot", "empty"], 1, ["no grid", "landscape grid"]),
    (["plot", "m", "--epochs", "4"], 2, ["epoch 4 is not in grid"]),
    (["plot", "m", "--metric", "f1"], 2, ["f1", "loss, accuracy"]),
    (["plot", "m", "--out", "/proc/nope/x.png"], 2, ["/proc/nope"]),
    (["plot", "m", "--out", "plot.bmp"], 2, [".png, .pdf, .svg"]),
    (["plot", "m", "--reduce", "median"], 2, ["median", "none, mean, batches, pairs"]),
    (["plot", "m", "--clip", "-1"], 2, ["--clip"]),
    (["plot", "m", "--epoch", "1", "--epochs", "0"], 2, ["--epoch or --epochs"]),
    (["plot", "nothing"], 2, ["nothing"]),
]


@pytest.mark.parametrize(("args", "code", "needles"), BAD_PLOT, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_plot_input(cli: Any, copy_store: Any, args: list[str], code: int, needles: list[str]) -> None:
    store = copy_store(Train("mlp", epochs=1, name="m"), Train("mlp", epochs=0, name="empty", seed=1),
                       Cli("grid", "m", "--width", "2", "--pairs", "1", "--batches", "1", "-q"))
    before = tree(store)
    one_error_line(cli(*args), code, *needles)
    assert tree(store) == before
