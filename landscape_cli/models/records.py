"""What a run records of its model, and the checks made before a run is written (`train`, `import`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from landscape_cli.data import Dataset
from landscape_cli.data.losses import Loss
from landscape_cli.errors import LandscapeError, UsageError
from landscape_cli.models._registry import build, count_parameters, takes_tokens
from landscape_cli.plugins import Source, one_line


def model_args(source: Source, data: Dataset, activation: str) -> dict[str, Any]:
    """The arguments a model is built with for `data`: a built-in's (images [C, H, W], or token ids [T] for a
    model of tokens) or a factory's."""
    shape = data.input_shape
    if takes_tokens(source):
        if len(shape) != 1 or data.train_x.is_floating_point() or data.images or data.task != "classification":
            raise UsageError(f"the built-in model {source.ref!r} takes token ids [N, T] with a class (the next token) "
                             f"per position; the dataset's inputs are {[len(data.train_x), *shape]} "
                             f"{data.train_x.dtype}: use text:PATH or a dataset factory of token ids")
        return {"input_shape": list(shape), "num_outputs": data.num_outputs}
    if not source.builtin:
        return {"input_shape": list(shape), "num_outputs": data.num_outputs}
    if len(shape) != 3 or shape[1] != shape[2] or (not data.train_x.is_floating_point() and not data.images):
        raise UsageError(f"the built-in model {source.ref!r} takes square images [N, C, H, H]; the dataset's inputs are "
                         f"{[len(data.train_x), *shape]} {data.train_x.dtype}: use a model factory for other inputs")
    return {"in_channels": shape[0], "num_classes": data.num_outputs, "image_size": shape[1], "activation": activation}


def model_record(source: Source, args: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    record: dict[str, Any] = {"name": source.ref, "args": args, "parameters": count_parameters(net)}
    if not source.builtin:
        record["source"] = source.to_json()
    return record


def check_fits(net: nn.Module, x: Tensor, y: Tensor, scorer: Loss, who: str, data_words: str,
               splits: Mapping[str, Tensor] | None = None) -> None:
    """`net` (in the mode the caller set) scored on the first samples `x`, `y` before anything is written: a model that
    does not fit the data (shapes, dtypes) is one line naming `who` and `data_words`, not a traceback in the middle of
    a command; with `splits` ({split: targets}), every class index of each split is checked against its outputs."""
    try:
        with torch.no_grad():
            out = net(x)
            scorer(out, y)
    except LandscapeError:
        raise
    except Exception as e:
        raise UsageError(f"{who} failed on the first samples of {data_words} (inputs {list(x.shape)} {x.dtype}) with "
                         f"{one_line(e)}") from e
    if splits is not None:
        scorer.check_outputs(out, y, splits, f"{who} on {data_words}")


def probe(model_src: Source, data_src: Source, data: Dataset, activation: str, scorer: Loss) -> None:
    """Score the model on the first two training samples before anything is written (`check_fits`), and the labels of
    both splits against its outputs."""
    if model_src.builtin and data_src.builtin:
        return
    net = build(model_src, model_args(model_src, data, activation)).eval()
    check_fits(net, data.prepare(data.train_x[:2], torch.device("cpu")), data.train_y[:2], scorer,
               f"model {model_src.ref!r}", f"dataset {data_src.ref!r}", {"train": data.train_y, "val": data.val_y})
