"""The dataset registry: whole datasets held in memory as uint8 tensors.

Every dataset is small enough to keep in memory (CIFAR-10: 150 MB as uint8), so batches are
index operations on a tensor instead of a DataLoader; images are normalized per batch. A dataset
is a registered loader (`register_dataset`; the built-in ones are in `builtin`), a user's
`pkg.module:factory` / `./file.py:factory`, an entry point in the group `landscape.datasets`, or
`text:PATH`, the characters of a text file cut into windows of `--block-size` (`text`).
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from landscape_cli.data import tokenized
from landscape_cli.data.losses import IGNORE_INDEX, TASKS, loss_for_task
from landscape_cli.data.text import DEFAULT_BLOCK_SIZE, KIND, PREFIX, is_text, load_text, text_source
from landscape_cli.errors import UnknownNameError, UsageError
from landscape_cli.plugins import Source, call_factory, resolve

DATA_ENV = "LANDSCAPE_DATA"

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]  # train images, train labels, val images, val labels
Loader = Callable[[Path], Arrays]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    offline: bool  # True when no download is ever needed


@dataclass
class Dataset:
    """A dataset in memory, train and validation: the built-in ones are uint8 images [N, C, H, W]
    (normalized per batch) with int64 labels; a factory's are tensors of any shape and dtype, used as
    they are (integer token ids stay integers)."""

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    task: str = "classification"
    num_outputs: int = 0  # classes, or the regression targets' trailing size
    images: bool = True  # uint8 images standardized with info.mean / info.std
    sha256: str | None = None  # of a factory's tensors, or a text file's bytes (a built-in dataset is named by its name)
    details: dict[str, Any] = field(default_factory=dict)  # what run.json records beyond the common keys (a text)

    @property
    def block_size(self) -> int | None:
        """The characters per sample of a `text:` dataset (None for any other)."""
        size = self.details.get("block_size")
        return None if size is None else int(size)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images -> float32, scaled to [0, 1] and standardized per channel."""
        mean = torch.tensor(self.info.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.info.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def prepare(self, x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
        """A batch on `device`: uint8 images normalized to float32 (a factory's tensors as they are),
        NHWC in memory when `channels_last` and the batch is 4-D floating point."""
        out = self.normalize(x.to(device, non_blocking=True)) if self.images else x.to(device, non_blocking=True)
        if channels_last and out.dim() == 4 and out.is_floating_point():
            return out.contiguous(memory_format=torch.channels_last)
        return out

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        return (self.train_x, self.train_y) if name == "train" else (self.val_x, self.val_y)


_DATASETS: dict[str, tuple[DatasetInfo, Loader]] = {}


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    def decorate(loader: Loader) -> Loader:
        if info.name in _DATASETS:
            raise ValueError(f"dataset {info.name!r} is registered twice")
        _DATASETS[info.name] = (info, loader)
        return loader

    return decorate


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}: choose one of {', '.join(list_datasets())}")
    return _DATASETS[name][0]


def default_data_dir() -> Path:
    """`$LANDSCAPE_DATA`, else the per-user cache directory."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "landscape" / "data"


def dataset_source(ref: str) -> Source:
    """Where a dataset reference comes from: built-in, entry point, pkg.module:factory, ./file.py:factory or
    text:PATH."""
    if is_text(ref):
        return text_source(ref)
    return resolve(ref, "dataset", list_datasets())


def check_block_size(source: Source, block_size: int | None) -> None:
    """--block-size is a text dataset's, and a positive number."""
    if block_size is None:
        return
    if source.kind != KIND:
        raise UsageError(f"--block-size applies to text datasets ({PREFIX}PATH) only, not to {source.ref!r}")
    if block_size < 1:
        raise UsageError(f"--block-size must be at least 1, got {block_size}")


def load_dataset(ref: str | Source, data_dir: str | os.PathLike[str] | None = None,
                 recorded: dict[str, Any] | None = None, block_size: int | None = None) -> Dataset:
    """Load a dataset: a registered one (downloaded into `data_dir` the first time if it needs to), a
    factory's, or a text file's windows of `block_size` characters (default 64). With `recorded` (a run's
    dataset record) a factory must return the data the run was made with (same sha256), and is found where
    the run recorded it; a text file must be the same file (its sha256), cut with the recorded block size."""
    if recorded is not None and recorded.get("source"):
        source = Source.from_json(recorded["source"])
    else:
        source = ref if isinstance(ref, Source) else dataset_source(ref)
    if source.kind == tokenized.KIND:  # a text file in a Hugging Face tokenizer's tokens (`import hf:DIR`)
        tokens = tokenized.load_tokens(source, block_size, recorded)
        info = DatasetInfo(source.name, 0, 0, tokens.vocab_size, (), (), tokens.description, True)
        return Dataset(info, *tokens.train, *tokens.val, num_outputs=tokens.vocab_size, images=False,
                       sha256=tokens.sha256, details=tokens.details)
    check_block_size(source, block_size)
    if source.kind == KIND:
        if recorded is not None:
            return from_text(source, int(recorded["block_size"]), recorded.get("sha256"))
        return from_text(source, block_size or DEFAULT_BLOCK_SIZE)
    if source.builtin:
        info = dataset_info(source.ref)
        loader = _DATASETS[source.ref][1]
        root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        train_x, train_y, val_x, val_y = loader(root)
        return Dataset(info, train_x.contiguous(), train_y.long(), val_x.contiguous(), val_y.long(),
                       num_outputs=info.num_classes)
    data = from_factory(source)
    if recorded is not None and recorded.get("sha256") and recorded["sha256"] != data.sha256:
        raise UsageError(
            f"dataset {source.ref!r} now returns other data than the run was made with (sha256 "
            f"{str(data.sha256)[:12]}, recorded {str(recorded['sha256'])[:12]}): restore it, or train (or import) a "
            "new run"
        )
    return data


def from_factory(source: Source) -> Dataset:
    """Call a dataset factory and check what it returns against the protocol (one line per problem)."""
    result = call_factory(source, "dataset", source.load("dataset"))
    where = f"dataset {source.ref!r}"
    if not isinstance(result, dict) or not {"train", "val", "task"} <= set(result):
        keys = f" with keys {', '.join(map(str, result))}" if isinstance(result, dict) else ""
        raise UsageError(f"{where} must return a dict with keys train, val and task (and optionally num_outputs), "
                         f"got {type(result).__name__}{keys}")
    task = result["task"]
    if task not in TASKS:
        raise UsageError(f"{where}: task {task!r} must be one of {', '.join(TASKS)}")
    splits = {}
    for split in ("train", "val"):
        pair = result[split]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise UsageError(f"{where}: {split} must be a tuple (x, y) of tensors")
        x, y = (_as_tensor(t, where, split, role) for t, role in zip(pair, ("inputs", "targets"), strict=True))
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise UsageError(f"{where}: {split} has {len(x) if x.dim() else 0} inputs but {len(y) if y.dim() else 0} "
                             "targets: the first dimension of both is the sample")
        if len(x) == 0:
            raise UsageError(f"{where}: the {split} split is empty")
        _check_finite(x, where, split, "inputs")
        _check_finite(y, where, split, "targets")
        splits[split] = (x.contiguous(), y.contiguous())
    (tx, ty), (vx, vy) = splits["train"], splits["val"]
    if tx.shape[1:] != vx.shape[1:] or ty.shape[1:] != vy.shape[1:] or tx.dtype != vx.dtype or ty.dtype != vy.dtype:
        raise UsageError(f"{where}: train and val samples differ in shape or dtype (inputs {list(tx.shape[1:])} "
                         f"{tx.dtype} vs {list(vx.shape[1:])} {vx.dtype}, targets {list(ty.shape[1:])} vs "
                         f"{list(vy.shape[1:])})")
    loss = loss_for_task(task)
    loss.check_targets(ty, where)
    loss.check_targets(vy, f"{where} (val)")
    if task == "classification":  # class indices per sample [N] or per token [N, T]; IGNORE_INDEX is padding
        scored_ty, scored_vy = ty[ty != IGNORE_INDEX], vy[vy != IGNORE_INDEX]
        if "num_outputs" in result:
            num_outputs = _num_outputs(result["num_outputs"], where)
        else:
            num_outputs = int(max(int(scored_ty.max()), int(scored_vy.max()))) + 1
        if int(min(scored_ty.min(), scored_vy.min())) < 0 or int(max(scored_ty.max(), scored_vy.max())) >= num_outputs:
            raise UsageError(f"{where}: class indices must lie in 0..{num_outputs - 1} (or be {IGNORE_INDEX}, "
                             "the ignore index of padding)")
    elif "num_outputs" in result:
        num_outputs = _num_outputs(result["num_outputs"], where)
    else:
        num_outputs = int(ty.shape[-1]) if ty.dim() > 1 else 1
    info = DatasetInfo(source.name, int(tx.shape[1]) if tx.dim() == 4 else 0, int(tx.shape[2]) if tx.dim() == 4 else 0,
                       num_outputs, (), (), source.origin, True)
    data = Dataset(info, tx, ty, vx, vy, task=task, num_outputs=num_outputs, images=False)
    data.sha256 = tensors_sha256([tx, ty, vx, vy], {"task": task, "num_outputs": num_outputs})
    return data


def _as_tensor(value: Any, where: str, split: str, role: str) -> Tensor:
    """A split's inputs or targets as a tensor of numbers (one line if they are not: text, objects, ragged lists)."""
    try:
        return torch.as_tensor(value)
    except Exception as e:  # whatever the object does when torch reads it
        reason = " ".join(str(e).split())[:200]
        raise UsageError(f"{where}: the {split} {role} ({type(value).__name__}) cannot be a tensor ({type(e).__name__}: "
                         f"{reason}): return "
                         "tensors or arrays of numbers (encode text or categories as numbers in the factory)") from e


def _check_finite(t: Tensor, where: str, split: str, role: str) -> None:
    """Refuse NaN or infinite values in a split's float inputs or targets (every loss over them would be NaN)."""
    if not t.is_floating_point():
        return
    bad = ~torch.isfinite(t.reshape(len(t), -1)).all(dim=1) if t.dim() > 1 else ~torch.isfinite(t)
    if bool(bad.any()):
        samples = bad.nonzero().flatten()
        raise UsageError(f"{where}: the {split} split's {role} hold NaN or infinite values ({len(samples)} of {len(t)} "
                         f"samples, the first sample {int(samples[0])}): clean or drop them in the dataset factory")


def _num_outputs(value: Any, where: str) -> int:
    """The dataset's "num_outputs": a whole number >= 1 (an int, a numpy integer: never text, a bool or a fraction)."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise UsageError(f"{where}: num_outputs must be a whole number, got {value!r} ({type(value).__name__}): "
                         "give an int, or leave the key out") from None
    if number < 1:
        raise UsageError(f"{where}: num_outputs must be at least 1, got {number}")
    return number


def from_text(source: Source, block_size: int, recorded_sha256: str | None = None) -> Dataset:
    """A text file's windows as a dataset: token ids [N, block_size] -> the next character at each position."""
    text = load_text(source, block_size, recorded_sha256)
    (tx, ty), (vx, vy) = text.train, text.val
    vocab = len(text.vocabulary)
    info = DatasetInfo(source.name, 0, 0, vocab, (), (), f"the characters of {text.path}", True)
    return Dataset(info, tx, ty, vx, vy, num_outputs=vocab, images=False, sha256=text.sha256,
                   details={"path": str(text.path), "characters": text.characters, "block_size": block_size,
                            "vocabulary": text.vocabulary})


def tensors_sha256(tensors: list[Tensor], extra: dict[str, Any]) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (and `extra`): equal iff the data is the same."""
    digest = hashlib.sha256(repr(sorted(extra.items())).encode())
    for t in tensors:
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def dataset_record(source: Source, data: Dataset) -> dict[str, Any]:
    """What run.json records of a dataset (a built-in's keys as the first release wrote them, and more)."""
    record: dict[str, Any] = {"name": source.ref, "channels": data.info.channels, "size": data.info.size,
                              "num_classes": data.num_outputs, "train_size": len(data.train_y),
                              "val_size": len(data.val_y), "task": data.task, "num_outputs": data.num_outputs,
                              "input_shape": list(data.input_shape)}
    if source.kind == KIND:  # a text file: its path, the sha256 of its bytes, the block size, the vocabulary
        source = replace(source, sha256=data.sha256)
    if not source.builtin:
        record.update(sha256=data.sha256, source=source.to_json(), **data.details)
    return record
