"""Whatever the user's code, data or files hold, bad input ends in one line.

- A model or dataset factory that raises (when its module is imported, or when it is called), a model without
  parameters, a factory argument given as text, data torch cannot hold, NaN/Inf in a factory's data, labels beyond
  the model's outputs anywhere in a split: one line on stderr naming the factory, the exception's type and message
  (LANDSCAPE_DEBUG=1 adds the traceback), exit 2, nothing written; on every command that builds the model or loads
  the data (train, import, grid, hessian, connect) and in the Recorder (the tool's UsageError, chained from the
  user's exception).
- `export --out` over an existing file replaces it only if an earlier export of the same grid (or curvature results)
  wrote it, as the file's own metadata says; anything else needs --force.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Grid, StoreFactory, Train, run_in_process, tree

from landscape_cli import train
from landscape_cli.errors import UsageError

FACTORIES = '''
import os

import torch
from torch import nn


def data():
    if os.environ.get("BREAK") == "data":
        raise RuntimeError("the data server is down")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g)
    y = (x[:, 0] > 0).long()
    return {"train": (x[:64], y[:64]), "val": (x[64:], y[64:]), "task": "classification"}


def net(input_shape, num_outputs):
    if os.environ.get("BREAK") == "model":
        raise ValueError(f"no layer of width {num_outputs}")
    return nn.Linear(input_shape[0], num_outputs)


def narrow(input_shape, num_outputs):  # ignores num_outputs: two outputs whatever the classes
    return nn.Linear(input_shape[0], 2)


def no_parameters(input_shape, num_outputs):
    return nn.Flatten()


def ten_classes():  # the first samples are of classes 0 and 1, the rest of 0..9
    d = data()
    y = torch.arange(64) % 10
    y[:8] = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    return {**d, "train": (d["train"][0], y), "val": (d["val"][0], torch.arange(16) % 2)}


def text_outputs():
    return {**data(), "num_outputs": "2"}


def words():
    return {"train": (["a cat", "a dog"], [0, 1]), "val": (["a cow"], [1]), "task": "classification"}


def nan_inputs():
    d = data()
    x = d["train"][0].clone()
    x[37, 2] = float("nan")
    return {**d, "train": (x, d["train"][1])}


def inf_targets():
    d = data()
    y = d["val"][0][:, :2].clone()
    y[5, 1] = float("inf")
    return {"train": (d["train"][0], d["train"][0][:, :2]), "val": (d["val"][0], y), "task": "regression"}
'''

BROKEN = 'raise RuntimeError("configured for another machine")\n\n\ndef net(input_shape, num_outputs):\n    pass\n'


@pytest.fixture
def mine(tmp_path: Path) -> Path:
    """The user's factories in a file of their own (a fresh module per test)."""
    path = tmp_path / "mine.py"
    path.write_text(FACTORIES)
    (tmp_path / "broken_at_import.py").write_text(BROKEN)
    return path.resolve()


def one_line(result: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    """The command failed with `code` and exactly one line on stderr, holding every needle."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


CASES = {  # train's MODEL and DATASET (of the file `mine`, or a module), $BREAK, what the one line says
    "model raises": ("{f}:net", "{f}:data", "model", ["{f}:net", "ValueError", "no layer of width 2",
                                                      "net(input_shape=(5,), num_outputs=2)"]),
    "dataset raises": ("{f}:net", "{f}:data", "data", ["{f}:data", "RuntimeError", "the data server is down"]),
    "file raises on import": ("{d}/broken_at_import.py:net", "{f}:data", "", [
        "{d}/broken_at_import.py:net", "RuntimeError", "configured for another machine"]),
    "module raises on import": ("broken_at_import:net", "{f}:data", "", [
        "'broken_at_import:net'", "RuntimeError", "configured for another machine"]),
    "no parameters": ("{f}:no_parameters", "{f}:data", "", ["{f}:no_parameters", "without parameters", "Flatten"]),
    "num_outputs as text": ("{f}:net", "{f}:text_outputs", "", ["{f}:text_outputs", "num_outputs", "'2' (str)"]),
    "text data": ("{f}:net", "{f}:words", "", ["{f}:words", "the train inputs", "cannot be a tensor"]),
    "NaN inputs": ("{f}:net", "{f}:nan_inputs", "", ["{f}:nan_inputs", "train split's inputs", "NaN", "sample 37"]),
    "inf targets": ("{f}:net", "{f}:inf_targets", "", ["{f}:inf_targets", "val split's targets", "infinite",
                                                       "sample 5"]),
    "labels beyond the outputs": ("{f}:narrow", "{f}:ten_classes", "", [
        "{f}:narrow", "train split has class index 9", "2 outputs"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_factory_that_fails_is_one_line_naming_it_and_trains_nothing(mine: Path, store: Path, case: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model, dataset, broken, needles = CASES[case]
    names = {"f": str(mine), "d": str(mine.parent)}
    if broken:
        monkeypatch.setenv("BREAK", broken)
    monkeypatch.syspath_prepend(str(mine.parent))
    one_line(run_in_process("train", model.format(**names), dataset.format(**names), "--epochs", "1", "--batch-size",
                            "16", "-q", "--store", str(store)), *(n.format(**names) for n in needles))
    assert tree(store) == {}


def test_labels_beyond_the_outputs_are_found_in_the_whole_split_on_import(mine: Path, store: Path,
                                                                         tmp_path: Path) -> None:
    """The classes the labels need (computed here from the data) against the outputs of the imported model."""
    spec = importlib.util.spec_from_file_location("mine_for_the_test", mine)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    labels = module.ten_classes()["train"][1]
    assert set(labels[:2].tolist()) <= {0, 1} and int(labels.max()) == 9  # the first samples alone pass
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(module.narrow((5,), 10).state_dict(), weights / "epoch-0.pt")
    one_line(run_in_process("import", f"{mine}:narrow", f"{mine}:ten_classes", str(weights), "-q", "--store",
                            str(store)), f"{mine}:narrow", f"class index {int(labels.max())}", "2 outputs")
    assert tree(store) == {}


def test_factories_that_fail_later_are_one_line_on_grid_hessian_and_connect(mine: Path, store: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made while the factories worked; the same (unchanged) files raise on a later machine."""
    for seed in (0, 1):
        train(f"{mine}:net", f"{mine}:data", epochs=1, batch_size=16, seed=seed, name=f"s{seed}", store=store,
              progress=False)
    before = tree(store)
    small = ["--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "16"]
    for broken, needles in (("model", [f"{mine}:net", "ValueError", "no layer of width 2"]),
                            ("data", [f"{mine}:data", "RuntimeError", "the data server is down"])):
        monkeypatch.setenv("BREAK", broken)
        one_line(run_in_process("grid", "s0", *small, "-q", "--store", str(store)), *needles)
        one_line(run_in_process("hessian", "s0", "--batches", "1", "--batch-size", "16", "-q", "--store", str(store)),
                 *needles)
        one_line(run_in_process("connect", "s0", "s1", "--epochs", "1", "-q", "--store", str(store)), *needles)
    assert tree(store) == before


def test_the_recorder_raises_the_tools_error_chained_from_the_users(mine: Path, store: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from landscape_cli import Recorder
    from landscape_cli.models import model_source
    from landscape_cli.recorder import ModelRef

    model = torch.nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for broken, cause, text in (("model", ValueError, "no layer of width 2"),
                                ("data", RuntimeError, "the data server is down")):
        monkeypatch.setenv("BREAK", broken)
        with pytest.raises(UsageError) as e:
            Recorder(model, optimizer, model_factory=f"{mine}:net", data=f"{mine}:data", store=store, verbose=False)
        assert isinstance(e.value.__cause__, cause) and str(e.value.__cause__) == text
        assert text in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("BREAK")
    with pytest.raises(UsageError, match="train split has class index 9, but the model gives 2 outputs"):
        Recorder(model, optimizer, model_factory=f"{mine}:narrow", data=f"{mine}:ten_classes", store=store,
                 verbose=False)
    text_args = ModelRef(model_source(f"{mine}:net"), args={"input_shape": [5], "num_outputs": "2"})
    with pytest.raises(UsageError, match=r"num_outputs must be a whole number, got '2' \(str\)"):
        Recorder(model, optimizer, model_factory=text_args, data=f"{mine}:data", store=store, verbose=False)
    assert tree(store) == {}


def test_landscape_debug_shows_the_users_traceback(mine: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREAK", "model")
    monkeypatch.setenv("LANDSCAPE_DEBUG", "1")
    result = run_in_process("train", f"{mine}:net", f"{mine}:data", "--epochs", "0", "-q", "--store", str(store))
    assert result.returncode == 2
    assert "Traceback" in result.stderr and 'mine.py", line' in result.stderr and "in net" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: the model factory")


# --- export --out over an existing file ----------------------------------------------------------------------------

SMALL: dict[str, Any] = {"epochs": [0], "pairs": 1, "batches": 1, "batch_size": 64}
GRIDS = (Train("mlp", epochs=1, name="m"), Grid("m", width=41, name="small", **SMALL),
         Grid("m", width=3, name="other", **SMALL))
LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"


@pytest.fixture(scope="module")
def grids(trained_store: StoreFactory) -> Path:
    """A read-only master: exports to --out outside it write nothing into it."""
    return trained_store.build(*GRIDS)


FORMATS = ["csv", "npz", "netcdf", "vtk"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_replaces_only_its_own_earlier_export_without_force(grids: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "vtk" and importlib.util.find_spec("vtkmodules") is None:
        pytest.skip("vtk is not installed")
    out = tmp_path / f"out.{fmt}"

    def export(grid: str, *more: str) -> subprocess.CompletedProcess[str]:
        return run_in_process("export", "m", "--grid", grid, "--format", fmt, "--out", str(out), "--store",
                              str(grids), *more)

    def written_by() -> str:  # the grid id the file itself names, read with the format's own reader
        if fmt == "csv":
            return out.read_text().splitlines()[1].split(",")[1]
        if fmt == "npz":
            with np.load(out) as z:
                return str(json.loads(str(z["attributes_json"]))["attributes"]["grid"])
        if fmt == "netcdf":
            import xarray as xr

            with xr.open_dataset(out, engine="h5netcdf") as ds:
                return str(ds.attrs["grid"])
        return str(json.loads((out / "landscape-export.json").read_text())["grid"])

    small_id, other_id = (_grid_id(grids, name) for name in ("small", "other"))
    if fmt == "vtk":  # a directory of the user's files is never replaced, not even with --force
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        before = _snapshot(out)
        for force in ([], ["--force"]):
            one_line(export("small", *force), str(out), "holds other files")
            assert _snapshot(out) == before
        shutil.rmtree(out)
        assert export("other").returncode == 0
    else:  # the user's file: replaced only with --force
        out.write_text("my own notes\n")
        before = _snapshot(out)
        one_line(export("small"), str(out), "no earlier export of grid", "--force")
        assert _snapshot(out) == before
        assert export("other", "--force").returncode == 0
    assert written_by() == other_id
    assert export("other").returncode == 0, "an earlier export of the same grid is replaced without --force"
    first = _snapshot(out)
    one_line(export("small"), str(out), "--force", small_id)
    assert _snapshot(out) == first
    assert export("small", "--force").returncode == 0 and written_by() == small_id
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left beside it


def test_curvature_csv_is_recognised_by_its_rows(tmp_path: Path) -> None:
    """A curvature CSV names no ids: an earlier export of the same results is known by its header and done rows."""
    store = tmp_path / "store"
    shutil.copytree(LEGACY2 / "store", store)
    ids = json.loads((LEGACY2 / "ids.json").read_text())
    run, newest = ids["run_id"], ids["hessian_id"]
    other = next(p.name for p in (store / run / "hessians").iterdir() if p.name != newest)
    out = tmp_path / "h.csv"

    def export(results: str, *more: str) -> subprocess.CompletedProcess[str]:
        return run_in_process("export", run, "--hessian", "--grid", results, "--format", "csv", "--out", str(out),
                              "--store", str(store), *more)

    assert export(newest).returncode == 0
    written = out.read_bytes()
    assert export(newest).returncode == 0 and out.read_bytes() == written
    one_line(export(other), "no earlier export of curvature results", "--force")
    assert out.read_bytes() == written
    assert export(other, "--force").returncode == 0 and out.read_bytes() != written


def _grid_id(store: Path, name: str) -> str:
    from landscape_cli.store import Store

    return Store(store).find_grid(name)[1]


def _snapshot(path: Path) -> Any:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()
