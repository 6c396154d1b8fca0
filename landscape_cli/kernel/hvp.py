"""Hessian-vector products: the kernel of every curvature result.

The Hessian is that of L(w) = mean over the batches of each batch's loss (the average of the
per-batch values a grid stores; with --batches all the mean over the split's samples), over the
parameters a grid perturbs, at the model's weights, in a BatchNorm mode (as `evaluate.Evaluator`
sets it). A Hessian-vector product is one double backward per batch (Pearlmutter's trick:
Hv = ∇(∇L·v)), about 3-4.5 times a forward and backward pass. `curvature.spectrum` turns the
products into eigenpairs, a trace and a spectral density.

The model's weights, buffers and modes are left exactly as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape_cli.data.losses import CrossEntropy, Loss
from landscape_cli.kernel.evaluate import Batch, Evaluator


class HessianOperator:
    """v -> H v for the loss of `model` on `batches` (flat float64 numpy vectors over the named parameters)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], names: Sequence[str],
                 weights: np.ndarray | None = None, loss: Loss | None = None) -> None:
        params = dict(model.named_parameters())
        self.model = model
        self.batches = list(batches)
        # L = Σ w_b L_b: the mean over batches, or (--batches all) over samples
        sizes = np.ones(len(self.batches)) if weights is None else np.asarray(weights, np.float64)
        self.weights = sizes / sizes.sum()
        self.params = [params[n] for n in names]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.size = int(sum(self.sizes))
        self.products = 0
        self.loss = loss or CrossEntropy()

    def _split(self, v: np.ndarray) -> list[Tensor]:
        out, start = [], 0
        for p, n in zip(self.params, self.sizes, strict=True):
            out.append(torch.from_numpy(np.ascontiguousarray(v[start:start + n])).to(p.device, p.dtype).view_as(p))
            start += n
        return out

    def gradient(self) -> np.ndarray:
        """∇L (float64)."""
        total = np.zeros(self.size)
        for (x, y), w in zip(self.batches, self.weights, strict=True):
            with torch.enable_grad():
                loss = self.loss(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            total += w * self._flat(grads)
        return total

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """H v (float64 in and out; the products themselves run in the parameters' dtype)."""
        vs = self._split(np.asarray(v, np.float64).reshape(-1))
        total = np.zeros(self.size)
        for (x, y), w in zip(self.batches, self.weights, strict=True):
            with torch.enable_grad():
                loss = self.loss(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                dot = sum(((g * u).sum() for g, u in zip(grads, vs, strict=True) if g is not None),
                          torch.zeros((), device=vs[0].device if vs else None))
                hv = torch.autograd.grad(dot, self.params, allow_unused=True) if dot.requires_grad else \
                    [None] * len(self.params)
            total += w * self._flat(hv)
        self.products += 1
        return total

    def _flat(self, tensors: Sequence[Tensor | None]) -> np.ndarray:
        parts = [np.zeros(n) if t is None else t.detach().double().cpu().reshape(-1).numpy()
                 for t, n in zip(tensors, self.sizes, strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def unflatten(self, v: np.ndarray, names: Sequence[str]) -> dict[str, Tensor]:
        """A flat vector as {parameter name: float32 CPU tensor}."""
        out, start = {}, 0
        for name, shape, n in zip(names, self.shapes, self.sizes, strict=True):
            out[name] = torch.from_numpy(np.array(v[start:start + n], np.float32)).reshape(shape)
            start += n
        return out


@contextlib.contextmanager
def operator(model: nn.Module, batches: Sequence[Batch], names: Sequence[str], bn: str,
             weights: np.ndarray | None = None, loss: Loss | None = None) -> Iterator[HessianOperator]:
    """The Hessian operator at the model's weights in BatchNorm mode `bn`; modes and buffers restored after."""
    evaluator = Evaluator(model, batches, bn)
    if evaluator.bn == "recompute":
        raise ValueError("the Hessian is defined for --bn train or eval")
    params = dict(model.named_parameters())
    flags = {n: params[n].requires_grad for n in names}
    with evaluator.modes():
        for n in names:
            params[n].requires_grad_(True)
        try:
            yield HessianOperator(model, evaluator.batches, names, weights, loss)
        finally:
            for n, flag in flags.items():
                params[n].requires_grad_(flag)
