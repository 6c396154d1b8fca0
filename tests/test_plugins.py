"""Your own models and datasets: module and file factories, entry points, regression, identity, bad input.

The factories live outside the package, in `tests/userland/` (`toy_factories.py` and its dist-info,
whose entry points name `token-net` and `tokens`), as a user's code would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, subprocess_env, tree

from landscape_cli import grid, train
from landscape_cli.errors import UsageError
from landscape_cli.store import Store

USERLAND = Path(__file__).parent / "userland"


@pytest.fixture
def userland(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(USERLAND))  # the module and its dist-info, as an installed package would be
    return USERLAND


def _checkpoint(store: Path, run_id: str, epoch: int) -> dict[str, Any]:
    return torch.load(Store(store).run_dir(run_id) / f"checkpoints/epoch-{epoch:04d}.pt", weights_only=True)


def _model(ckpt: dict[str, Any], factory: Any) -> torch.nn.Module:
    args = ckpt["model_args"]
    model = factory(input_shape=tuple(args["input_shape"]), num_outputs=args["num_outputs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@pytest.mark.slow  # a fresh interpreter loads the factories again (~6 s)
def test_a_regression_from_module_factories(userland: Path, store: Path, tmp_path: Path) -> None:
    import toy_factories as toy

    run = train("toy_factories:regressor", "toy_factories:waves", epochs=2, batch_size=32, lr=0.01, store=store,
                progress=False, name="waves")
    meta = run.meta
    assert meta.dataset["task"] == "regression" and meta.dataset["num_outputs"] == 2
    assert meta.model["source"]["kind"] == "module" and meta.model["source"]["file"].endswith("toy_factories.py")
    assert all(r.train_accuracy is None and r.val_accuracy is None for r in meta.epochs)
    data = toy.waves()
    vx, vy = data["val"]  # type: ignore[index]
    ckpt = _checkpoint(store, run.run_id, 2)
    with torch.no_grad():
        expected = F.mse_loss(_model(ckpt, toy.regressor)(vx), vy).item()  # nn.MSELoss()'s mean over all elements
    assert meta.epochs[-1].val_loss == pytest.approx(expected, rel=1e-5)
    g = grid("waves", width=3, pairs=1, batches=2, batch_size=64, store=store, progress=False)
    ds = g.to_xarray()
    tx, ty = data["train"]  # type: ignore[index]
    model = _model(ckpt, toy.regressor)
    with torch.no_grad():
        centre = [F.mse_loss(model(tx[i * 64:(i + 1) * 64]), ty[i * 64:(i + 1) * 64]).item() for i in range(2)]
    assert ds.center_loss.sel(epoch=2).values.tolist() == pytest.approx(centre, rel=1e-5)
    assert bool(ds.accuracy.isnull().all())
    # a later process loads the factories again (the module on PYTHONPATH, as the user's would be)
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(USERLAND), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "landscape_cli", "grid", "waves", "--dims", "1", "--width", "3",
                           "--pairs", "1", "--batches", "1", "--batch-size", "64", "-q", "--json", "--store", str(store)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_done"] == 3
    from landscape_cli.views.figures import plot

    assert plot(["waves"], grids=[g.grid_id], store=store, out=tmp_path / "w.png").path.is_file()
    with pytest.raises(UsageError, match="regression"):
        plot(["waves"], grids=[g.grid_id], store=store, metric="accuracy", out=tmp_path / "a.png")


def test_a_token_classifier_through_entry_points(userland: Path, store: Path) -> None:
    import toy_factories as toy

    from landscape_cli.curvature.hessian import hessian

    run = train("token-net", "tokens", epochs=1, batch_size=32, store=store, progress=False)
    assert run.meta.model["source"]["kind"] == "entry-point" and "toy-factories 0.1" in run.meta.model["source"]["origin"]
    g = grid(run.run_id, width=3, pairs=1, batches=1, batch_size=50, store=store, progress=False)
    x, y = toy.tokens()["train"]  # type: ignore[index]
    assert x.dtype == torch.int64  # token ids stay integers
    model = _model(_checkpoint(store, run.run_id, 1), toy.token_net)
    with torch.no_grad():
        out = model(x[:50])
    ds = g.to_xarray()
    assert float(ds.center_loss.sel(epoch=1, batch=0)) == pytest.approx(F.cross_entropy(out, y[:50]).item(), rel=1e-5)
    assert float(ds.center_accuracy.sel(epoch=1, batch=0)) == pytest.approx(
        (out.argmax(1) == y[:50]).float().mean().item())
    h = hessian(run.run_id, epochs=[1], batches=1, batch_size=50, probes=4, store=store, progress=False)
    assert h.summary()[0]["eigenvalues"][0] > 0


def test_models_and_datasets_list_entry_points(userland: Path, cli: Any) -> None:
    models = json.loads(cli("models", "--json").stdout)
    [entry] = [m for m in models if m["name"] == "token-net"]
    assert entry["origin"] == "entry point of toy-factories 0.1 (toy_factories:token_net)"
    datasets = json.loads(cli("datasets", "--json").stdout)
    assert any(d["name"] == "tokens" and "toy_factories:tokens" in d["origin"] for d in datasets)


def test_built_in_models_and_data_mix_with_factories(userland: Path, store: Path, tmp_path: Path) -> None:
    images = tmp_path / "images.py"
    images.write_text(
        "import torch\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.rand(200, 1, 8, 8, generator=g)\n"
        "    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()\n"
        "    return {'train': (x[:150], y[:150]), 'val': (x[150:], y[150:]), 'task': 'classification'}\n"
    )
    run = train("cnn", f"{images}:make", epochs=1, store=store, progress=False)  # a built-in model, factory images
    assert run.meta.model["args"]["num_classes"] == 2 and run.meta.model["args"]["in_channels"] == 1
    with pytest.raises(UsageError, match="mean squared error needs float targets"):
        train("cnn", "digits", epochs=0, store=store, progress=False, loss="mse")
    run = train("toy_factories:token_net", "tokens", epochs=0, store=store, progress=False)
    assert run.meta.model["args"] == {"input_shape": [12], "num_outputs": 3}


def test_an_edited_factory_makes_a_new_run_and_refuses_old_grids(store: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "my_models.py"
    shutil.copy(USERLAND / "toy_factories.py", source)
    ref = f"{source}:regressor"
    data = f"{source}:waves"
    first = train(ref, data, epochs=1, batch_size=64, store=store, progress=False, name="first")
    assert first.meta.config.model == "my_models.py:regressor" and first.meta.config.model_sha256
    again = train(ref, data, epochs=1, batch_size=64, store=store, progress=False)
    assert again.run_id == first.run_id and not again.trained  # the same files: the same run, nothing to train
    source.write_text(source.read_text().replace("nn.Tanh()", "nn.Sigmoid()"))  # other outputs (a comment: test_probes)
    for module in [k for k, m in sys.modules.items() if getattr(m, "__file__", None) == str(source.resolve())]:
        monkeypatch.delitem(sys.modules, module)  # the edited file is loaded again, as by a new process
    before = tree(store)
    with pytest.raises(UsageError, match="computes other outputs than when the run was made"):
        grid("first", width=3, pairs=1, batches=1, batch_size=64, store=store, progress=False)
    assert tree(store) == before
    edited = train(ref, data, epochs=1, batch_size=64, store=store, progress=False)
    assert edited.run_id != first.run_id


@pytest.mark.parametrize(("model", "dataset", "options", "needle"), [
    ("broken_module:make", "digits", {}, "cannot import broken_module (ModuleNotFoundError"),
    ("toy_factories:nothing", "digits", {}, "has no callable 'nothing'"),
    ("toy_factories:not_a_model", "toy_factories:waves", {}, "returned str, not a torch.nn.Module"),
    ("toy_factories:regressor", "toy_factories:ragged", {}, "train has 10 inputs but 9 targets"),
    ("toy_factories:regressor", "toy_factories:waves", {"activation": "tanh"}, "never rewritten"),
    ("./no/such/file.py:make", "digits", {}, "does not exist"),
    ("toy_factories:regressor", "toy_factories:waves", {"loss": "hinge"}, "cross-entropy, mse"),
    ("toy_factories:regressor", "toy_factories:waves_three", {}, "output has shape [2, 3] but the targets have [2, 2]"),
    ("toy_factories:regressor", "toy_factories:tokens", {}, "failed on the first samples of"),
])
def test_bad_factories_are_one_line_and_write_nothing(userland: Path, store: Path, model: str, dataset: str,
                                                      options: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError, match=re.escape(needle)):
        train(model, dataset, epochs=0, store=store, progress=False, **options)
    assert not store.exists() or not list(store.glob("*/run.json"))
