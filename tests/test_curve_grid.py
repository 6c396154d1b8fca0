"""Grids along trained curves between minima (`--directions curve` and `curve-plane --along CURVE`).

Two small digits runs are trained once (conftest's master stores); the curves are written here directly through
the store's curve verbs (bends off the straight line: the midpoint, or the chain's points, plus a perturbation),
without `landscape connect`. Every value the grid stores is recomputed independently: weights built by hand
from Bernstein / polygonal-chain coefficients written out here, BatchNorm statistics re-estimated by a plain
loop, losses and softmax ensembles on the grid's own batches.
"""

from __future__ import annotations

import json
import shutil
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import StoreFactory, Train, run_in_process
from torch import nn

from landscape_cli import grid
from landscape_cli._io import file_sha256, now
from landscape_cli.config import CurveConfig
from landscape_cli.data import load_dataset
from landscape_cli.models import checkpoints
from landscape_cli.store import Store
from landscape_cli.store.meta import CurveEpoch, CurveMeta

BATCHES, BATCH_SIZE, WIDTH = 2, 64, 5
TS = [0.0, 0.25, 0.5, 0.75, 1.0]


def make_curve(st: Store, first: str, second: str, shape: str, bends: int, name: str, seed: int = 0) -> str:
    """A curve from `first`'s last checkpoint to `second`'s, its bends the straight line's points plus noise."""
    a, b = st.read_run(st.resolve(first)), st.read_run(st.resolve(second))
    ra, rb = a.epochs[-1], b.epochs[-1]
    wa = checkpoints.load_epoch(st, a.id, ra)["state_dict"]
    wb = checkpoints.load_epoch(st, b.id, rb)["state_dict"]
    names = [n for n, _ in checkpoints.build_model(checkpoints.load_epoch(st, a.id, ra)).named_parameters()]
    cfg = CurveConfig(a.id, ra.key, ra.weights_sha256, b.id, rb.key, rb.weights_sha256, shape=shape, bends=bends,
                      seed=seed).validate()
    g = torch.Generator().manual_seed(seed)
    bent = [{n: wa[n] + j / (bends + 1) * (wb[n] - wa[n])
             + 0.2 * torch.randn(wa[n].shape, generator=g) * (wb[n] - wa[n]).abs() for n in names}
            for j in range(1, bends + 1)]
    cid = cfg.curve_id
    path = st.curve_path(a.id, cid, "epoch-0001.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(path, checkpoints.make_bends(bent, 1, cid))
    record = CurveEpoch(1, "epoch-0001.pt", file_sha256(path), checkpoints.bends_hash(bent), 0.0, 0.0)
    st.write_curve(CurveMeta(id=cid, name=name, config=cfg, epochs_requested=1, epochs=[record], resume=None,
                             versions={}, created=now()))
    return cid


@pytest.fixture(scope="module")
def curves(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private store with runs a and b, a Bézier curve (1 bend) and a polygonal chain (2 bends) from a to b, a
    curve stored with b, and the grids along them (computed once)."""
    master = trained_store.build(Train("cnn", epochs=2, seed=0, batch_size=128, name="a"),
                                 Train("cnn", epochs=2, seed=1, batch_size=128, name="b"))
    store = tmp_path_factory.mktemp("curves") / "store"
    shutil.copytree(master, store)
    st = Store(store)
    out: dict[str, Any] = {"store": store, "st": st}
    out["bezier"] = make_curve(st, "a", "b", "bezier", 1, "bz")
    out["polychain"] = make_curve(st, "a", "b", "polychain", 2, "pc", seed=1)
    out["of_b"] = make_curve(st, "b", "a", "bezier", 1, "from-b")
    opts = {"width": WIDTH, "batches": BATCHES, "batch_size": BATCH_SIZE, "progress": False, "store": store}
    for shape in ("bezier", "polychain"):
        out[f"grid_{shape}"] = grid("a", directions="curve", along=out[shape], **opts)
    out["plane"] = grid("a", directions="curve-plane", along="bz", **{**opts, "batches": 1})
    return out


# --- by hand --------------------------------------------------------------------------------------------


def coefficients(shape: str, bends: int, t: float) -> list[float]:
    n = bends + 1
    if shape == "bezier":  # Bernstein polynomials of degree n
        return [comb(n, k) * t**k * (1 - t) ** (n - k) for k in range(n + 1)]
    i = min(int(t * n), n - 1)  # polygonal chain: n equal segments in t
    s = t * n - i
    c = [0.0] * (n + 1)
    c[i], c[i + 1] = 1 - s, s
    return c


def batches(n: int = BATCHES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The grid's batches: the train split's first `n` of BATCH_SIZE, unshuffled."""
    data = load_dataset("digits")
    x, y = data.split("train")
    return [(data.prepare(x[i * BATCH_SIZE:(i + 1) * BATCH_SIZE], torch.device("cpu")), y[i * BATCH_SIZE:(i + 1) * BATCH_SIZE])
            for i in range(n)]


def model_at(st: Store, run: str, params: dict[str, torch.Tensor], count: int = BATCHES) -> nn.Module:
    """`run`'s last checkpoint's model with `params` written in and its BatchNorm statistics re-estimated on the
    grid's batches (a plain pass in train mode with momentum None), then in eval mode."""
    meta = st.read_run(st.resolve(run))
    model = checkpoints.build_model(checkpoints.load_epoch(st, meta.id, meta.epochs[-1]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for x, _ in batches(count):
            model(x)
    return model.eval()


def state(st: Store, run: str) -> dict[str, torch.Tensor]:
    meta = st.read_run(st.resolve(run))
    return checkpoints.load_epoch(st, meta.id, meta.epochs[-1])["state_dict"]


def controls(st: Store, cid: str) -> tuple[CurveMeta, list[dict[str, torch.Tensor]]]:
    """The curve and its control points: w_A, the bends, w_B (parameters)."""
    a = st.resolve("a")
    meta = st.read_curve(a, cid)
    rec = meta.epochs[-1]
    bends = checkpoints.load_bends(st.curve_path(a, cid, rec.file), rec.sha256, "bends")
    wa, wb = state(st, "a"), state(st, "b")
    names = list(bends[0])
    return meta, [{n: wa[n] for n in names}, *bends, {n: wb[n] for n in names}]


def losses(model: nn.Module, n: int = BATCHES) -> list[float]:
    with torch.no_grad():
        return [F.cross_entropy(model(x), y).item() for x, y in batches(n)]


def probabilities(model: nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return [torch.softmax(model(x), dim=-1) for x, _ in batches()]


def accuracy_of(probs: list[list[torch.Tensor]]) -> list[float]:
    """The accuracy on each batch of the ensemble whose prediction is the mean of the members' probabilities."""
    return [(torch.stack([p[j] for p in probs]).mean(0).argmax(1) == y).float().mean().item()
            for j, (_, y) in enumerate(batches())]


def phi(points: list[dict[str, torch.Tensor]], c: list[float]) -> dict[str, torch.Tensor]:
    return {n: sum(ck * p[n] for ck, p in zip(c, points, strict=True)) for n in points[0]}  # type: ignore[misc]


# --- the tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["bezier", "polychain"])
def test_curve_values_are_the_hand_built_curve_with_statistics_recomputed(curves: dict[str, Any], shape: str) -> None:
    st, g = curves["st"], curves[f"grid_{shape}"]
    assert g.complete and g.meta.config.bn == "recompute" and g.meta.config.kind == "curve"
    ds = g.to_xarray()
    assert ds.x.values.tolist() == TS  # t = 0 and t = 1 exactly
    meta, points = controls(st, curves[shape])
    bends = meta.config.bends
    stored = ds.loss.isel(epoch=0, pair=0).values  # [batch, x]
    for i, t in enumerate(TS):
        c = coefficients(shape, bends, t)
        assert sum(c) == pytest.approx(1.0)
        expected = losses(model_at(st, "a", phi(points, c)))
        np.testing.assert_allclose(stored[:, i], expected, atol=1e-5, rtol=0)
    # the two ends are the checkpoints' own losses under the same re-estimated statistics
    np.testing.assert_allclose(stored[:, 0], losses(model_at(st, "a", state(st, "a"))), atol=1e-5, rtol=0)
    np.testing.assert_allclose(stored[:, -1], losses(model_at(st, "b", state(st, "b"))), atol=1e-5, rtol=0)
    # the grid records which curve, which of its trained epochs and which bends it evaluates
    ref = g.meta.config.curve
    assert ref is not None and (ref.id, ref.epoch, ref.bends_sha256) == (meta.id, 1, meta.epochs[-1].weights_sha256)
    facts = json.loads(st.grid_file(g.run_id, g.grid_id).read_text())
    assert facts["config"]["curve"]["bends_sha256"] == meta.epochs[-1].weights_sha256
    assert facts["kind"]["curve"]["id"] == meta.id and facts["kind"]["curve"]["epoch"] == 1


def test_straight_line_extras_equal_an_interpolation_grid(curves: dict[str, Any]) -> None:
    g, store = curves["grid_bezier"], curves["store"]
    ds = g.to_xarray()
    start = g.meta.epochs[0]
    line = grid("a", directions="interpolate", epochs=[start], to="b", bn="recompute", range=(0.0, 1.0), width=WIDTH,
                batches=BATCHES, batch_size=BATCH_SIZE, progress=False, store=store).to_xarray()
    assert line.x.values.tolist() == TS
    np.testing.assert_allclose(ds.line_loss.values, line.loss.isel(epoch=0, pair=0).values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ds.line_accuracy.values, line.accuracy.isel(epoch=0, pair=0).values, atol=1e-6, rtol=0)
    # and by hand at the midpoint
    _, points = controls(curves["st"], curves["bezier"])
    wa, wb = points[0], points[-1]
    mid = losses(model_at(curves["st"], "a", {n: 0.5 * wa[n] + 0.5 * wb[n] for n in wa}))
    np.testing.assert_allclose(ds.line_loss.values[:, 2], mid, atol=1e-5, rtol=0)


def test_ensemble_accuracies_are_the_mean_of_softmaxes(curves: dict[str, Any]) -> None:
    st, g = curves["st"], curves["grid_bezier"]
    ds = g.to_xarray()
    _, points = controls(st, curves["bezier"])
    p_a, p_b = probabilities(model_at(st, "a", points[0])), probabilities(model_at(st, "b", points[-1]))
    np.testing.assert_allclose(ds.endpoint_ensemble_accuracy.values, accuracy_of([p_a, p_b]), atol=1e-6, rtol=0)
    for i, t in enumerate(TS):
        p_t = probabilities(model_at(st, "a", phi(points, coefficients("bezier", 1, t))))
        np.testing.assert_allclose(ds.ensemble_accuracy.values[:, i], accuracy_of([p_t, p_a, p_b]), atol=1e-6, rtol=0)


def test_barriers_in_stats_and_the_plot(curves: dict[str, Any], tmp_path: Path) -> None:
    from landscape_cli.curvature.stats import stats
    from landscape_cli.views.figures import plot

    g, store = curves["grid_bezier"], curves["store"]
    ds = g.to_xarray()
    t = ds.x.values
    curve = ds.loss.isel(epoch=0, pair=0).values.astype(np.float64).mean(axis=0)
    line = ds.line_loss.values.astype(np.float64).mean(axis=0)
    expected_curve = curve.max() - max(curve[t == 0][0], curve[t == 1][0])
    expected_line = line.max() - max(line[0], line[-1])
    result = stats("a", grid=g.grid_id, store=store, cache=False)
    barriers = result.epochs[0]["barriers"]
    assert barriers["curve"] == pytest.approx(expected_curve, abs=1e-9)
    assert barriers["line"] == pytest.approx(expected_line, abs=1e-9)
    per_batch = ds.loss.isel(epoch=0, pair=0).values.astype(np.float64)
    assert barriers["curve_per_batch"] == pytest.approx([v.max() - max(v[0], v[-1]) for v in per_batch], abs=1e-9)
    printed = run_in_process("stats", "a", "--grid", g.grid_id, "--store", str(store))
    assert printed.returncode == 0, printed.stderr
    assert f"barrier along the curve {expected_curve:.4g}, along the straight line {expected_line:.4g}" in \
        " ".join(printed.stdout.split())
    out = tmp_path / "curve.png"
    r = plot(["a"], grids=[g.grid_id], store=store, out=out)
    assert out.stat().st_size > 0
    ax = r.panel_axes[0]
    drawn = [line for line in ax.get_lines() if len(line.get_xdata()) == WIDTH]
    assert len(drawn) == 2  # the curve and the straight line
    np.testing.assert_allclose(drawn[0].get_ydata(), curve, atol=1e-6)
    np.testing.assert_allclose(drawn[1].get_ydata(), line, atol=1e-6)
    text = ax.get_title() + " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert f"{expected_curve:.3g}" in text and f"{expected_line:.3g}" in text


def test_refusals_are_one_line(curves: dict[str, Any], cli: Any) -> None:
    store = str(curves["store"])
    for args, needles in ((["--along", "bz", "--bn", "eval"], ["--bn eval", "recompute"]),
                          (["--along", "from-b"], ["from-b", st_id(curves, "b")]),
                          ([], ["--along"])):
        result: Any = cli("grid", "a", "--directions", "curve", *args, "--store", store)
        assert result.exit_code != 0, result.stdout
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
        assert all(n in lines[0] for n in needles), lines[0]


def st_id(curves: dict[str, Any], run: str) -> str:
    return str(curves["st"].resolve(run))


def test_exports_carry_the_line_and_the_ensembles(curves: dict[str, Any], tmp_path: Path) -> None:
    import pandas as pd
    import xarray as xr

    from landscape_cli.exchange.export import export

    g, store = curves["grid_bezier"], curves["store"]
    ds = g.to_xarray()
    export("a", grid=g.grid_id, format="csv", out=tmp_path / "g.csv", store=store)
    table = pd.read_csv(tmp_path / "g.csv")
    for name in ("line_loss", "line_accuracy", "ensemble_accuracy", "endpoint_ensemble_accuracy"):
        assert name in table.columns
    for _, row in table.iterrows():
        b, i = int(row["batch"]), TS.index(float(row["x"]))
        assert row["line_loss"] == pytest.approx(float(ds.line_loss.values[b, i]), rel=1e-6)
        assert row["ensemble_accuracy"] == pytest.approx(float(ds.ensemble_accuracy.values[b, i]), rel=1e-6)
        assert row["endpoint_ensemble_accuracy"] == pytest.approx(float(ds.endpoint_ensemble_accuracy.values[b]))
    export("a", grid=g.grid_id, format="netcdf", out=tmp_path / "g.nc", store=store)
    nc = xr.load_dataset(tmp_path / "g.nc", engine="h5netcdf")
    for name in ("line_loss", "line_accuracy", "ensemble_accuracy", "endpoint_ensemble_accuracy"):
        np.testing.assert_array_equal(nc[name].values, ds[name].values)
    assert nc.line_loss.dims == ("batch", "x")


def test_curve_plane_places_the_points_and_evaluates_hand_built_weights(curves: dict[str, Any]) -> None:
    st, g = curves["st"], curves["plane"]
    assert g.complete and g.meta.config.dims == 2
    _, points = controls(st, curves["bezier"])
    a, theta, b = ({n: t.double() for n, t in p.items()} for p in points)
    ab = {n: b[n] - a[n] for n in a}
    norm = float(torch.sqrt(sum((v * v).sum() for v in ab.values())))  # type: ignore[arg-type]
    u = {n: v / norm for n, v in ab.items()}
    d = {n: theta[n] - a[n] for n in a}
    along = float(sum((d[n] * u[n]).sum() for n in a))  # type: ignore[misc]
    rest = {n: d[n] - along * u[n] for n in a}
    height = float(torch.sqrt(sum((v * v).sum() for v in rest.values())))  # type: ignore[arg-type]
    v = {n: r / height for n, r in rest.items()}
    ds = g.to_xarray()
    np.testing.assert_allclose(ds.control_x.values, [0.0, along, norm], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ds.control_y.values, [0.0, height, 0.0], rtol=1e-9, atol=1e-9)
    xs, ys = ds.x.values, ds.y.values
    assert xs[0] < 0 < norm < xs[-1] and ys[0] < 0 < height < ys[-1]  # the three points, with a margin
    # the projected curve starts at w_A and ends at w_B
    assert (ds.curve_x.values[0], ds.curve_y.values[0]) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert (ds.curve_x.values[-1], ds.curve_y.values[-1]) == pytest.approx((norm, 0.0), abs=1e-9)
    stored = ds.loss.isel(epoch=0, pair=0, batch=0).values  # [y, x]
    for iy, ix in ((0, 0), (2, 3), (4, 1)):
        x, y = float(xs[ix]), float(ys[iy])
        weights = {n: (a[n] + x * u[n] + y * v[n]).float() for n in a}
        expected = losses(model_at(st, "a", weights, count=1), n=1)[0]
        assert float(stored[iy, ix]) == pytest.approx(expected, abs=1e-4)


def test_curve_plane_plot_marks_the_points_and_the_curve(curves: dict[str, Any], tmp_path: Path) -> None:
    from landscape_cli.views.figures import plot

    g = curves["plane"]
    ds = g.to_xarray()
    r = plot(["a"], grids=[g.grid_id], store=curves["store"], out=tmp_path / "plane.png")
    lines = {line.get_gid(): line for line in r.panel_axes[0].get_lines() if line.get_gid()}
    np.testing.assert_array_equal(lines["control points"].get_xdata(), ds.control_x.values)
    np.testing.assert_array_equal(lines["control points"].get_ydata(), ds.control_y.values)
    np.testing.assert_array_equal(lines["curve"].get_xdata(), ds.curve_x.values)
    labels = {t.get_text() for t in r.panel_axes[0].texts}
    assert {"w_A", "θ", "w_B"} <= labels


def test_a_curve_trained_by_connect_and_more_training_makes_another_grid(curves: dict[str, Any], tmp_path: Path) -> None:
    from landscape_cli.connecting import connect

    store = tmp_path / "store"
    shutil.copytree(curves["store"], store)
    st = Store(store)
    trained = connect("a", "b", epochs=1, name="trained", store=store, progress=False)
    opts = {"directions": "curve", "along": "trained", "width": WIDTH, "batches": BATCHES, "batch_size": BATCH_SIZE,
            "progress": False, "store": store}
    first = grid("a", **opts)
    ds = first.to_xarray()
    stored = ds.loss.isel(epoch=0, pair=0).values
    np.testing.assert_allclose(stored[:, 0], losses(model_at(st, "a", state(st, "a"))), atol=1e-5, rtol=0)
    np.testing.assert_allclose(stored[:, -1], losses(model_at(st, "b", state(st, "b"))), atol=1e-5, rtol=0)
    assert grid("a", **opts).computed_rows == 0  # the same curve epoch: the same grid, nothing to compute
    connect("a", "b", epochs=2, name="trained", store=store, progress=False)
    second = grid("a", **opts)
    assert second.grid_id != first.grid_id and second.meta.config.curve is not None
    assert second.meta.config.curve.epoch == 2 and second.meta.config.curve.id == trained.curve_id
