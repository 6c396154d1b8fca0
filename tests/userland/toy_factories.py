"""A user's own models and datasets, outside the package: what the plugin tests train, grid and import.

- `waves`: a regression on synthetic data (5 float features -> 2 float targets);
- `tokens`: a non-image classifier's data, integer token ids [N, 12] -> one of 3 classes;
- `regressor` and `token_net`: model factories for them (called with input_shape and num_outputs).

`toy_factories-0.1.dist-info/entry_points.txt` registers `token_net` and `tokens` as entry points.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 20


def waves() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = torch.stack([torch.sin(x[:, 0] + x[:, 1]), 0.5 * x[:, 2] * x[:, 3] - x[:, 4]], dim=1)
    return {"train": (x[:240], y[:240]), "val": (x[240:], y[240:]), "task": "regression"}


def tokens() -> dict[str, object]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (400, 12), generator=g)
    y = (x[:, :4].sum(dim=1) % 3).long()
    return {"train": (x[:320], y[:320]), "val": (x[320:], y[320:]), "task": "classification"}


def regressor(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.Tanh(), nn.Linear(16, num_outputs))


class TokenNet(nn.Module):
    """Token embeddings, averaged, then a linear classifier."""

    def __init__(self, length: int, num_outputs: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8 * length, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).flatten(1))


def token_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return TokenNet(input_shape[0], num_outputs)


def not_a_model(input_shape: tuple[int, ...], num_outputs: int) -> object:
    return "a string"


def waves_three() -> dict[str, object]:
    """Two regression targets, but three outputs asked for: the loss must refuse, never broadcast."""
    return {**waves(), "num_outputs": 3}


def ragged() -> dict[str, object]:
    return {"train": (torch.zeros(10, 3), torch.zeros(9, 1)), "val": (torch.zeros(4, 3), torch.zeros(4, 1)),
            "task": "regression"}
