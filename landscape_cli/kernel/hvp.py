"""Hessian-vector products: the kernel of every curvature result.

The Hessian is that of L(w) = mean over the batches of each batch's loss (the average of the
per-batch values a grid stores; with --batches all the mean over the split's samples), over the
parameters a grid perturbs, at the model's weights, in a BatchNorm mode (as `evaluate.Evaluator`
sets it). `curvature.spectrum` turns the products into eigenpairs, a trace and a spectral density.

Two ways to compute one product H v, the same numbers to float tolerance:

- ``double-backward`` (the default, ``auto``): Pearlmutter's trick, Hv = ∇(∇L·v), a backward pass
  through the graph of each batch's gradient. That graph is the same for every product at the same
  weights, so it is kept from one product to the next while its saved tensors fit (`keep_bytes`):
  a product after the first is then that one backward pass, 1.4-2.5x a forward and backward pass
  on CPU (a product that makes the graph again: 2.3-4.4x);
- ``forward-over-reverse``: the directional derivative of the gradient, a `torch.func.jvp` of
  `torch.func.grad` of the loss of `functional_call` over the perturbed parameters (the other
  parameters and the buffers held fixed, the BatchNorm modes as set): 2.7-5.3x on the same models,
  slower than double backward on every one (`benchmarks/hessian_speed.py`). Where an operator has
  no forward-mode derivative (`F.mse_loss`, CUDA's fused GRU cell) it falls back to double backward
  for that operator's model, decided on the first product and kept (`fallback` says why).

The products run inside `differentiable_kernels()`: scaled dot-product attention on its math
kernel (the fused flash and memory-efficient kernels have no double backward and no forward-mode
derivative) and, for a model with recurrent layers, cuDNN off (cuDNN's RNN has no double backward).
Only the products: grids keep the fast kernels. A model that still has an operator without second
derivatives fails with one line naming it (`NoSecondDerivative`), never a traceback.

The model's weights, buffers and modes are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape_cli.data.losses import CrossEntropy, Loss
from landscape_cli.errors import UsageError
from landscape_cli.kernel.evaluate import Batch, Evaluator

FORWARD_OVER_REVERSE, DOUBLE_BACKWARD = "forward-over-reverse", "double-backward"
METHODS = ("auto", FORWARD_OVER_REVERSE, DOUBLE_BACKWARD)

# what autograd says of an operator without a (second) derivative
_NO_DERIVATIVE = re.compile(r"derivative for (?:aten::)?'?([\w.:]+?)'? is not implemented")
_ONCE_DIFFERENTIABLE = "marked with @once_differentiable"


class NoSecondDerivative(UsageError):
    """The model has an operator that autograd cannot differentiate twice: the Hessian cannot be computed."""

    def __init__(self, message: str, operator: str) -> None:
        super().__init__(message)
        self.operator = operator


@contextlib.contextmanager
def differentiable_kernels(model: nn.Module | None = None) -> Iterator[None]:
    """Kernels with a double backward (and forward-mode derivatives) for the block, then the previous ones.

    Scaled dot-product attention (F.scaled_dot_product_attention, nn.MultiheadAttention and the
    Transformer layers) on its math kernel; cuDNN off where `model` has recurrent layers (or
    `model` is None): cuDNN's RNN has no double backward, while its convolutions do and are much
    faster than the native ones on CUDA.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rnn = model is None or any(isinstance(m, nn.RNNBase) for m in model.modules())
    cudnn = torch.backends.cudnn
    # only `enabled`, set and restored here: `cudnn.flags(enabled=False)` would also reset every other cuDNN
    # flag (TF32, precision...) to its default for the block, and its arguments differ between torch releases
    saved = cudnn.enabled
    with sdpa_kernel(SDPBackend.MATH):
        if rnn:
            cudnn.enabled = False
        try:
            yield
        finally:
            cudnn.enabled = saved


def _custom_functions(outputs: Sequence[Tensor | None]) -> list[tuple[str, bool]]:
    """(name, backward marked once_differentiable) of every custom autograd.Function in the graph of `outputs`."""
    seen: set[Any] = set()
    stack: list[Any] = [t.grad_fn for t in outputs if t is not None and t.grad_fn is not None]
    found: dict[str, bool] = {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        cls = getattr(node, "_forward_cls", None)
        if cls is not None:
            backward = getattr(cls, "backward", None)
            code = getattr(backward, "__code__", None)
            once = hasattr(backward, "__wrapped__") and code is not None and \
                code.co_filename.replace("\\", "/").endswith("torch/autograd/function.py")
            found[cls.__qualname__] = found.get(cls.__qualname__, False) or once
        stack.extend(n for n, _ in node.next_functions)
    return list(found.items())


def no_second_derivative(error: BaseException, graph: Sequence[Tensor | None] = ()) -> NoSecondDerivative | None:
    """The one-line error for a failed double backward that lacks a derivative, or None for another failure.

    `graph`: the outputs of the forward pass (where custom autograd.Functions are looked for by name).
    """
    text = str(error)
    match = _NO_DERIVATIVE.search(text)
    if match:
        name = match.group(1)
        op = name if "::" in name else f"aten::{name}"
        return NoSecondDerivative(
            f"the Hessian needs second derivatives, and PyTorch has none for {op}, an operator of the model (even "
            "with math attention and cuDNN off): write the model with operators that can be differentiated twice, "
            "or perturb only layers after it (--layer)", op)
    if _ONCE_DIFFERENTIABLE in text:
        functions = _custom_functions(graph)
        marked = [n for n, once in functions if once] or [n for n, _ in functions]
        op = ", ".join(marked) or "a custom autograd.Function"
        what = f"the custom autograd.Function {op}" if marked else op
        return NoSecondDerivative(
            f"the Hessian needs second derivatives, and {what} has a backward marked @once_differentiable: write "
            "its backward with differentiable torch operations (without @once_differentiable), or perturb only "
            "layers after it (--layer)", op)
    return None


def _delayed_errors(outputs: Sequence[Tensor], loss: Tensor) -> None:
    """Raise the error of a backward that has no derivative of its own, where the double backward would pass it.

    A backward marked @once_differentiable (or another without a derivative) leaves an error node in
    the graph of the gradient; autograd raises it only on a path to the parameters, and where its
    inputs carry no such path (they do not: its backward ran without a graph) the products would
    silently miss that part of the Hessian.
    """
    seen: set[Any] = set()
    stack: list[Any] = [t.grad_fn for t in outputs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() in ("torch::autograd::Error", "torch::autograd::DelayedError", "DelayedError", "Error"):
            try:
                node(torch.zeros((), device=loss.device))
            except (RuntimeError, NotImplementedError) as e:
                raise no_second_derivative(e, [loss]) or NoSecondDerivative(
                    f"the Hessian needs second derivatives, and an operation of the model has none ({e}): write "
                    "the model with operators that can be differentiated twice, or perturb only layers after it "
                    "(--layer)", node.name()) from e
        stack.extend(n for n, _ in node.next_functions)


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of the tensors autograd saves in the block (each storage once; the model's own not)."""

    def __init__(self, model: nn.Module) -> None:
        self.bytes = 0
        self._seen = {_storage(t)[0] for t in (*model.parameters(), *model.buffers())}
        super().__init__(self._pack, _unpack)

    def _pack(self, t: Tensor) -> Tensor:
        ptr, size = _storage(t)
        if ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += size
        return t


def _unpack(t: Tensor) -> Tensor:
    return t


def _storage(t: Tensor) -> tuple[int, int]:
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without storage (wrapper, sparse...)
        return id(t), t.numel() * t.element_size()


def _memory_budget(device: torch.device) -> int:
    """Bytes the kept gradient graphs may hold: half the GPU's free memory, a quarter of the RAM available."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    if device.type != "cpu":
        return 1 << 30
    available = 2 << 30
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):  # a container's own limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    return max(available, 0) // 4


class _Gradient:
    """The gradient of one batch's loss with its graph (create_graph): what each double backward differentiates."""

    def __init__(self, loss: Tensor, grads: Sequence[Tensor | None]) -> None:
        self.loss = loss
        self.grads = list(grads)
        # the entries that depend on the parameters (a gradient independent of them adds nothing to H v)
        self.live = [i for i, g in enumerate(self.grads) if g is not None and g.requires_grad]
        self.outputs = [g for g in self.grads if g is not None and g.requires_grad]


class HessianOperator:
    """v -> H v for the loss of `model` on `batches` (flat float64 numpy vectors over the named parameters).

    Double backward keeps each batch's gradient graph from one product to the next while their saved
    tensors fit in `keep_bytes` (None: half the device's free memory, a quarter of the RAM available
    on a CPU): every product after the first is then one backward pass through those graphs.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], names: Sequence[str],
                 weights: np.ndarray | None = None, loss: Loss | None = None, method: str = "auto",
                 keep_bytes: int | None = None) -> None:
        if method not in METHODS:
            raise UsageError(f"unknown Hessian-vector product method {method!r}: choose one of {', '.join(METHODS)}")
        params = dict(model.named_parameters())
        self.model = model
        self.batches = list(batches)
        # L = Σ w_b L_b: the mean over batches, or (--batches all) over samples
        sizes = np.ones(len(self.batches)) if weights is None else np.asarray(weights, np.float64)
        self.weights = sizes / sizes.sum()
        self.names = list(names)
        self.params = [params[n] for n in names]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.size = int(sum(self.sizes))
        self.products = 0
        self.loss = loss or CrossEntropy()
        # auto: double backward (benchmarks/hessian_speed.py: faster than forward-over-reverse on every model)
        self.method = FORWARD_OVER_REVERSE if method == FORWARD_OVER_REVERSE else DOUBLE_BACKWARD
        self.fallback: str | None = None  # why forward-over-reverse fell back to double backward
        self.keep_bytes = keep_bytes  # None until the first product reads the device's budget
        self.kept_bytes = 0  # saved tensors of the graphs kept
        self._kept: dict[int, _Gradient] = {}  # batch index -> its gradient graph, kept between products
        self._full = False  # no more graphs fit
        self._checked = False  # the graph of the double backward searched for operators without one

    def release(self) -> None:
        """Free the gradient graphs kept between products."""
        self._kept.clear()
        self.kept_bytes = 0

    @property
    def device(self) -> torch.device:
        """Where the products are computed (the parameters' device)."""
        return self.params[0].device if self.params else torch.device("cpu")

    def _split(self, v: Tensor) -> list[Tensor]:
        out, start = [], 0
        for p, n in zip(self.params, self.sizes, strict=True):
            out.append(v[start:start + n].to(p.device, p.dtype).view_as(p))
            start += n
        return out

    def gradient(self) -> np.ndarray:
        """∇L (float64)."""
        def batch_gradient(i: int, _vs: list[Tensor]) -> Sequence[Tensor | None]:
            x, y = self.batches[i]
            with torch.enable_grad():
                return torch.autograd.grad(self.loss(self.model(x), y), self.params, allow_unused=True)

        with differentiable_kernels(self.model):
            out: np.ndarray = self._sum(batch_gradient, []).cpu().numpy()
            return out

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """H v (float64 in and out; the products themselves run in the parameters' dtype)."""
        flat = torch.from_numpy(np.ascontiguousarray(np.asarray(v, np.float64).reshape(-1)))
        out: np.ndarray = self.product(flat.to(self.device)).cpu().numpy()
        return out

    def product(self, v: Tensor) -> Tensor:
        """H v for a float64 vector on the operator's device, a new float64 vector there (no host copy: what
        an algorithm that keeps its vectors on the device calls)."""
        vs = self._split(v.reshape(-1))
        with differentiable_kernels(self.model):
            if self.method == FORWARD_OVER_REVERSE:
                try:
                    total = self._sum(self._forward_over_reverse, vs)
                except (RuntimeError, NotImplementedError) as e:
                    # an operator without a forward-mode derivative: double backward for this model from now on
                    self.method, self.fallback = DOUBLE_BACKWARD, str(e).strip().splitlines()[0] if str(e) else repr(e)
            if self.method == DOUBLE_BACKWARD:
                total = self._sum(self._double_backward, vs)
        self.products += 1
        return total

    def _sum(self, product: Callable[[int, list[Tensor]], Sequence[Tensor | None]], vs: list[Tensor]) -> Tensor:
        # summed in float64 on the parameters' device (per batch and parameter, host copies and numpy sums
        # took 3.5x the products of a resnet on a GPU)
        device = self.device
        if len(self.weights) == 1:  # one batch (λmax while training): the product itself, copied into float64
            # (a zero-filled sum and its converting add cost a third of a resnet's product on a CPU)
            flat = torch.empty(self.size, dtype=torch.float64, device=device)
            start = 0
            for t, n in zip(product(0, vs), self.sizes, strict=True):
                part = flat[start:start + n]
                # into a view shaped as the product (its strides may not be the parameter's): one copy, not two
                part.zero_() if t is None else part.view(t.shape).copy_(t.detach())
                start += n
            return flat
        total = torch.zeros(self.size, dtype=torch.float64, device=device)
        for i, w in enumerate(self.weights):
            start = 0
            for t, n in zip(product(i, vs), self.sizes, strict=True):
                if t is not None:
                    total[start:start + n].add_(t.detach().reshape(-1).to(total.device), alpha=float(w))
                start += n
        return total

    def _gradient_graph(self, i: int) -> _Gradient:
        """Batch i's gradient with its graph: kept from an earlier product, or made (and kept if it fits)."""
        if i in self._kept:
            return self._kept[i]
        x, y = self.batches[i]
        measure = not self._full and self.keep_bytes != 0
        saved = _SavedBytes(self.model) if measure else None
        with torch.enable_grad(), saved or contextlib.nullcontext():
            loss = self.loss(self.model(x), y)
            made = _Gradient(loss, torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True))
        if saved is not None:
            if self.keep_bytes is None:  # read once, before any graph is kept
                self.keep_bytes = _memory_budget(x.device)
            if self.kept_bytes + saved.bytes <= self.keep_bytes:
                self._kept[i] = made
                self.kept_bytes += saved.bytes
            else:
                self._full = True
        return made

    def _double_backward(self, i: int, vs: list[Tensor]) -> Sequence[Tensor | None]:
        g = self._gradient_graph(i)
        if not g.live:
            return [None] * len(self.params)
        if not self._checked:  # once: the graph is the same at every product
            self._checked = True
            _delayed_errors(g.outputs, g.loss)
        try:
            with torch.enable_grad():
                return torch.autograd.grad(g.outputs, self.params, grad_outputs=[vs[j] for j in g.live],
                                           retain_graph=i in self._kept, allow_unused=True)
        except (RuntimeError, NotImplementedError) as e:
            raise no_second_derivative(e, [g.loss]) or e from e

    def _forward_over_reverse(self, i: int, vs: list[Tensor]) -> Sequence[Tensor | None]:
        from torch.func import functional_call, grad, jvp

        x, y = self.batches[i]

        def loss_of(params: dict[str, Tensor]) -> Tensor:
            out: Tensor = self.loss(functional_call(self.model, params, (x,), strict=False), y)
            return out

        primals = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        tangents = dict(zip(self.names, vs, strict=True))
        with torch.no_grad():  # no graph for the weights held fixed: the transforms compute every derivative
            hv: dict[str, Tensor] = jvp(grad(loss_of), (primals,), (tangents,))[1]
        return [hv[n] for n in self.names]

    def unflatten(self, v: np.ndarray, names: Sequence[str]) -> dict[str, Tensor]:
        """A flat vector as {parameter name: float32 CPU tensor}."""
        out, start = {}, 0
        for name, shape, n in zip(names, self.shapes, self.sizes, strict=True):
            out[name] = torch.from_numpy(np.array(v[start:start + n], np.float32)).reshape(shape)
            start += n
        return out


@contextlib.contextmanager
def operator(model: nn.Module, batches: Sequence[Batch], names: Sequence[str], bn: str,
             weights: np.ndarray | None = None, loss: Loss | None = None,
             method: str = "auto", keep_bytes: int | None = None) -> Iterator[HessianOperator]:
    """The Hessian operator at the model's weights in BatchNorm mode `bn`; modes and buffers restored after."""
    evaluator = Evaluator(model, batches, bn)
    if evaluator.bn == "recompute":
        raise ValueError("the Hessian is defined for --bn train or eval")
    params = dict(model.named_parameters())
    flags = {n: params[n].requires_grad for n in names}
    with evaluator.modes():
        for n in names:
            params[n].requires_grad_(True)
        op = HessianOperator(model, evaluator.batches, names, weights, loss, method, keep_bytes)
        try:
            yield op
        finally:
            op.release()
            for n, flag in flags.items():
                params[n].requires_grad_(flag)
