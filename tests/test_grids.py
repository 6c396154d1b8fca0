"""Grids end to end: values against independent computations, the store layout, resume, sharing."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, Cli, StoreFactory, Train, filter_normalized, private_copy, run_in_process, subprocess_env

from landscape_cli import train
from landscape_cli.config import parse_epochs, parse_steps
from landscape_cli.data import load_dataset
from landscape_cli.engine.compute import grid
from landscape_cli.errors import GridStateError, IntegrityError, UsageError
from landscape_cli.models import create_model
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows

SMALL = {"width": 5, "pairs": 2, "batches": 2, "batch_size": 64, "progress": False}
TINY = Train("cnn", epochs=2, name="tiny")


@pytest.fixture(scope="module")
def trained(trained_store: StoreFactory) -> Path:
    """The session's master (trained once, read-only): the tests take copies."""
    return trained_store.build(TINY)


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    return private_copy(trained, tmp_path)


def _checkpoint(store: Path, epoch: int) -> dict[str, Any]:
    st = Store(store)
    run_id = st.resolve("tiny")
    return torch.load(st.run_dir(run_id) / f"checkpoints/epoch-{epoch:04d}.pt", weights_only=True)


def _batches(n: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training set's first batches, normalized by hand."""
    d = load_dataset("digits")
    x = (d.train_x.float() / 255 - d.info.mean[0]) / d.info.std[0]
    return [(x[i * size:(i + 1) * size], d.train_y[i * size:(i + 1) * size]) for i in range(n)]


def _loss_at(ckpt: dict[str, Any], delta: dict[str, torch.Tensor], batch: tuple, bn: str = "train") -> tuple[float, float]:
    model = create_model(ckpt["model"], **ckpt["model_args"])
    state = dict(ckpt["state_dict"])
    for name, d in delta.items():
        state[name] = state[name] + d
    model.load_state_dict(state)
    model.train(bn == "train")
    with torch.no_grad():
        out = model(batch[0])
    return F.cross_entropy(out, batch[1]).item(), (out.argmax(1) == batch[1]).float().mean().item()


def test_center_equals_the_checkpoint_loss(store: Path) -> None:
    for bn in ("train", "eval"):
        g = grid("tiny", store=store, bn=bn, **SMALL)
        ds = g.to_xarray()
        for epoch in (0, 1, 2):
            ckpt = _checkpoint(store, epoch)
            for b, batch in enumerate(_batches(2, 64)):
                loss, acc = _loss_at(ckpt, {}, batch, bn)
                for pair in (0, 1):
                    # width 5: the centre is x = y = 0
                    assert float(ds.loss.sel(epoch=epoch, pair=pair, batch=b, x=0, y=0)) == pytest.approx(loss, rel=1e-5)
                    assert float(ds.accuracy.sel(epoch=epoch, pair=pair, batch=b, x=0, y=0)) == pytest.approx(acc)
                assert float(ds.center_loss.sel(epoch=epoch, batch=b)) == pytest.approx(loss, rel=1e-5)


def test_grid_points_equal_hand_perturbed_models(store: Path) -> None:
    g = grid("tiny", store=store, **SMALL)
    meta = json.loads((g.path / "grid.json").read_text())
    ds = g.to_xarray()
    rng = random.Random(0)
    batches = _batches(2, 64)
    for _ in range(4):
        epoch, pair, b = rng.choice([0, 1, 2]), rng.choice([0, 1]), rng.choice([0, 1])
        yi, xi = rng.randrange(5), rng.randrange(5)
        ckpt = _checkpoint(store, epoch)
        raw = torch.load(g.path.parent.parent / meta["directions"][pair]["file"], weights_only=True)
        weights = {k: v for k, v in ckpt["state_dict"].items() if "running" not in k and "num_batches" not in k}
        d1, d2 = filter_normalized(raw["d1"], weights), filter_normalized(raw["d2"], weights)
        a, b_ = float(ds.x[xi]), float(ds.y[yi])
        delta = {n: a * d1[n] + b_ * d2[n] for n in d1}
        loss, acc = _loss_at(ckpt, delta, batches[b])
        got = ds.loss.isel(epoch=[0, 1, 2].index(epoch), pair=pair, batch=b, y=yi, x=xi)
        assert float(got) == pytest.approx(loss, rel=1e-4), (epoch, pair, b, yi, xi)
        assert float(ds.accuracy.isel(epoch=epoch, pair=pair, batch=b, y=yi, x=xi)) == pytest.approx(acc)


def test_projected_gradients_are_stored(store: Path) -> None:
    g = grid("tiny", store=store, epochs=[2], **SMALL)
    meta = json.loads((g.path / "grid.json").read_text())
    ds = g.to_xarray()
    ckpt = _checkpoint(store, 2)
    model = create_model(ckpt["model"], **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    model.train()
    weights = {k: v.detach() for k, v in model.named_parameters()}
    raw = torch.load(g.path.parent.parent / meta["directions"][1]["file"], weights_only=True)
    d1, d2 = filter_normalized(raw["d1"], weights), filter_normalized(raw["d2"], weights)
    x, y = _batches(2, 64)[1]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    ga = sum(float((params[n].grad * d1[n]).sum()) for n in d1)
    gb = sum(float((params[n].grad * d2[n]).sum()) for n in d2)
    assert float(ds.grad_a.sel(epoch=2, pair=1, batch=1)) == pytest.approx(ga, rel=1e-3)
    assert float(ds.grad_b.sel(epoch=2, pair=1, batch=1)) == pytest.approx(gb, rel=1e-3)


def test_gradients_can_be_skipped_and_added_later(store: Path) -> None:
    lean = grid("tiny", store=store, epochs=[1], gradient=False, **SMALL)
    ds = lean.to_xarray()
    assert np.isnan(ds.grad_a.values).all() and np.isnan(ds.grad_b.values).all()
    assert np.isfinite(ds.center_loss.values).all() and (ds.center_done.values == 1).all()
    from landscape_cli.views.figures import plot

    figure = plot(["tiny"], store=store, epochs=[1])
    assert figure.arrow_scale is None and not any(ax.texts for ax in figure.panel_axes)
    full = grid("tiny", store=store, epochs=[1], **SMALL)  # the same grid: only the gradients are computed
    assert full.grid_id == lean.grid_id and full.computed_rows == 0
    ds = full.to_xarray()
    assert np.isfinite(ds.grad_a.values).all() and (ds.center_done.values == 2).all()
    fresh = private_copy(store, store.parent / "fresh")
    shutil.rmtree(next(fresh.glob("*/grids")))
    reference = grid("tiny", store=fresh, epochs=[1], **SMALL).to_xarray()
    assert np.array_equal(ds.grad_a.values, reference.grad_a.values)
    assert np.array_equal(ds.loss.values, reference.loss.values)


def test_layout_opens_in_xarray(store: Path) -> None:
    import xarray as xr

    g = grid("tiny", store=store, epochs=[0, 2], span=0.5, **SMALL)
    ds = xr.open_zarr(g.zarr_path)
    assert ds.loss.dims == ("epoch", "pair", "batch", "y", "x")
    assert ds.loss.shape == (2, 2, 2, 5, 5) and ds.loss.dtype == np.float32
    assert ds.accuracy.dims == ds.loss.dims
    assert list(ds.epoch.values) == [0, 2] and list(ds.pair.values) == [0, 1] and list(ds.batch.values) == [0, 1]
    assert np.allclose(ds.x.values, [-0.5, -0.25, 0, 0.25, 0.5]) and np.allclose(ds.y.values, ds.x.values)
    assert ds.grad_a.dims == ("epoch", "pair", "batch") and ds.center_loss.dims == ("epoch", "batch")
    assert bool((ds.done == 1).all()) and np.isfinite(ds.loss.values).all()


def test_same_grid_again_computes_nothing_and_more_epochs_extend_it(store: Path) -> None:
    first = grid("tiny", store=store, epochs=[0, 2], **SMALL)
    assert first.computed_rows == 2 * 2 * 5 and first.complete
    again = grid("tiny", store=store, epochs=[2, 0], **SMALL)
    assert again.computed_rows == 0 and again.grid_id == first.grid_id
    more = grid("tiny", store=store, epochs=[0, 1, 2], **SMALL)
    assert more.grid_id == first.grid_id and more.computed_rows == 2 * 5 and more.meta.epochs == [0, 2, 1]
    assert len(list((store).glob("*/grids/*"))) == 1


def test_partial_grid_needs_resume_and_resume_is_bitwise(store: Path) -> None:
    g = grid("tiny", store=store, **SMALL)
    before = g.to_xarray().loss.values.copy()
    rows = Rows(g.zarr_path)
    rows.clear_row(1, 0, 3)
    rows.clear_row(2, 1, 0)
    with pytest.raises(GridStateError, match=r"is 93% done \(28 of 30 rows\): pass --resume"):
        grid("tiny", store=store, **SMALL)
    resumed = grid("tiny", store=store, resume=True, **SMALL)
    assert resumed.computed_rows == 2 and resumed.complete
    assert np.array_equal(resumed.to_xarray().loss.values, before)


def test_zoom_and_layer_grids_share_the_directions(store: Path) -> None:
    base = grid("tiny", store=store, **SMALL)
    zoom = grid("tiny", store=store, span=0.01, **SMALL)
    layer = grid("tiny", store=store, layer="features.4.weight", **SMALL)
    assert zoom.grid_id != base.grid_id != layer.grid_id
    assert base.meta.directions == zoom.meta.directions == layer.meta.directions
    run_dir = base.path.parent.parent
    assert len(list((run_dir / "directions").glob("*.pt"))) == 2


def test_layer_grid_moves_only_that_layer(store: Path) -> None:
    g = grid("tiny", store=store, layer="features.4.weight", epochs=[2], **SMALL)
    meta = json.loads((g.path / "grid.json").read_text())
    ckpt = _checkpoint(store, 2)
    raw = torch.load(g.path.parent.parent / meta["directions"][0]["file"], weights_only=True)
    weights = {k: v for k, v in ckpt["state_dict"].items() if "running" not in k and "num_batches" not in k}
    d1 = filter_normalized(raw["d1"], weights)["features.4.weight"]
    d2 = filter_normalized(raw["d2"], weights)["features.4.weight"]
    loss, _ = _loss_at(ckpt, {"features.4.weight": -1.0 * d1 + 0.5 * d2}, _batches(1, 64)[0])
    ds = g.to_xarray()
    assert float(ds.loss.sel(epoch=2, pair=0, batch=0, x=-1.0, y=0.5)) == pytest.approx(loss, rel=1e-4)
    full = grid("tiny", store=store, epochs=[2], **SMALL).to_xarray()
    assert float(full.loss.sel(epoch=2, pair=0, batch=0, x=-1.0, y=0.5)) != pytest.approx(loss, rel=1e-3)


def test_directions_from_another_run_of_the_same_model(store: Path) -> None:
    source = grid("tiny", store=store, seed=7, norm="filter-std", name="src", **SMALL)
    tanh = train("cnn", "digits", epochs=1, activation="tanh", store=store, progress=False)
    reused = grid(tanh.run_id, store=store, directions_from="src", **SMALL)
    assert reused.meta.config.seed == 7 and reused.meta.config.norm == "filter-std"
    assert [d.id for d in reused.meta.directions] == [d.id for d in source.meta.directions]
    mlp = train("mlp", "digits", epochs=0, store=store, progress=False)
    with pytest.raises(UsageError, match="same architecture"):
        grid(mlp.run_id, store=store, directions_from="src", **SMALL)
    with pytest.raises(UsageError, match="contradicts"):
        grid(tanh.run_id, store=store, directions_from="src", seed=1, **SMALL)


def test_damaged_checkpoint_is_refused(store: Path) -> None:
    ckpt = next(store.glob("*/checkpoints/epoch-0001.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="checkpoint of epoch 1"):
        grid("tiny", store=store, epochs=[1], **SMALL)


def test_damaged_chunk_is_recomputed_on_resume(store: Path) -> None:
    g = grid("tiny", store=store, epochs=[0], **SMALL)
    before = g.to_xarray().loss.values.copy()
    chunk = g.zarr_path / "loss" / "c" / "0" / "1" / "0" / "2" / "0"  # epoch 0, pair 1, row 2
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    resumed = grid("tiny", store=store, epochs=[0], resume=True, **SMALL)
    assert resumed.repaired and resumed.computed_rows == 1
    assert np.array_equal(resumed.to_xarray().loss.values, before)


def test_parse_epochs() -> None:
    assert parse_epochs("0,1,9") == [0, 1, 9]
    assert parse_epochs("0-3, 9") == [0, 1, 2, 3, 9]
    assert parse_epochs(None) is None
    for bad in ("a", "1,,2", "-1", "3-x"):
        with pytest.raises(UsageError):
            parse_epochs(bad)
    with pytest.raises(UsageError, match="names over 1,000,000 epochs"):  # refused before the range is expanded
        parse_epochs("0-99999999999")
    with pytest.raises(UsageError, match="--at-steps"):
        parse_steps("10,x")


GRID_ARGS = ["grid", "tiny", "--epochs", "0,2", "--width", "11", "--pairs", "2", "--batches", "3", "--batch-size", "128",
             "--quiet"]


@pytest.mark.slow
def test_killed_grid_resumes_bitwise(store: Path, trained_store: StoreFactory, tmp_path: Path) -> None:
    """SIGKILL at a random moment, then --resume: arrays bitwise equal to an uninterrupted run."""
    # the uninterrupted run: the same store and command, in-process with one thread (a read-only master)
    reference = trained_store.build(TINY, Cli(*GRID_ARGS))
    proc = subprocess.Popen([sys.executable, "-m", "landscape_cli", *GRID_ARGS, "--store", str(store)],
                            env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(store.glob("*/grids/*/landscape.zarr/done/c/0/1/3")):
        time.sleep(0.01)
    time.sleep(random.Random(1).uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = run_in_process(*GRID_ARGS, "--store", str(store))
    assert partial.returncode == 1 and "pass --resume" in partial.stderr
    resumed = run_in_process(*GRID_ARGS, "--resume", "--store", str(store))
    assert resumed.returncode == 0, resumed.stderr
    import xarray as xr

    [a] = store.glob("*/grids/*/landscape.zarr")
    [b] = reference.glob("*/grids/*/landscape.zarr")
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    for name in ("loss", "accuracy", "grad_a", "grad_b", "center_loss", "done"):
        assert np.array_equal(da[name].values, db[name].values, equal_nan=True), name


def test_a_line_is_the_middle_row_of_its_plane(store: Path) -> None:
    """--dims 1 follows each pair's first direction: with the same seed it is the plane's row b = 0, bitwise."""
    plane = grid("tiny", store=store, epochs=[0, 2], seed=5, **SMALL).to_xarray()
    line = grid("tiny", store=store, epochs=[0, 2], seed=5, dims=1, **SMALL)
    ds = line.to_xarray()
    assert ds.loss.dims == ("epoch", "pair", "batch", "x") and ds.done.dims == ("epoch", "pair")
    assert "y" not in ds and "grad_b" not in ds and line.rows_total == 2 * 2
    middle = plane.sel(y=0.0)
    for name in ("loss", "accuracy"):
        assert np.array_equal(ds[name].values, middle[name].values), name
    assert np.array_equal(ds.grad_a.values, plane.grad_a.values)
    assert np.array_equal(ds.center_loss.values, plane.center_loss.values)
    # and a point checked by hand: the checkpoint moved along the filter-normalized first direction
    ckpt = _checkpoint(store, 2)
    raw = torch.load(line.path.parent.parent / line.meta.directions[1].file, weights_only=True)
    weights = {k: v for k, v in ckpt["state_dict"].items() if "running" not in k and "num_batches" not in k}
    d1 = filter_normalized(raw["d1"], weights)
    loss, _ = _loss_at(ckpt, {n: -0.5 * d1[n] for n in d1}, _batches(2, 64)[1])
    assert float(ds.loss.sel(epoch=2, pair=1, batch=1, x=-0.5)) == pytest.approx(loss, rel=1e-4)


def test_a_line_resumes_and_grows_like_a_plane(store: Path) -> None:
    first = grid("tiny", store=store, epochs=[0], dims=1, **SMALL)
    Rows(first.zarr_path).clear_row(0, 1, 0)
    with pytest.raises(GridStateError, match=r"50% done \(1 of 2 rows\)"):
        grid("tiny", store=store, epochs=[0], dims=1, **SMALL)
    resumed = grid("tiny", store=store, epochs=[0, 1], dims=1, resume=True, **SMALL)
    assert resumed.grid_id == first.grid_id and resumed.computed_rows == 1 + 2 and resumed.complete


def _split_loss(ckpt: dict[str, Any], x: torch.Tensor, y: torch.Tensor, bn: str) -> tuple[float, float]:
    model = create_model(ckpt["model"], **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    model.train(bn == "train")
    with torch.no_grad():
        out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def test_batches_all_is_the_sample_mean_over_the_split(store: Path) -> None:
    """--batches all: one entry, the loss averaged over samples (not batches); with batch statistics a
    last piece smaller than half a batch is merged into the one before it."""
    d = load_dataset("digits")
    x = (d.train_x.float() / 255 - d.info.mean[0]) / d.info.std[0]
    ckpt = _checkpoint(store, 2)
    small = {"width": 3, "pairs": 1, "progress": False, "epochs": [2]}
    # eval mode: each sample's loss is independent of the pieces (500, 500, 437: the last one smaller)
    g = grid("tiny", store=store, batches="all", batch_size=500, bn="eval", **small)
    ds = g.to_xarray()
    assert ds.loss.shape == (1, 1, 1, 3, 3) and g.meta.config.identity()["batches"] == "all"
    loss, acc = _split_loss(ckpt, x, d.train_y, "eval")  # all 1437 at once
    assert float(ds.center_loss.sel(epoch=2, batch=0)) == pytest.approx(loss, rel=1e-5)
    assert float(ds.loss.sel(epoch=2, pair=0, batch=0, x=0.0, y=0.0)) == pytest.approx(loss, rel=1e-5)
    assert float(ds.accuracy.sel(epoch=2, pair=0, batch=0, x=0.0, y=0.0)) == pytest.approx(acc, abs=1e-6)
    # train mode: pieces of 450, 450, 450 + 87 (merged: 87 < 225), weighted by their sizes
    g = grid("tiny", store=store, batches="all", batch_size=450, bn="train", **small)
    pieces = [(0, 450), (450, 900), (900, 1437)]
    expected = sum((b - a) * _split_loss(ckpt, x[a:b], d.train_y[a:b], "train")[0] for a, b in pieces) / 1437
    assert float(g.to_xarray().center_loss.sel(epoch=2, batch=0)) == pytest.approx(expected, rel=1e-5)


def test_points_can_see_the_validation_split(store: Path) -> None:
    d = load_dataset("digits")
    x = (d.val_x.float() / 255 - d.info.mean[0]) / d.info.std[0]
    g = grid("tiny", store=store, split="val", batches=2, batch_size=64, width=3, pairs=1, epochs=[1], progress=False)
    assert g.meta.config.identity()["split"] == "val"
    loss, _ = _split_loss(_checkpoint(store, 1), x[64:128], d.val_y[64:128], "train")
    assert float(g.to_xarray().center_loss.sel(epoch=1, batch=1)) == pytest.approx(loss, rel=1e-5)
    with pytest.raises(UsageError, match="360 validation images: at most 1 batches of 256"):
        grid("tiny", store=store, split="val", batches=2, width=3, progress=False)


def test_a_grid_killed_before_its_metadata_is_not_damage(store: Path) -> None:
    """A SIGKILL between creating the arrays and writing grid.json (nothing computed yet) leaves a grid
    `verify` lists as unfinished, not damaged; once rows exist, a missing grid.json is damage."""
    from landscape_cli.store.verify import verify

    g = grid("tiny", store=store, epochs=[0], **SMALL)
    (g.path / "grid.json").unlink()
    report = verify(store)
    assert not report.ok and report.problems[0].problem == "grid.json is missing"
    rows = Rows(g.zarr_path)
    for p in range(2):
        for y in range(5):
            rows.clear_row(0, p, y)
    report = verify(store)
    assert report.ok and report.unfinished == [str(g.path)]
    again = grid("tiny", store=store, epochs=[0], **SMALL)  # the same command creates it again
    assert again.complete and verify(store).ok
