"""The data a grid point (or a Hessian-vector product) sees: a split's batches, loaded once."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from landscape_cli.data import Dataset
from landscape_cli.data.losses import IGNORE_INDEX, scored
from landscape_cli.errors import UsageError
from landscape_cli.kernel.types import Batch


class Batches:
    """The data a grid point sees, loaded once: the split's first `batches` slices of `batch_size` (one
    value each), or with `whole` the whole split in `batch_size` pieces pooled into one value, the
    mean over the split's scored units (`weights`: each piece's number of them: its samples, or for
    token targets its tokens that are not padding). With BatchNorm computing batch statistics, a
    last piece smaller than half a batch is merged into the one before it. A batch with no scored
    token (every target padding) is refused; a piece of the whole split without one is left out
    (it weighs nothing in the mean)."""

    def __init__(self, data: Dataset, split: str, batches: int, batch_size: int, whole: bool = False,
                 bn: str = "train") -> None:
        self.data = data
        x, y = data.split(split)
        if whole:
            bounds = [*list(range(0, len(y), batch_size)), len(y)]
            if bn != "eval" and len(bounds) > 2 and bounds[-1] - bounds[-2] < batch_size / 2:
                del bounds[-2]
            pieces = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
            counts = [scored(t) for _, t in pieces]
            self.cpu = [piece for piece, n in zip(pieces, counts, strict=True) if n]
            self.weights: np.ndarray | None = np.array([n for n in counts if n], np.float64)
            if not self.cpu:
                raise UsageError(f"the {split} split has no scored target: every one is {IGNORE_INDEX} (padding)")
        else:
            self.cpu = [(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size])
                        for i in range(batches)]
            self.weights = None
            for i, (_, t) in enumerate(self.cpu):
                if not scored(t):
                    raise UsageError(
                        f"batch {i} of the {split} split (samples {i * batch_size}-{i * batch_size + len(t) - 1}) has "
                        f"no scored token: every target is {IGNORE_INDEX} (padding); use another --batch-size or "
                        "--batches all"
                    )

    @classmethod
    def of(cls, data: Dataset, cfg: Any) -> Batches:
        """The batches of a grid's (or curvature results') configuration."""
        return cls(data, cfg.split, cfg.batches, cfg.batch_size, cfg.whole, cfg.bn)

    def on(self, device: torch.device, channels_last: bool) -> list[Batch]:
        return [(self.data.prepare(x, device, channels_last), y.to(device)) for x, y in self.cpu]
