"""User metrics of a grid (`grid --metric module:function`, `metrics=` in the API): numbers beside loss and accuracy.

A metric is a function `(outputs, targets) -> number` of one batch: the model's outputs on the batch (the tensor
the loss is computed from) and its targets, returning a 0-d tensor or a float — the margin, the expected
calibration error, the loss of one class... It is evaluated at every point of the grid on every batch, exactly
where the loss is (same weights, same BatchNorm mode, same forward pass), and stored as the grid's array named
after the function (`margin`), with the dimensions of `loss`; with `--batches all` the pieces are pooled as the
loss is (weighted by each piece's scored samples).

References are resolved like model factories (`pkg.module:function`, `./file.py:function`, or an entry point of
the group `landscape.metrics`); the grid's identity holds each metric's name, reference and the sha256 of the file
defining it, so an edited metric makes another grid, and resuming a grid refuses a metric whose file changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape_cli.config import MetricRef
from landscape_cli.errors import LandscapeError, UsageError
from landscape_cli.plugins import USER_CODE_ERRORS, Source, one_line, resolve

# names a metric cannot take: the grid's own arrays and coordinates
RESERVED = frozenset({"loss", "accuracy", "done", "diverged", "center_loss", "center_accuracy", "center_done",
                      "grad_a", "grad_b", "epoch", "step", "checkpoint", "pair", "batch", "x", "y", "path_epoch",
                      "through", "control_point", "curve_t"})
MAX_METRICS = 16


@dataclass(frozen=True)
class Metric:
    """A resolved metric: its record and the function."""

    ref: MetricRef
    function: Callable[[Tensor, Tensor], Any]

    @property
    def name(self) -> str:
        return self.ref.name

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        """The metric on one batch as a 0-d float tensor; what the user's function raises, or a value that is not one
        number, is one line naming it."""
        try:
            value = self.function(out, y)
        except LandscapeError:
            raise
        except USER_CODE_ERRORS as e:
            raise UsageError(f"the metric {self.name!r} ({self.ref.ref}) raised {one_line(e)}: fix the metric "
                             "(LANDSCAPE_DEBUG=1 shows the traceback)") from e
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise UsageError(f"the metric {self.name!r} ({self.ref.ref}) returned a tensor of shape "
                                 f"{tuple(value.shape)}: a metric returns one number per batch")
            return value.detach().reshape(()).float()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return torch.tensor(float(value), device=out.device)
        raise UsageError(f"the metric {self.name!r} ({self.ref.ref}) returned {type(value).__name__}: a metric returns "
                         "one number per batch (a float or a 0-d tensor)")


def resolve_metric(text: str) -> Metric:
    """A `--metric` reference resolved to its function (the name: the function's, or NAME=REF to choose one)."""
    name, eq, ref = text.partition("=")
    if not eq:
        name, ref = "", text
    source = resolve(ref.strip(), "metric", [])
    function = source.load("metric")
    name = name.strip() or source.target.rpartition(":")[2]
    return Metric(MetricRef(check_name(name, text), source.ref, source.sha256), function)


def check_name(name: str, text: str) -> str:
    if not name.isidentifier() or name in RESERVED:
        raise UsageError(f"--metric {text}: {name!r} cannot name a metric (a Python identifier, not one of the grid's "
                         "own arrays such as loss or accuracy); give NAME=REF")
    return name


_IN_MEMORY: dict[str, Callable[..., Any]] = {}  # functions the API was given, by reference, for this process


def reload(ref: MetricRef) -> Metric:
    """A grid's recorded metric, loaded again (resuming): refused if its file changed since the grid was made."""
    if ref.sha256 is None and ref.ref in _IN_MEMORY:
        return Metric(ref, _IN_MEMORY[ref.ref])
    if ref.sha256 is None:
        raise UsageError(f"the metric {ref.name!r} was a function given to the Python API ({ref.ref}): pass it again "
                         "(metrics=[...]) to continue this grid")
    source = resolve(ref.ref, "metric", [])
    Source.check_unchanged(source, ref.sha256, "metric")
    return Metric(ref, source.load("metric"))


def resolve_all(texts: Sequence[str | Metric | Callable[..., Any]]) -> list[Metric]:
    """`--metric` references (or, from the API, callables: named after the function) resolved, names unique."""
    out: list[Metric] = []
    for item in texts:
        if isinstance(item, Metric):
            out.append(item)
        elif isinstance(item, str):
            out.append(resolve_metric(item))
        elif callable(item):
            name = getattr(item, "__name__", "")
            module = getattr(item, "__module__", "")
            ref = MetricRef(check_name(name, name or repr(item)), f"{module}:{name}", None)
            _IN_MEMORY[ref.ref] = item
            out.append(Metric(ref, item))
        else:
            raise UsageError(f"a metric is a reference (module:function) or a function, not {type(item).__name__}")
    if len(out) > MAX_METRICS:
        raise UsageError(f"{len(out)} metrics: at most {MAX_METRICS} per grid")
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two metrics are named {twice[0]!r}: give one of them another name with NAME=REF")
    return out


