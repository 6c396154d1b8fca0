"""Interpolation between checkpoints: end points, interior points and BatchNorm modes against hand computations."""

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
from landscape_cli.errors import UsageError
from landscape_cli.models import create_model
from landscape_cli.store import Store

LINE = {"directions": "interpolate", "batches": 2, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def runs(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's copy of the session's master (each run trained once per session)."""
    return trained_store.copy(
        Train("cnn", epochs=3, name="a"),
        Train("cnn", epochs=2, seed=1, name="b"),  # same model, other seed
        Train("mlp", epochs=0, name="mlp"),
        to=tmp_path_factory.mktemp("interpolate") / "store")


@pytest.fixture
def store(runs: Path, tmp_path: Path) -> Path:
    return private_copy(runs, tmp_path)


def _state(store: Path, run: str, epoch: int) -> dict[str, Any]:
    st = Store(store)
    run_id = st.resolve(run)
    return torch.load(st.run_dir(run_id) / f"checkpoints/epoch-{epoch:04d}.pt", weights_only=True)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    d = load_dataset("digits")
    x = (d.train_x.float() / 255 - d.info.mean[0]) / d.info.std[0]
    return [(x[i * 64:(i + 1) * 64], d.train_y[i * 64:(i + 1) * 64]) for i in range(2)]


def _loss(ckpt: dict[str, Any], state: dict[str, torch.Tensor], bn: str) -> list[float]:
    """Loss of a model with `state` on each batch: BatchNorm with batch statistics (train), running
    statistics (eval), or running statistics re-estimated on the batches first (recompute)."""
    model = create_model(ckpt["model"], **ckpt["model_args"])
    model.load_state_dict(state)
    batches = _batches()
    if bn == "recompute":
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    model.train(bn == "train")
    with torch.no_grad():
        return [F.cross_entropy(model(x), y).item() for x, y in batches]


def _mix(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float, buffers: bool) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in a.items():
        moving = v.is_floating_point() and (buffers or ("running" not in k))
        out[k] = (1 - t) * v + t * b[k] if moving else v
    return out


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_end_points_are_each_checkpoints_own_loss(store: Path, bn: str) -> None:
    g = grid("a", epochs=[0, 1], to_epoch=3, width=7, range=(-0.5, 1.5), bn=bn, store=store, **LINE)
    ds = g.to_xarray()
    assert ds.loss.dims == ("epoch", "pair", "batch", "x") and 0.0 in ds.x.values and 1.0 in ds.x.values
    end = _state(store, "a", 3)
    for e in (0, 1):
        start = _state(store, "a", e)
        assert ds.loss.sel(epoch=e, pair=0, x=0.0).values.tolist() == pytest.approx(
            _loss(start, start["state_dict"], bn), rel=1e-6)
        assert ds.loss.sel(epoch=e, pair=0, x=1.0).values.tolist() == pytest.approx(
            _loss(end, end["state_dict"], bn), rel=1e-6)
        assert ds.center_loss.sel(epoch=e).values.tolist() == pytest.approx(_loss(start, start["state_dict"], bn),
                                                                            rel=1e-6)


@pytest.mark.parametrize("bn", ["train", "eval", "recompute"])
def test_interior_points_are_the_interpolated_weights(store: Path, bn: str) -> None:
    g = grid("a", epochs=[1], to_epoch=3, width=5, range=(-0.5, 1.5), bn=bn, store=store, **LINE)
    ds = g.to_xarray()
    a, b = _state(store, "a", 1), _state(store, "a", 3)
    for t in (-0.5, 0.5, 1.5):
        # with --bn eval the running statistics move along the line too
        expected = _loss(a, _mix(a["state_dict"], b["state_dict"], t, buffers=bn == "eval"), bn)
        assert ds.loss.sel(epoch=1, pair=0, x=t).values.tolist() == pytest.approx(expected, rel=1e-5), t


def test_coordinates_hold_both_checkpoints_exactly(store: Path) -> None:
    for width in (4, 7, 10, 41):
        g = grid("a", epochs=[0], to_epoch=3, width=width, range=(-0.3, 1.7), store=store, **LINE)
        x = g.to_xarray().x.values
        assert len(x) == width and (x == 0.0).sum() == 1 and (x == 1.0).sum() == 1 and np.all(np.diff(x) > 0)
        assert x[0] == -0.3 and x[-1] == 1.7


def test_to_another_run_of_the_same_model(store: Path) -> None:
    g = grid("a", epochs=[3], to="b", width=3, range=(0.0, 1.0), store=store, **LINE)
    ds = g.to_xarray()
    assert g.meta.kind["target"]["epoch"] == 2 and g.meta.kind["target"]["label"] == "b"
    other = _state(store, "b", 2)
    assert ds.loss.sel(epoch=3, x=1.0, pair=0).values.tolist() == pytest.approx(
        _loss(other, other["state_dict"], "train"), rel=1e-6)
    explicit = grid("a", epochs=[3], to="b:1", width=3, range=(0.0, 1.0), store=store, **LINE)
    assert explicit.grid_id != g.grid_id and explicit.meta.config.target_epoch == 1


@pytest.mark.parametrize(("options", "needle"), [
    ({"epochs": [0]}, "needs --to-epoch"),
    ({"to_epoch": 3}, "needs --epochs A"),
    ({"epochs": [1, 3], "to_epoch": 3}, "two different checkpoints"),
    ({"epochs": [0], "to_epoch": 9}, "no checkpoint for epoch 9"),
    ({"epochs": [0], "to": "mlp"}, "same model"),
    ({"epochs": [0], "to": "b:7"}, "no checkpoint for epoch 7"),
    ({"epochs": [0], "to_epoch": 3, "range": (0.2, 1.0)}, "must contain 0 and 1"),
    ({"epochs": [0], "to_epoch": 3, "range": (1.0, 0.0)}, "low end must be below"),
    ({"epochs": [0], "to_epoch": 3, "range": (float("nan"), 1.0)}, "finite"),
    ({"epochs": [0], "to_epoch": 3, "dims": 2}, "1-D grids"),
    ({"epochs": [0], "to_epoch": 3, "layer": "features.0.weight"}, "every parameter moves"),
    ({"epochs": [0], "to_epoch": 3, "norm": "filter"}, "--norm applies"),
    ({"epochs": [0], "to_epoch": 3, "width": 2}, "at least 3 points"),
])
def test_bad_interpolation_requests(runs: Path, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        grid("a", store=runs, **{**LINE, **options})
    assert not list(runs.glob("*/grids"))  # refused before anything was written
