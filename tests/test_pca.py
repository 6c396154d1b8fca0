"""The PCA trajectory plane against numpy's SVD of the flattened trajectory, and its grid against hand-set weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import StoreFactory, Train, private_copy

from landscape_cli import grid
from landscape_cli.data import load_dataset
from landscape_cli.directions import pca as pca_module
from landscape_cli.errors import UsageError
from landscape_cli.models import create_model
from landscape_cli.store import Store

PLANE = {"directions": "pca", "batches": 2, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def trained(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's copy of the session's master (each run trained once per session)."""
    return trained_store.copy(Train("cnn", epochs=5, name="t"), Train("cnn", epochs=2, seed=3, name="short"),
                              to=tmp_path_factory.mktemp("pca") / "store")


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    return private_copy(trained, tmp_path)


def _states(store: Path, epochs: list[int]) -> list[dict[str, Any]]:
    st = Store(store)
    run_id = st.resolve("t")
    return [torch.load(st.run_dir(run_id) / f"checkpoints/epoch-{e:04d}.pt", weights_only=True) for e in epochs]


def _names(state: dict[str, torch.Tensor], biasbn: bool = False) -> list[str]:
    """The parameters a grid moves: not BatchNorm buffers; 1-D parameters only with --perturb-biasbn."""
    model_params = [k for k in state if "running" not in k and "num_batches" not in k]
    return [k for k in model_params if biasbn or state[k].dim() > 1]


def _reference(ckpts: list[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    """sklearn-style PCA of the flattened trajectory w_i − w_final with numpy's SVD."""
    flat = np.stack([np.concatenate([c["state_dict"][n].double().reshape(-1).numpy() for n in names]) for c in ckpts])
    d = flat - flat[-1]
    centred = d - d.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:2].copy()
    for j in range(2):  # the library's sign rule: the first checkpoint at negative coordinates
        if d[0] @ vt[j] > 0:
            vt[j] *= -1
    coords = d @ vt.T
    residual = np.linalg.norm(d - coords @ vt, axis=1)
    return {"components": vt, "ratio": s[:2] ** 2 / (s ** 2).sum(), "coords": coords, "residual": residual, "d": d}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_dataset("digits")
    x = (data.train_x.float() / 255 - data.info.mean[0]) / data.info.std[0]
    return [(x[i * 64:(i + 1) * 64], data.train_y[i * 64:(i + 1) * 64]) for i in range(2)]


def _loss(ckpt: dict[str, Any], state: dict[str, torch.Tensor]) -> list[float]:
    model = create_model(ckpt["model"], **ckpt["model_args"])
    model.load_state_dict(state)
    model.train()  # --bn train: batch statistics
    with torch.no_grad():
        return [F.cross_entropy(model(x), y).item() for x, y in _batches()]


def _flat(direction: dict[str, torch.Tensor], names: list[str]) -> np.ndarray:
    return np.concatenate([direction[n].double().reshape(-1).numpy() for n in names])


@pytest.mark.parametrize("chunk", [pca_module.CHUNK_VALUES, 1000])
def test_components_path_and_variance_match_numpy_svd(store: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pca_module, "CHUNK_VALUES", chunk)  # 1000: many chunks per tensor, same numbers
    g = grid("t", width=5, store=store, **PLANE)
    ds = g.to_xarray()
    ckpts = _states(store, [0, 1, 2, 3, 4, 5])
    names = _names(ckpts[0]["state_dict"])
    ref = _reference(ckpts, names)
    raw = torch.load(g.path.parent.parent / g.meta.directions[0].file, weights_only=True)
    for j, key in enumerate(("d1", "d2")):
        assert np.allclose(_flat(raw[key], names), ref["components"][j], atol=1e-6)
    assert np.allclose(ds.attrs["explained_variance_ratio"], ref["ratio"], rtol=1e-9)
    assert list(ds.path_epoch.values) == [0, 1, 2, 3, 4, 5] and list(ds.epoch.values) == [5]
    assert np.allclose(ds.path_x.values, ref["coords"][:, 0], atol=1e-6)
    assert np.allclose(ds.path_y.values, ref["coords"][:, 1], atol=1e-6)
    assert np.allclose(ds.path_residual.values, ref["residual"], atol=1e-5)
    assert ds.path_x.values[-1] == ds.path_y.values[-1] == 0.0  # the plane is centred at the last checkpoint
    assert ds.path_x.values[0] < 0 and ds.path_y.values[0] < 0
    # the default ranges cover the path, with a margin
    assert ds.x.values[0] < ds.path_x.values.min() and ds.x.values[-1] > ds.path_x.values.max()
    assert ds.y.values[0] < ds.path_y.values.min() and ds.y.values[-1] > ds.path_y.values.max()
    for i, c in enumerate(ckpts):
        assert ds.path_loss.values[i].tolist() == pytest.approx(_loss(c, c["state_dict"]), rel=1e-5)


def test_grid_points_are_the_final_weights_moved_along_the_components(store: Path) -> None:
    g = grid("t", width=5, range=(-1.0, 1.0), yrange=(-0.5, 0.5), store=store, **PLANE)
    ds = g.to_xarray()
    final = _states(store, [5])[0]
    raw = torch.load(g.path.parent.parent / g.meta.directions[0].file, weights_only=True)
    assert ds.center_loss.sel(epoch=5).values.tolist() == pytest.approx(_loss(final, final["state_dict"]), rel=1e-6)
    for xi, yi in ((0, 4), (3, 1)):
        a, b = float(ds.x[xi]), float(ds.y[yi])
        state = {k: v + a * raw["d1"][k] + b * raw["d2"][k] if k in raw["d1"] else v
                 for k, v in final["state_dict"].items()}
        got = ds.loss.isel(epoch=0, pair=0, y=yi, x=xi).values.tolist()
        assert got == pytest.approx(_loss(final, state), rel=1e-5)


def test_chosen_epochs_normalization_and_a_line(store: Path) -> None:
    g = grid("t", epochs=[1, 2, 4, 5], norm="filter", width=3, store=store, **PLANE)
    assert g.meta.config.trajectory == (1, 2, 4, 5) and g.meta.epochs == [5]
    ds = g.to_xarray()
    ckpts = _states(store, [1, 2, 4, 5])
    names = _names(ckpts[0]["state_dict"])
    ref = _reference(ckpts, names)
    # with --norm filter the axes are the components rescaled per filter against the final weights:
    # the path is the least-squares projection on those axes
    final = ckpts[-1]["state_dict"]
    axes = []
    for j in range(2):
        comp = {}
        offset = 0
        for n in names:
            size = final[n].numel()
            v = torch.from_numpy(ref["components"][j][offset:offset + size]).reshape(final[n].shape)
            offset += size
            rows_w, rows_v = final[n].double().reshape(final[n].shape[0], -1), v.reshape(v.shape[0], -1)
            comp[n] = v * (rows_w.norm(dim=1) / (rows_v.norm(dim=1) + 1e-10)).view(-1, *[1] * (v.dim() - 1))
        axes.append(_flat(comp, names))
    e = np.stack(axes, axis=1)
    coords, *_ = np.linalg.lstsq(e, ref["d"].T, rcond=None)
    assert np.allclose(ds.path_x.values, coords[0], rtol=1e-4, atol=1e-6)
    assert np.allclose(ds.path_residual.values, np.linalg.norm(ref["d"] - (e @ coords).T, axis=1), rtol=1e-4, atol=1e-5)
    line = grid("t", dims=1, width=5, store=store, **PLANE).to_xarray()
    assert line.loss.dims == ("epoch", "pair", "batch", "x") and "path_y" not in line
    plane = grid("t", width=5, store=store, **PLANE).to_xarray()
    assert np.allclose(line.path_x.values, plane.path_x.values)


@pytest.mark.parametrize(("run", "options", "needle"), [
    ("short", {}, "at least 4 checkpoints"),
    ("t", {"epochs": [0, 1, 5]}, "at least 4 checkpoints"),
    ("t", {"span": 0.5}, "--span does not apply"),
    ("t", {"pairs": 2}, "one set of directions"),
    ("t", {"seed": 4}, "--seed applies to random"),
    ("t", {"dims": 3}, "--dims must be from 1 to 2"),
    ("t", {"range": (2.0, 1.0)}, "low end must be below"),
])
def test_bad_pca_requests(trained: Path, run: str, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        grid(run, store=trained, **{**PLANE, **options})
    assert not list(trained.glob("*/grids"))
