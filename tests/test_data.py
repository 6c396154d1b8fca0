"""Datasets: digits for real, the torchvision datasets on files written here in their own formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape_cli.data import dataset_info, default_data_dir, list_datasets, load_dataset
from landscape_cli.errors import DatasetUnavailableError, UnknownNameError

USER_DATA_DIR = os.environ.get("LANDSCAPE_DATA")  # read before the fixtures isolate the tests
NETWORK_DATASETS = [d for d in list_datasets() if not dataset_info(d).offline]


def test_digits_is_real_and_split_the_same_way_every_time() -> None:
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.val_x.shape == (360, 1, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert a.train_x.dtype == torch.uint8 and int(a.train_x.max()) == 255
    # every image is one of sklearn's, scaled from 0..16 to 0..255, and train/val are disjoint
    raw = load_digits().images
    scaled = {np.rint(img * 255 / 16).astype(np.uint8).tobytes() for img in raw}
    train = {x.numpy().tobytes() for x in a.train_x[:, 0]}
    val = {x.numpy().tobytes() for x in a.val_x[:, 0]}
    assert train <= scaled and val <= scaled
    assert sorted(torch.bincount(torch.cat([a.train_y, a.val_y])).tolist()) == sorted(
        np.bincount(load_digits().target).tolist())


def test_digits_read_from_the_csv_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    from landscape_cli.data import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)


def test_normalize_standardizes_digits() -> None:
    d = load_dataset("digits")
    x = d.normalize(d.train_x)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_unknown_dataset() -> None:
    with pytest.raises(UnknownNameError, match="choose one of cifar-10, digits, fashion-mnist, mnist"):
        load_dataset("imagenet")


def test_data_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LANDSCAPE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "landscape" / "data"


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every download at a closed local port, so 'no network' is certain."""
    import torchvision.datasets as tvd

    for cls in (tvd.MNIST, tvd.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.mark.parametrize("name", NETWORK_DATASETS)
def test_missing_download_is_one_clear_error(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message
    assert name in message and str(tmp_path / "empty") in message and "--data-dir" in message
    assert ("train-images-idx3-ubyte.gz" in message) or ("cifar-10-python.tar.gz" in message)


def _idx(path: Path, array: np.ndarray) -> None:
    """Write an array in the MNIST idx format (big-endian header: magic, dimensions)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_format_files_load(name: str, folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    d = load_dataset(name, tmp_path)
    assert d.train_x.shape == (12, 1, 28, 28) and d.val_x.shape == (5, 1, 28, 28)
    assert np.array_equal(d.train_x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(d.val_y.numpy(), arrays["t10k"][1].astype(np.int64))


def test_cifar_format_files_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import torchvision.datasets as tvd

    _offline(monkeypatch)
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for batch in names:
        data = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        with open(folder / batch, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches[batch] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    # the files are ours, so their checksums are too
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[n, md5(n)] for n in names[:5]])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5("batches.meta")})
    d = load_dataset("cifar-10", tmp_path)
    assert d.train_x.shape == (20, 3, 32, 32) and d.val_x.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32)  # CIFAR stores planes R, G, B
    assert np.array_equal(d.train_x[0].numpy(), first)
    assert d.val_y.tolist() == batches["test_batch"][1]


@pytest.mark.parametrize("name", NETWORK_DATASETS)
def test_real_dataset_when_available(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads the real dataset from the user's cache (never downloading); skipped where it is absent."""
    _offline(monkeypatch)
    if USER_DATA_DIR:
        monkeypatch.setenv("LANDSCAPE_DATA", USER_DATA_DIR)
    else:
        monkeypatch.delenv("LANDSCAPE_DATA")
    try:
        d = load_dataset(name, default_data_dir())
    except DatasetUnavailableError as e:
        pytest.skip(f"offline: {e}")
    info = dataset_info(name)
    assert d.train_x.shape[1:] == (info.channels, info.size, info.size)
    assert len(d.train_x) >= 50_000 and len(d.val_x) == 10_000
