"""The `landscape` command end to end (in-process through CliRunner), and its error boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli, tree
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
def test_bad_input_is_one_line_and_changes_nothing(cli: Any, store: Path, args: list[str], code: int,
                                                   needles: list[str]) -> None:
    ok(cli("train", "mlp", "digits", "--epochs", "0", "-q"))
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
