"""The built-in datasets: `digits` (scikit-learn's bundled 8x8 handwritten digits) works offline; the
torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10) are downloaded once into the data directory and
fail with one clear line when that is impossible."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from landscape_cli.data._registry import DATA_ENV, Arrays, DatasetInfo, Loader, register_dataset
from landscape_cli.errors import DatasetUnavailableError

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
