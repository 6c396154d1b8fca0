"""The compute kernel: loss and accuracy of a model at points of a low-dimensional slice of its weights.

A slice maps coordinates to weights: `Affine` is w + Σ c_k·d_k (random, PCA and later Hessian
directions, one or two of them), `Segment` is (1 − t)·w_a + t·w_b (interpolation between two
checkpoints: in this form t = 0 and t = 1 give each checkpoint's weights exactly), `Combination` is
Σ_k c_k(t)·P_k over control points (a curve between two minima; `kernel.curves` gives the coefficients,
exact at both ends). A grid point costs one forward pass per batch. The weights are written in place (``torch._foreach_*``: no
state_dict copies), every point from the saved starting weights so that a point's value never
depends on which points came before it (resuming gives bitwise the same numbers), and the batches
stay on the device. On exit the model's weights, BatchNorm buffers and train/eval modes are
exactly as they were. Where a point's loss is not finite (NaN or ±Inf: the weights diverged) its
accuracy is NaN too, never the share of NaN logits whose argmax happened to hit the class.

BatchNorm modes: ``train`` (the default, as in the reference experiment) normalizes with the batch's
own statistics, i.e. the loss of one training step on that batch, without updating the running
statistics; ``eval`` uses the running statistics; ``recompute`` re-estimates the running statistics
at every point from the batches themselves (their cumulative average, as a pass over them in
training mode with ``momentum=None`` gives), then evaluates in eval mode: twice the forward passes.
Weights moved far from a checkpoint make its running statistics meaningless; recomputing them is
what mode-connectivity studies do.

`points_per_pass` > 1 evaluates that many points per forward pass (`landscape_cli.kernel.batched`:
torch.func.vmap over stacked weights; the model's tensors are never written). `precision` is the
arithmetic of the forward passes: ``fp32``, ``tf32`` (CUDA matmuls and convolutions in TF32) or
``bf16`` (autocast to bfloat16; the loss in float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape_cli.config import BN_MODES, PRECISIONS, choice, positive_int
from landscape_cli.data import Dataset
from landscape_cli.data.losses import CrossEntropy, Loss, get_loss, loss_for_targets, scored
from landscape_cli.errors import UsageError
from landscape_cli.kernel import batched
from landscape_cli.kernel.metrics import Metric
from landscape_cli.kernel.types import Batch, Point
from landscape_cli.store.grid_arrays import accuracy_where_finite


@dataclass
class Center:
    """Loss, accuracy and the loss gradient projected on each direction at the centre, per batch."""

    loss: np.ndarray  # [batch]
    accuracy: np.ndarray  # [batch]
    grads: np.ndarray  # [direction, batch]: d/dc_k L(w + Σ c·d) at c = 0 (NaN when not computed)

    @property
    def grad_a(self) -> np.ndarray:
        return self.grads[0]

    @property
    def grad_b(self) -> np.ndarray:
        return self.grads[1]


def _like(p: Tensor, t: Tensor) -> Tensor:
    """`t` on the parameter's device, dtype and memory layout (so in-place updates stay fast); no copy if it is."""
    if t.device == p.device and t.dtype == p.dtype and t.stride() == p.stride():
        return t
    return torch.empty_like(p).copy_(t)


class Slice:
    """A model whose tensors (`self.tensors`) can be set to any point of the slice (inside `Evaluator`)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], tensors: list[Tensor], dims: int) -> None:
        self.model = model
        self.batches = batches
        self.tensors = tensors
        self.dims = dims
        self.recompute_bn = False  # set by `Evaluator` for BatchNorm mode "recompute"
        self.weights: np.ndarray | None = None  # set by `Evaluator`: pool the batches into one mean (scored units)
        self.loss: Loss = CrossEntropy()  # set by `Evaluator`
        self.points_per_pass = 1  # set by `Evaluator`: > 1 evaluates that many points per forward pass
        self.precision = "fp32"  # set by `Evaluator`: "bf16" runs the forward passes under autocast
        self.metrics: list[Metric] = []  # set by `Evaluator`: user metrics of (outputs, targets), beside the loss
        self.metric_values = np.zeros((0, 0, 0), np.float32)  # [points, batch, metric] of the last `evaluate`
        # the starting values, copied at the first move and dropped by `center()`, so that the
        # memory of its backward pass and of the copy are never needed at once
        self.base: list[Tensor] | None = None

    def _save(self) -> list[Tensor]:
        if self.base is None:
            self.base = [t.detach().clone() for t in self.tensors]
        return self.base

    def _set(self, point: Point) -> None:
        self.write_point(self.tensors, point)

    def write_point(self, targets: list[Tensor], point: Point) -> None:
        """Write the slice's tensors at `point` into `targets` (the model's tensors, or one point's stacked copies)."""
        raise NotImplementedError

    def _forward(self, x: Tensor) -> Tensor:
        """The model's output on `x` in this slice's precision (float32 under bf16: the loss is computed from it)."""
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                out = self.model(x)
            return out.float()
        return self.model(x)

    def restore(self) -> None:
        if self.base is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.tensors, self.base)

    def evaluate(self, points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy at each point: two float32 arrays [len(points), len(batches)]."""
        if self.points_per_pass > 1 and not self.recompute_bn and self.tensors and not self.metrics:
            with torch.no_grad():
                bl, ba = batched.evaluate_points(self, points, self.points_per_pass)
            return _scored(self._pool(bl.cpu().numpy()), self._pool(ba.cpu().numpy()))
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        loss = torch.empty(len(points), len(self.batches), device=device)
        acc = torch.empty(len(points), len(self.batches), device=device)
        extra = torch.empty(len(points), len(self.batches), len(self.metrics), device=device)
        with torch.no_grad():
            for i, point in enumerate(points):
                if len(point) != self.dims:
                    raise ValueError(f"a point of this slice has {self.dims} coordinates, got {tuple(point)}")
                self._set(point)
                if self.recompute_bn:
                    self._recompute_bn()
                for j, (x, y) in enumerate(self.batches):
                    out = self._forward(x)
                    loss[i, j] = self.loss(out, y)
                    acc[i, j] = self.loss.accuracy(out, y)
                    for k, metric in enumerate(self.metrics):
                        extra[i, j, k] = metric(out, y)
            self.restore()
        if self.metrics:  # each pooled as the loss is
            values = extra.cpu().numpy()
            self.metric_values = np.stack([self._pool(values[..., k]) for k in range(len(self.metrics))], axis=-1)
        return _scored(self._pool(loss.cpu().numpy()), self._pool(acc.cpu().numpy()))

    def _pool(self, values: np.ndarray) -> np.ndarray:
        """[..., batch] values, or with `weights` their mean weighted by each batch's scored samples (or tokens)
        as one batch [..., 1] (float32): the mean over the pooled set's scored units."""
        if self.weights is None:
            return values
        pooled = (values.astype(np.float64) * self.weights).sum(axis=-1, keepdims=True) / self.weights.sum()
        return pooled.astype(np.float32)

    @torch.no_grad()
    def _recompute_bn(self) -> None:
        """Running statistics of every BatchNorm = the cumulative average over the batches at these weights."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.train()
        for x, _ in self.batches:
            self._forward(x)
        for m in norms:
            m.eval()

    def _values(self) -> tuple[np.ndarray, np.ndarray]:
        losses, accs = [], []
        if self.recompute_bn:
            self._recompute_bn()
        with torch.no_grad():
            for x, y in self.batches:
                out = self._forward(x)
                losses.append(self.loss(out, y).item())
                accs.append(self.loss.accuracy(out, y).item())
        return _scored(self._pool(np.array(losses, np.float32)), self._pool(np.array(accs, np.float32)))

    def center(self, gradient: bool = True) -> Center:
        """Values at the centre (all coordinates 0); gradients are NaN unless the slice defines them."""
        self.restore()
        self.base = None
        loss, acc = self._values()
        return Center(loss, acc, np.full((self.dims, len(loss)), np.nan, np.float32))


class Affine(Slice):
    """w + Σ c_k·d_k over the parameters named in the directions (1 or 2 directions)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], directions: Sequence[Mapping[str, Tensor]]) -> None:
        params = dict(model.named_parameters())
        names = list(directions[0])
        self.params: list[Tensor] = [params[n] for n in names]
        super().__init__(model, batches, self.params, len(directions))
        self.directions = [[_like(p, d[n]) for p, n in zip(self.params, names, strict=True)] for d in directions]

    @torch.no_grad()
    def write_point(self, targets: list[Tensor], point: Point) -> None:
        base = self._save()
        torch._foreach_copy_(targets, base)
        for c, d in zip(point, self.directions, strict=True):
            if c != 0.0:
                torch._foreach_add_(targets, d, alpha=c)

    def center(self, gradient: bool = True) -> Center:
        """Values and projected gradients at the centre (the gradient of the slice at 0).

        The gradient costs one backward pass per batch, i.e. the memory of one training step; with
        `gradient=False` only the values are computed (forward passes) and the gradients are NaN.
        """
        if not gradient:
            return super().center(False)
        self.restore()
        self.base = None
        if self.recompute_bn:
            self._recompute_bn()
        losses, accs, grads = [], [], []
        flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)
        try:
            for x, y in self.batches:
                with torch.enable_grad():
                    out = self._forward(x)
                    loss = self.loss(out, y)
                    g = torch.autograd.grad(loss, self.params, allow_unused=True)
                losses.append(loss.item())
                accs.append(self.loss.accuracy(out, y).item())
                grads.append([_dot(g, d) for d in self.directions])
                del out, loss, g
        finally:
            for p, flag in zip(self.params, flags, strict=True):
                p.requires_grad_(flag)
        # (per batch in float64 until pooled: the gradient of a sample mean is the weighted mean of the gradients)
        loss_, acc_ = _scored(self._pool(np.array(losses, np.float32)), self._pool(np.array(accs, np.float32)))
        return Center(loss_, acc_, self._pool(np.array(grads, np.float64).T).astype(np.float32))


class Combination(Slice):
    """Σ_k c_k(point)·P_k over control points P_0..P_m of each tensor, the coefficients from `coefficients(point)`
    (summing to 1: an affine combination). P_0 is the tensors' values now; a coefficient vector that is one-hot
    gives that control point exactly (a curve between two minima, Garipov et al.: exact at both ends)."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], tensors: list[Tensor],
                 points: Sequence[Sequence[Tensor]], coefficients: Callable[[Point], Sequence[float]],
                 dims: int = 1) -> None:
        super().__init__(model, batches, tensors, dims)
        self.start = [t.detach().clone() for t in tensors]  # P_0
        self.controls = [self.start, *[[_like(t, p) for t, p in zip(tensors, ps, strict=True)] for ps in points]]
        self.coefficients = coefficients

    @torch.no_grad()
    def write_point(self, targets: list[Tensor], point: Point) -> None:
        c = [float(v) for v in self.coefficients(point)]
        if len(c) != len(self.controls):
            raise ValueError(f"{len(c)} coefficients for {len(self.controls)} control points")
        first = next(k for k, v in enumerate(c) if v != 0.0)
        torch._foreach_copy_(targets, self.controls[first])
        if c[first] != 1.0:
            torch._foreach_mul_(targets, c[first])
        for k in range(first + 1, len(c)):
            if c[k] != 0.0:
                torch._foreach_add_(targets, self.controls[k], alpha=c[k])

    def restore(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.tensors, self.start)

    def center(self, gradient: bool = True) -> Center:
        """Values at P_0 (the tensors' starting values); no gradient of its own."""
        self.restore()
        loss, acc = self._values()
        return Center(loss, acc, np.full((self.dims, len(loss)), np.nan, np.float32))


class Segment(Combination):
    """(1 − t)·a + t·b for each tensor (parameters, and buffers such as BatchNorm statistics): the combination of
    two control points, written as it always was (t = 1 is 0·a + b), so interpolation grids stay bitwise what
    earlier releases computed."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], tensors: list[Tensor], end: Sequence[Tensor]) -> None:
        super().__init__(model, batches, tensors, [end], lambda point: (1.0 - point[0], point[0]))
        self.end = self.controls[1]

    @torch.no_grad()
    def write_point(self, targets: list[Tensor], point: Point) -> None:
        (t,) = point
        torch._foreach_copy_(targets, self.start)
        if t != 0.0:
            torch._foreach_mul_(targets, 1.0 - t)
            torch._foreach_add_(targets, self.end, alpha=t)


def outputs(s: Slice, point: Point | None) -> list[Tensor]:
    """The model's outputs (float32) on each of the slice's batches at `point` (None: the tensors as they are),
    in the slice's BatchNorm mode (statistics recomputed at the point with ``recompute``); the tensors are restored
    after. Inside `Evaluator.slice` (its modes set), e.g. to ensemble the softmax outputs of several points."""
    with torch.no_grad():
        if point is not None:
            if len(point) != s.dims:
                raise ValueError(f"a point of this slice has {s.dims} coordinates, got {tuple(point)}")
            s._set(point)
        try:
            if s.recompute_bn:
                s._recompute_bn()
            return [s._forward(x).float() for x, _ in s.batches]
        finally:
            if point is not None:
                s.restore()


def ensemble_accuracy(s: Slice, members: Sequence[Sequence[Tensor]]) -> np.ndarray:
    """The accuracy on each of the slice's batches (pooled as the slice pools them) of the ensemble whose
    prediction is the mean of the members' softmax outputs (`members`: each one's outputs per batch, from
    `outputs`); NaN for a loss without accuracy."""
    values = []
    with torch.no_grad():
        for j, (_, y) in enumerate(s.batches):
            mean = torch.stack([torch.softmax(m[j], dim=-1) for m in members]).mean(dim=0)
            values.append(s.loss.accuracy(mean, y).item())
    return s._pool(np.array(values, np.float32))


def _scored(loss: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy as returned: the accuracy NaN wherever the loss is not finite (a diverged point,
    or a pooled set with a diverged piece), whatever the argmax of its NaN logits counted."""
    return loss, accuracy_where_finite(accuracy, loss).astype(np.float32, copy=False)


def _dot(grads: Sequence[Tensor | None], direction: list[Tensor]) -> float:
    total = torch.zeros((), dtype=torch.float64)
    for g, d in zip(grads, direction, strict=True):
        if g is not None:
            total += (g.double() * d.double()).sum().cpu()
    return float(total)


class Evaluator:
    """Evaluates `model` on fixed `batches` (already on the model's device) in a BatchNorm mode.

    With `weights` (each batch's number of scored units: samples, or tokens that are not padding for
    token targets) the batches are pieces of one set (--batches all) and every value is pooled into
    their weighted mean, the mean over the set's scored units: one batch entry.

    `points_per_pass` > 1 evaluates a slice's points that many at a time, one forward pass per batch
    for the whole group (`landscape_cli.kernel.batched`; `batched.choose_points_per_pass` picks a number
    that fits the device's memory). BatchNorm mode ``recompute`` always evaluates point by point
    (its statistics are re-estimated at every point), and so does the centre with its gradient.
    `precision`: ``fp32`` (on CUDA: TF32 off for matmuls and cuDNN), ``tf32`` (on; on CPU the same
    as fp32) or ``bf16`` (forward passes under ``torch.autocast(dtype=torch.bfloat16)``, on CPU
    too, and the loss computed in float32 from the output cast to float32). The CUDA flags are set
    inside the evaluator's contexts and restored after them.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], bn: str = "train",
                 weights: np.ndarray | None = None, loss: Loss | None = None, *,
                 points_per_pass: int = 1, precision: str = "fp32", metrics: Sequence[Metric] = ()) -> None:
        self.model = model
        self.batches = list(batches)
        self.bn = choice(bn, BN_MODES, "--bn mode")
        self.weights = weights
        self.loss = loss or CrossEntropy()
        self.points_per_pass = positive_int(points_per_pass, "points_per_pass")
        self.precision = choice(precision, PRECISIONS, "--precision")
        self.metrics = list(metrics)

    def _configure(self, s: Slice) -> Slice:
        s.recompute_bn = self.bn == "recompute"
        s.weights = self.weights
        s.loss = self.loss
        s.points_per_pass = 1 if self.bn == "recompute" else self.points_per_pass
        s.precision = self.precision
        s.metrics = self.metrics
        return s

    def _device(self) -> torch.device:
        for t in self.model.parameters():
            return t.device
        return self.batches[0][0].device if self.batches else torch.device("cpu")

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """On CUDA, TF32 on for precision tf32 and off otherwise for the block, then as it was."""
        if self._device().type != "cuda":
            yield
            return
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.precision == "tf32"
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    @contextlib.contextmanager
    def modes(self) -> Iterator[None]:
        """Set the BatchNorm mode and the precision for the block, then restore every mode and buffer of the model."""
        with self._precision(), self._bn_modes():
            yield

    @contextlib.contextmanager
    def _bn_modes(self) -> Iterator[None]:
        modes = {m: (m.training, getattr(m, "track_running_stats", None), getattr(m, "momentum", None))
                 for m in self.model.modules()}
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        self.model.eval()
        for m in self.model.modules():  # (a pooled --batches all uses the same modes, piece by piece)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if self.bn == "train":
                    m.train()
                    m.track_running_stats = False  # batch statistics, running buffers untouched
                elif self.bn == "recompute":
                    m.track_running_stats = True
                    m.momentum = None  # a pass over the batches gives their cumulative average
        try:
            yield
        finally:
            for m, (training, track, momentum) in modes.items():
                m.training = training
                if track is not None:
                    m.track_running_stats = track
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = momentum
            with torch.no_grad():
                for k, v in self.model.named_buffers():
                    v.copy_(buffers[k])

    @contextlib.contextmanager
    def slice(self, s: Slice) -> Iterator[Slice]:
        """Evaluate the slice `s` (built on this evaluator's model and batches), restoring everything after."""
        self._configure(s)
        with self.modes():
            try:
                yield s
            finally:
                s.restore()

    def affine(self, directions: Sequence[Mapping[str, Tensor]]) -> contextlib.AbstractContextManager[Slice]:
        """w + Σ c_k·d_k, for the parameters named in the directions (those not named stay put)."""
        return self.slice(Affine(self.model, self.batches, directions))

    def segment(self, tensors: list[Tensor], end: Sequence[Tensor]) -> contextlib.AbstractContextManager[Slice]:
        """(1 − t)·start + t·end written into `tensors` (parameters or buffers of the model; start: their values now)."""
        return self.slice(Segment(self.model, self.batches, tensors, end))

    def combination(self, tensors: list[Tensor], points: Sequence[Sequence[Tensor]],
                    coefficients: Callable[[Point], Sequence[float]],
                    dims: int = 1) -> contextlib.AbstractContextManager[Slice]:
        """Σ_k c_k(point)·P_k written into `tensors` (P_0: their values now, P_1..: `points`), e.g. a curve's
        control points with its shape's coefficients at t."""
        return self.slice(Combination(self.model, self.batches, tensors, points, coefficients, dims))

    def plane(self, d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> contextlib.AbstractContextManager[Slice]:
        return self.affine([d1, d2])

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's own loss and accuracy on each batch (in this evaluator's BatchNorm mode)."""
        s = self._configure(Slice(self.model, self.batches, [], 0))
        with self.modes():
            return s._values()


def evaluate_plane(model: nn.Module, batches: Sequence[Batch], d1: Mapping[str, Tensor],
                   d2: Mapping[str, Tensor], a_values: Sequence[float], b_values: Sequence[float],
                   bn: str = "train", loss: Loss | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy over the grid b_values x a_values: arrays [batch, len(b), len(a)].

    For notebook use with any model: `batches` are (inputs, targets) pairs on the model's device;
    `d1`/`d2` map parameter names to direction tensors (e.g. from `landscape_cli.directions.normalize`);
    parameters not named are not perturbed. The loss follows the targets (integer class indices:
    cross-entropy with accuracy; float targets: mean squared error, accuracy NaN) unless `loss`
    ("cross-entropy", "mse" or a `landscape_cli.data.losses.Loss`) names it. Where the loss is not
    finite (a diverged point) the accuracy is NaN.
    """
    if not batches:
        raise UsageError("evaluate_plane needs at least one (inputs, targets) batch")
    scorer = get_loss(loss) if isinstance(loss, str) else loss or loss_for_targets(batches[0][1])
    for i, (_x, y) in enumerate(batches):
        scorer.check_targets(y, f"batch {i}")
    out = np.empty((len(batches), len(b_values), len(a_values)), np.float32)
    acc = np.empty_like(out)
    with Evaluator(model, batches, bn, loss=scorer).plane(d1, d2) as plane:
        for row, b in enumerate(b_values):
            l_row, a_row = plane.evaluate([(float(a), float(b)) for a in a_values])
            out[:, row, :], acc[:, row, :] = l_row.T, a_row.T
    return out, acc


def evaluate_split(model: nn.Module, data: Dataset, split: str, device: torch.device,
                   batch_size: int = 1024, channels_last: bool = False,
                   scorer: Loss | None = None) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for a regression) over a whole split's scored units (samples, or the tokens
    that are not padding), in eval mode."""
    scorer = scorer or CrossEntropy()
    x_all, y_all = data.split(split)
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(y_all), batch_size):
            y_cpu = y_all[start:start + batch_size]
            count = scored(y_cpu)
            if not count:  # all padding: weighs nothing (its mean would be NaN)
                continue
            x = data.prepare(x_all[start:start + batch_size], device, channels_last)
            y = y_cpu.to(device)
            out = model(x)
            total_loss += scorer(out, y).item() * count
            correct += scorer.correct(out, y).item()
            n += count
    model.train(was_training)
    if not n:
        raise UsageError(f"the {split} split has no scored target: every one is padding")
    return total_loss / n, (correct / n if scorer.has_accuracy else None)
