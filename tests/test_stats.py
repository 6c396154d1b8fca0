"""`landscape stats`: the metrics of stored grids against independent numpy computations, the in-plane
curvature against the Hessian projected on the grid's directions, the cache, `ls`, the CLI and plot titles."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import Grid, StoreFactory, Train, private_copy, tree

from landscape_cli.errors import StoreError
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows

B = {"batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def stored(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ReLU CNN with planes, a line and a PCA plane, and a tanh MLP (a smooth loss) with small-span grids.

    The module's copy of the session's master (each run trained once per session)."""
    return trained_store.copy(
        Train("cnn", epochs=3, name="t"),
        Grid("t", epochs=[2, 3], width=9, span=1.0, pairs=2, batches=2, name="wide", **B),
        Grid("t", epochs=[3], dims=1, width=21, span=1.0, pairs=2, batches=2, name="line", **B),
        Grid("t", directions="pca", width=9, batches=1, name="pca", **B),
        Train("mlp", epochs=3, activation="tanh", name="smooth"),
        Grid("smooth", epochs=[3], width=11, span=0.05, pairs=2, batches=2, name="zoom", **B),
        Grid("smooth", epochs=[3], dims=1, width=11, span=0.05, pairs=1, batches=1, name="zline", **B),
        to=tmp_path_factory.mktemp("stats") / "store")


def _stats(*args: Any, **kwargs: Any) -> Any:
    from landscape_cli.curvature.stats import stats

    return stats(*args, **kwargs)


def _dataset(store: Path, grid_name: str) -> tuple[xr.Dataset, Any]:
    st = Store(store)
    run_id, grid_id = st.find_grid(grid_name)
    return xr.open_zarr(st.zarr_path(run_id, grid_id)), st.read_grid(run_id, grid_id)


# --- an independent computation --------------------------------------------------------------------------


def reference(values: np.ndarray, done: np.ndarray, x: np.ndarray, y: np.ndarray | None, l0: float, eps: float,
              delta: float) -> dict[str, Any]:
    """The metrics by their definitions, point by point: `values` [H, W] (a line: [W]), `done` [H] (a line: a bool)."""
    if y is None:
        values, done, ys = values[None, :], np.atleast_1d(done), np.array([0.0])
    else:
        ys = y
    points = [(float(x[i]), float(ys[j]), float(values[j, i])) for j in range(len(ys)) if done[j] for i in range(len(x))]
    every_box = [max(abs(a), abs(b)) for a in x for b in ys]

    def level(v: float) -> float:  # a diverged point is above every threshold
        return v if math.isfinite(v) else math.inf

    def box(p: tuple[float, float, float]) -> float:
        return max(abs(p[0]), abs(p[1]))

    sharpness = max([0.0] + [level(p[2]) - l0 for p in points if box(p) <= eps + 1e-12])
    over = [box(p) for p in points if level(p[2]) > l0 + delta]
    finite = [p[2] for p in points if math.isfinite(p[2])]
    # the quadratic through the finite points among the 5 nearest coordinates to 0 on each axis
    near_x = set(sorted(range(len(x)), key=lambda i: abs(x[i]))[:5])
    near_y = set(sorted(range(len(ys)), key=lambda j: abs(ys[j]))[:5])
    fit = [(float(x[i]), float(ys[j]), float(values[j, i])) for j in near_y if done[j] for i in near_x
           if math.isfinite(values[j, i])]
    u, v, target = (np.array([p[k] for p in fit]) for k in range(3))
    if y is None:
        coef = np.linalg.lstsq(np.stack([np.ones_like(u), u, u * u], 1), target, rcond=None)[0]
        hessian = np.array([[2 * coef[2]]])
    else:
        coef = np.linalg.lstsq(np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], 1), target, rcond=None)[0]
        hessian = np.array([[2 * coef[3], coef[4]], [coef[4], 2 * coef[5]]])
    eig = np.linalg.eigvalsh(hessian)
    return {
        "center_loss": l0,
        "hessian": hessian,
        "eigenvalues": sorted(eig, reverse=True),
        "condition": None if y is None else max(abs(eig)) / min(abs(eig)),
        "sharpness": sharpness,
        "sharpness_relative": sharpness / (1 + l0),
        "flat_radius": min(over) if over else max(every_box),
        "flat_radius_lower_bound": not over,
        "share_below": sum(level(p[2]) <= l0 + delta for p in points) / len(points),
        "center_is_min": l0 <= min(finite) + 1e-7 * max(abs(min(finite)), abs(l0)),
        "computed": len(points),
        "diverged": len(points) - len(finite),
    }


def expected(ds: xr.Dataset, epoch: int, eps: float | None, delta: float) -> list[tuple[Any, dict[str, Any]]]:
    """(pair, batch) -> reference metrics for every panel, and (None, None) for the mean landscape."""
    e = ds.sel(epoch=epoch)
    x = e.x.values.astype(np.float64)
    y = e.y.values.astype(np.float64) if "y" in e.loss.dims else None
    reach = max(np.abs(x).max(), np.abs(y).max() if y is not None else 0.0)
    eps = reach if eps is None else eps
    out = []
    for p in e.pair.values:
        for b in e.batch.values:
            values = e.loss.sel(pair=p, batch=b).values.astype(np.float64)
            out.append(((int(p), int(b)), reference(values, e.done.sel(pair=p).values > 0, x, y,
                                                    float(e.center_loss.sel(batch=b)), eps, delta)))
    mean = e.loss.astype(np.float64).mean(("pair", "batch"), skipna=False).values
    done = (e.done > 0).all("pair").values
    out.append(((None, None), reference(mean, done, x, y, float(e.center_loss.astype(np.float64).mean()), eps,
                                        delta)))
    return out


def assert_matches(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("center_loss", "sharpness", "sharpness_relative", "flat_radius", "share_below"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    for key in ("flat_radius_lower_bound", "center_is_min", "computed", "diverged"):
        assert got[key] == want[key], key
    h = np.asarray(got["hessian"])
    assert np.allclose(h, want["hessian"], rtol=1e-6, atol=1e-6 * np.abs(want["hessian"]).max())
    assert np.allclose(got["eigenvalues"], want["eigenvalues"], rtol=1e-6, atol=1e-6 * np.abs(want["hessian"]).max())
    if want["condition"] is None:
        assert got["condition"] is None
    else:
        assert got["condition"] == pytest.approx(want["condition"], rel=1e-5)


def check_against_reference(store: Path, grid_name: str, result: Any, eps: float | None, delta: float) -> None:
    ds, _ = _dataset(store, grid_name)
    for epoch_stats in result.epochs:
        want = dict(expected(ds, epoch_stats["epoch"], eps, delta))
        for m in [*epoch_stats["panels"], epoch_stats["mean"]]:
            assert_matches(m, want[(m["pair"], m["batch"])])


# --- the metrics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("grid_name", "radius", "delta"), [
    ("wide", None, 0.1), ("wide", 0.5, 0.3), ("line", None, 0.1), ("line", 0.3, 0.02), ("pca", None, 0.1),
    ("pca", 0.2, 0.05), ("zoom", 0.02, 0.001), ("zline", None, 0.1),
])
def test_metrics_match_an_independent_computation(stored: Path, grid_name: str, radius: float | None,
                                                  delta: float) -> None:
    run = "smooth" if grid_name.startswith("z") else "t"
    result = _stats(run, grid=grid_name, radius=radius, delta=delta, store=stored, cache=False)
    _, meta = _dataset(stored, grid_name)
    assert [e["epoch"] for e in result.epochs] == meta.epochs
    check_against_reference(stored, grid_name, result, radius, delta)
    for e in result.epochs:
        assert e["complete"] and e["missing"] == 0 and e["diverged"] == 0
        assert len(e["panels"]) == meta.config.pairs * meta.config.batches


def test_the_grids_cover_the_cases(stored: Path) -> None:
    """The parametrized grids exercise both outcomes of every flag, so the comparisons above mean something."""
    found: dict[str, set[Any]] = {"lower_bound": set(), "is_min": set(), "share": set()}
    for run, grid_name in (("t", "wide"), ("t", "line"), ("t", "pca"), ("smooth", "zoom")):
        for e in _stats(run, grid=grid_name, store=stored, cache=False).epochs:
            for m in [*e["panels"], e["mean"]]:
                found["lower_bound"].add(m["flat_radius_lower_bound"])
                found["is_min"].add(m["center_is_min"])
                found["share"].add(m["share_below"] == 1.0)
    assert all(v == {True, False} for v in found.values()), found
    # a PCA plane: (0, 0) is not a grid point, the ranges are asymmetric
    ds, _ = _dataset(stored, "pca")
    assert 0.0 not in ds.x.values and -ds.x.values.min() != ds.x.values.max()


def test_a_synthetic_quadratic_is_recovered_exactly() -> None:
    """Asymmetric, unequal axes without (0, 0) among the points: H, λ and the condition of a known quadratic."""
    from landscape_cli.curvature.stats import landscape_metrics

    x, y = np.linspace(-1.3, 0.2, 16), np.linspace(-0.05, 0.4, 10)
    h = np.array([[2.0, 0.5], [0.5, 0.0]])  # eigenvalues 1 ± sqrt(1.25)
    gx, gy = np.meshgrid(x, y)
    values = 1.0 + 0.3 * gx - 0.2 * gy + 0.5 * (h[0, 0] * gx**2 + 2 * h[0, 1] * gx * gy + h[1, 1] * gy**2)
    m = landscape_metrics(values, np.ones(len(y), bool), [x, y], 1.0, 0.5, 0.1, 0.1)
    assert np.allclose(m["hessian"], h, atol=1e-9) and m["fit_points"] == 25
    assert np.allclose(m["eigenvalues"], [1 + 1.25**0.5, 1 - 1.25**0.5])
    assert m["condition"] == pytest.approx((1 + 1.25**0.5) / (1.25**0.5 - 1))
    flat = landscape_metrics(np.zeros((3, 3)), np.ones(3, bool), [np.arange(-1.0, 2), np.arange(-1.0, 2)], 0.0, 1.0,
                             1.0, 0.1)
    assert flat["condition"] == math.inf and flat["flat_radius"] == 1.0 and flat["flat_radius_lower_bound"]
    assert flat["sharpness"] == 0.0 and flat["share_below"] == 1.0 and flat["center_is_min"]
    line = landscape_metrics(3 * x[None, :] ** 2, np.ones(1, bool), [x], 0.0, 1.0, 1.3, 0.1)
    assert line["hessian"] == [[pytest.approx(6.0)]] and line["condition"] is None
    assert line["sharpness"] == pytest.approx(3 * 1.3**2) and line["flat_radius"] == pytest.approx(0.2)
    # nothing computed, or no centre value: no metric but the curvature of what there is
    empty = landscape_metrics(values, np.zeros(len(y), bool), [x, y], 1.0, 0.5, 0.1, 0.1)
    assert math.isnan(empty["sharpness"]) and math.isnan(empty["hessian"][0][0]) and empty["center_is_min"] is None
    assert math.isnan(landscape_metrics(values, np.ones(len(y), bool), [x, y], math.nan, 0.5, 0.1, 0.1)["flat_radius"])


def _projected_hessian(store: Path, grid_name: str, pair: int, batches: list[int]) -> np.ndarray:
    """d_iᵀ H d_j for the grid's normalized directions of `pair`, H the Hessian of the mean loss over `batches`."""
    import torch

    from landscape_cli.data import load_dataset
    from landscape_cli.directions import normalize, perturbed_names
    from landscape_cli.kernel.hvp import operator
    from landscape_cli.models.checkpoints import build_model

    st = Store(store)
    run_id, grid_id = st.find_grid(grid_name)
    meta = st.read_grid(run_id, grid_id)
    cfg = meta.config
    record = st.read_run(run_id).record(meta.epochs[0])
    assert record is not None
    model = build_model(torch.load(st.file(run_id, record.checkpoint), weights_only=True))
    weights = dict(model.named_parameters())
    names = perturbed_names(weights)
    raw = torch.load(st.file(run_id, meta.directions[pair].file), weights_only=True)
    vectors = []
    for key in ("d1", "d2")[:cfg.dims]:
        d = normalize(raw[key], weights, names, cfg.norm)
        vectors.append(torch.cat([d[n].double().reshape(-1) for n in names]).numpy())
    data = load_dataset("digits")
    n = cfg.batch_size
    chosen = [(data.normalize(data.train_x[b * n:(b + 1) * n]), data.train_y[b * n:(b + 1) * n]) for b in batches]
    with operator(model, chosen, names, cfg.bn) as op:
        products = [op(v) for v in vectors]
    return np.array([[vi @ hj for hj in products] for vi in vectors])


@pytest.mark.parametrize("grid_name", ["zoom", "zline"])
def test_curvature_agrees_with_the_hessian_projected_on_the_directions(stored: Path, grid_name: str) -> None:
    """A tanh MLP: its loss is smooth, so a quadratic fitted over ±0.02 has the Hessian's curvature.

    (The ReLU CNN's max-pooling and ReLUs make its loss piecewise smooth: its fitted curvature differs
    from dᵀHd by 30-200% at every span tried, 0.05 and 0.01, even with tanh; float64 central
    differences at h = 1e-5 do not converge either. That is the model, not the fit.)
    """
    result = _stats("smooth", grid=grid_name, store=stored)
    [epoch] = result.epochs
    cfg = result.meta.config
    for m in epoch["panels"]:
        h = _projected_hessian(stored, grid_name, m["pair"], [m["batch"]])
        fitted = np.asarray(m["hessian"])
        assert np.linalg.norm(fitted - h) <= 0.1 * np.linalg.norm(h), (fitted, h)
        assert np.allclose(np.diag(fitted), np.diag(h), rtol=0.1)
    # the mean landscape: the mean over pairs of dᵀHd, H the Hessian of the mean loss over the batches
    mean_h = np.mean([_projected_hessian(stored, grid_name, p, list(range(cfg.batches))) for p in range(cfg.pairs)],
                     axis=0)
    fitted = np.asarray(epoch["mean"]["hessian"])
    assert np.linalg.norm(fitted - mean_h) <= 0.1 * np.linalg.norm(mean_h), (fitted, mean_h)
    assert np.allclose(epoch["mean"]["eigenvalues"], sorted(np.linalg.eigvalsh(mean_h), reverse=True), rtol=0.1)


def test_diverged_points_are_above_every_threshold(stored: Path, tmp_path: Path) -> None:
    store = private_copy(stored, tmp_path)
    _, meta = _dataset(store, "wide")
    rows = Rows(Store(store).zarr_path(meta.run, meta.id))
    ei, pair = 1, 0  # epoch 3
    stats_file = Store(store).stats_file(meta.run, meta.id)
    written = stats_file.read_bytes() if stats_file.exists() else None
    before = _stats("t", grid="wide", epochs=[3], store=store, cache=False)
    assert (stats_file.read_bytes() if stats_file.exists() else None) == written  # cache=False writes no cache
    # row y = 0.25 (index 5): NaN at x = 0 in every batch, +Inf at x = -1 in batch 1 (as a diverged row is written)
    loss = rows.read_row("loss", ei, pair, 5)
    loss[:, 4] = np.nan
    loss[1, 0] = np.inf
    rows.write_row(ei, pair, 5, loss, rows.read_row("accuracy", ei, pair, 5))
    after = _stats("t", grid="wide", epochs=[3], store=store, cache=False)
    [e] = after.epochs
    check_against_reference(store, "wide", after, None, 0.1)
    assert e["diverged"] == 3 and e["mean"]["diverged"] == 2
    for m in e["panels"]:
        if m["pair"] == pair:
            assert m["sharpness"] == math.inf and m["sharpness_relative"] == math.inf
            assert m["flat_radius"] <= 0.25 and not m["flat_radius_lower_bound"]
            assert m["diverged"] == (2 if m["batch"] == 1 else 1)
        else:
            assert m == next(o for o in before.epochs[0]["panels"] if (o["pair"], o["batch"]) == (m["pair"], m["batch"]))
    assert e["mean"]["sharpness"] == math.inf and e["mean"]["flat_radius"] <= 0.25
    # the fit leaves the diverged point out (it lies in the 5x5 window): the curvature stays finite
    assert all(np.isfinite(m["eigenvalues"]).all() for m in [*e["panels"], e["mean"]])


def test_an_incomplete_grid_is_measured_over_its_computed_rows(stored: Path, tmp_path: Path, cli: Any) -> None:
    store = private_copy(stored, tmp_path)
    st = Store(store)
    run_id, grid_id = st.find_grid("wide")
    Rows(st.zarr_path(run_id, grid_id)).clear_row(1, 0, 8)  # epoch 3, pair 0, row y = 1
    Rows(st.zarr_path(run_id, grid_id)).clear_row(1, 1, 4)  # epoch 3, pair 1, row y = 0 (through the centre)
    result = _stats("t", grid="wide", store=store)
    complete, partial = result.epochs
    assert complete["complete"] and complete["missing"] == 0
    assert not partial["complete"] and partial["missing"] == 18 and partial["points"] == 2 * 81
    check_against_reference(store, "wide", result, None, 0.1)
    assert {m["computed"] for m in partial["panels"]} == {72} and partial["mean"]["computed"] == 63
    # ls: the complete epoch's summary, None for the incomplete one
    runs = json.loads(cli("ls", "--json", "--store", str(store)).stdout)["runs"]
    [wide] = [g for r in runs for g in r["grids"] if g["name"] == "wide"]
    assert wide["stats"]["3"] is None and wide["stats"]["2"]["flat_radius"] == complete["mean"]["flat_radius"]
    # the CLI says what is missing
    out = cli("stats", "t", "--grid", "wide", "--epochs", "3", "--store", str(store))
    assert out.exit_code == 0 and "18 of 162 grid points" in " ".join(out.stderr.split()) and "--resume" in out.stderr


# --- the cache --------------------------------------------------------------------------------------------


def test_the_cache_is_reused_only_while_done_marks_and_options_are_unchanged(stored: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import landscape_cli.curvature.stats as stats_module

    store = private_copy(stored, tmp_path)
    st = Store(store)
    run_id, grid_id = st.find_grid("wide")
    cache = st.stats_file(run_id, grid_id)
    cache.unlink(missing_ok=True)
    first = _stats("t", grid="wide", store=store)
    assert first.cached == [] and first.saved and cache.is_file()
    real = stats_module.compute_epoch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("computed again")

    monkeypatch.setattr(stats_module, "compute_epoch", refuse)
    again = _stats("t", grid="wide", store=store)
    assert again.cached == [2, 3] and again.epochs == first.epochs
    with pytest.raises(AssertionError, match="computed again"):  # other options: another entry
        _stats("t", grid="wide", delta=0.2, store=store)
    with pytest.raises(AssertionError, match="computed again"):
        _stats("t", grid="wide", radius=0.5, store=store)
    Rows(st.zarr_path(run_id, grid_id)).clear_row(1, 0, 0)  # a done-mark of epoch 3 changes
    assert _stats("t", grid="wide", epochs=[2], store=store).cached == [2]
    with pytest.raises(AssertionError, match="computed again"):
        _stats("t", grid="wide", epochs=[3], store=store)
    monkeypatch.setattr(stats_module, "compute_epoch", real)
    changed = _stats("t", grid="wide", store=store)
    assert changed.cached == [2] and changed.epochs[1]["missing"] == 9
    # a damaged file is ignored and rewritten
    cache.write_text('{"format": 1, "grid": ')
    fresh = _stats("t", grid="wide", store=store)
    assert fresh.cached == [] and json.loads(cache.read_text())["grid"] == grid_id
    # an entry edited by hand (its content no longer matches its hash) is recomputed, never used
    raw = json.loads(cache.read_text())
    for entry in raw["entries"].values():
        entry["stats"]["mean"]["sharpness"] = 123.0
    cache.write_text(json.dumps(raw))
    edited = _stats("t", grid="wide", store=store)
    assert edited.cached == [] and all(e["mean"]["sharpness"] != 123.0 for e in edited.epochs)
    # an unwritable store: the results are still given, not cached
    import landscape_cli.store as store_module  # the store writes the cache

    monkeypatch.setattr(store_module, "write_json", lambda *a: (_ for _ in ()).throw(StoreError("read-only")))
    cache.unlink()
    unsaved = _stats("t", grid="wide", store=store)
    assert not unsaved.saved and unsaved.epochs == edited.epochs and not cache.exists()


def test_ls_shows_the_cached_summary_of_each_grid(stored: Path, tmp_path: Path, cli: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import landscape_cli.curvature.stats as stats_module

    store = private_copy(stored, tmp_path)
    for f in store.glob("*/grids/*/stats.json"):
        f.unlink()
    data = json.loads(cli("ls", "--json", "--store", str(store)).stdout)
    grids = {g["name"]: g for r in data["runs"] for g in r["grids"]}
    assert set(grids) == {"wide", "line", "pca", "zoom", "zline"}
    assert len(list(store.glob("*/grids/*/stats.json"))) == 5  # ls cached them
    for name, g in grids.items():
        run = "smooth" if name.startswith("z") else "t"
        result = _stats(run, grid=name, store=store)
        assert sorted(g["stats"]) == [str(e) for e in result.meta.epochs]
        for e in result.epochs:
            shown = g["stats"][str(e["epoch"])]
            assert shown["sharpness"] == e["mean"]["sharpness"] and shown["eigenvalues"] == e["mean"]["eigenvalues"]
            assert shown["delta"] == 0.1 and shown["flat_radius"] == e["mean"]["flat_radius"]
    # a second ls reads the cache only
    monkeypatch.setattr(stats_module, "compute_epoch", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    again = json.loads(cli("ls", "--json", "--store", str(store)).stdout)
    assert [g["stats"] for r in again["runs"] for g in r["grids"]] == [g["stats"] for r in data["runs"]
                                                                       for g in r["grids"]]


# --- the command ------------------------------------------------------------------------------------------


def test_the_command_prints_a_table_and_json(stored: Path, cli: Any) -> None:
    table = cli("stats", "t", "--grid", "wide", "--store", str(stored))
    assert table.exit_code == 0, table.stderr
    text = table.stdout
    for needle in ("epoch", "L0", "curvature λ", "condition", "ε-sharpness", "flat radius", "centre is min",
                   "mean", "pair 1, batch 1", "ε whole grid, δ 0.1"):
        assert needle in text, needle
    assert len([line for line in text.splitlines() if "mean" in line]) == 2  # one per epoch
    data = json.loads(cli("stats", "t", "--grid", "wide", "--epochs", "3", "--radius", "0.5", "--delta", "0.3",
                          "--json", "--store", str(stored)).stdout)
    result = _stats("t", grid="wide", epochs=[3], radius=0.5, delta=0.3, store=stored)
    assert data["grid"] == result.grid_id and data["radius"] == 0.5 and data["delta"] == 0.3
    assert data["epochs"] == json.loads(json.dumps(result.epochs))
    # the run's newest grid by default; a grid named directly
    newest = json.loads(cli("stats", "smooth", "--json", "--store", str(stored)).stdout)
    assert newest["name"] == "zline" and newest["dims"] == 1 and newest["epochs"][0]["mean"]["condition"] is None
    assert json.loads(cli("stats", "pca", "--json", "--store", str(stored)).stdout)["kind"] == "pca"


def one_error_line(result: Any, code: int, *needles: str) -> None:
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stdout, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("args", "needles"), [
    (["--grid", "zoom", "--radius", "0"], ["--radius must be a positive number"]),
    (["--grid", "zoom", "--radius", "5"], ["--radius 5 is outside grid", "at most 0.05"]),
    (["--grid", "zoom", "--radius", "nan"], ["--radius"]),
    (["--grid", "zoom", "--delta", "-1"], ["--delta must be a number >= 0"]),
    (["--grid", "zoom", "--delta", "inf"], ["--delta"]),
    (["--grid", "nope"], ["no grid 'nope'"]),
    (["--grid", "zoom", "--epochs", "1"], ["epoch 1 is not in grid", "epochs 3"]),
    (["--grid", "zoom", "--epochs", "x"], ["bad --epochs"]),
])
def test_bad_input_is_one_line(stored: Path, cli: Any, args: list[str], needles: list[str]) -> None:
    before = tree(stored)
    one_error_line(cli("stats", "smooth", *args, "--store", str(stored)), 2, *needles)
    one_error_line(cli("stats", "nobody", "--store", str(stored)), 2, "nobody")
    assert tree(stored) == before


def test_stats_imports_no_torch() -> None:
    code = "import sys, landscape_cli.curvature.stats, landscape_cli.views.listing; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.slow  # figures (~4 s)
def test_the_reference_figure_title_has_the_stats_line(stored: Path, tmp_path: Path) -> None:
    from landscape_cli import plot
    from landscape_cli.curvature.stats import summary, title_text

    store = private_copy(stored, tmp_path)
    st = Store(store)
    run_id, grid_id = st.find_grid("wide")
    mean = summary(st, run_id, st.read_grid(run_id, grid_id))[3]
    assert mean is not None
    line = title_text(mean)
    assert line.startswith("ε-sharpness ") and "flat radius " in line and "(δ 0.1)" in line
    title = plot(["t"], grids=["wide"], epochs=[3], store=store, out=tmp_path / "a.png").figure._suptitle.get_text()
    assert line in " ".join(title.split())  # (the title is wrapped to the figure's width)
    # not on comparisons of epochs, not on lines, not while the epoch is incomplete
    several = plot(["t"], grids=["wide"], epochs=[2, 3], store=store, out=tmp_path / "b.png")
    assert "sharpness" not in several.figure._suptitle.get_text()
    curves = plot(["t"], grids=["line"], store=store, out=tmp_path / "c.png")
    assert "sharpness" not in curves.figure._suptitle.get_text()
    Rows(st.zarr_path(run_id, grid_id)).clear_row(1, 0, 0)
    partial = plot(["t"], grids=["wide"], epochs=[3], store=store, out=tmp_path / "d.png")
    assert "sharpness" not in partial.figure._suptitle.get_text()
