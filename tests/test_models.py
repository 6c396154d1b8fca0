"""Every registered model, on every registered dataset's input shape (registry-driven, after timm)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape_cli.data import dataset_info, list_datasets
from landscape_cli.errors import UnknownNameError
from landscape_cli.models import (
    ACTIVATIONS,
    count_parameters,
    create_model,
    list_models,
    register_model,
    replace_activations,
)

SHAPES = sorted({(dataset_info(d).channels, dataset_info(d).size) for d in list_datasets()})


def test_the_registry_has_the_issue_models() -> None:
    assert {"resnet", "vgg", "plain", "cnn", "mlp"} <= set(list_models())


@pytest.mark.parametrize("name", list_models("images"))
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_forward_backward_on_every_dataset_shape(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, channels, 10, size)
    x = torch.randn(4, channels, size, size)
    out = model(x)
    assert out.shape == (4, 10)
    loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


@pytest.mark.parametrize("name", list_models("images"))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_is_replaced(name: str, activation: str) -> None:
    baseline = create_model(name, 1, 10, 28, "relu")
    n_relu = sum(isinstance(m, nn.ReLU) for m in baseline.modules())
    model = create_model(name, 1, 10, 28, activation)
    wanted = type(ACTIVATIONS[activation]())
    kinds = (nn.ReLU, nn.Sigmoid, nn.Tanh)
    acts = [m for m in model.modules() if isinstance(m, kinds)]
    assert n_relu > 0
    assert len(acts) == n_relu
    assert all(type(m) is wanted for m in acts)


def test_reference_resnet_is_torchvisions() -> None:
    """The same seed gives bitwise torchvision's ResNet(BasicBlock, [1, 1, 1, 1]), and the same outputs."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    ours = create_model("resnet", 3, 10, 32)
    torch.manual_seed(0)
    theirs = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-5)
    assert 4_800_000 < count_parameters(ours) < 5_000_000
    # one input channel: only the first convolution differs; small images get the 3x3 stride-1 stem
    assert create_model("resnet", 1, 10, 28).conv1.weight.shape == (64, 1, 7, 7)
    small = create_model("resnet", 1, 10, 8)
    assert small.conv1.weight.shape == (64, 1, 3, 3) and isinstance(small.maxpool, nn.Identity)


def test_plain_has_no_skip_connections() -> None:
    """`plain` computes the residual branch only: zeroing the branch's output zeroes the block."""
    torch.manual_seed(0)
    model = create_model("plain", 1, 10, 28).eval()
    block = model.layer1[0]
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 64, 7, 7)
    assert torch.equal(block(x), torch.zeros_like(x))  # relu(0) with no identity added
    resnet = create_model("resnet", 1, 10, 28).eval()
    rblock = resnet.layer1[0]
    nn.init.zeros_(rblock.bn2.weight)
    nn.init.zeros_(rblock.bn2.bias)
    assert torch.equal(rblock(x), torch.relu(x))  # the identity passes through


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="choose one of cnn, gpt, mlp, plain, resnet, vgg"):
        create_model("alexnet", 1, 10, 28)
    with pytest.raises(KeyError):  # catchable as the built-in too
        create_model("cnn", 1, 10, 28, "gelu")


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("cnn", "again")(lambda **kw: nn.Identity())


def test_replace_activations_reaches_nested_modules() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2), nn.Tanh()))
    replace_activations(model, "sigmoid")
    assert [type(m).__name__ for m in model.modules()].count("Sigmoid") == 2
