"""`landscape import hf:DIR DATASET [CHECKPOINT...]`: a run made from a Hugging Face causal LM's directory.

DIR is a directory as `save_pretrained` writes it: config.json, and the weights as model.safetensors or
as shards listed by model.safetensors.index.json (pytorch_model.bin, or its shards, are read by the
restricted unpickler, which runs no code). The model is built from the config by transformers
(`models.hf`: no code from the directory runs), the weights are fitted to it (tied weights saved once
are filled, every other missing or unexpected key is refused), and written as the run's checkpoints,
so that grid, hessian and plot rebuild the model from the run alone. CHECKPOINT... are further
directories (a Trainer's checkpoint-500/...) whose weights become the run's epochs, in training order;
with none, DIR itself is the one checkpoint (epoch 0).

The data: `text:PATH` in the tokens of DIR's own tokenizer where it has one (`data.tokenized`), else
character by character (`data.text`), cut into windows of --block-size tokens with the targets shifted
by one; or a factory's token ids x [N, T] with targets [N, T]. The loss is the cross-entropy over every
token (targets -100 left out). The run's id covers the config (canonical JSON), the data and each
epoch's weights hash: importing the same directories again changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from landscape_cli._io import file_sha256
from landscape_cli.config import TrainConfig
from landscape_cli.data import Dataset, dataset_source, load_dataset
from landscape_cli.data.losses import get_loss, loss_for_task
from landscape_cli.data.text import KIND as TEXT_KIND
from landscape_cli.data.tokenized import has_tokenizer, tokenized_source
from landscape_cli.errors import UsageError
from landscape_cli.exchange.importer import ImportResult, write_run
from landscape_cli.exchange.unpickle import epoch_numbers, read_weights
from landscape_cli.models import checkpoints
from landscape_cli.models.hf import PREFIX, CausalLM, build_hf, fit_state, recorded_config, recorded_model, require
from landscape_cli.models.records import check_fits
from landscape_cli.plugins import Source
from landscape_cli.store import Store

CONFIG = "config.json"
_SHOWN = 3


def is_hf(model: str) -> bool:
    return model.startswith(PREFIX)


def import_hf(
    directory: str | os.PathLike[str],
    dataset: str,
    checkpoint_dirs: list[str | os.PathLike[str]] | None = None,
    *,
    epochs: list[int] | None = None,
    block_size: int | None = None,
    loss: str | None = None,
    device: str = "auto",
    name: str | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> ImportResult:
    """Make a run of the causal LM in `directory` (hf:DIR, the prefix optional) scored on `dataset`, its epochs
    the weights of `checkpoint_dirs` (training order: --epochs, else the number in each name, else as given),
    or of `directory` itself. Nothing is written unless every directory reads and fits the config."""
    require()
    text = str(directory)
    text = text[len(PREFIX):] if text.startswith(PREFIX) else text
    if not text.strip():
        raise UsageError("hf: give the directory after hf:, e.g. hf:./my-model (as save_pretrained wrote it)")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise UsageError(f"hf:{text}: no such directory")
    config = read_config(root)
    if config is None:
        raise UsageError(f"{root} has no {CONFIG}: give a directory written by save_pretrained "
                         "(config.json and model.safetensors)")
    dirs = [Path(d).expanduser() for d in (checkpoint_dirs or [])] or [root]
    for d in dirs:
        if not d.is_dir():
            raise UsageError(f"checkpoint directory {d} does not exist" if not d.exists() else
                             f"{d} is not a directory: give checkpoint directories (as save_pretrained writes them)")
        own = read_config(d) if d != root else None
        if own is not None and recorded_config(own) != recorded_config(config):
            differ = sorted(k for k in set(recorded_config(own)) | set(recorded_config(config))
                            if own.get(k) != config.get(k))
            raise UsageError(f"{d / CONFIG} differs from {root / CONFIG} ({_names(differ)}): its weights are of "
                             "another model; give checkpoints of one training run")
    numbers = epoch_numbers(dirs, epochs) if epochs is not None else _epochs(dirs)

    net = build_hf({"config": config}, str(root / CONFIG))
    model_src, args = recorded_model(config, net.class_name, f"Hugging Face {net.class_name} of {root.resolve()}")
    data_src, data, data_name = _scoring_data(dataset, root, block_size, data_dir)
    scorer = get_loss(loss) if loss is not None else loss_for_task(data.task)
    scorer.check_targets(data.train_y, f"dataset {data_src.ref!r}")
    _check_data(net, data, data_src)
    check_fits(net, data.train_x[:2], data.train_y[:2], scorer, "the model", f"dataset {data_src.ref!r}")

    order = sorted(range(len(dirs)), key=lambda i: numbers[i])
    states, origins = [], []
    for i in order:  # read and fit every directory before anything is written
        state, origin = read_directory(dirs[i])
        states.append(fit_state(state, net, str(dirs[i])))
        origins.append({"epoch": numbers[i], "file": str(dirs[i].resolve()), **origin})
    hashes = [f"{numbers[i]}:{checkpoints.state_hash(state)}" for i, state in zip(order, states, strict=True)]
    cfg = TrainConfig(model_src.name, data_name, batch_size=0, optimizer="none", lr=0.0,
                      model_sha256=model_src.sha256, data_sha256=data.sha256, loss=loss, imported=tuple(hashes),
                      block_size=data.block_size)
    return write_run(store, cfg, model_src, args, net, data_src, data, scorer, states, [numbers[i] for i in order],
                     origins, name=name, device=device, progress=progress,
                     versions={"transformers": require().__version__})


def read_config(directory: Path) -> dict[str, Any] | None:
    """A directory's config.json as a dict (None if it has none; one line if it is not a JSON object)."""
    path = directory / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not readable JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} holds a {type(config).__name__}, not a config (a JSON object)")
    return config


def read_directory(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights a directory holds (all shards together) and what the run records of their files."""
    layout, files = weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        found = read_weights(f)  # safetensors, or the restricted unpickler for .bin: no code runs
        if twice := sorted(state.keys() & found.state.keys()):
            raise UsageError(f"{f} repeats weights of another shard ({_names(twice)}): is {directory} damaged?")
        state.update(found.state)
    hashes = {f.name: file_sha256(f) for f in files}
    index = _index_file(directory, layout)
    if index is not None:
        hashes[index.name] = file_sha256(index)
    return state, {"sha256": _combined(hashes), "files": hashes, "layout": layout,
                   "reader": "safetensors" if "safetensors" in layout else "restricted", "placeholders": []}


def weight_files(directory: Path) -> tuple[str, list[Path]]:
    """The layout of a directory's weights and their files: model.safetensors or the shards that
    model.safetensors.index.json lists, else pytorch_model.bin or its shards; one line if there are none."""
    for layout, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                                  ("pytorch", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / index).is_file():
            return f"sharded {layout}", _shards(directory, directory / index)
        if (directory / single).is_file():
            return layout, [directory / single]
    raise UsageError(f"{directory} holds no weights: save_pretrained writes model.safetensors (or "
                     "model.safetensors.index.json and its shards)")


def _shards(directory: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{index} is not an index of shards (a JSON object with a weight_map): "
                         f"{type(e).__name__}") from None
    if not names or not all(isinstance(n, str) and n and Path(n).name == n for n in names):
        raise UsageError(f"{index}: its weight_map must name shard files of {directory}")
    if missing := [n for n in names if not (directory / n).is_file()]:
        raise UsageError(f"{index} lists shards that are not in {directory}: {_names(missing)}")
    return [directory / n for n in names]


def _index_file(directory: Path, layout: str) -> Path | None:
    if layout == "sharded safetensors":
        return directory / "model.safetensors.index.json"
    if layout == "sharded pytorch":
        return directory / "pytorch_model.bin.index.json"
    return None


def _combined(hashes: dict[str, str]) -> str:
    """One sha256 for a directory's weight files: that of the file itself when there is one."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()


def _epochs(dirs: list[Path]) -> list[int]:
    """Each directory's epoch without --epochs: one directory is epoch 0; several are numbered 0, 1, ... in
    training order, the order of the number in their names (checkpoint-500 before checkpoint-1000, whatever
    order a shell's glob gave them in) when each name holds one, else the order given."""
    found = [re.findall(r"\d+", d.resolve().name) for d in dirs]
    if len(dirs) > 1 and all(len(f) == 1 for f in found) and len({int(f[0]) for f in found}) == len(dirs):
        rank = sorted(range(len(dirs)), key=lambda i: int(found[i][0]))
        return [rank.index(i) for i in range(len(dirs))]
    return list(range(len(dirs)))


def _scoring_data(dataset: str, root: Path, block_size: int | None,
                  data_dir: str | os.PathLike[str] | None) -> tuple[Source, Dataset, str]:
    """The dataset's source, data and name in the run's identity: a text file in the tokens of DIR's tokenizer
    where it has one, else as `load_dataset` reads it (a text file character by character). A text file is
    named as text:PATH names it (its file name: the content is covered by the data's sha256)."""
    source = dataset_source(dataset)
    name = source.name
    if source.kind == TEXT_KIND and has_tokenizer(root):
        source = tokenized_source(source, root)
    return source, load_dataset(source, data_dir, block_size=block_size), name


def _check_data(net: CausalLM, data: Dataset, source: Source) -> None:
    """Token ids [N, T] with a next-token class per position, within the model's vocabulary and context."""
    where = f"dataset {source.ref!r}"
    x = data.train_x
    if x.is_floating_point() or x.dim() != 2 or data.task != "classification" or data.train_y.shape != x.shape:
        raise UsageError(f"{where}: a causal LM scores token ids x [N, T] with targets [N, T] (the next token at each "
                         f"position); its inputs are {list(x.shape)} {x.dtype} and targets {list(data.train_y.shape)}: "
                         "use text:PATH or a dataset factory of token ids")
    config = net.hf.config
    vocab = int(config.vocab_size)
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and x.shape[1] > int(context):
        raise UsageError(f"{where}: samples of {x.shape[1]} tokens are longer than the model's context "
                         f"({context} positions): give --block-size {context} or less")
    for split in ("train", "val"):
        xs, ys = data.split(split)
        top = max(int(xs.max()), int(ys.max()))
        if int(xs.min()) < 0 or top >= vocab:
            what = (f"the text has {data.num_outputs} distinct characters" if source.kind == TEXT_KIND
                    else f"its {split} token ids reach {top}")
            raise UsageError(f"{where}: {what}, more than the model's vocabulary of {vocab} tokens (token ids "
                             f"0..{vocab - 1}): score it on data in the model's own tokens")


def _names(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more
