"""The Python API on models in memory (`landscape_cli.plane`, `line`, `hessian`, `stats`, `save_to`).

Each call equals what the CLI stores for the same model and batches, bitwise on the CPU with one thread: the
model is rebuilt from a session-trained run's checkpoint and the batches are the ones a grid of that run
evaluates (`Batches`), the stored grid or curvature results come from the CLI (`Cli` steps of the master). The
Hessian's eigenvalues are checked against an explicit float64 Hessian (`torch.autograd.functional.hessian`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import Cli, StoreFactory, Train, one_thread, run_in_process
from torch import nn

import landscape_cli as ls
from landscape_cli.errors import UsageError
from landscape_cli.models import checkpoints
from landscape_cli.store import Store

TINY = Train("cnn", epochs=2, name="tiny")  # the session's small cnn on digits (shared with test_grids)
PLANE = Cli("grid", "tiny", "--epochs", "2", "--width", "7", "--pairs", "2", "--batches", "2", "--batch-size", "64", "-q")
R = Train("cnn", epochs=4, name="r")  # five checkpoints (test_directions' master run)
SMALL = ("--batches", "1", "--batch-size", "64", "-q")
INTERPOLATE = Cli("grid", "r", "--directions", "interpolate", "--epochs", "0", "--to-epoch", "4", "--width", "7",
                  "--bn", "eval", "--name", "i", *SMALL)
PCA = Cli("grid", "r", "--directions", "pca", "--width", "5", "--name", "p", *SMALL)
HESSIAN = Cli("hessian", "r", "--epochs", "4", "--top", "2", "--probes", "10", "--name", "h", *SMALL)
HESSIAN_PLANE = Cli("grid", "r", "--directions", "hessian", "--epochs", "4", "--width", "3", "--name", "hp", *SMALL)
VALUES = ("loss", "accuracy", "center_loss", "center_accuracy", "grad_a", "grad_b", "done", "diverged", "x", "y")


def _model(store: Path, run: str, epoch: int) -> nn.Module:
    st = Store(store)
    meta = st.read_run(st.resolve(run))
    record = meta.record(epoch)
    assert record is not None
    return checkpoints.build_model(checkpoints.load_epoch(st, meta.id, record))


def _state(store: Path, run: str, epoch: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _model(store, run, epoch).state_dict().items()}


def _equal(ours: xr.Dataset, theirs: xr.Dataset, names: tuple[str, ...]) -> None:
    for name in names:
        if name in theirs.variables:
            np.testing.assert_array_equal(ours[name].values, theirs[name].values, err_msg=name)


@pytest.fixture(scope="module")
def tiny(trained_store: StoreFactory) -> Path:
    return trained_store.build(TINY, PLANE)


@pytest.fixture(scope="module")
def kinds(trained_store: StoreFactory) -> Path:
    return trained_store.build(R, INTERPOLATE, PCA)


def test_a_random_plane_and_line_equal_the_cli_grid_bitwise(tiny: Path, copy_store: Any) -> None:
    """The plane of the epoch-2 model on digits' first 2 batches of 64 is the CLI's grid at epoch 2, value for
    value; the line through batches given as a list (as the grid evaluates them) is its middle row; `stats` of the
    result is `landscape stats` of the stored grid; the threads are set for the call, recorded, and restored."""
    from landscape_cli.curvature.stats import stats as stored_stats
    from landscape_cli.data import load_dataset
    from landscape_cli.kernel.batches import Batches

    store = copy_store(TINY, PLANE)  # the master's copy (`landscape stats` writes its cache into the grid)
    model = _model(store, "tiny", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stored = ls.open("tiny", store=store).sel(epoch=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # what the call's threads=1 replaces for the call only
    try:
        ds = ls.plane(model, "digits", width=7, pairs=2, batches=2, batch_size=64, threads=1)
        assert torch.get_num_threads() == 2 and ds.attrs["threads"] == 1
    finally:
        torch.set_num_threads(threads)
    assert ds.loss.dims == ("epoch", *stored.loss.dims) and ds.sizes["pair"] == 2
    _equal(ds.sel(epoch=0), stored, VALUES)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is only read

    batches = Batches(load_dataset("digits"), "train", 2, 64).on(torch.device("cpu"), False)
    line = ls.line(model, batches, width=7, pairs=2, threads=1).sel(epoch=0)
    middle = stored.sel(y=0.0)
    for name in ("loss", "accuracy", "center_loss", "center_accuracy", "grad_a"):
        np.testing.assert_array_equal(line[name].values, middle[name].values, err_msg=name)
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    again = ls.line(model, loader, batches=2, width=7, pairs=1, threads=1)  # a DataLoader: its first 2 batches
    np.testing.assert_array_equal(again.loss.values[0, 0], line.loss.values[0])

    mine = ls.stats(ds).epochs[0]
    theirs = stored_stats("tiny", epochs=[2], store=store).epochs[0]
    assert {k: v for k, v in mine.items() if k != "epoch"} == {k: v for k, v in theirs.items() if k != "epoch"}
    assert ds.landscape.plot_result().panels  # the CLI's figure of it, from its attributes alone


def test_interpolation_and_pca_equal_the_cli_grids_bitwise(kinds: Path) -> None:
    st = Store(kinds)
    start, end = _model(kinds, "r", 0), _state(kinds, "r", 4)
    line = ls.line(start, "digits", directions="interpolate", to=end, width=7, bn="eval", batches=1, batch_size=64,
                   threads=1)
    _equal(line.sel(epoch=0), ls.open("r", grid="i", store=kinds).sel(epoch=0), VALUES)

    trajectory = [_state(kinds, "r", e) for e in range(5)]
    pca = ls.plane(_model(kinds, "r", 4), "digits", directions="pca", trajectory=trajectory, width=5, batches=1,
                   batch_size=64, threads=1)
    stored = ls.open("r", grid="p", store=kinds)
    _equal(pca.isel(epoch=0), stored.isel(epoch=0), VALUES)
    _equal(pca, stored, ("path_x", "path_y", "path_residual", "path_loss", "path_accuracy", "path_epoch"))
    assert pca.attrs["explained_variance_ratio"] == stored.attrs["explained_variance_ratio"]
    assert st.read_run(st.resolve("r")).id != pca.attrs["landscape_run"]  # computed on the model in memory


@pytest.mark.slow  # two Hessians of the cnn (~10 s)
def test_the_hessian_and_its_plane_equal_the_cli_bitwise(trained_store: StoreFactory) -> None:
    store = trained_store.build(R, HESSIAN, HESSIAN_PLANE)
    model = _model(store, "r", 4)
    h = ls.hessian(model, "digits", top=2, probes=10, batches=1, batch_size=64, threads=1)
    st = Store(store)
    run = st.resolve("r")
    [meta] = [m for m in st.hessians(run) if getattr(m, "name", None) == "h"]
    stored = xr.open_zarr(st.hessian_zarr(run, meta.id))
    _equal(h, stored, ("eigenvalues", "residual", "converged", "lambda_min", "lambda_min_residual", "convexity",
                       "trace", "trace_stderr"))
    v = ls.eigenvectors(h)
    assert sorted(v) == ["v1", "v2"] and all(v["v1"][n].dtype == torch.float32 for n in v["v1"])

    plane = ls.plane(model, "digits", directions="hessian", width=3, batches=1, batch_size=64, threads=1)
    _equal(plane.sel(epoch=0), ls.open("r", grid="hp", store=store).sel(epoch=4), VALUES)


def test_hessian_eigenvalues_equal_an_explicit_float64_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 3, (40,))
    params = dict(model.named_parameters())
    shapes = [(n, p.shape, p.numel()) for n, p in params.items()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        tensors, start = {}, 0
        for n, shape, size in shapes:
            tensors[n] = flat[start:start + size].reshape(shape)
            start += size
        return nn.functional.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).numpy()[::-1]  # 38 x 38
    with one_thread():
        h = ls.hessian(model, [(x, y)], top=3, perturb_biasbn=True, tol=1e-9, probes=200)
    np.testing.assert_allclose(h.eigenvalues.values[0], exact[:3], rtol=0, atol=1e-5)
    assert abs(float(h.lambda_min.values[0]) - exact[-1]) < 1e-5
    assert abs(float(h.trace.values[0]) - exact.sum()) < 4 * float(h.trace_stderr.values[0])  # Hutchinson's estimate


def test_a_hessian_result_draws_its_figure_in_a_notebook(tmp_path: Path) -> None:
    """`h.landscape.plot()` of a Hessian result: `landscape plot RUN --hessian`'s figure, showing itself as an image,
    its lines the result's values, no text overlapping, written nowhere unless asked."""
    from test_figure_layout import problems

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3))
    batches = [(torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,)))]
    with one_thread():
        h = ls.hessian(model, batches, top=2, density=True, density_probes=2, steps=8)
    written = sorted(p for p in Path(h.attrs["landscape_store"]).rglob("*.png"))
    fig = h.landscape.plot()
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p for p in Path(h.attrs["landscape_store"]).rglob("*.png")) == written  # nothing written
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
    np.testing.assert_array_equal(lines["λ1"], h.eigenvalues.values[:, 0])
    np.testing.assert_array_equal(lines["λ2"], h.eigenvalues.values[:, 1])
    np.testing.assert_array_equal(lines["λmin"], h.lambda_min.values)
    assert len(fig.axes) == 3 and problems(fig) == []  # eigenvalues, trace, density
    out = tmp_path / "h.svg"
    assert h.landscape.plot_result(out=out).path == out and out.read_text().startswith("<?xml")
    with pytest.raises(UsageError, match="takes dpi, out, not contour"):
        h.landscape.plot(contour=True)


def test_save_to_gives_the_run_and_grid_the_cli_gives(tiny: Path, tmp_path: Path) -> None:
    """save_to imports the weights and computes the grid through the store's machinery: the ids and values of
    `landscape import cnn digits FILE --epochs 0` then `landscape grid` of the same options."""
    model = _model(tiny, "tiny", 2)
    ds = ls.line(model, "digits", width=5, pairs=1, batches=1, batch_size=64, threads=1)
    with pytest.raises(UsageError, match=r"model_factory="):
        ls.save_to(ds, tmp_path / "mine")
    with pytest.raises(UsageError, match=r"defined in the notebook"):
        ls.save_to(ds, tmp_path / "mine", model_factory=_local_factory())
    saved = ls.save_to(ds, tmp_path / "mine", model_factory="cnn", name="kept")
    assert isinstance(saved, ls.GridResult) and saved.complete

    weights = tmp_path / "epoch.pt"
    torch.save(model.state_dict(), weights)
    theirs = tmp_path / "theirs"
    done = run_in_process("import", "cnn", "digits", str(weights), "--epochs", "0", "--store", str(theirs), "-q")
    assert done.returncode == 0, done.stderr
    [run] = Store(theirs).runs()
    done = run_in_process("grid", run.id, "--dims", "1", "--width", "5", "--pairs", "1", "--batches", "1",
                          "--batch-size", "64", "--store", str(theirs), "-q")
    assert done.returncode == 0, done.stderr
    assert (saved.run_id, saved.grid_id) == (run.id, *Store(theirs).grid_ids(run.id))
    ours, cli = ls.open("kept", store=tmp_path / "mine"), ls.open(run.id, store=theirs)
    _equal(ours, cli, VALUES)
    _equal(ds.sel(epoch=0), cli.sel(epoch=0), ("loss", "accuracy", "center_loss"))  # = the result in memory

    on_batches = ls.line(model, [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))], width=3, pairs=1)
    with pytest.raises(UsageError, match="registered dataset"):
        ls.save_to(on_batches, tmp_path / "mine", model_factory="cnn")
    tanh = ls.create_model("cnn", 1, 10, 8, activation="tanh")  # the same weights, another model: refused, unwritten
    tanh.load_state_dict(model.state_dict())
    other = ls.line(tanh, "digits", width=3, pairs=1, batches=1, batch_size=64)
    with pytest.raises(UsageError, match=r"model_factory='cnn' builds computes another loss"):
        ls.save_to(other, tmp_path / "other", model_factory="cnn")
    assert not (tmp_path / "other").exists()


def _local_factory() -> Any:
    def make(input_shape: Any, num_outputs: int) -> nn.Module:
        return nn.Linear(1, 1)

    make.__module__ = "__main__"
    make.__qualname__ = "make"
    return make


def test_bad_input_is_one_line() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    cases = [
        (lambda: ls.plane(model, [(x, y)], directions="interpolate", to=model), "an interpolation is a line"),
        (lambda: ls.line(model, [(x, y)], directions="interpolate", to=nn.Linear(4, 3)), r"to= does not fit the model"),
        (lambda: ls.plane(model, [(x[:8], y[:8]), (x, y)]), r"different numbers of samples \(8, 16\)"),
        (lambda: ls.plane(model, [(x, y)], directions="pca", trajectory=[model] * 2), "at least 4 states"),
        (lambda: ls.plane(model, [(torch.randn(16, 5), y)]), r"the model failed on the first samples .* \[2, 5\]"),
        (lambda: ls.hessian(model, [(x, y)], batches=2), r"batches=2, but the data holds 1 batch"),
        (lambda: ls.plane(model, [x, y, x]), "each batch must be a pair"),
    ]
    for call, message in cases:
        with pytest.raises(UsageError, match=message):
            call()


@pytest.mark.slow  # a PCA plane, a Hessian plane, and one saved (~15 s)
def test_readme_api_kinds_recipe_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's recipe of the other directions, a line and save_to, run as written (./runs: in tmp_path)."""
    from conftest import REPO

    monkeypatch.chdir(tmp_path)
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- recipe: api-kinds -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    with one_thread():
        exec(compile(block, "README.md", "exec"), namespace)
    back, pca, kept = namespace["back"], namespace["pca"], namespace["kept"]
    t = back.x.values
    ends = [float(back.loss.values[0, 0, 0, list(t).index(v)]) for v in (0.0, 1.0)]
    assert ends[0] == float(back.center_loss.values[0, 0])  # t = 0: the model itself
    assert namespace["line"].loss.dims == ("epoch", "pair", "batch", "x") and namespace["top"].sizes["y"] == 7
    _equal(ls.open("kept", store=tmp_path / "runs").isel(epoch=0), pca.isel(epoch=0), ("loss", "path_x", "path_y"))
    assert kept.grid_id == Store(tmp_path / "runs").grid_ids(kept.run_id)[0]
