"""The model registry: a decorator, a dict, `create_model` and `list_models` (after timm)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape_cli.config import ACTIVATIONS as ACTIVATION_NAMES
from landscape_cli.config import choice
from landscape_cli.errors import UnknownNameError, UsageError
from landscape_cli.models import hf
from landscape_cli.plugins import Source, call_factory, resolve

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),  # as torchvision: one activation buffer less
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "config.ACTIVATIONS names the activations built here"

ModelFactory = Callable[..., nn.Module]


INPUTS = ("images", "tokens")  # what a built-in model takes: square images, or token ids [N, T]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: ModelFactory
    description: str
    inputs: str = "images"


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, inputs: str = "images") -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory(in_channels, num_classes, image_size) -> nn.Module` (its activations are replaced by
    --activation's), or with inputs="tokens" `factory(input_shape, num_outputs)` for token ids [N, T] (as a
    user's factory is called; never rewritten)."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        choice(inputs, INPUTS, "model inputs")
        _MODELS[name] = ModelEntry(name, factory, description, inputs)
        return factory

    return decorate


def list_models(inputs: str | None = None) -> list[str]:
    """The registered models' names (with `inputs`: those taking "images" or "tokens")."""
    return sorted(n for n, e in _MODELS.items() if inputs is None or e.inputs == inputs)


def takes_tokens(source: Source) -> bool:
    """Whether a model source is a built-in model of token sequences (built like a factory, never rewritten)."""
    return source.builtin and model_entry(source.ref).inputs == "tokens"


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
    if entry.inputs != "images":
        raise UsageError(f"the built-in model {name!r} takes {entry.inputs} [N, T], not images: build it with "
                         "build() and input_shape / num_outputs")
    check_activation(activation)
    model = entry.factory(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return replace_activations(model, activation)


def model_source(ref: str) -> Source:
    """Where a model reference comes from: built-in, entry point, pkg.module:factory or ./file.py:factory."""
    return resolve(ref, "model", list_models())


def build(source: Source, args: dict[str, Any]) -> nn.Module:
    """A model from its source: a built-in with its arguments, or a factory (or a built-in model of tokens) called
    with input_shape and num_outputs (a factory's model is used as it is: never rewritten), or a Hugging Face
    model from the config a run recorded (`hf`). A factory recorded with `hparams` (a LightningModule's class and
    the hyper-parameters it saved, `integrations.lightning`) is called with those instead."""
    if source.kind == hf.KIND:
        return hf.build_hf(args)
    if takes_tokens(source):
        factory = model_entry(source.ref).factory
    elif source.builtin:
        return create_model(source.ref, **args)
    else:
        factory = source.load("model")
    if isinstance(args.get("hparams"), dict):
        kwargs = dict(args["hparams"])
    else:
        kwargs = {"input_shape": _shape(args.get("input_shape"), source), "num_outputs": _whole(args.get("num_outputs"),
                                                                                               "num_outputs", source)}
    model = call_factory(source, "model", factory, **kwargs)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {source.ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    if next(model.parameters(), None) is None:
        raise UsageError(f"model factory {source.ref!r} returned a model without parameters ({type(model).__name__}): "
                         "a loss landscape moves a model's weights, so it needs at least one nn.Parameter")
    return model


def _whole(value: Any, name: str, source: Source, minimum: int = 1) -> int:
    """A factory argument that must be a whole number (an int, a numpy integer or a 0-d integer tensor: never text, a
    bool or a fraction), at least `minimum`."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise UsageError(f"model factory {source.ref!r}: {name} must be a whole number, got {value!r} "
                         f"({type(value).__name__}): give an int") from None
    if number < minimum:
        raise UsageError(f"model factory {source.ref!r}: {name} must be at least {minimum}, got {number}")
    return number


def _shape(value: Any, source: Source) -> tuple[int, ...]:
    """input_shape: a sequence of whole numbers (a sample's shape; () for scalar samples)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, torch.Size)):
        raise UsageError(f"model factory {source.ref!r}: input_shape must be a sequence of whole numbers (a sample's "
                         f"shape), got {value!r} ({type(value).__name__})")
    return tuple(_whole(v, "input_shape", source, minimum=0) for v in value)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
