"""The model registry: a decorator, a dict, `create_model` and `list_models` (after timm)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from landscape_cli.config import ACTIVATIONS as ACTIVATION_NAMES
from landscape_cli.config import choice
from landscape_cli.errors import UnknownNameError, UsageError
from landscape_cli.plugins import Source, resolve

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),  # as torchvision: one activation buffer less
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "config.ACTIVATIONS names the activations built here"

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: ModelFactory
    description: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory(in_channels, num_classes, image_size, activation) -> nn.Module`."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelEntry(name, factory, description)
        return factory

    return decorate


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _MODELS[name]


def check_activation(name: str) -> None:
    choice(name, list(ACTIVATIONS), "activation")


def make_activation(name: str) -> nn.Module:
    check_activation(name)
    return ACTIVATIONS[name]()


def replace_activations(module: nn.Module, activation: str) -> nn.Module:
    """Replace every activation module (ReLU, Sigmoid, Tanh...) of `module` by `activation`."""
    kinds = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU)
    for child_name, child in module.named_children():
        if isinstance(child, kinds):
            setattr(module, child_name, make_activation(activation))
        else:
            replace_activations(child, activation)
    return module


def create_model(
    name: str, in_channels: int, num_classes: int, image_size: int, activation: str = "relu"
) -> nn.Module:
    """Build a registered model for inputs of `in_channels` x `image_size`², every activation replaced."""
    entry = model_entry(name)
    check_activation(activation)
    model = entry.factory(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return replace_activations(model, activation)


def model_source(ref: str) -> Source:
    """Where a model reference comes from: built-in, entry point, pkg.module:factory or ./file.py:factory."""
    return resolve(ref, "model", list_models())


def build(source: Source, args: dict[str, Any]) -> nn.Module:
    """A model from its source: a built-in with its arguments, or a factory called with input_shape and
    num_outputs (a factory's model is used as it is: never rewritten)."""
    if source.builtin:
        return create_model(source.ref, **args)
    factory = source.load("model")
    model = factory(input_shape=tuple(args["input_shape"]), num_outputs=int(args["num_outputs"]))
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {source.ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
