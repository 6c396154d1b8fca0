"""Your own model and data with landscape: the two factories `landscape train` takes.

    landscape train ./examples/custom_model.py:make_model ./examples/custom_model.py:make_data --epochs 20

- `make_data()` takes no arguments and returns {"train": (x, y), "val": (x, y), "task": ...}: tensors
  of any shape whose first dimension is the sample. Here: two interleaved half-moons in the plane,
  a classification (targets: class indices, so the loss is cross-entropy and accuracy is reported).
  Float targets and "task": "regression" would make it a regression (mean squared error).
- `make_model(input_shape, num_outputs)` returns any torch.nn.Module; landscape calls it with a
  sample's shape ((2,) here) and the number of outputs (2 classes).

The run's id covers this file's sha256 and the data's: edit either and `landscape train` makes a
new run (and `grid` refuses to extend the old run's grids with the new model).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_data() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    n = 1000
    t = torch.rand(n, generator=g) * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([torch.cos(t) + label * 1.0, torch.sin(t) * (1 - 2 * label) + label * 0.5], dim=1)
    x = x + 0.15 * torch.randn(n, 2, generator=g)
    return {"train": (x[:800], label[:800]), "val": (x[800:], label[800:]), "task": "classification"}


def make_model(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[0], 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, num_outputs))
