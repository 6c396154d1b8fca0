"""A run's model is identified by what it computes on its probe samples (`models.probes`), and NaN is warned of.

A factory whose helper module changes its outputs is refused by every command that rebuilds the model, and by
`verify`; a comment in the factory's file is not (the same outputs); runs made before probes keep the file-hash
check. The recorded outputs are checked against a forward pass written out here; NaN weights at `import` and an
epoch of NaN losses at `train` are one warning line each.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Train, run_in_process, tree

from landscape_cli.data import load_dataset
from landscape_cli.models import create_model
from landscape_cli.models.probes import summary
from landscape_cli.store import Store

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0" / "store"

HELPER = '''import torch
from torch import nn


class Act(nn.Module):
    def forward(self, x):
        return torch.tanh(x)
'''
MODEL = '''import math

from torch import nn

import layers_dep


def make(input_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.BatchNorm1d(16), layers_dep.Act(),
                         nn.Linear(16, num_outputs))
'''
GRID = ["--epochs", "0,1", "--width", "3", "--pairs", "1", "--batches", "1", "--batch-size", "64", "-q"]


def _forget(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Drop the modules loaded from `folder`, so the next command imports the edited files (as a new process would)."""
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").resolve().parent == folder.resolve():
            monkeypatch.delitem(sys.modules, name)


def _one_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, (result.returncode, result.stderr)
    return str(lines[0])


def _losses(store: Path) -> np.ndarray:
    import xarray as xr

    [path] = store.glob("*/grids/*/landscape.zarr")
    return np.asarray(xr.open_zarr(path)["loss"].values)


def test_a_helper_edit_that_changes_outputs_is_refused_and_a_comment_is_not(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "layers_dep.py").write_text(HELPER)
    (code / "model.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within the same second is never read as stale
    store, fresh = tmp_path / "store", tmp_path / "fresh"
    factory = f"{code / 'model.py'}:make"
    made = run_in_process("train", factory, "digits", "--epochs", "1", "--name", "f", "-q", "--store", str(store))
    assert made.returncode == 0, made.stderr
    shutil.copytree(store, fresh)  # the run alone: its grid is computed there after the comment
    assert run_in_process("grid", "f", *GRID, "--store", str(store)).returncode == 0
    before = _losses(store)

    (code / "layers_dep.py").write_text(HELPER.replace("torch.tanh(x)", "torch.relu(x)"))  # the factory's file as it was
    _forget(monkeypatch, code)
    untouched = tree(store)
    for command in (["grid", "f", *GRID[:2], "--width", "5", "-q"],
                    ["hessian", "f", "--epochs", "1", "--top", "1", "--batches", "1", "--batch-size", "64", "-q"]):
        line = _one_line(run_in_process(*command, "--store", str(store)))
        assert f"model factory '{code / 'model.py'}:make'" in line and "computes other outputs" in line, line
        assert "the checkpoint of epoch" in line and "largest difference" in line and "tolerance" in line, line
        assert tree(store) == untouched
    checked = run_in_process("verify", "--json", "--store", str(store))
    _one_line(checked)
    [problem] = json.loads(checked.stdout)["problems"]
    assert problem["path"] == str(code / "model.py") and "computes other outputs" in problem["problem"]
    assert tree(store) == untouched

    (code / "layers_dep.py").write_text(HELPER)
    (code / "model.py").write_text(MODEL + "\n# a comment changes the file's hash, not what the model computes\n")
    _forget(monkeypatch, code)
    again = run_in_process("grid", "f", *GRID, "--store", str(fresh))
    assert again.returncode == 0 and not again.stderr.strip(), again.stderr
    assert np.array_equal(_losses(fresh), before)
    assert run_in_process("verify", "--store", str(fresh)).returncode == 0

    # the same run as an earlier release wrote it (no probe records): the file's hash decides, as it did
    [run_json] = fresh.glob("*/run.json")
    meta = json.loads(run_json.read_text())
    for record in meta["epochs"]:
        del record["probe"]
    run_json.write_text(json.dumps(meta, indent=2))
    untouched = tree(fresh)
    line = _one_line(run_in_process("grid", "f", *GRID[:2], "--width", "5", "-q", "--store", str(fresh)))
    assert "changed since the run was made" in line and "model.py" in line
    assert tree(fresh) == untouched


def test_probe_outputs_are_a_forward_pass_of_the_checkpoint_on_the_documented_samples(copy_store: Any) -> None:
    store = copy_store(Train("cnn", epochs=1, name="tiny"))
    st = Store(store)
    meta = st.read_run(st.resolve("tiny"))
    data = load_dataset("digits")
    n = len(data.train_y)
    chosen = [i * (n - 1) // 7 for i in range(8)]  # eight samples, evenly spaced from the first to the last
    x = (data.train_x[chosen].float() / 255 - data.info.mean[0]) / data.info.std[0]
    for record in meta.epochs:
        probe = record.probe
        assert probe is not None and probe.device == "cpu" and probe.dtype == "float32" and probe.sketch == 0
        [saved] = store.glob(f"*/probes-{probe.inputs[:16]}.pt")
        assert torch.equal(torch.load(saved, weights_only=True)["inputs"], x)
        ckpt = torch.load(st.file(meta.id, record.checkpoint), weights_only=True)
        model = create_model("cnn", **ckpt["model_args"])
        model.load_state_dict(ckpt["state_dict"])
        with torch.no_grad():
            outputs = {"eval": model.eval()(x), "bn_train": copy.deepcopy(model).train()(x)}  # batch statistics
        for mode, out in outputs.items():
            recorded = np.array(getattr(probe, mode)).reshape(8, 10)
            assert probe.shape == [8, 10]
            scale = np.abs(recorded).max()
            np.testing.assert_allclose(recorded, out.numpy(), rtol=0, atol=1e-5 * scale)
    [saved] = store.glob("*/probes-*.pt")
    saved.write_bytes(saved.read_bytes() + b"\0")  # damaged: refused by its sha256, never read
    untouched = tree(store)
    line = _one_line(run_in_process("grid", "tiny", "--width", "3", "--pairs", "1", "--batches", "1", "-q"))
    assert "probe samples of run" in line and "landscape verify" in line and tree(store) == untouched
    checked = run_in_process("verify", "--json")
    assert [p["path"] for p in json.loads(checked.stdout)["problems"]] == [str(saved)]


def test_large_outputs_are_a_count_sketch_of_sixteen_values_per_sample() -> None:
    """A sample's D > 16 values: value k = Σ s(i)·out[i] over the i whose splitmix64 hash is k (mod 16)."""
    mask = (1 << 64) - 1

    def splitmix(i: int) -> int:
        z = (i + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    out = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    expected = np.zeros((3, 16))
    for i in range(40):
        z = splitmix(i)
        expected[:, z % 16] += (-1.0 if (z >> 32) & 1 else 1.0) * out.reshape(3, 40)[:, i].double().numpy()
    np.testing.assert_allclose(np.array(summary(out, 3, 16)).reshape(3, 16), expected, rtol=1e-6, atol=1e-6)
    out[1, 2, 3] += 0.5  # any one output moves one value of its sample by exactly that much
    moved = np.array(summary(out, 3, 16)).reshape(3, 16) - expected
    assert np.count_nonzero(np.abs(moved) > 1e-5) == 1 and np.isclose(np.abs(moved).max(), 0.5, rtol=1e-5)


def test_continued_training_records_the_probes_of_an_uninterrupted_run(trained_store: Any, tmp_path: Path) -> None:
    one = trained_store.copy(Train("mlp", epochs=1, name="m"), to=tmp_path / "one")
    assert run_in_process("train", "mlp", "digits", "--epochs", "2", "-q", "--store", str(one)).returncode == 0
    two = trained_store.build(Train("mlp", epochs=2, name="m"))  # the session's (read only)
    [continued], [straight] = Store(one).runs(), Store(two).runs()
    assert [r.probe for r in continued.epochs] == [r.probe for r in straight.epochs]  # type: ignore[union-attr]
    assert all(r.probe is not None for r in straight.epochs)  # type: ignore[union-attr]


def test_legacy_runs_read_as_they_were_written(tmp_path: Path) -> None:
    store = tmp_path / "legacy"
    shutil.copytree(LEGACY2, store)
    written = {p: p.read_bytes() for p in store.glob("*/run.json")}
    checked = run_in_process("verify", "--json", "--store", str(store))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["checked"]["models"] == 0  # no probe records: nothing rebuilt
    done = run_in_process("grid", "legacy2", "--epochs", "3", "--width", "3", "--pairs", "1", "--batches", "1",
                          "--batch-size", "64", "-q", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert {p: p.read_bytes() for p in store.glob("*/run.json")} == written


def test_nan_weights_at_import_and_nan_losses_at_train_are_one_warning_line(tmp_path: Path, store: Path) -> None:
    state = create_model("mlp", 1, 10, 8).state_dict()
    name = next(k for k, v in state.items() if v.dim() == 2)
    state[name][0, :3] = float("nan")
    torch.save(state, tmp_path / "diverged-3.pt")
    made = run_in_process("import", "mlp", "digits", str(tmp_path / "diverged-3.pt"), "-q")
    [line] = made.stderr.strip().splitlines()
    assert made.returncode == 0 and line.startswith("Warning: the weights of epoch 3 (diverged-3.pt) hold 3 NaN")
    assert name in line and len(Store(store).run_ids()) == 1
    trained = run_in_process("train", "mlp", "digits", "--epochs", "2", "--lr", "1e30", "-q")
    [line] = trained.stderr.strip().splitlines()
    assert trained.returncode == 0 and line.startswith("Warning: run ") and "every training loss of epoch" in line
    assert "lower --lr" in line and len(Store(store).run_ids()) == 2
