"""Hessians of models with attention and recurrent layers, and of one whose operator has no second derivative.

The models are factories of `tests/userland/attention_factories.py` (an image of digits read as 8 tokens
of 8 features). Their Hessian-vector products need kernels with a double backward (math attention,
cuDNN off): `landscape hessian` must give the top eigenvalues of an explicit float64 Hessian, and
`grid --directions hessian` must run on them. An operator without second derivatives fails with one
line naming it, and leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Step, Train
from torch import nn

from landscape_cli.data import load_dataset
from landscape_cli.data.losses import MeanSquaredError
from landscape_cli.directions import perturbed_names
from landscape_cli.kernel.batches import Batches
from landscape_cli.kernel.hvp import DOUBLE_BACKWARD, FORWARD_OVER_REVERSE, NoSecondDerivative, operator

USERLAND = Path(__file__).parent / "userland"
MODELS = ["mha", "encoder", "sdpa", "gru"]
BATCH = ["--batches", "1", "--batch-size", "48"]


def _train(model: str) -> Step:
    return Train(f"attention_factories:{model}", "digits", syspath=USERLAND, epochs=1, batch_size=64, lr=0.05,
                 name=model)


@pytest.fixture
def userland(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The factories importable, as for the runs trained from them (their checkpoints name the module)."""
    monkeypatch.syspath_prepend(str(USERLAND))
    return USERLAND


def _explicit_hessian(store: Path, run: str, epoch: int) -> tuple[np.ndarray, float]:
    """The float64 Hessian of the first batch of 48 training digits' loss over the perturbed parameters of
    `run` at `epoch`, by torch.func.hessian with the math attention kernel, and the loss."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from landscape_cli.models import checkpoints
    from landscape_cli.store import Store
    from landscape_cli.store.meta import epoch_record

    st = Store(store)
    meta = st.read_run(st.resolve(run))
    model = checkpoints.build_model(checkpoints.load_epoch(st, meta.id, epoch_record(meta, epoch))).double()
    names = perturbed_names({k: v.detach() for k, v in model.named_parameters()})
    params = dict(model.named_parameters())
    [(x, y)] = Batches(load_dataset("digits"), "train", 1, 48).on(torch.device("cpu"), False)
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss(w: torch.Tensor) -> torch.Tensor:
        values, start = {}, 0
        for n in names:
            values[n] = w[start:start + params[n].numel()].view_as(params[n])
            start += params[n].numel()
        return F.cross_entropy(torch.func.functional_call(model, values, (x.double(),)), y)

    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        h = torch.func.hessian(loss)(flat).numpy()
        value = float(loss(flat))
    return (h + h.T) / 2, value


@pytest.mark.parametrize("model", MODELS)
def test_hessian_and_hessian_grids_of_attention_and_recurrent_models(
        model: str, copy_store: Callable[..., Path], userland: Path, cli: Callable[..., Any]) -> None:
    import zarr

    store = copy_store(_train(model))
    # the grid first: it computes the curvature it needs itself (--top 2 on its batches)
    plane = cli("grid", model, "--directions", "hessian", "--epochs", "1", "--width", "3", "--span", "0.01", *BATCH,
                "--json", "-q", "--store", str(store))
    assert plane.exit_code == 0, plane.stderr
    done = cli("hessian", model, "--epochs", "1", "--top", "3", "--tol", "1e-6", "--probes", "4", *BATCH, "--json",
               "-q", "--store", str(store))
    assert done.exit_code == 0, done.stderr
    [epoch] = json.loads(done.stdout)["epochs"]
    h, loss = _explicit_hessian(store, model, 1)
    values = np.linalg.eigvalsh(h)
    assert np.allclose(epoch["eigenvalues"], values[::-1][:3], rtol=1e-4), (epoch["eigenvalues"], values[::-1][:3])
    assert epoch["lambda_min"] == pytest.approx(values[0], rel=1e-3, abs=1e-4 * values[-1])
    # the grid: complete, along eigenvectors of the same Hessian, its centre the loss at the weights
    grid = json.loads(plane.stdout)
    assert grid["rows_done"] == grid["rows_total"] > 0 and grid["diverged_points"] == 0
    assert np.allclose(grid["facts"]["epochs"]["1"]["eigenvalues"], values[::-1][:2], rtol=1e-3)
    assert np.isfinite(zarr.open_array(Path(grid["zarr"]) / "loss", mode="r")[:]).all()
    assert float(zarr.open_array(Path(grid["zarr"]) / "center_loss", mode="r")[0, 0]) == pytest.approx(loss, rel=1e-5)


def _factory_model(name: str) -> nn.Module:
    import attention_factories as factories

    torch.manual_seed(0)
    built: nn.Module = getattr(factories, name)((1, 8, 8), 10)
    return built


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return Batches(load_dataset("digits"), "train", 2, 32).on(torch.device("cpu"), False)


@pytest.mark.parametrize("model", MODELS)
def test_forward_over_reverse_and_double_backward_give_the_same_products(model: str, userland: Path) -> None:
    net = _factory_model(model)
    names = [n for n, _ in net.named_parameters()]  # biases too
    v = np.random.default_rng(0).standard_normal(sum(p.numel() for p in net.parameters()))
    products = {}
    for method in (FORWARD_OVER_REVERSE, DOUBLE_BACKWARD, "auto"):
        with operator(net, _batches(), names, "train", method=method) as op:
            products[method] = op(v)
            assert op.method == (DOUBLE_BACKWARD if method == "auto" else method)  # auto: the faster
    scale = np.abs(products[DOUBLE_BACKWARD]).max()
    assert scale > 0
    assert np.allclose(products[FORWARD_OVER_REVERSE], products[DOUBLE_BACKWARD], rtol=1e-4, atol=1e-5 * scale)
    assert np.array_equal(products["auto"], products[DOUBLE_BACKWARD])


@pytest.mark.parametrize("keep", [None, 0, 1])
def test_gradient_graphs_kept_between_products_change_no_product(keep: int | None, userland: Path) -> None:
    """Double backward keeps each batch's gradient graph between products where it fits (`keep_bytes`: None the
    default budget, 0 never, 1 byte: none fits): the same products, the graphs freed with the operator."""
    net = _factory_model("encoder")
    names = [n for n, p in net.named_parameters() if p.dim() > 1]
    rng = np.random.default_rng(3)
    v, u = (rng.standard_normal(sum(p.numel() for n, p in net.named_parameters() if n in names)) for _ in range(2))
    with operator(net, _batches(), names, "train", keep_bytes=0) as op:
        expected = op(v), op(u)
        assert op.kept_bytes == 0
    with operator(net, _batches(), names, "train", keep_bytes=keep) as op:
        assert np.array_equal(op(v), expected[0]) and np.array_equal(op(u), expected[1])
        assert np.array_equal(op(v), expected[0]) and op.products == 3
        assert (op.kept_bytes > 0) == (keep is None)
    assert op.kept_bytes == 0


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_both_products_agree_with_batchnorm_and_the_buffers_stay(bn: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 10))
    with torch.no_grad():
        net(torch.randn(64, 1, 8, 8))  # running statistics that differ from the batches' own
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = ["1.weight", "2.weight", "4.weight"]
    out = {}
    for method in (FORWARD_OVER_REVERSE, DOUBLE_BACKWARD):
        with operator(net, _batches(), names, bn, method=method) as op:
            out[method] = op(np.random.default_rng(1).standard_normal(op.size))
    assert np.allclose(out[FORWARD_OVER_REVERSE], out[DOUBLE_BACKWARD], rtol=1e-4,
                       atol=1e-5 * np.abs(out[DOUBLE_BACKWARD]).max())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_loss_without_forward_mode_derivatives_falls_back_to_double_backward() -> None:
    """F.mse_loss's backward has no forward-mode derivative: forward-over-reverse falls back, with the same values."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    batches = [(torch.randn(40, 5), torch.randn(40, 2))]
    names = [n for n, _ in net.named_parameters()]
    v = np.random.default_rng(2).standard_normal(sum(p.numel() for p in net.parameters()))
    with operator(net, batches, names, "train", loss=MeanSquaredError(), method=FORWARD_OVER_REVERSE) as op:
        auto = op(v)
        assert op.method == DOUBLE_BACKWARD and op.fallback
        op(v)  # the fallback is kept
        assert op.products == 2
    with operator(net, batches, names, "train", loss=MeanSquaredError(), method=DOUBLE_BACKWARD) as op:
        assert np.array_equal(auto, op(v))


# --- an operator without second derivatives ---


def _files(store: Path) -> dict[str, str]:
    """Every file under the store (lock files aside) and the sha256 of its bytes."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_the_product_names_a_once_differentiable_function(userland: Path) -> None:
    net = _factory_model("once")
    with operator(net, _batches(), [n for n, _ in net.named_parameters()], "train") as op, \
            pytest.raises(NoSecondDerivative, match="OnceSquare") as caught:
        op(np.ones(op.size))
    assert caught.value.operator == "OnceSquare" and "once_differentiable" in str(caught.value)


def test_an_operator_without_second_derivatives_is_one_line_and_leaves_nothing(
        copy_store: Callable[..., Path], userland: Path, cli: Callable[..., Any]) -> None:
    store = copy_store(_train("once"))
    before = _files(store)
    for args in (["hessian", "once", "--epochs", "1", "--probes", "4", *BATCH],
                 ["grid", "once", "--directions", "hessian", "--epochs", "1", "--width", "3", *BATCH]):
        result = cli(*args, "-q", "--store", str(store))
        assert result.exit_code != 0
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
        assert "OnceSquare" in result.stderr and "Traceback" not in result.stderr + result.stdout
        assert _files(store) == before, args
    listed = cli("ls", "--json", "--store", str(store))
    assert listed.exit_code == 0 and all(not run.get("hessians") for run in json.loads(listed.stdout)["runs"])


def test_a_failed_epoch_leaves_existing_results_as_they_were(
        copy_store: Callable[..., Path], userland: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Results with finished epochs, then a command that adds an epoch whose products fail: the same bytes."""
    store = copy_store(_train("mha"))
    args = ["hessian", "mha", "--top", "1", "--probes", "2", *BATCH, "-q", "--store", str(store)]
    assert cli(*args, "--epochs", "0").exit_code == 0
    before = _files(store)

    from landscape_cli.kernel.hvp import HessianOperator

    def fail(self: HessianOperator, v: np.ndarray) -> np.ndarray:
        raise NoSecondDerivative("the Hessian needs second derivatives and PyTorch has none for aten::nothing",
                                 "aten::nothing")

    monkeypatch.setattr(HessianOperator, "__call__", fail)
    result = cli(*args, "--epochs", "0,1", "--name", "renamed")
    assert result.exit_code == 2 and "aten::nothing" in result.stderr
    assert _files(store) == before
    listed = cli("ls", "--json", "--store", str(store))
    [run] = json.loads(listed.stdout)["runs"]
    [results] = run["hessians"]
    assert results["status"] == "complete" and results["epochs"] == [0] and results["name"] is None


def test_fused_attention_without_the_math_kernel_is_the_one_line_of_its_operator(
        copy_store: Callable[..., Path], userland: Path, cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """What `landscape hessian` did before the products forced the math kernel: the fused attention's backward has
    no derivative; the error names the operator autograd names, and nothing is left behind."""
    import contextlib

    from landscape_cli.kernel import hvp

    store = copy_store(_train("mha"))
    before = _files(store)
    monkeypatch.setattr(hvp, "differentiable_kernels", lambda model=None: contextlib.nullcontext())
    result = cli("hessian", "mha", "--epochs", "1", "--probes", "2", *BATCH, "-q", "--store", str(store))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in result.stderr
    assert _files(store) == before


@pytest.mark.parametrize(("message", "operator_name"), [
    ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented",
     "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    ("the derivative for '_cudnn_rnn_backward' is not implemented. Double backwards is not supported for CuDNN RNNs",
     "aten::_cudnn_rnn_backward"),
])
def test_the_operator_is_read_from_autograd_s_message(message: str, operator_name: str) -> None:
    from landscape_cli.kernel.hvp import no_second_derivative

    error = no_second_derivative(RuntimeError(message))
    assert error is not None and error.operator == operator_name and operator_name in str(error)
    assert "\n" not in str(error) and no_second_derivative(RuntimeError("out of memory")) is None
