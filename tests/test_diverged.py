"""A diverged point (its loss NaN or ±Inf) has no accuracy: the kernel returns NaN there (loop, batched, centre,
evaluate_plane), and every reader of the tool (plot's readers, open(), exports, stats) reads NaN there in grids
stored before, when the argmax of NaN logits was stored as an accuracy; those grids are not rewritten."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import Grid, StoreFactory, Train, tree

import landscape_cli
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())
# the plane's points at ±k·1e18 along filter-normalized directions: the centre's 3x3 or so stay finite, the
# rest overflow float32 (+Inf losses)
FAR = {"epochs": [1], "width": 11, "span": 1e19, "pairs": 1, "batches": 2, "batch_size": 64}


@pytest.fixture(scope="module")
def diverging(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_store.copy(
        Train("mlp", epochs=1, name="far"),
        Grid("far", **FAR, name="loop"),
        Grid("far", **FAR, seed=1, points_per_pass=4, name="batched"),  # another draw: its own grid
        to=tmp_path_factory.mktemp("diverged") / "store")


def _independent(store: Path, grid_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Loss and argmax accuracy [batch, y, x] at every point, by plain torch: the checkpoint's weights moved by
    x·d1 + y·d2 (the stored draw, filter-normalized), cross-entropy on the grid's batches, in eval mode (an MLP has
    no BatchNorm). The accuracy is the raw argmax count, whatever the logits."""
    import torch
    from torch.func import functional_call

    from landscape_cli.data import load_dataset
    from landscape_cli.directions import normalize, perturbed_names
    from landscape_cli.models.checkpoints import build_model

    st = Store(store)
    run_id, grid_id = st.find_grid(grid_name)
    meta = st.read_grid(run_id, grid_id)
    cfg = meta.config
    record = st.read_run(run_id).record(1)
    assert record is not None
    model = build_model(torch.load(st.file(run_id, record.checkpoint), weights_only=True)).eval()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    names = perturbed_names(weights)
    raw = torch.load(st.file(run_id, meta.directions[0].file), weights_only=True)
    d1, d2 = (normalize(raw[k], weights, names, cfg.norm) for k in ("d1", "d2"))
    data = load_dataset("digits")
    n = cfg.batch_size
    batches = [(data.normalize(data.train_x[b * n:(b + 1) * n]), data.train_y[b * n:(b + 1) * n])
               for b in range(cfg.batches)]
    coords = Rows(st.zarr_path(run_id, grid_id), "r")
    xs, ys = np.asarray(coords["x"][:]), np.asarray(coords["y"][:])
    loss = np.empty((len(batches), len(ys), len(xs)))
    acc = np.empty_like(loss)
    with torch.no_grad():
        for j, b in enumerate(ys):
            for i, a in enumerate(xs):
                moved = {k: (weights[k].clone().add_(d1[k], alpha=float(a)).add_(d2[k], alpha=float(b))
                             if k in d1 else weights[k]) for k in weights}
                for k, (x, y) in enumerate(batches):
                    out = functional_call(model, moved, (x,))
                    loss[k, j, i] = float(torch.nn.functional.cross_entropy(out, y))
                    acc[k, j, i] = float((out.argmax(1) == y).double().mean())
    return loss, acc


@pytest.mark.parametrize("grid_name", ["loop", "batched"])
def test_a_diverging_grid_stores_nan_accuracy_exactly_where_the_loss_is_not_finite(diverging: Path,
                                                                                    grid_name: str) -> None:
    st = Store(diverging)
    run_id, grid_id = st.find_grid(grid_name)
    assert st.read_grid(run_id, grid_id).evaluator.points_per_pass == (4 if grid_name == "batched" else 1)
    rows = Rows(st.zarr_path(run_id, grid_id), "r")
    loss = np.asarray(rows["loss"][0, 0], np.float64)  # [batch, y, x]
    acc = np.asarray(rows["accuracy"][0, 0], np.float64)
    finite = np.isfinite(loss)
    assert 0 < finite.sum() < finite.size  # some points diverged, some did not
    np.testing.assert_array_equal(np.isnan(acc), ~finite)
    # against plain torch: the same points diverge; where finite, the same loss and accuracy; where not, the
    # argmax of the overflowed logits still counts some images right, which is what the grid no longer stores
    want_loss, want_acc = _independent(diverging, grid_name)
    np.testing.assert_array_equal(np.isfinite(want_loss), finite)
    np.testing.assert_allclose(loss[finite], want_loss[finite], rtol=1e-4)
    np.testing.assert_array_equal(acc[finite], want_acc[finite].astype(np.float32))
    assert np.all(np.isfinite(want_acc[~finite])) and want_acc[~finite].max() > 0
    # the diverged counts agree, and the centre (the checkpoint) is finite with its accuracy
    assert int(np.asarray(rows["diverged"][0, 0]).sum()) == int((~finite).sum())
    center_loss, center_acc = np.asarray(rows["center_loss"][0]), np.asarray(rows["center_accuracy"][0])
    assert np.all(np.isfinite(center_loss)) and np.all(np.isfinite(center_acc))


def test_the_kernel_masks_the_centre_and_evaluate_plane() -> None:
    """A linear classifier whose weights overflow: evaluate_plane and a slice's centre (the weights themselves
    diverged) give NaN accuracy exactly where their loss is not finite, the raw argmax count elsewhere."""
    import torch
    from torch import nn

    from landscape_cli.kernel.evaluate import Evaluator, evaluate_plane

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    d1 = {"weight": torch.ones(3, 4), "bias": torch.zeros(3)}
    d2 = {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}
    a_values, b_values = [0.0, 1.0, 1e30, 3e38], [0.0]
    loss, acc = evaluate_plane(model, [(x, y)], d1, d2, a_values, b_values)
    assert loss.shape == acc.shape == (1, 1, 4)
    for i, a in enumerate(a_values):
        with torch.no_grad():
            out = x @ (model.weight + a * d1["weight"]).T + model.bias
            want = float(nn.functional.cross_entropy(out, y))
            raw = float((out.argmax(1) == y).float().mean())
        assert math.isfinite(want) == math.isfinite(float(loss[0, 0, i])), a
        if math.isfinite(want):
            assert float(loss[0, 0, i]) == pytest.approx(want, rel=1e-5) and float(acc[0, 0, i]) == pytest.approx(raw)
        else:
            assert math.isnan(float(acc[0, 0, i])) and math.isfinite(raw)
    assert np.isfinite(loss[0, 0, :2]).all() and not np.isfinite(loss[0, 0, 3])
    # the centre of a slice whose own weights hold a NaN
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
        raw = float((model(x).argmax(1) == y).float().mean())
    assert math.isfinite(raw)  # (argmax of NaN logits: the first NaN's class)
    ev = Evaluator(model, [(x, y)], bn="eval")
    with ev.affine([d1]) as s:
        center = s.center()
        values, accuracy = s.evaluate([(0.0,), (1.0,)])
    assert np.isnan(center.loss).all() and np.isnan(center.accuracy).all()
    assert np.isnan(values).all() and np.isnan(accuracy).all()
    loss_only, acc_only = ev.values()
    assert np.isnan(loss_only).all() and np.isnan(acc_only).all()


# --- grids stored before: masked on read, never rewritten ----------------------------------------------------

OLD = 0.098  # what an old grid stored at a diverged point: the argmax of NaN logits hitting one class in ten


def _old_grid(store: Path) -> dict[str, Any]:
    """A copy of the frozen store whose random plane (epoch 3) and PCA path hold diverged points with a finite
    accuracy, written with zarr as a grid computed before the kernel wrote NaN holds them."""
    shutil.copytree(LEGACY2 / "store", store)
    st = Store(store)
    run_id = IDS["run_id"]
    plane, pca, line = (st.zarr_path(run_id, IDS["grids"][k]) for k in ("shards", "pca", "line"))
    ei = 1  # epoch 3
    points = [(0, 1), (4, 4), (2, 3)]  # (y, x)
    for (yy, xx), bad in zip(points, [np.nan, np.inf, -np.inf], strict=True):
        zarr.open_array(plane / "loss", mode="r+")[ei, 0, 0, yy, xx] = bad
        zarr.open_array(plane / "accuracy", mode="r+")[ei, 0, 0, yy, xx] = OLD
    zarr.open_array(plane / "center_loss", mode="r+")[ei, 0] = np.inf
    zarr.open_array(plane / "center_accuracy", mode="r+")[ei, 0] = OLD
    zarr.open_array(line / "loss", mode="r+")[ei, 1, 0, 7] = np.nan
    zarr.open_array(line / "accuracy", mode="r+")[ei, 1, 0, 7] = OLD
    zarr.open_array(pca / "path_loss", mode="r+")[0, 0] = np.nan
    zarr.open_array(pca / "path_accuracy", mode="r+")[0, 0] = OLD
    return {"st": st, "run": run_id, "plane": plane, "pca": pca, "line": line, "points": points}


def _expected(accuracy: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """The masking rule written out element by element (not through the tool's function)."""
    out = np.array(accuracy, np.float64)
    for idx in np.ndindex(*out.shape):
        if not math.isfinite(float(loss[idx])):
            out[idx] = math.nan
    return out


def test_an_old_grid_reads_nan_accuracy_at_diverged_points_everywhere(tmp_path: Path) -> None:
    from landscape_cli.curvature.stats import stats
    from landscape_cli.views.readers import read_epoch, read_line, read_path, select_sources

    old = _old_grid(tmp_path / "store")
    st, plane, points = old["st"], old["plane"], old["points"]
    before = {k: tree(old[k]) for k in ("plane", "pca", "line")}
    raw_loss = np.asarray(zarr.open_array(plane / "loss", mode="r")[...], np.float64)
    raw_acc = np.asarray(zarr.open_array(plane / "accuracy", mode="r")[...], np.float64)
    want = _expected(raw_acc, raw_loss)
    assert np.isnan(want).sum() == 3 and all(raw_acc[1, 0, 0, yy, xx] == np.float32(OLD) for yy, xx in points)

    # plot's readers (the figures and the HTML page read through them)
    [source] = select_sources(st, ["legacy2"], ["shards"])
    data = read_epoch(source, 3, "accuracy")
    np.testing.assert_array_equal(data.values, want[1])
    assert np.isnan(data.center).all()
    np.testing.assert_array_equal(read_epoch(source, 2, "accuracy").values, want[0])  # epoch 2: as stored
    np.testing.assert_array_equal(read_epoch(source, 3, "loss").values, raw_loss[1])  # the loss as stored
    [line_source] = select_sources(st, ["legacy2"], ["line"])
    line = read_line(line_source, 3, "accuracy")
    line_loss = np.asarray(zarr.open_array(old["line"] / "loss", mode="r")[1], np.float64)
    line_acc = np.asarray(zarr.open_array(old["line"] / "accuracy", mode="r")[1], np.float64)
    np.testing.assert_array_equal(line.values, _expected(line_acc, line_loss))
    assert np.isnan(line.values[1, 0, 7]) and np.isnan(line.values).sum() == 1
    [pca_source] = select_sources(st, ["legacy2"], ["pca"])
    path = read_path(pca_source, "accuracy")
    assert path is not None and np.isnan(path.own[0, 0]) and np.isfinite(path.own[1:]).all()

    # a figure of the accuracy: the panel's values
    result = landscape_cli.plot(["legacy2"], grids=["shards"], epochs=[3], metric="accuracy", store=st.root,
                                out=tmp_path / "acc.png")
    [panel] = result.panels
    np.testing.assert_array_equal(panel.values, want[1, 0, 0])

    # open(): a lazily masked Dataset
    ds = landscape_cli.open("legacy2", grid="shards", store=st.root)
    np.testing.assert_array_equal(ds["accuracy"].values, want)
    assert ds["accuracy"].dtype == np.float32 and ds["accuracy"].dims == ("epoch", "pair", "batch", "y", "x")
    assert np.isnan(ds["center_accuracy"].values[1, 0]) and np.isfinite(ds["center_accuracy"].values[0, 0])
    np.testing.assert_array_equal(ds["loss"].values, raw_loss)
    pca_ds = landscape_cli.open("legacy2", grid="pca", store=st.root)
    assert np.isnan(pca_ds["path_accuracy"].values[0, 0]) and np.isfinite(pca_ds["path_accuracy"].values[1:]).all()

    # an npz export
    out = tmp_path / "plane.npz"
    landscape_cli.export("legacy2", grid="shards", format="npz", out=out, store=st.root)
    with np.load(out) as f:
        np.testing.assert_array_equal(f["accuracy"], want)
        np.testing.assert_array_equal(f["loss"], raw_loss.astype(np.float32))
        assert np.isnan(f["center_accuracy"][1, 0]) and f["center_accuracy"][0, 0] == \
            np.asarray(zarr.open_array(plane / "center_accuracy", mode="r")[0, 0])

    # stats: the centre accuracy where the centre loss is +Inf
    result = stats("legacy2", grid="shards", store=st.root, cache=False)
    by_epoch = {e["epoch"]: e for e in result.epochs}
    assert math.isnan(by_epoch[3]["mean"]["center_accuracy"])
    assert math.isnan(by_epoch[3]["panels"][0]["center_accuracy"])
    stored_e2 = float(np.asarray(zarr.open_array(plane / "center_accuracy", mode="r")[0, 0]))
    assert by_epoch[2]["mean"]["center_accuracy"] == pytest.approx(stored_e2)

    # no grid was rewritten: a raw Zarr reader still sees the old values
    assert {k: tree(old[k]) for k in ("plane", "pca", "line")} == before
    assert float(zarr.open_array(plane / "accuracy", mode="r")[1, 0, 0, 0, 1]) == np.float32(OLD)
