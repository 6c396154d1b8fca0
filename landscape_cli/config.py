"""Frozen configurations: the one source for CLI defaults, ids and checkpoint metadata."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import UnknownNameError, UsageError
from .store import short_hash

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
