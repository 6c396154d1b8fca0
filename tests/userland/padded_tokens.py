"""Token-level classification with padding, as a user's dataset factory: next-token targets [N, T] whose
positions past each sequence's length are -100 (the ignore index, as PyTorch and Hugging Face pad).

Lengths vary from 2 to 12 tokens, so pieces of the split hold very different numbers of scored tokens
(a mean of per-piece means differs from the mean over tokens), and the last 8 training sequences are
padding only (a batch of them has nothing to score). `tests/test_tokens.py` trains `gpt` on it.
"""

from __future__ import annotations

import torch

VOCAB = 11
LENGTH = 12
TRAIN = 96
PADDING_ONLY = 8  # the last training sequences: no scored token


def sequences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    tokens = (start + step * torch.arange(LENGTH + 1)) % VOCAB  # arithmetic sequences: learnable
    x, y = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    pad = torch.arange(LENGTH) >= lengths[:, None]
    x[pad] = 0
    y[pad] = -100
    return x, y


def padded() -> dict[str, object]:
    x, y = sequences(TRAIN + 32, 0)
    y[TRAIN - PADDING_ONLY:TRAIN] = -100
    return {"train": (x[:TRAIN], y[:TRAIN]), "val": (x[TRAIN:], y[TRAIN:]), "task": "classification",
            "num_outputs": VOCAB}


def all_padding_val() -> dict[str, object]:
    """A validation split without a single scored token: refused when loaded."""
    x, y = sequences(40, 1)
    y[32:] = -100
    return {"train": (x[:32], y[:32]), "val": (x[32:], y[32:]), "task": "classification", "num_outputs": VOCAB}
