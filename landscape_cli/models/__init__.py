"""Registered models. Importing this package registers every model."""

from landscape_cli.models import gpt, resnet, small, vgg  # noqa: F401  (registration)
from landscape_cli.models._registry import (
    ACTIVATIONS,
    build,
    check_activation,
    count_parameters,
    create_model,
    list_models,
    model_entry,
    model_source,
    register_model,
    replace_activations,
    takes_tokens,
)

__all__ = [
    "ACTIVATIONS",
    "build",
    "check_activation",
    "count_parameters",
    "create_model",
    "list_models",
    "model_entry",
    "model_source",
    "register_model",
    "replace_activations",
    "takes_tokens",
]
