"""The curvature kernel against an explicit float64 Hessian, and `landscape hessian` results in the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import StoreFactory, Train
from torch import nn

from landscape_cli.curvature.hessian import hessian
from landscape_cli.curvature.spectrum import extreme_eigenpairs, hutchinson_trace, spectral_density
from landscape_cli.data import load_dataset
from landscape_cli.errors import UsageError
from landscape_cli.kernel.hvp import operator


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], np.ndarray]:
    """A ~1.2 k-parameter network on two batches of digits, and its explicit float64 Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    data = load_dataset("digits")
    x = (data.train_x.float() / 255 - data.info.mean[0]) / data.info.std[0]
    batches = [(x[i * 128:(i + 1) * 128], data.train_y[i * 128:(i + 1) * 128]) for i in range(2)]
    with torch.no_grad():  # a few steps of training, so that the spectrum has both signs and a gap
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(30):
            for xb, yb in batches:
                with torch.enable_grad():
                    opt.zero_grad()
                    F.cross_entropy(model(xb), yb).backward()
                    opt.step()
    h = _explicit_hessian(model, lambda f: sum(F.cross_entropy(f(xb), yb) for xb, yb in batches) / len(batches))
    return model, batches, h


def _explicit_hessian(model: nn.Module, loss_of: Any) -> np.ndarray:
    """The float64 Hessian of `loss_of(forward)` w.r.t. all of `model`'s parameters (forward: inputs -> outputs)."""
    m64 = _copy(model).double()
    params = {k: v.detach().clone() for k, v in m64.named_parameters()}
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        out, start = {}, 0
        for k, p in params.items():
            out[k] = w[start:start + p.numel()].view_as(p)
            start += p.numel()
        result: torch.Tensor = loss_of(lambda x: torch.func.functional_call(m64, out, (x.double(),)))
        return result

    h = torch.autograd.functional.hessian(loss, flat).numpy()
    return (h + h.T) / 2


def _copy(model: nn.Module) -> nn.Module:
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    fresh.load_state_dict(model.state_dict())
    return fresh


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def test_hessian_vector_product_matches_float64_finite_differences(tiny: Any) -> None:
    model, batches, h = tiny
    v = np.random.default_rng(1).standard_normal(h.shape[0])
    with operator(model, batches, _names(model), "train") as op:
        hv = op(v)
    assert np.allclose(hv, h @ v, rtol=1e-4, atol=1e-5 * np.abs(h @ v).max())
    # and against a central difference of float64 gradients (independent of autograd's double backward)
    m64 = _copy(model).double()
    params = list(m64.parameters())

    def grad_at(eps: float) -> np.ndarray:
        start = 0
        with torch.no_grad():
            for p, p0 in zip(params, model.parameters(), strict=True):
                p.copy_(p0.double() + eps * torch.from_numpy(v[start:start + p.numel()]).view_as(p))
                start += p.numel()
        m64.zero_grad()
        (sum(F.cross_entropy(m64(x.double()), y) for x, y in batches) / len(batches)).backward()
        return np.concatenate([p.grad.reshape(-1).numpy() for p in params])

    fd = (grad_at(1e-5) - grad_at(-1e-5)) / 2e-5
    assert np.allclose(hv, fd, rtol=1e-3, atol=1e-4 * np.abs(fd).max())


def test_top_eigenpairs_smallest_and_trace_match_the_explicit_hessian(tiny: Any) -> None:
    model, batches, h = tiny
    values, vectors = np.linalg.eigh(h)
    with operator(model, batches, _names(model), "train") as op:
        top = extreme_eigenpairs(op, 4, "LA", seed=0)
        low = extreme_eigenpairs(op, 1, "SA", seed=0)
        trace = hutchinson_trace(op, 300, seed=0)
    expected = values[::-1][:4]
    assert np.allclose(top.values, expected, rtol=1e-3)
    for j in range(4):
        gap = min(abs(expected[j] - values[i]) for i in range(len(values)) if not np.isclose(values[i], expected[j]))
        if gap > 1e-2 * abs(expected[j]):
            assert abs(top.vectors[:, j] @ vectors[:, -1 - j]) >= 0.999
        else:  # a cluster: the computed vectors span the same subspace
            assert abs(np.linalg.norm(vectors[:, -1 - j] @ top.vectors)) >= 0.999
    assert (top.residuals < 1e-3).all()
    assert low.values[0] == pytest.approx(values[0], rel=1e-3) and values[0] < 0
    assert abs(trace.value - np.trace(h)) <= 3 * trace.stderr and trace.probes == 300


def test_spectral_density_integrates_to_one_and_covers_the_spectrum(tiny: Any) -> None:
    model, batches, h = tiny
    values = np.linalg.eigvalsh(h)
    with operator(model, batches, _names(model), "train") as op:
        d = spectral_density(op, probes=3, steps=40, bins=80, seed=0)
    step = d.centres[1] - d.centres[0]
    assert (d.density * step).sum() == pytest.approx(1.0, abs=0.02)
    assert d.centres[0] <= values[0] and d.centres[-1] >= values[-1]
    # the quadrature's mean eigenvalue is the trace over the dimension
    mean = (d.density * d.centres).sum() * step
    assert mean == pytest.approx(np.trace(h) / len(values), rel=0.25, abs=0.02)


def test_the_raw_quadrature_of_each_probe_gives_its_moments_of_the_explicit_hessian(tiny: Any) -> None:
    """Gauss quadrature from m Lanczos steps is exact for polynomials of degree < 2m: Σ_j w_j θ_j^k = vᵀH^k v / vᵀv
    for each probe v (the seeded Rademacher vectors the density draws), k = 0..3, against the explicit Hessian."""
    from landscape_cli.curvature.spectrum import _generator

    model, batches, h = tiny
    with operator(model, batches, _names(model), "train") as op:
        d = spectral_density(op, probes=3, steps=12, bins=40, seed=5)
    assert d.nodes.shape == d.weights.shape == (3, 12) and np.isfinite(d.nodes).all()
    rng = _generator(5, "density")
    for i in range(3):
        v = rng.choice([-1.0, 1.0], size=h.shape[0])
        for k in range(4):
            expected = v @ np.linalg.matrix_power(h, k) @ v / (v @ v)
            got = float((d.weights[i] * d.nodes[i] ** k).sum())
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-6 * np.abs(h).max() ** k), (i, k)


def test_the_model_is_left_as_it_was(tiny: Any) -> None:
    model, batches, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    with operator(model, batches, _names(model)[:2], "eval") as op:
        op(np.ones(op.size))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and [m.training for m in model.modules()] == modes


# --- results in the store ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_store(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's copy of the session's master (trained once per session)."""
    return trained_store.copy(Train("mlp", epochs=2, name="m"),
                              to=tmp_path_factory.mktemp("hessian") / "store")


OPTS = {"batches": 2, "batch_size": 64, "probes": 10, "progress": False, "layer": "3.weight"}


def test_results_are_stored_per_epoch_and_resume(run_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(run_store, store)
    first = hessian("m", epochs=[0, 2], top=3, density=True, bins=30, steps=20, density_probes=2, store=store, **OPTS)
    ds = first.to_xarray()
    assert first.computed == [0, 2] and list(ds.epoch.values) == [0, 2]
    assert ds.eigenvalues.dims == ("epoch", "k") and ds.eigenvalues.shape == (2, 3)
    assert ds.density.dims == ("epoch", "bin") and ds.density.shape == (2, 30)
    assert ds.density_nodes.dims == ("epoch", "probe", "node") and ds.density_nodes.shape == (2, 2, 20)
    assert np.allclose(ds.density_weights.values.sum(axis=2), 1.0)  # the raw quadrature: weights of each probe
    lo, hi = ds.density_lambda.values[:, :1], ds.density_lambda.values[:, -1:]  # the smoothed bins cover the nodes
    assert ((ds.density_nodes.values.min(axis=2) >= lo) & (ds.density_nodes.values.max(axis=2) <= hi)).all()
    assert (np.diff(ds.eigenvalues.values, axis=1) <= 0).all() and (ds.done.values == 1).all()
    assert np.allclose(ds.convexity.values, np.abs(ds.lambda_min.values / ds.eigenvalues.values[:, 0]))
    meta = json.loads((first.path / "hessian.json").read_text())
    assert sorted(meta["eigenvectors"]) == ["0", "2"]
    vectors = torch.load(first.path.parent.parent / meta["eigenvectors"]["2"]["file"], weights_only=True)
    v1 = vectors["v1"]["3.weight"].double().reshape(-1)
    assert float(v1.norm()) == pytest.approx(1.0, abs=1e-5)
    again = hessian("m", epochs=[0, 2], top=3, density=True, bins=30, steps=20, density_probes=2, store=store, **OPTS)
    assert again.computed == [] and again.hessian_id == first.hessian_id
    # an interrupted epoch (not marked done) is computed again, the finished ones are kept
    import zarr

    zarr.open_array(first.zarr_path / "done", mode="r+")[1] = 0
    more = hessian("m", epochs=[0, 1, 2], top=3, density=True, bins=30, steps=20, density_probes=2, store=store,
                   **OPTS)
    assert more.computed == [1, 2] and more.meta.epochs == [0, 2, 1]
    assert np.array_equal(more.to_xarray().eigenvalues.sel(epoch=2).values, ds.eigenvalues.sel(epoch=2).values)
    from landscape_cli.store import Store
    from landscape_cli.views.listing import list_runs

    [run] = list_runs(Store(store))
    [listed] = run["hessians"]
    assert listed["id"] == first.hessian_id and listed["epochs_done"] == [0, 2, 1] and listed["status"] == "complete"


@pytest.mark.parametrize(("options", "needle"), [
    ({"top": 0}, "--top must be"),
    ({"top": 12, "layer": "3.bias", "perturb_biasbn": True}, "--top 12: the Hessian over the perturbed parameters is 10x10"),
    ({"epochs": [7]}, "no checkpoint for epoch 7"),
    ({"tol": 0.0}, "--tol must be a positive number"),
    ({"bn": "recompute"}, "--bn mode"),
    ({"probes": 1}, "--probes"),
])
def test_bad_hessian_requests(run_store: Path, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        hessian("m", store=run_store, **{**OPTS, **options})
    assert not list(run_store.glob("*/hessians"))


def test_grids_along_the_top_eigenvectors(run_store: Path, tmp_path: Path) -> None:
    """--directions hessian: the plane of each epoch's top two eigenvectors, each scaled by ‖w‖ only; it reuses
    `landscape hessian` results made with the grid's batches; a line is the plane's middle row."""
    from landscape_cli import grid
    from landscape_cli.views.figures import plot

    store = tmp_path / "store"
    shutil.copytree(run_store, store)
    small = {"batches": 2, "batch_size": 64, "progress": False}
    results = hessian("m", epochs=[2], store=store, probes=10, **small)
    plane = grid("m", directions="hessian", epochs=[2], width=5, span=0.02, store=store, **small)
    # results for the grid's loss with --top 2 are reused, whatever their --probes: the grid computed none
    assert plane.meta.kind["hessian"] == results.hessian_id
    assert len(list((store / plane.run_id / "hessians").iterdir())) == 1
    default = results
    facts = plane.meta.kind["epochs"]["2"]
    assert facts["eigenvalues"] == default.summary()[0]["eigenvalues"]
    ds = plane.to_xarray()
    ckpt = torch.load(store / plane.run_id / "checkpoints/epoch-0002.pt", weights_only=True)
    vectors = torch.load(store / plane.run_id / facts["file"], weights_only=True)
    names = [n for n in ckpt["state_dict"] if ckpt["state_dict"][n].dim() > 1]
    norm = float(torch.sqrt(sum((ckpt["state_dict"][n].double() ** 2).sum() for n in names)))
    data = load_dataset("digits")
    x = (data.train_x.float() / 255 - data.info.mean[0]) / data.info.std[0]
    from landscape_cli.models import create_model

    for xi, yi in ((0, 4), (3, 2)):
        a, b = float(ds.x[xi]), float(ds.y[yi])
        state = {k: v + norm * (a * vectors["v1"][k] + b * vectors["v2"][k]) if k in names else v
                 for k, v in ckpt["state_dict"].items()}
        model = create_model(ckpt["model"], **ckpt["model_args"])
        model.load_state_dict(state)
        with torch.no_grad():
            expected = [F.cross_entropy(model(x[i * 64:(i + 1) * 64]), data.train_y[i * 64:(i + 1) * 64]).item()
                        for i in range(2)]
        assert ds.loss.isel(epoch=0, pair=0, y=yi, x=xi).values.tolist() == pytest.approx(expected, rel=1e-5)
    # the eigenvectors are orthonormal and the stored eigenvalues are their Rayleigh quotients' order
    v1 = torch.cat([vectors["v1"][n].double().reshape(-1) for n in names])
    v2 = torch.cat([vectors["v2"][n].double().reshape(-1) for n in names])
    assert abs(float(v1 @ v2)) < 1e-4 and float(v1.norm()) == pytest.approx(1.0, abs=1e-5)
    assert facts["eigenvalues"][0] >= facts["eigenvalues"][1]
    line = grid("m", directions="hessian", dims=1, epochs=[2], width=5, span=0.02, store=store, **small).to_xarray()
    assert np.array_equal(line.loss.values, ds.sel(y=0.0).loss.values)
    figure = plot(["m"], grids=[plane.grid_id], store=store, out=tmp_path / "h.png")
    label = figure.panel_axes[-1].get_xlabel()
    assert label.startswith("v1 (λ1 = ") and f"{facts['eigenvalues'][0]:.4g}" in label


@pytest.mark.slow  # figures (~3 s)
def test_plot_of_curvature_results_shows_the_stored_numbers(run_store: Path, tmp_path: Path) -> None:
    import xarray as xr
    from typer.testing import CliRunner

    from landscape_cli.cli import app

    store = tmp_path / "store"
    shutil.copytree(run_store, store)
    result = hessian("m", epochs=[2, 0], top=2, density=True, bins=20, steps=10, density_probes=1, store=store,
                     name="curv", **OPTS)
    done = CliRunner().invoke(app, ["plot", "m", "--hessian", "--json", "--store", str(store)])
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    ds = xr.open_zarr(result.zarr_path)
    assert out["epochs"] == [0, 2] and Path(out["path"]).is_file()  # in epoch order
    assert np.allclose(out["eigenvalues"], ds.eigenvalues.sel(epoch=[0, 2]).values)
    assert np.allclose(out["trace"], ds.trace.sel(epoch=[0, 2]).values)
    from landscape_cli.views.hessian_figure import plot_hessian

    figure = plot_hessian("m", hessian="curv", store=store, out=tmp_path / "h.svg")
    eig_axes, _trace, density_axes = figure.figure.axes[:3]
    assert np.allclose(eig_axes.lines[0].get_ydata(), ds.eigenvalues.sel(epoch=[0, 2], k=0).values)
    assert len(density_axes.lines) == 2 and (tmp_path / "h.svg").read_text().startswith("<?xml")
    bad = CliRunner().invoke(app, ["plot", "m", "--hessian", "--grid", "nothing", "--store", str(store)])
    assert bad.exit_code == 2 and bad.stderr.count("Error:") == 1


def test_the_sample_mean_hessian_of_pieces_of_different_sizes(tiny: Any) -> None:
    """--batches all: the Hessian of the loss averaged over samples, from pieces weighted by their sizes."""
    model, batches, _ = tiny
    x = torch.cat([b[0] for b in batches])[:200]
    y = torch.cat([b[1] for b in batches])[:200]
    pieces = [(x[:128], y[:128]), (x[128:], y[128:])]  # 128 + 72
    h = _explicit_hessian(model, lambda f: F.cross_entropy(f(x), y))  # all 200 samples at once
    v = np.random.default_rng(2).standard_normal(h.shape[0])
    with operator(model, pieces, _names(model), "train", weights=np.array([128.0, 72.0])) as op:
        hv = op(v)
    assert np.allclose(hv, h @ v, rtol=1e-4, atol=1e-5 * np.abs(h @ v).max())


def test_the_command_takes_the_whole_split(run_store: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from landscape_cli.cli import app

    store = tmp_path / "store"
    shutil.copytree(run_store, store)
    done = CliRunner().invoke(app, ["hessian", "m", "--epochs", "1", "--batches", "all", "--batch-size", "500",
                                    "--layer", "3.weight", "--probes", "4", "--json", "-q", "--store", str(store)])
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["config"]["batches"] == "all" and out["computed"] == [1] and len(out["epochs"][0]["eigenvalues"]) == 2
    table = CliRunner().invoke(app, ["hessian", "m", "--epochs", "1", "--batches", "all", "--batch-size", "500",
                                     "--layer", "3.weight", "--probes", "4", "--store", str(store)])
    assert "all of the train split" in table.stdout and "nothing to compute" in table.stderr
