"""Names the kernel's modules share: a batch, a point of a slice, and what the batched evaluator needs of a slice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor, nn

from landscape_cli.data.losses import Loss

Batch = tuple[Tensor, Tensor]  # inputs, targets
Point = Sequence[float]  # coefficients along a slice's directions


class Writable(Protocol):
    """A slice as the batched evaluator sees it: the tensors it moves, and how a point sets them."""

    model: nn.Module
    batches: Sequence[Batch]
    tensors: list[Tensor]
    dims: int
    precision: str
    loss: Loss

    def write_point(self, targets: list[Tensor], point: Point) -> None: ...
