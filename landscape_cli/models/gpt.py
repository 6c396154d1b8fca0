"""`gpt`: a small decoder-only transformer in nanoGPT's shape, for token sequences (`text:PATH`).

Token and position embeddings, pre-norm blocks (LayerNorm, causal self-attention, LayerNorm, an MLP
with GELU, each added to the residual stream), a final LayerNorm and a head tied to the token
embedding (one parameter, named `transformer.wte.weight`: a direction moves both). Inputs are token
ids [N, T] with T at most the block size; outputs are logits [N, T, vocab], one next-token
prediction per position. Initialization as nanoGPT's: normal(0, 0.02) weights, zero biases, the
residual projections scaled by 1/sqrt(2·layers); no dropout (a landscape's points are deterministic).

The attention is `F.scaled_dot_product_attention(q, k, v, is_causal=True)`: training and grids run
PyTorch's fused kernels; the Hessian's products (whose double backward the fused kernels lack) and the
batched grid evaluator (vmap, which cannot batch them) switch to the math backend for their passes.
The defaults (2 layers, 2 heads, 64 dimensions, ~0.1 M parameters with a
small vocabulary) train on a CPU in seconds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape_cli.models._registry import register_model

LAYERS, HEADS, EMBEDDING = 2, 2, 64


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"{n_embd} embedding dimensions do not split into {n_head} heads")
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # queries, keys and values of every head at once
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in self.c_attn(x).split(c, dim=2))  # each [b, heads, t, head size]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """x + attention(LayerNorm(x)), then + MLP(LayerNorm(x)): pre-norm."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The embeddings, the blocks and the final LayerNorm (named as nanoGPT's `transformer`)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[-1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT(nn.Module):
    """Decoder-only transformer: token ids [N, T] (T <= block_size) -> next-token logits [N, T, vocab_size]."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int = LAYERS, n_head: int = HEADS,
                 n_embd: int = EMBEDDING) -> None:
        super().__init__()
        self.block_size = block_size
        self.transformer = Transformer(vocab_size, block_size, n_layer, n_head, n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one parameter
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the projections into the residual stream, as GPT-2 scales them
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
            elif p.dim() >= 2:  # the other linear and the embedding weights
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)  # (LayerNorm weights stay 1)

    def forward(self, idx: Tensor) -> Tensor:
        if idx.shape[-1] > self.block_size:
            raise ValueError(f"a sequence of {idx.shape[-1]} tokens is longer than the model's block size "
                             f"{self.block_size}")
        return self.lm_head(self.transformer(idx))


@register_model("gpt", f"small GPT (nanoGPT's shape): {LAYERS} layers, {HEADS} heads, {EMBEDDING} dimensions, "
                "tied head; token ids [N, T] -> [N, T, vocab] (text:PATH)", inputs="tokens")
def gpt(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The model for sequences of `input_shape[0]` tokens over a vocabulary of `num_outputs`."""
    return GPT(vocab_size=num_outputs, block_size=int(input_shape[0]))
