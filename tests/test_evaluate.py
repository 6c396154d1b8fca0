"""The compute kernel against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_cli.data import load_dataset
from landscape_cli.directions import draw_random, normalize, perturbed_names
from landscape_cli.errors import UsageError
from landscape_cli.kernel.evaluate import Evaluator, evaluate_plane
from landscape_cli.models import create_model


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], dict, dict]:
    torch.manual_seed(0)
    model = create_model("cnn", 1, 10, 8)
    data = load_dataset("digits")
    # give the BatchNorm buffers non-trivial values, as after training
    model.train()
    with torch.no_grad():
        model(data.normalize(data.train_x[:512]))
    batches = [(data.normalize(data.train_x[i * 64:(i + 1) * 64]), data.train_y[i * 64:(i + 1) * 64]) for i in range(3)]
    weights = {k: v.detach() for k, v in model.named_parameters()}
    r1, r2 = draw_random({k: tuple(v.shape) for k, v in weights.items()}, 0, 0)
    names = perturbed_names(weights)
    return model, batches, normalize(r1, weights, names), normalize(r2, weights, names)


def _manual(model: nn.Module, d1: dict, d2: dict, a: float, b: float, batch: tuple, bn: str) -> tuple[float, float]:
    """Loss at w + a·d1 + b·d2 in a fresh copy whose weights are set by hand."""
    fresh = create_model("cnn", 1, 10, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in d1:
        state[name] = state[name] + a * d1[name] + b * d2[name]
    fresh.load_state_dict(state)
    fresh.train(bn == "train")  # cnn has no dropout: train mode only changes BatchNorm
    with torch.no_grad():
        out = fresh(batch[0])
    return F.cross_entropy(out, batch[1]).item(), (out.argmax(1) == batch[1]).float().mean().item()


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_points_match_hand_set_weights(setup: tuple, bn: str) -> None:
    model, batches, d1, d2 = setup
    points = [(0.0, 0.0), (0.3, -0.7), (-1.0, 1.0)]
    with Evaluator(model, batches, bn).plane(d1, d2) as plane:
        loss, acc = plane.evaluate(points)
    assert loss.shape == acc.shape == (3, 3)
    for i, (a, b) in enumerate(points):
        for j, batch in enumerate(batches):
            ml, ma = _manual(model, d1, d2, a, b, batch, bn)
            assert loss[i, j] == pytest.approx(ml, rel=1e-5, abs=1e-6)
            assert acc[i, j] == pytest.approx(ma, abs=1e-6)


def test_train_and_eval_modes_differ(setup: tuple) -> None:
    model, batches, d1, d2 = setup
    with Evaluator(model, batches, "train").plane(d1, d2) as plane:
        tr, _ = plane.evaluate([(0.5, 0.5)])
    with Evaluator(model, batches, "eval").plane(d1, d2) as plane:
        ev, _ = plane.evaluate([(0.5, 0.5)])
    assert abs(tr[0, 0] - ev[0, 0]) > 1e-3


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_model_is_left_exactly_as_it_was(setup: tuple, bn: str) -> None:
    model, batches, d1, d2 = setup
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="stop"), Evaluator(model, batches, bn).plane(d1, d2) as plane:
        plane.evaluate([(0.9, 0.9)])
        plane.center()
        plane._set((0.4, 0.1))  # weights moved when the error comes
        raise RuntimeError("stop")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm buffers
    assert model.training and all(m.training for m in model.modules())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_point_values_do_not_depend_on_order(setup: tuple) -> None:
    model, batches, d1, d2 = setup
    with Evaluator(model, batches).plane(d1, d2) as plane:
        forward, _ = plane.evaluate([(0.1, 0.2), (0.7, -0.4), (0.3, 0.3)])
        backward, _ = plane.evaluate([(0.3, 0.3), (0.7, -0.4), (0.1, 0.2)])
    assert (forward == backward[::-1]).all()  # bitwise


def test_center_gradient_is_the_projected_gradient(setup: tuple) -> None:
    model, batches, d1, d2 = setup
    with Evaluator(model, batches, "train").plane(d1, d2) as plane:
        c = plane.center()
        h = 1e-3
        plus, _ = plane.evaluate([(h, 0.0), (0.0, h)])
        minus, _ = plane.evaluate([(-h, 0.0), (0.0, -h)])
    # independent: autograd on a fresh copy, dotted with the directions by hand
    fresh = create_model("cnn", 1, 10, 8)
    fresh.load_state_dict(model.state_dict())
    fresh.train()
    for j, (x, y) in enumerate(batches):
        fresh.zero_grad()
        loss = F.cross_entropy(fresh(x), y)
        loss.backward()
        params = dict(fresh.named_parameters())
        ga = sum(float((params[n].grad * d1[n]).sum()) for n in d1)
        gb = sum(float((params[n].grad * d2[n]).sum()) for n in d2)
        assert c.loss[j] == pytest.approx(loss.item(), rel=1e-5)
        assert c.grad_a[j] == pytest.approx(ga, rel=1e-3, abs=1e-5)
        assert c.grad_b[j] == pytest.approx(gb, rel=1e-3, abs=1e-5)
        # and it is the slope of the slice: central differences agree
        assert (plus[0, j] - minus[0, j]) / (2 * h) == pytest.approx(ga, rel=0.05, abs=2e-3)
        assert (plus[1, j] - minus[1, j]) / (2 * h) == pytest.approx(gb, rel=0.05, abs=2e-3)


def test_evaluate_plane_layout(setup: tuple) -> None:
    model, batches, d1, d2 = setup
    loss, acc = evaluate_plane(model, batches, d1, d2, a_values=[-1, 0, 1, 2], b_values=[0, 1])
    assert loss.shape == acc.shape == (3, 2, 4)  # [batch, b, a]
    ml, _ = _manual(model, d1, d2, 2.0, 1.0, batches[1], "train")
    assert loss[1, 1, 3] == pytest.approx(ml, rel=1e-5)


def test_readme_notebook_recipe_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """README's recipe for a model in a notebook, executed as README shows it, scores a regression with MSE."""
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    block = text.split("<!-- recipe: notebook -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    torch.manual_seed(3)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    model, x, y = ns["model"], ns["x"], ns["y"]
    with torch.no_grad():
        centre = F.mse_loss(model(x), y.unsqueeze(1)).item()  # nn.MSELoss()'s mean, targets [N] as [N, 1]
    assert ns["loss"].shape == (1, 3, 3) and ns["loss"][0, 1, 1] == pytest.approx(centre, rel=1e-6)
    assert np.isnan(ns["accuracy"]).all() and (ns["loss"] > 0).all()
    assert "[[" in capsys.readouterr().out


def test_the_loss_follows_the_targets_or_is_named(setup: tuple) -> None:
    model, batches, d1, d2 = setup
    ce, acc = evaluate_plane(model, batches[:1], d1, d2, a_values=[0.0], b_values=[0.0], bn="eval")
    x, y = batches[0]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert ce[0, 0, 0] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-6)
    assert acc[0, 0, 0] == pytest.approx((out.argmax(1) == y).float().mean().item())
    with pytest.raises(UsageError, match="cross-entropy needs integer class indices"):
        evaluate_plane(model, [(x, y.float())], d1, d2, a_values=[0.0], b_values=[0.0], loss="cross-entropy")
    with pytest.raises(UsageError, match="output has shape"):
        evaluate_plane(model, [(x, torch.randn(len(y)))], d1, d2, a_values=[0.0], b_values=[0.0])
