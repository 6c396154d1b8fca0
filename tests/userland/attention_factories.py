"""Models whose Hessians need kernels with a double backward (tests/test_hessian_attention.py), on digits.

Each reads an 8x8 image as a sequence of its 8 rows (8 features a token) and is tiny (a few hundred
weights), so that an explicit float64 Hessian takes a moment:

- `mha`: nn.MultiheadAttention(..., need_weights=False) (fused scaled dot-product attention);
- `encoder`: one nn.TransformerEncoderLayer;
- `sdpa`: a module calling F.scaled_dot_product_attention itself;
- `gru`: an nn.GRU (cuDNN's RNN on CUDA has no double backward);
- `once`: a custom autograd.Function whose backward is @once_differentiable: no second derivative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 8  # features a token


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[-2], x.shape[-1])


class MHA(nn.Module):
    def __init__(self, tokens: int, num_outputs: int) -> None:
        super().__init__()
        self.embed = nn.Linear(tokens, WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.head = nn.Linear(WIDTH, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(_rows(x)))
        a, _ = self.attention(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


class Encoder(nn.Module):
    def __init__(self, tokens: int, num_outputs: int) -> None:
        super().__init__()
        self.embed = nn.Linear(tokens, WIDTH)
        self.encoder = nn.TransformerEncoderLayer(WIDTH, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(WIDTH, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(_rows(x))).mean(1))


class SDPA(nn.Module):
    def __init__(self, tokens: int, num_outputs: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(tokens, 3 * WIDTH)
        self.head = nn.Linear(WIDTH, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[0], x.shape[-2]
        q, k, v = self.qkv(_rows(x)).reshape(n, t, 3, 2, WIDTH // 2).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # [n, heads, t, WIDTH / heads]
        return self.head(a.transpose(1, 2).reshape(n, t, WIDTH).mean(1))


class GRU(nn.Module):
    def __init__(self, tokens: int, num_outputs: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(tokens, 6, batch_first=True)
        self.head = nn.Linear(6, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(_rows(x))
        return self.head(out[:, -1])


class OnceSquare(torch.autograd.Function):
    """x², with a backward that cannot itself be differentiated."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 2 * x * grad


class Once(nn.Module):
    def __init__(self, inputs: int, num_outputs: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(inputs, 6)
        self.head = nn.Linear(6, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(OnceSquare.apply(self.hidden(x.flatten(1))))  # type: ignore[no-untyped-call]


def mha(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return MHA(input_shape[-1], num_outputs)


def encoder(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return Encoder(input_shape[-1], num_outputs)


def sdpa(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return SDPA(input_shape[-1], num_outputs)


def gru(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return GRU(input_shape[-1], num_outputs)


def once(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    size = 1
    for s in input_shape:
        size *= s
    return Once(size, num_outputs)
