"""The factories of examples/edge_of_stability.sh: a small tanh MLP and a regression on the first 512 digits.

    landscape train ./examples/edge_of_stability.py:make_model ./examples/edge_of_stability.py:make_data \\
        --optimizer sgd --momentum 0 --batch-size 512 --lr 0.5 --epochs 1200 --track-lambda-max 10

As in Cohen et al. 2021 ("Gradient descent on neural networks typically occurs at the edge of
stability"): full-batch gradient descent (an epoch is one step: --batch-size is the whole training
set) on the mean squared error to one-hot targets (task "regression", so the loss is MSE), with a
tanh network. λmax, the top eigenvalue of the training loss's Hessian, first rises (progressive
sharpening), then hovers just below 2/η (the edge of stability) while the loss keeps falling, non-monotonically.

- `make_data()`: the built-in (offline) digits' first 512 training images, flattened to 64 values in
  [0, 1], with one-hot float targets [N, 10]; the next 256 are the validation set.
- `make_model(input_shape, num_outputs)`: 64 -> 200 -> 200 -> 10 with tanh (Cohen et al.'s width),
  PyTorch's default initialization.
"""

from __future__ import annotations

import torch
from torch import nn

TRAIN, VAL = 512, 256


def make_data() -> dict[str, object]:
    from landscape_cli.data import load_dataset

    digits = load_dataset("digits")
    x = digits.train_x[:TRAIN + VAL].reshape(TRAIN + VAL, -1).float() / 255.0
    y = torch.nn.functional.one_hot(digits.train_y[:TRAIN + VAL].long(), 10).float()
    return {"train": (x[:TRAIN], y[:TRAIN]), "val": (x[TRAIN:], y[TRAIN:]), "task": "regression"}


def make_model(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    width = 200
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, num_outputs))
