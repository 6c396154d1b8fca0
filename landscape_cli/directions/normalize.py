"""Which parameters a grid moves, and direction vectors scaled against one epoch's weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

import torch
from torch import Tensor

from landscape_cli.config import NORMS
from landscape_cli.errors import UnknownNameError, UsageError

Direction = dict[str, Tensor]


def is_bias_or_bn(tensor: Tensor) -> bool:
    """Biases and BatchNorm weights: the 1-D parameters (Li et al.'s `ignore='biasbn'` rule)."""
    return tensor.dim() <= 1


def layer_matches(names: Iterable[str], patterns: Sequence[str]) -> dict[str, list[str]]:
    """For each --layer pattern, the parameter names it matches (shell-style, case-sensitive, against whole
    names: `*` also crosses dots), in the model's order."""
    names = list(names)
    return {p: [n for n in names if fnmatchcase(n, p)] for p in patterns}


def select_layers(weights: Mapping[str, Tensor], patterns: Sequence[str], perturb_biasbn: bool = False) -> list[str]:
    """The parameters --layer patterns select, in the model's order: every name a pattern matches, biases and
    norm parameters (the 1-D ones) only with --perturb-biasbn, except that a pattern matching nothing but
    such parameters (`ln_f.*`) selects them all: it names them and nothing else. A pattern that matches
    nothing is refused: it never silently selects nothing."""
    selected: set[str] = set()
    for pattern, matched in layer_matches(weights, patterns).items():
        if not matched:
            example = next(iter(weights), "")
            raise UnknownNameError(
                f"--layer {pattern!r} matches no parameter of the model (patterns match whole names such as "
                f"{example!r}; `landscape layers RUN` lists them all)"
            )
        kept = [n for n in matched if perturb_biasbn or not is_bias_or_bn(weights[n])]
        selected.update(kept or matched)
    return [n for n in weights if n in selected]


def perturbed_names(weights: Mapping[str, Tensor], *, perturb_biasbn: bool = False,
                    layer: str | None = None, single_kernel: bool = False,
                    layers: Sequence[str] | None = None) -> list[str]:
    """The parameters a grid moves, checking --layer (one name, or `layers`: patterns) / --single-kernel
    against the model."""
    if layers is not None:
        if layer is not None or single_kernel:
            raise UsageError("--single-kernel needs --layer naming one convolution weight (not a pattern)"
                             if single_kernel else "give --layer as one name or as patterns, not both")
        return select_layers(weights, layers, perturb_biasbn)
    if layer is not None:
        if layer not in weights:
            raise UnknownNameError(
                f"unknown --layer {layer!r}: choose one of {', '.join(weights)} (`landscape layers RUN` lists them)"
            )
        if is_bias_or_bn(weights[layer]) and not perturb_biasbn:
            raise UsageError(f"--layer {layer} is a bias or BatchNorm parameter: add --perturb-biasbn to perturb it")
        names = [layer]
    else:
        names = [n for n, w in weights.items() if perturb_biasbn or not is_bias_or_bn(w)]
    if single_kernel and (layer is None or weights[layer].dim() != 4):
        raise UsageError("--single-kernel needs --layer naming a convolution weight (a 4-D tensor)")
    return names


def normalize(direction: Mapping[str, Tensor], weights: Mapping[str, Tensor], names: list[str] | None = None,
              norm: str = "filter", single_kernel: bool = False, like: bool = False) -> Direction:
    """The direction restricted to `names`, scaled against `weights`.

    - filter: each filter (conv output channel, row of a linear weight) rescaled to the norm of the
      same filter of the weights (Li et al. 2018);
    - filter-std: each filter of the Gaussian draw times the standard deviation of that weight filter
      (the reference code's variant);
    - layer: the same per tensor; none: the raw draw.
    1-D parameters (biases, BatchNorm), when perturbed, take the weights themselves as direction,
    as Li et al.'s code does. With `single_kernel`, only the first kernel [0, 0] of the layer moves.
    With `like`, each result has its weight's device, dtype and memory layout (no later copy).
    `names` defaults to what a default grid moves (`perturbed_names(weights)`).
    """
    if norm not in NORMS:
        raise UnknownNameError(f"unknown --norm {norm!r}: choose one of {', '.join(NORMS)}")
    if names is None:  # what a default grid moves: every parameter but biases and BatchNorm's
        names = perturbed_names(weights)
    missing = [n for n in names if n not in direction or n not in weights]
    if missing:
        raise UsageError(f"the direction and the weights must both name every perturbed parameter: {missing[0]!r} is "
                         f"missing from the {'direction' if missing[0] not in direction else 'weights'}")
    out: Direction = {}
    for name in names:
        d, w = direction[name].float(), weights[name].detach().float().cpu()
        if is_bias_or_bn(w):
            nd = w.clone()
            out[name] = torch.empty_like(weights[name]).copy_(nd) if like else nd
            continue
        if norm == "filter":
            scale = _rows(w).norm(dim=1) / (_rows(d).norm(dim=1) + 1e-10)
            nd = d * scale.view(-1, *[1] * (d.dim() - 1))
        elif norm == "filter-std":
            nd = d * _rows(w).std(dim=1, correction=0).view(-1, *[1] * (d.dim() - 1))
        elif norm == "layer":
            nd = d * (w.norm() / (d.norm() + 1e-10))
        else:
            nd = d.clone()
        if single_kernel:
            mask = torch.zeros_like(nd)
            mask[0, 0] = 1
            nd = nd * mask
        out[name] = torch.empty_like(weights[name]).copy_(nd) if like else nd
    return out


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)
