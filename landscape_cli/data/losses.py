"""The losses a run can be scored with: cross-entropy for classification, mean squared error for regression.

A dataset says its task; the task gives the loss unless `--loss` names one. Classification targets
are class indices (cross-entropy, and accuracy); regression targets are float tensors (the mean of
the squared error over every element, `nn.MSELoss()`'s mean; no accuracy). A regression output must
have exactly the targets' shape (targets [N] count as [N, 1]): never a silent broadcast.

Token-level classification: targets [N, T] (one class per token) score outputs [N, T, C], the
cross-entropy averaged over every token whose target is not `IGNORE_INDEX` (-100, as PyTorch and
Hugging Face pad), and the accuracy is the share of those scored tokens predicted right. A set split
into pieces is pooled by each piece's number of scored tokens (`scored`: samples for targets [N]
without padding, so such runs keep their numbers bitwise), which makes the pooled values the mean
over the whole set's scored tokens, not a mean of per-piece means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape_cli.errors import UnknownNameError, UsageError

TASKS = ("classification", "regression")
IGNORE_INDEX = -100  # a class target never scored (padding), as F.cross_entropy's default ignore_index


class Loss:
    name: ClassVar[str]
    task: ClassVar[str]
    has_accuracy: ClassVar[bool]

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def accuracy(self, out: Tensor, y: Tensor) -> Tensor:
        """The share of correct predictions (NaN where the loss defines none)."""
        return torch.full((), float("nan"), device=out.device)

    def correct(self, out: Tensor, y: Tensor) -> Tensor:
        """The number of correct predictions (0 where the loss defines none)."""
        return torch.zeros((), device=out.device)

    def check_targets(self, y: Tensor, where: str) -> None:
        """Refuse targets this loss cannot score (one line naming `where` they came from)."""

    def check_outputs(self, out: Tensor, y: Tensor, splits: Mapping[str, Tensor], where: str) -> None:
        """Refuse a split's targets that outputs like `out` (the model's on the first samples, whose targets are `y`)
        cannot score, over the whole of each split in `splits` (one line naming `where`); cheap: a max and a min."""


def scored(y: Tensor) -> int:
    """How many units the loss of targets `y` averages over, as the weight of a piece of a pooled set: the
    class targets that are not IGNORE_INDEX (tokens, or samples for targets [N]), else the samples (every
    sample of a regression has as many elements)."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return len(y)
    return int((y != IGNORE_INDEX).sum())


def _flat(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs [..., C] and targets [...] as [M, C] and [M] (one row per token); [N, C] and [N] as they are,
    and so are PyTorch's [N, C, d...] with targets [N, d...] (the class dimension second)."""
    if y.dim() <= 1 or (out.shape[:1] + out.shape[2:] == y.shape and out.shape[:-1] != y.shape):
        return out, y
    if out.dim() != y.dim() + 1 or out.shape[:-1] != y.shape:
        raise UsageError(f"the model's output has shape {list(out.shape)} but the class targets have "
                         f"{list(y.shape)}: cross-entropy needs outputs [*targets' shape, classes]")
    return out.reshape(-1, out.shape[-1]), y.reshape(-1)


class CrossEntropy(Loss):
    name = "cross-entropy"
    task = "classification"
    has_accuracy = True

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        """The mean over the scored targets (IGNORE_INDEX left out; NaN if there is none: refused when loaded)."""
        return F.cross_entropy(*_flat(out, y), ignore_index=IGNORE_INDEX)

    def accuracy(self, out: Tensor, y: Tensor) -> Tensor:
        out, y = _flat(out, y)
        hits = out.argmax(1) == y
        share = hits.float().mean()  # (as before token targets: bitwise the same values without padding)
        if not y.dtype.is_signed:
            return share
        # the share of the scored targets where any target is padding, chosen on the device (no sync)
        padded = y == IGNORE_INDEX
        return torch.where(padded.any(), hits.sum() / (~padded).sum(), share)

    def correct(self, out: Tensor, y: Tensor) -> Tensor:
        out, y = _flat(out, y)
        return (out.argmax(1) == y).sum()  # an argmax (>= 0) never equals IGNORE_INDEX

    def check_outputs(self, out: Tensor, y: Tensor, splits: Mapping[str, Tensor], where: str) -> None:
        """Every class index of every split (IGNORE_INDEX aside) below the number of classes the model outputs."""
        flat, _ = _flat(out, y)
        if flat.dim() < 2:
            return
        classes = int(flat.shape[1])
        for split, targets in splits.items():
            if not targets.numel():
                continue
            high = int(targets.max())
            low = int(targets.min())
            if low < 0:  # padding aside
                low = int(torch.where(targets == IGNORE_INDEX, 0, targets).min())
            if high >= classes or low < 0:
                bad = high if high >= classes else low
                raise UsageError(f"{where}: the {split} split has class index {bad}, but the model gives {classes} "
                                 f"outputs per sample (classes 0..{classes - 1}"
                                 f"{f', or {IGNORE_INDEX} for padding' if targets.dtype.is_signed else ''}): build the "
                                 "model with num_outputs outputs, or fix the labels")

    def check_targets(self, y: Tensor, where: str) -> None:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise UsageError(f"{where}: cross-entropy needs integer class indices as targets, got {y.dtype} "
                             "(float targets are a regression: --loss mse)")
        if y.numel() and scored(y) == 0:
            raise UsageError(f"{where}: every class target is {IGNORE_INDEX} (the ignore index): nothing to score")


class MeanSquaredError(Loss):
    name = "mse"
    task = "regression"
    has_accuracy = False

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        target = y.unsqueeze(1) if y.dim() == 1 else y
        if out.shape != target.shape:
            raise UsageError(
                f"the model's output has shape {list(out.shape)} but the targets have {list(target.shape)} "
                "(targets [N] count as [N, 1]): mean squared error needs the same shape, never a broadcast"
            )
        return F.mse_loss(out, target.to(out.dtype))

    def check_targets(self, y: Tensor, where: str) -> None:
        if not y.is_floating_point():
            raise UsageError(f"{where}: mean squared error needs float targets, got {y.dtype} "
                             "(integer class indices are a classification: --loss cross-entropy)")


LOSSES: dict[str, Loss] = {loss.name: loss for loss in (CrossEntropy(), MeanSquaredError())}


def get_loss(name: str) -> Loss:
    if name not in LOSSES:
        raise UnknownNameError(f"unknown --loss {name!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_for_task(task: str) -> Loss:
    """The loss a task is scored with by default."""
    return next(loss for loss in LOSSES.values() if loss.task == task)


def run_loss(dataset: dict[str, object], loss: str | None) -> Loss:
    """The loss a run is scored with: the one it was trained with (--loss), else its dataset's task's."""
    return get_loss(loss) if loss is not None else loss_for_task(str(dataset.get("task", "classification")))


def loss_for_targets(y: Tensor) -> Loss:
    """Integer class indices: cross-entropy; float targets: mean squared error (for notebook calls)."""
    if y.is_floating_point():
        return LOSSES["mse"]
    if y.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return LOSSES["cross-entropy"]
    raise UsageError(f"targets of dtype {y.dtype} cannot be scored: give class indices (integers) or float "
                     "regression targets, or pass loss=")
