"""`landscape grid --directions plane`: the plane through three checkpoints, against hand-built weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Cli, Train, run_in_process, tree

R = Train("cnn", epochs=4, name="r")  # five checkpoints (test_directions' master run)
OTHER = Train("cnn", epochs=1, seed=1, name="other")
GRID = ("grid", "r", "--directions", "plane", "--epochs", "4", "--through", "0", "--through", "other:1", "--width",
        "4", "--batches", "1", "--batch-size", "64", "--bn", "train", "--name", "abc", "-q")


def flat_weights(state: dict[str, torch.Tensor], names: list[str]) -> np.ndarray:
    return np.concatenate([state[n].double().reshape(-1).numpy() for n in names])


def plane_by_hand(ds: Any, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plane's orthonormal basis by hand (numpy, float64): u along B − A, v the rest of C − A; and the three
    points' coordinates [3, 2], which the grid `ds` must hold as through_x, through_y."""
    u = (b - a) / np.linalg.norm(b - a)
    rest = (c - a) - ((c - a) @ u) * u
    v = rest / np.linalg.norm(rest)
    expected = np.array([[0.0, 0.0], [np.linalg.norm(b - a), 0.0], [(c - a) @ u, (c - a) @ v]])
    assert np.allclose(ds.through_x.values, expected[:, 0], rtol=1e-9, atol=1e-9)
    assert np.allclose(ds.through_y.values, expected[:, 1], rtol=1e-9, atol=1e-9)
    return u, v, expected


def model_at(checkpoint: dict[str, Any], weights: np.ndarray) -> torch.nn.Module:
    """The checkpoint's model with its parameters, in order, set to the flat float64 `weights` (as float32)."""
    from landscape_cli.models.checkpoints import build_model

    net = build_model(checkpoint)
    start = 0
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.from_numpy(weights[start:start + p.numel()]).view_as(p))
            start += p.numel()
    return net


def test_the_plane_holds_the_three_checkpoints_and_its_points_are_hand_built_weights(trained_store: Any) -> None:
    import xarray as xr

    from landscape_cli.data import load_dataset
    from landscape_cli.kernel.batches import Batches
    from landscape_cli.models.checkpoints import build_model, load_epoch
    from landscape_cli.store import Store

    root = trained_store.build(R, OTHER, Cli(*GRID))
    st = Store(root)
    run = st.read_run(st.resolve("r"))
    other = st.read_run(st.resolve("other"))
    [grid_meta] = st.grids(run.id)
    ds = xr.open_zarr(root / run.id / "grids" / grid_meta.id / "landscape.zarr", consolidated=False)

    checkpoint_a = load_epoch(st, run.id, run.record(4))
    states = [checkpoint_a["state_dict"], load_epoch(st, run.id, run.record(0))["state_dict"],
              load_epoch(st, other.id, other.record(1))["state_dict"]]
    model = build_model(checkpoint_a)
    names = [n for n, _ in model.named_parameters()]
    a, b, c = (flat_weights(s, names) for s in states)
    u, v, expected = plane_by_hand(ds, a, b, c)
    # each checkpoint sits at its recorded coordinates: A + x·u + y·v is that checkpoint's weights
    for point, (x, y) in zip((a, b, c), expected, strict=True):
        assert np.abs(a + x * u + y * v - point).max() <= 1e-9 * np.abs(point).max()
    # the default ranges hold the three points with a margin
    assert ds.x.values[0] < expected[:, 0].min() and ds.x.values[-1] > expected[:, 0].max()
    assert ds.y.values[0] < expected[:, 1].min() and ds.y.values[-1] > expected[:, 1].max()

    # a grid point's loss is that of the hand-built weights (float32) on the grid's batch, in training mode
    data = load_dataset("digits")
    [(xb, yb)] = list(Batches(data, "train", 1, 64).on(torch.device("cpu"), False))
    for i, j in ((1, 2), (3, 0)):
        x, y = float(ds.x.values[i]), float(ds.y.values[j])
        net = model_at(checkpoint_a, a + x * u + y * v)
        net.train()
        with torch.no_grad():
            loss = float(F.cross_entropy(net(xb), yb))
        stored = float(ds.loss.sel(epoch=4).values[0, 0, j, i])
        assert stored == pytest.approx(loss, rel=2e-5), (i, j)
    facts = json.loads((root / run.id / "grids" / grid_meta.id / "grid.json").read_text())["kind"]["through"]
    assert [f["label"] for f in facts] == ["A: epoch 4", "B: epoch 0", f"C: epoch 1 of {other.name}"]


@pytest.mark.parametrize("args, needle", [
    (("--through", "0"), "needs two --through points"),
    (("--through", "0", "--through", "4"), "three different checkpoints"),
    (("--through", "0", "--through", "9"), "no checkpoint for epoch 9"),
    (("--through", "0", "--through", "1", "--bn", "eval"), "--bn eval"),
    (("--through", "0", "--through", "1", "--epochs", "2,3"), "one --epochs"),
])
def test_bad_planes_are_one_line_and_write_nothing(copy_store: Any, args: tuple[str, ...], needle: str) -> None:
    store = copy_store(R)
    before = tree(store)
    argv = ["grid", "r", "--directions", "plane", "--store", str(store), "-q", *args]
    if "--epochs" not in args:
        argv += ["--epochs", "4"]
    out = run_in_process(*argv)
    assert out.returncode != 0 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert tree(store) == before


def test_a_run_of_another_model_is_refused_with_or_without_its_epoch(copy_store: Any) -> None:
    store = copy_store(R, Train("mlp", epochs=1, name="m"))
    for through in ("m", "m:1"):
        out = run_in_process("grid", "r", "--directions", "plane", "--epochs", "4", "--through", "0", "--through",
                             through, "--store", str(store), "-q")
        assert out.returncode == 2 and "the plane needs three checkpoints of the same model" in out.stderr, out.stderr


def test_through_with_another_kind_is_one_line(copy_store: Any) -> None:
    store = copy_store(R)
    out = run_in_process("grid", "r", "--through", "1", "--store", str(store), "-q")
    assert out.returncode == 2 and "--through" in out.stderr and "random" in out.stderr, out.stderr


def test_the_figure_marks_the_three_checkpoints(trained_store: Any, tmp_path: Path) -> None:
    from landscape_cli import plot

    root = trained_store.copy(R, OTHER, Cli(*GRID), to=tmp_path / "store")  # plot caches the grid's stats
    result = plot("r", store=root, out=tmp_path / "p.svg")
    axes = result.figure.axes[0]
    marked = [line for line in axes.lines if line.get_gid() == "control points"]
    assert len(marked) == 1 and len(marked[0].get_xdata()) == 3
    texts = [t.get_text() for t in axes.texts]
    assert {"A: epoch 4", "B: epoch 0"} <= set(texts) and axes.get_ylabel() == "y (towards w_C)"
