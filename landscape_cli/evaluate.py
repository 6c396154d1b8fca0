"""The compute kernel: loss and accuracy of a model at points w + a·d1 + b·d2 on fixed batches.

A grid point costs one forward pass per batch. The perturbed weights are written in place
(``torch._foreach_*``: no state_dict copies), every point from the saved centre weights so that a
point's value never depends on which points came before it (resuming gives bitwise the same
numbers), and the batches stay on the device. On exit the model's weights, BatchNorm buffers and
train/eval modes are exactly as they were.

BatchNorm modes: ``train`` (the default, as in the reference experiment) normalizes with the batch's
own statistics, i.e. the loss of one training step on that batch, without updating the running
statistics; ``eval`` uses the running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BN_MODES, choice

Batch = tuple[Tensor, Tensor]


@dataclass
class Center:
    """Loss, accuracy and the loss gradient projected on (d1, d2) at the centre, per batch."""

    loss: np.ndarray
    accuracy: np.ndarray
    grad_a: np.ndarray  # d/da L(w + a·d1 + b·d2) at a = b = 0
    grad_b: np.ndarray


def _like(p: Tensor, t: Tensor) -> Tensor:
    """`t` on the parameter's device, dtype and memory layout (so in-place updates stay fast); no copy if it is."""
    if t.device == p.device and t.dtype == p.dtype and t.stride() == p.stride():
        return t
    return torch.empty_like(p).copy_(t)


class Plane:
    """A model whose weights can be set to any point of one plane (inside `PlaneEvaluator.plane`)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], names: list[str],
                 d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> None:
        params = dict(model.named_parameters())
        self.model = model
        self.batches = batches
        self.params: list[Tensor] = [params[n] for n in names]
        # the centre weights, copied at the first move and dropped by `center()`, so that the
        # memory of its backward pass and of the copy are never needed at once
        self.base: list[Tensor] | None = None
        self.d1 = [_like(p, d1[n]) for p, n in zip(self.params, names, strict=True)]
        self.d2 = [_like(p, d2[n]) for p, n in zip(self.params, names, strict=True)]

    @torch.no_grad()
    def _set(self, a: float, b: float) -> None:
        if self.base is None:
            self.base = [p.detach().clone() for p in self.params]
        torch._foreach_copy_(self.params, self.base)
        if a != 0.0:
            torch._foreach_add_(self.params, self.d1, alpha=a)
        if b != 0.0:
            torch._foreach_add_(self.params, self.d2, alpha=b)

    def restore(self) -> None:
        if self.base is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.base)

    def evaluate(self, points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy at each (a, b): two float32 arrays [len(points), len(batches)]."""
        device = self.params[0].device if self.params else torch.device("cpu")
        loss = torch.empty(len(points), len(self.batches), device=device)
        acc = torch.empty(len(points), len(self.batches), device=device)
        with torch.no_grad():
            for i, (a, b) in enumerate(points):
                self._set(a, b)
                for j, (x, y) in enumerate(self.batches):
                    out = self.model(x)
                    loss[i, j] = F.cross_entropy(out, y)
                    acc[i, j] = (out.argmax(1) == y).float().mean()
            self.restore()
        return loss.cpu().numpy(), acc.cpu().numpy()

    def center(self, gradient: bool = True) -> Center:
        """Values and projected gradients at the centre (the gradient of the 2-D slice at 0).

        The gradient costs one backward pass per batch, i.e. the memory of one training step; with
        `gradient=False` only the values are computed (forward passes) and the gradients are NaN.
        """
        losses, accs, ga, gb = [], [], [], []
        self.restore()
        self.base = None
        if not gradient:
            with torch.no_grad():
                for x, y in self.batches:
                    out = self.model(x)
                    losses.append(F.cross_entropy(out, y).item())
                    accs.append((out.argmax(1) == y).float().mean().item())
            nan = np.full(len(losses), np.nan, np.float32)
            return Center(np.array(losses, np.float32), np.array(accs, np.float32), nan, nan.copy())
        flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)
        try:
            for x, y in self.batches:
                with torch.enable_grad():
                    out = self.model(x)
                    loss = F.cross_entropy(out, y)
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                losses.append(loss.item())
                accs.append((out.argmax(1) == y).float().mean().item())
                ga.append(_dot(grads, self.d1))
                gb.append(_dot(grads, self.d2))
                del out, loss, grads
        finally:
            for p, flag in zip(self.params, flags, strict=True):
                p.requires_grad_(flag)
        f32 = np.float32
        return Center(np.array(losses, f32), np.array(accs, f32), np.array(ga, f32), np.array(gb, f32))


def _dot(grads: Sequence[Tensor | None], direction: list[Tensor]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for g, d in zip(grads, direction, strict=True):
        if g is not None:
            total += (g.double() * d.double()).sum().cpu()
    return float(total)


class PlaneEvaluator:
    """Evaluates `model` on fixed `batches` (already on the model's device) in a BatchNorm mode."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], bn: str = "train") -> None:
        self.model = model
        self.batches = list(batches)
        self.bn = choice(bn, BN_MODES, "--bn mode")

    @contextlib.contextmanager
    def plane(self, d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> Iterator[Plane]:
        """Set the modes, yield a `Plane` over the parameters named in d1, then restore everything."""
        names = list(d1)
        modes = {m: (m.training, getattr(m, "track_running_stats", None)) for m in self.model.modules()}
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        self.model.eval()
        if self.bn == "train":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # batch statistics, running buffers untouched
        plane = Plane(self.model, self.batches, names, d1, d2)
        try:
            yield plane
        finally:
            plane.restore()
            for m, (training, track) in modes.items():
                m.training = training
                if track is not None:
                    m.track_running_stats = track
            with torch.no_grad():
                for k, v in self.model.named_buffers():
                    v.copy_(buffers[k])


def evaluate_plane(model: nn.Module, batches: Sequence[Batch], d1: Mapping[str, Tensor],
                   d2: Mapping[str, Tensor], a_values: Sequence[float], b_values: Sequence[float],
                   bn: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy over the grid b_values x a_values: arrays [batch, len(b), len(a)].

    For notebook use with any model: `d1`/`d2` map parameter names to direction tensors (e.g. from
    `landscape_cli.directions.normalize`); parameters not named are not perturbed.
    """
    evaluator = PlaneEvaluator(model, batches, bn)
    loss = np.empty((len(batches), len(b_values), len(a_values)), np.float32)
    acc = np.empty_like(loss)
    with evaluator.plane(d1, d2) as plane:
        for row, b in enumerate(b_values):
            l_row, a_row = plane.evaluate([(float(a), float(b)) for a in a_values])
            loss[:, row, :], acc[:, row, :] = l_row.T, a_row.T
    return loss, acc
