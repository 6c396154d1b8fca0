"""Several points per forward pass (`landscape_cli.kernel.batched`) against the point-by-point loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from landscape_cli.data.losses import MeanSquaredError
from landscape_cli.directions import normalize
from landscape_cli.errors import UsageError
from landscape_cli.kernel.batched import (
    MAX_POINTS_PER_PASS,
    choose_points_per_pass,
    point_bytes,
    points_that_fit,
    stack_points,
)
from landscape_cli.kernel.evaluate import Evaluator
from landscape_cli.models import create_model, list_models

Batches = list[tuple[Tensor, Tensor]]
PLANE = [(0.0, 0.0), (0.5, -0.3), (1.0, 1.0), (-0.7, 0.2), (0.1, 0.9)]  # 5 points: a short last group for k = 3, 4
LINE = [(0.0,), (0.25,), (0.5,), (1.0,), (1.5,)]
RTOL, ATOL = 1e-5, 1e-6


def _warm(model: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    """Running statistics far from 0 and 1, as after training (the model is left in train mode)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(2.0 * torch.randn((32, *shape), generator=g) + 0.5)


def _make(name: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    big = name in ("resnet", "plain", "vgg")
    shape = (3, 16, 16) if big else (1, 28, 28)  # 16 px: resnet's ImageNet stem, a cheap pass
    torch.manual_seed(seed)
    model = create_model(name, in_channels=shape[0], num_classes=10, image_size=shape[1])
    _warm(model, shape, seed)
    return model, shape


def _batches(shape: tuple[int, ...], sizes: tuple[int, ...] = (16, 16)) -> Batches:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn((n, *shape), generator=g), torch.randint(0, 10, (n,), generator=g)) for n in sizes]


def _snapshot(model: nn.Module) -> tuple[dict[str, Tensor], list[tuple[bool, object]]]:
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = [(m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    return state, flags


def _assert_unchanged(model: nn.Module, snap: tuple[dict[str, Tensor], list[tuple[bool, object]]]) -> None:
    state, flags = snap
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k  # bitwise: weights and buffers
    assert [(m.training, getattr(m, "track_running_stats", None)) for m in model.modules()] == flags


def _directions(model: nn.Module) -> list[dict[str, Tensor]]:
    weights = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(11)
    return [normalize({k: torch.randn(v.shape, generator=g) for k, v in weights.items()}, weights) for _ in range(2)]


def _plane(model: nn.Module, batches: Batches, bn: str, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    d1, d2 = _directions(model)
    with Evaluator(model, batches, bn, points_per_pass=k, **kw).plane(d1, d2) as plane:
        return plane.evaluate(PLANE)


def _segment_ends(model: nn.Module, other: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Every parameter and floating buffer of `model`, and `other`'s values of them."""
    tensors = [p for _, p in model.named_parameters()]
    end = [p.detach().clone() for _, p in other.named_parameters()]
    theirs = dict(other.named_buffers())
    for name, b in model.named_buffers():
        if b.is_floating_point():
            tensors.append(b)
            end.append(theirs[name].clone())
    return tensors, end


def _line(model: nn.Module, other: nn.Module, batches: Batches, bn: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    tensors, end = _segment_ends(model, other)
    with Evaluator(model, batches, bn, points_per_pass=k).segment(tensors, end) as line:
        return line.evaluate(LINE)


def _agree(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(got[1], want[1])


# vgg, the largest model (~7 s of the module), only in the full suite
@pytest.fixture(scope="module",
                params=[pytest.param(m, marks=pytest.mark.slow) if m == "vgg" else m for m in list_models("images")])
def built(request: pytest.FixtureRequest) -> tuple[nn.Module, nn.Module, Batches]:
    model, shape = _make(request.param, 0)
    other, _ = _make(request.param, 1)
    return model, other, _batches(shape)


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_every_model_batched_agrees_with_the_loop(built: tuple[nn.Module, nn.Module, Batches], bn: str) -> None:
    model, other, batches = built
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn:
        assert any(not torch.allclose(b, torch.zeros_like(b)) for n, b in model.named_buffers() if "running_mean" in n)
    snap = _snapshot(model)
    plane = _plane(model, batches, bn, 1)
    line = _line(model, other, batches, bn, 1)
    assert plane[0].shape == (len(PLANE), len(batches)) and line[0].shape == (len(LINE), len(batches))
    for k in (3, 4):
        _agree(_plane(model, batches, bn, k), plane)
        _agree(_line(model, other, batches, bn, k), line)
        _assert_unchanged(model, snap)


def test_segment_ends_are_exact_in_the_stacked_weights() -> None:
    model, shape = _make("cnn", 0)
    other, _ = _make("cnn", 1)
    tensors, end = _segment_ends(model, other)
    with Evaluator(model, _batches(shape), "eval", points_per_pass=4).segment(tensors, end) as line:
        stacked = stack_points(line, [(0.0,), (1.0,), (0.5,)])
    for t, e, s in zip(tensors, end, stacked, strict=True):
        assert torch.equal(s[0], t) and torch.equal(s[1], e)
        assert torch.equal(s[2], t * 0.5 + 0.5 * e)


def test_plane_points_are_written_as_the_loop_writes_them() -> None:
    model, shape = _make("cnn", 0)
    d1, d2 = _directions(model)
    with Evaluator(model, _batches(shape), points_per_pass=2).plane(d1, d2) as plane:
        stacked = stack_points(plane, PLANE[:2])
        plane._set(PLANE[1])  # the loop's weights at that point
        assert all(torch.equal(s[1], p) for s, p in zip(stacked, plane.tensors, strict=True))
        assert all(torch.equal(s[0], p) for s, p in zip(stacked, plane.base or [], strict=True))


def test_regression_and_pooled_batches_agree() -> None:
    torch.manual_seed(3)
    model = create_model("mlp", in_channels=1, num_classes=1, image_size=8)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, generator=g)) for n in (24, 10)]
    mse = MeanSquaredError()
    want = _plane(model, batches, "train", 1, loss=mse)
    got = _plane(model, batches, "train", 3, loss=mse)
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL, atol=ATOL)
    assert np.isnan(got[1]).all() and np.isnan(want[1]).all()

    cnn, shape = _make("cnn", 0)
    pooled = _batches(shape, (20, 12))
    weights = np.array([20.0, 12.0])
    for bn in ("train", "eval"):
        want = _plane(cnn, pooled, bn, 1, weights=weights)
        got = _plane(cnn, pooled, bn, 4, weights=weights)
        assert got[0].shape == (len(PLANE), 1)
        _agree(got, want)


def test_model_is_left_exactly_as_it_was_even_on_error() -> None:
    model, shape = _make("cnn", 0)
    model.features[1].eval()  # mixed modes survive
    model.features[5].track_running_stats = False
    snap = _snapshot(model)
    d1, d2 = _directions(model)
    with pytest.raises(RuntimeError, match="stop"), \
            Evaluator(model, _batches(shape), "train", points_per_pass=3).plane(d1, d2) as plane:
        plane.evaluate(PLANE)
        raise RuntimeError("stop")
    _assert_unchanged(model, snap)
    with Evaluator(model, _batches(shape), "eval", points_per_pass=3).plane(d1, d2) as plane:
        with pytest.raises(ValueError, match="2 coordinates"):
            plane.evaluate([(0.0, 0.0), (1.0,)])
        plane.evaluate(PLANE)
    _assert_unchanged(model, snap)


def test_recompute_is_evaluated_point_by_point() -> None:
    model, shape = _make("cnn", 0)
    batches = _batches(shape)
    want = _plane(model, batches, "recompute", 1)
    got = _plane(model, batches, "recompute", 3)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])  # bitwise: the same loop


def test_bf16_is_close_to_fp32_and_not_equal() -> None:
    model, shape = _make("cnn", 0)
    batches = _batches(shape)
    fp32 = _plane(model, batches, "train", 1)
    assert np.array_equal(_plane(model, batches, "train", 1, precision="tf32")[0], fp32[0])  # on CPU the same
    for k in (1, 3):
        bf16 = _plane(model, batches, "train", k, precision="bf16")
        assert bf16[0].dtype == np.float32
        np.testing.assert_allclose(bf16[0], fp32[0], rtol=5e-2)
        assert not np.array_equal(bf16[0], fp32[0])
    with Evaluator(model, batches, precision="bf16").plane(*_directions(model)) as plane:
        centre = plane.center()
    assert np.isfinite(centre.grad_a).all() and centre.loss == pytest.approx(fp32[0][0], rel=5e-2)


def test_unknown_precision_is_one_usage_line() -> None:
    model, shape = _make("mlp", 0)
    with pytest.raises(UsageError) as err:
        Evaluator(model, _batches(shape), precision="fp64")
    assert "fp64" in str(err.value) and "bf16" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="points_per_pass"):
        Evaluator(model, _batches(shape), points_per_pass=0)


def test_points_per_pass_arithmetic() -> None:
    assert points_that_fit(0, 1000) == 1
    assert points_that_fit(2 * 1000 * 10, 1000) == 10  # half of the free memory
    assert points_that_fit(2 * 1000 * 10 + 1999, 1000) == 10
    assert points_that_fit(10**15, 1000) == MAX_POINTS_PER_PASS
    model, shape = _make("mlp", 0)  # Flatten, Linear(784, 128), ReLU, Linear(128, 10)
    batches = _batches(shape, (16, 24))
    params = sum(p.numel() for p in model.parameters()) * 4
    activations = 24 * (784 + 128 + 128 + 10) * 4  # the largest batch's outputs of each module, float32
    assert point_bytes(model, batches) == params + activations
    first = [next(model.parameters())]
    assert point_bytes(model, batches, first) == first[0].numel() * 4 + activations
    assert model.training  # measured in eval mode, modes restored
    assert choose_points_per_pass(model, batches, "cpu", free_bytes=10**12) == 1  # CPU: the loop is faster
