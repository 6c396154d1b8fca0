"""Several grid points per forward pass: `torch.func.vmap` over stacked weights.

A group of k points is k weight sets stacked along a new leading dimension ([k, *shape] for each
tensor the slice moves), each written from the slice's saved starting values by the very
operations the point-by-point loop writes into the model (`Slice.write_point`: Affine base + c1·d1
(+ c2·d2), Segment (1 − t)·a + t·b, exact at t = 0 and t = 1). One forward pass per batch then
runs all k through ``vmap(functional_call(model, stacked, x))``; the tensors the slice does not move
(and the inputs) are not batched. The model's own tensors are never written.

BatchNorm under vmap: `Evaluator` puts the model in its BatchNorm mode before any point is
evaluated. Mode ``train`` sets ``track_running_stats = False`` on every BatchNorm (as the loop
does), so each module calls ``F.batch_norm(x, None, None, weight, bias, training=True)``: every
point is normalized with its own batch statistics (vmap keeps the points apart), and no running
statistic or ``num_batches_tracked`` is written, which is also what vmap needs (an in-place update
of an unbatched running buffer from a batched input is refused). Mode ``eval`` reads the running
statistics: unbatched for an Affine slice, one per point for a Segment that interpolates them.
Mode ``recompute`` is never batched (`Evaluator` evaluates it point by point).

Attention under vmap: the fused `scaled_dot_product_attention` kernels (flash, memory-efficient,
cuDNN) have no batching rule, so vmap would run them point by point; the passes of a group run under
PyTorch's math backend, which batches (the point-by-point loop keeps the fused kernels).

On a GPU a group costs k copies of the moved weights plus k times the activations of one pass;
`choose_points_per_pass` sizes k from the free memory. On CPU the loop is faster (vmap over
points measured 2-3x slower there), so CPU gets 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape_cli.kernel.types import Batch, Point, Writable

MAX_POINTS_PER_PASS = 64


def tensor_names(model: nn.Module, tensors: Sequence[Tensor]) -> list[str]:
    """The name of each of `tensors` in `model` (its parameters and buffers, compared by identity)."""
    names = {id(t): n for n, t in model.named_parameters()}
    for n, t in model.named_buffers():
        names.setdefault(id(t), n)
    missing = [i for i, t in enumerate(tensors) if id(t) not in names]
    if missing:
        raise ValueError(f"tensors {missing} of the slice are not parameters or buffers of the model")
    return [names[id(t)] for t in tensors]


@torch.no_grad()
def stack_points(s: Writable, points: Sequence[Point]) -> list[Tensor]:
    """The slice's tensors at each point, stacked: one [len(points), *shape] tensor per tensor of the slice."""
    stacked = [torch.empty((len(points), *t.shape), dtype=t.dtype, device=t.device) for t in s.tensors]
    for i, point in enumerate(points):
        s.write_point([t[i] for t in stacked], point)
    return stacked


def evaluate_points(s: Writable, points: Sequence[Point], points_per_pass: int) -> tuple[Tensor, Tensor]:
    """Loss and accuracy at each point, `points_per_pass` points per forward pass: [len(points), len(batches)]
    tensors on the device (not pooled). The model is in the evaluator's BatchNorm mode already."""
    for point in points:
        if len(point) != s.dims:
            raise ValueError(f"a point of this slice has {s.dims} coordinates, got {tuple(point)}")
    names = tensor_names(s.model, s.tensors)
    device = s.tensors[0].device
    loss = torch.empty(len(points), len(s.batches), device=device)
    acc = torch.empty(len(points), len(s.batches), device=device)

    def forward(weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(s.model, weights, (x,))

    batched_forward = vmap(forward, in_dims=(0, None))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for start in range(0, len(points), points_per_pass):
            group = points[start:start + points_per_pass]  # the last group may be shorter
            weights = dict(zip(names, stack_points(s, group), strict=True))
            for j, (x, y) in enumerate(s.batches):
                if s.precision == "bf16":
                    with torch.autocast(x.device.type, dtype=torch.bfloat16):
                        out = batched_forward(weights, x)
                    out = out.float()
                else:
                    out = batched_forward(weights, x)
                for i in range(len(group)):
                    loss[start + i, j] = s.loss(out[i], y)
                    acc[start + i, j] = s.loss.accuracy(out[i], y)
                del out
            del weights
    return loss, acc


def points_that_fit(free_bytes: int, point_bytes: int, most: int = MAX_POINTS_PER_PASS) -> int:
    """How many points of `point_bytes` each fit in half of `free_bytes`: at least 1, at most `most`."""
    if point_bytes <= 0:
        return most
    return max(1, min(most, free_bytes // 2 // point_bytes))


def _activation_bytes(model: nn.Module, x: Tensor) -> int:
    """The memory of one forward pass over `x` (no gradients): measured on CUDA, else the sum of every
    leaf module's output (an overestimate: no-grad activations are freed as the pass goes)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # running statistics read, never written
    total = 0

    def count(_m: nn.Module, _args: object, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    hooks = [] if x.device.type == "cuda" else [
        m.register_forward_hook(count) for m in model.modules() if not list(m.children())
    ]
    try:
        with torch.no_grad():
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
                torch.cuda.reset_peak_memory_stats(x.device)
                before = torch.cuda.memory_allocated(x.device)
                model(x)
                torch.cuda.synchronize(x.device)
                total = torch.cuda.max_memory_allocated(x.device) - before
            else:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return total


def point_bytes(model: nn.Module, batches: Sequence[Batch], params: Iterable[Tensor] | None = None) -> int:
    """The memory one more point of a group costs: its copy of the moved tensors (`params`, default every
    parameter) plus the activations of one forward pass over the largest batch."""
    moved = sum(t.numel() * t.element_size() for t in (model.parameters() if params is None else params))
    if not batches:
        return moved
    largest = max(batches, key=lambda b: b[0].shape[0])[0]
    return moved + _activation_bytes(model, largest)


def choose_points_per_pass(model: nn.Module, batches: Sequence[Batch], device: torch.device | str,
                           free_bytes: int | None = None, params: Iterable[Tensor] | None = None) -> int:
    """The number of points per forward pass for `model` on `device`: on CUDA as many as fit in half of
    the free memory (`free_bytes`, default `torch.cuda.mem_get_info()`), from 1 to 64; elsewhere 1 (on
    CPU the point-by-point loop is faster)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    return points_that_fit(free_bytes, point_bytes(model, batches, params))
