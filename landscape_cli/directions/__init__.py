"""Directions in parameter space: the registry of direction kinds and the vectors they make.

Importing this package registers every built-in kind.
"""

from landscape_cli.directions import curve, hessian, interpolate, pca, plane, random  # noqa: F401  (registration)
from landscape_cli.directions._registry import (
    CheckpointLoss,
    DirectionKind,
    EpochModel,
    GridContext,
    Prepared,
    get_kind,
    list_kinds,
    register_kind,
)
from landscape_cli.directions.normalize import (
    Direction,
    is_bias_or_bn,
    layer_matches,
    normalize,
    perturbed_names,
    select_layers,
)
from landscape_cli.directions.random import draw_random, ensure_stored, load_recorded, parameter_signature

__all__ = [
    "CheckpointLoss",
    "Direction",
    "DirectionKind",
    "EpochModel",
    "GridContext",
    "Prepared",
    "draw_random",
    "ensure_stored",
    "get_kind",
    "is_bias_or_bn",
    "layer_matches",
    "list_kinds",
    "load_recorded",
    "normalize",
    "parameter_signature",
    "perturbed_names",
    "register_kind",
    "select_layers",
]
