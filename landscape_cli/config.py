"""Frozen configurations: the one source for CLI defaults, ids and checkpoint metadata."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ._io import short_hash
from .errors import UnknownNameError, UsageError

OPTIMIZERS = ("adam", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Bump when the training procedure changes in a way that changes the weights, so old runs keep their ids.
TRAINING_PROCEDURE = 1
MAX_SEED = 2**63 - 1


def choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise UnknownNameError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def positive_int(value: int, option: str, minimum: int = 1, maximum: int | None = None) -> int:
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(f"{option} must be {bound}, got {value}")
    return value


def finite(value: float, option: str, *, positive: bool = False, below: float | None = None) -> float:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive number" if positive else "a number >= 0"
        raise UsageError(f"{option} must be {kind}, got {value}")
    if below is not None and value >= below:
        raise UsageError(f"{option} must be below {below}, got {value}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the weights of every epoch (not the epoch count, device or name).

    The number of epochs is not part of the identity: asking for more epochs continues the same run.
    """

    model: str
    dataset: str
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    activation: str = "relu"
    seed: int = 0

    def validate(self) -> TrainConfig:
        from .data import dataset_info
        from .models import check_activation, model_entry

        model_entry(self.model)
        dataset_info(self.dataset)
        check_activation(self.activation)
        choice(self.optimizer, OPTIMIZERS, "optimizer")
        positive_int(self.batch_size, "--batch-size")
        finite(self.lr, "--lr", positive=True)
        finite(self.momentum, "--momentum", below=1.0)
        finite(self.weight_decay, "--weight-decay")
        positive_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)
        if self.optimizer == "adam" and self.momentum != 0:
            raise UsageError("--momentum applies to --optimizer sgd only (adam uses its own betas)")
        return self

    def identity(self) -> dict[str, Any]:
        return {**asdict(self), "procedure": TRAINING_PROCEDURE}

    @property
    def run_id(self) -> str:
        return short_hash(self.identity())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


NORMS = ("filter", "filter-std", "layer", "none")
BN_MODES = ("train", "eval")
GRID_FORMAT = 1
MAX_WIDTH = 1001


@dataclass(frozen=True)
class GridConfig:
    """Everything that determines a grid's values except which epochs it covers.

    The epoch axis grows: asking an existing grid for more epochs adds them to the same grid, so
    epochs computed once are never computed again.
    """

    run: str
    width: int = 41
    span: float = 1.0
    pairs: int = 3
    batches: int = 3
    batch_size: int = 256
    seed: int = 0
    norm: str = "filter"
    perturb_biasbn: bool = False
    layer: str | None = None
    single_kernel: bool = False
    bn: str = "train"
    directions: str = "random-normal"

    def validate(self) -> GridConfig:
        positive_int(self.width, "--width", minimum=2, maximum=MAX_WIDTH)
        finite(self.span, "--span", positive=True)
        positive_int(self.pairs, "--pairs", maximum=1000)
        positive_int(self.batches, "--batches")
        positive_int(self.batch_size, "--batch-size")
        positive_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)
        choice(self.norm, NORMS, "--norm")
        choice(self.bn, BN_MODES, "--bn mode")
        if self.single_kernel and self.layer is None:
            raise UsageError("--single-kernel needs --layer naming a convolution weight")
        return self

    def identity(self) -> dict[str, Any]:
        return {**asdict(self), "format": GRID_FORMAT}

    @property
    def grid_id(self) -> str:
        return short_hash(self.identity())

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> GridConfig:
        """The configuration whose `identity()` is `d` (as grid.json stores it)."""
        if d.get("format") != GRID_FORMAT:
            raise ValueError(f"unknown grid configuration format {d.get('format')!r}")
        unknown = set(d) - set(cls.__dataclass_fields__) - {"format"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
