"""The dataset registry: whole datasets held in memory as uint8 tensors.

Every dataset is small enough to keep in memory (CIFAR-10: 150 MB as uint8), so batches are
index operations on a tensor instead of a DataLoader; images are normalized per batch.
`digits` (scikit-learn's bundled 8x8 handwritten digits) works offline; the torchvision datasets
are downloaded once into the data directory and fail with one clear line when that is impossible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape_cli.data.losses import TASKS, loss_for_task
from landscape_cli.errors import DatasetUnavailableError, UnknownNameError, UsageError
from landscape_cli.plugins import Source, resolve

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
    sha256: str | None = None  # of a factory's tensors (a built-in dataset is named by its name)

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
    """Where a dataset reference comes from: built-in, entry point, pkg.module:factory or ./file.py:factory."""
    return resolve(ref, "dataset", list_datasets())


def load_dataset(ref: str | Source, data_dir: str | os.PathLike[str] | None = None,
                 recorded: dict[str, Any] | None = None) -> Dataset:
    """Load a dataset: a registered one (downloaded into `data_dir` the first time if it needs to) or a
    factory's. With `recorded` (a run's dataset record) a factory must return the data the run was made
    with (same sha256), and is found where the run recorded it."""
    if recorded is not None and recorded.get("source"):
        source = Source.from_json(recorded["source"])
    else:
        source = ref if isinstance(ref, Source) else dataset_source(ref)
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
    result = source.load("dataset")()
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
        x, y = (torch.as_tensor(t) for t in pair)
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise UsageError(f"{where}: {split} has {len(x) if x.dim() else 0} inputs but {len(y) if y.dim() else 0} "
                             "targets: the first dimension of both is the sample")
        if len(x) == 0:
            raise UsageError(f"{where}: the {split} split is empty")
        splits[split] = (x.contiguous(), y.contiguous())
    (tx, ty), (vx, vy) = splits["train"], splits["val"]
    if tx.shape[1:] != vx.shape[1:] or ty.shape[1:] != vy.shape[1:] or tx.dtype != vx.dtype or ty.dtype != vy.dtype:
        raise UsageError(f"{where}: train and val samples differ in shape or dtype (inputs {list(tx.shape[1:])} "
                         f"{tx.dtype} vs {list(vx.shape[1:])} {vx.dtype}, targets {list(ty.shape[1:])} vs "
                         f"{list(vy.shape[1:])})")
    loss = loss_for_task(task)
    loss.check_targets(ty, where)
    if "num_outputs" in result:
        num_outputs = int(result["num_outputs"])
    elif task == "classification":
        if ty.dim() != 1:
            raise UsageError(f"{where}: classification targets are one class index per sample: shape [N], got "
                             f"{list(ty.shape)}")
        num_outputs = int(max(int(ty.max()), int(vy.max()))) + 1
    else:
        num_outputs = int(ty.shape[-1]) if ty.dim() > 1 else 1
    if task == "classification" and (int(min(ty.min(), vy.min())) < 0 or int(max(ty.max(), vy.max())) >= num_outputs):
        raise UsageError(f"{where}: class indices must lie in 0..{num_outputs - 1}")
    info = DatasetInfo(source.name, int(tx.shape[1]) if tx.dim() == 4 else 0, int(tx.shape[2]) if tx.dim() == 4 else 0,
                       num_outputs, (), (), source.origin, True)
    data = Dataset(info, tx, ty, vx, vy, task=task, num_outputs=num_outputs, images=False)
    data.sha256 = tensors_sha256([tx, ty, vx, vy], {"task": task, "num_outputs": num_outputs})
    return data


def tensors_sha256(tensors: list[Tensor], extra: dict[str, Any]) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (and `extra`): equal iff the data is the same."""
    digest = hashlib.sha256(repr(sorted(extra.items())).encode())
    for t in tensors:
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


# --- digits: offline, bundled with scikit-learn ---------------------------------------------------

DIGITS_VALIDATION = 360  # of 1797 images; the rest (1437) train
DIGITS_SPLIT_SEED = 0


@register_dataset(
    DatasetInfo(
        "digits", 1, 8, 10, (0.3055,), (0.3781,),
        "scikit-learn's 1797 handwritten 8x8 digits, offline (1437 train / 360 validation)", True,
    )
)
def _digits(root: Path) -> Arrays:
    raw, labels = digits_arrays()
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)[:, None]  # pixel values 0..16
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    val, train = order[:DIGITS_VALIDATION], order[DIGITS_VALIDATION:]
    return (
        torch.from_numpy(images[train]), torch.from_numpy(labels[train]),
        torch.from_numpy(images[val]), torch.from_numpy(labels[val]),
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (images [1797, 8, 8] with values 0..16, labels) as `load_digits` gives them.

    Read straight from the CSV file scikit-learn ships, because importing `sklearn.datasets` takes
    two seconds (every `landscape` command that needs the data would pay it); falls back to
    `load_digits` if the file is not where it used to be.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


# --- torchvision datasets: downloaded once ---------------------------------------------------------


def _torchvision(name: str, cls_name: str, where: Callable[[Path], str]) -> Loader:
    def load(root: Path) -> Arrays:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            root.mkdir(parents=True, exist_ok=True)
            # torchvision reports download progress on stdout, which belongs to --json output
            with contextlib.redirect_stdout(sys.stderr):
                train = cls(str(root), train=True, download=True)
                val = cls(str(root), train=False, download=True)
        except (OSError, RuntimeError, ValueError) as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(e).__name__
            raise DatasetUnavailableError(
                f"{name} is not in {root} and could not be downloaded ({reason}): "
                f"put {where(root)}, or pass --data-dir / set {DATA_ENV} to where it is"
            ) from e
        return (*_images_labels(train), *_images_labels(val))

    return load


def _images_labels(ds: object) -> tuple[Tensor, Tensor]:
    data = ds.data  # type: ignore[attr-defined]
    targets = ds.targets  # type: ignore[attr-defined]
    x = torch.as_tensor(np.asarray(data))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST [N,H,W]; CIFAR [N,H,W,C]
    return x.to(torch.uint8).contiguous(), torch.as_tensor(np.asarray(targets), dtype=torch.int64)


def _mnist_files(folder: str) -> Callable[[Path], str]:
    def where(root: Path) -> str:
        import torchvision.datasets as tvd

        cls = getattr(tvd, folder)
        names = ", ".join(name for name, _md5 in cls.resources)
        return f"{names} (from {cls.mirrors[0]}) into {root / folder / 'raw'}"

    return where


def _cifar_files(root: Path) -> str:
    from torchvision.datasets import CIFAR10

    return f"{CIFAR10.filename} (from {CIFAR10.url}) into {root}"


register_dataset(
    DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), "MNIST handwritten digits, 28x28 (torchvision)", False)
)(_torchvision("mnist", "MNIST", _mnist_files("MNIST")))
register_dataset(
    DatasetInfo(
        "fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), "Fashion-MNIST clothing, 28x28 (torchvision)", False
    )
)(_torchvision("fashion-mnist", "FashionMNIST", _mnist_files("FashionMNIST")))
register_dataset(
    DatasetInfo(
        "cifar-10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "CIFAR-10 colour images, 32x32 (torchvision)", False,
    )
)(_torchvision("cifar-10", "CIFAR10", _cifar_files))


def dataset_record(source: Source, data: Dataset) -> dict[str, Any]:
    """What run.json records of a dataset (a built-in's keys as the first release wrote them, and more)."""
    record: dict[str, Any] = {"name": source.ref, "channels": data.info.channels, "size": data.info.size,
                              "num_classes": data.num_outputs, "train_size": len(data.train_y),
                              "val_size": len(data.val_y), "task": data.task, "num_outputs": data.num_outputs,
                              "input_shape": list(data.input_shape)}
    if not source.builtin:
        record.update(sha256=data.sha256, source=source.to_json())
    return record
