"""Training: checkpoints, metadata, resume, determinism."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import StoreFactory, checkpoint_hashes, killed_and_resumed_training

from landscape_cli import train
from landscape_cli._io import file_sha256
from landscape_cli.data import load_dataset
from landscape_cli.errors import IntegrityError, LockedError
from landscape_cli.models import create_model
from landscape_cli.models.checkpoints import state_hash
from landscape_cli.store.locks import FileLock


def _independent_eval(path: Path) -> tuple[float, float]:
    """Validation loss/accuracy of a checkpoint, computed without the library's training code."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(ckpt["model"], **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    data = load_dataset(ckpt["dataset"]["name"])
    x = data.val_x.float() / 255.0
    x = (x - torch.tensor(data.info.mean).view(1, -1, 1, 1)) / torch.tensor(data.info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, data.val_y).item(), (logits.argmax(1) == data.val_y).float().mean().item()


def test_train_writes_checkpoints_and_metadata(store: Path) -> None:
    result = train("cnn", "digits", epochs=2, store=store, progress=False, name="tiny")
    meta = json.loads((result.path / "run.json").read_text())
    assert meta["id"] == result.run_id == result.path.name and meta["name"] == "tiny"
    assert [e["epoch"] for e in meta["epochs"]] == [0, 1, 2]
    assert meta["epochs_requested"] == 2
    assert meta["model"] == {"name": "cnn", "parameters": meta["model"]["parameters"],
                             "args": {"in_channels": 1, "num_classes": 10, "image_size": 8, "activation": "relu"}}
    for record in meta["epochs"]:
        path = result.path / record["checkpoint"]
        assert file_sha256(path) == record["sha256"]
        assert state_hash(torch.load(path, weights_only=True)["state_dict"]) == record["weights_sha256"]
        ckpt = torch.load(path, weights_only=True)  # plain types only
        assert ckpt["epoch"] == record["epoch"] and ckpt["model"] == "cnn"
        assert ckpt["dataset"]["size"] == 8 and ckpt["config"]["seed"] == 0
        loss, acc = _independent_eval(path)
        assert loss == pytest.approx(record["val_loss"], rel=1e-4)
        assert acc == pytest.approx(record["val_accuracy"], abs=1e-6)  # float32 mean
    # only the last epoch's optimizer state is kept
    assert sorted(p.name for p in (result.path / "checkpoints").glob("*.optim.pt")) == ["epoch-0002.optim.pt"]
    assert not list(result.path.rglob("*.partial"))


def test_epoch_zero_is_untrained(store: Path) -> None:
    result = train("mlp", "digits", epochs=0, store=store, progress=False, seed=3)
    ckpt = torch.load(result.path / "checkpoints/epoch-0000.pt", weights_only=True)
    torch.manual_seed(3)
    fresh = create_model("mlp", 1, 10, 8)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in fresh.state_dict().items())


def test_same_command_again_trains_nothing(store: Path) -> None:
    first = train("cnn", "digits", epochs=1, store=store, progress=False)
    before = {p: p.stat().st_mtime_ns for p in first.path.rglob("*") if p.is_file() and p.name != ".lock"}
    again = train("cnn", "digits", epochs=1, store=store, progress=False)
    assert again.existed and again.run_id == first.run_id
    after = {p: p.stat().st_mtime_ns for p in first.path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert before == after


def test_the_id_ignores_epochs_device_store_and_name(tmp_path: Path) -> None:
    a = train("mlp", "digits", epochs=0, store=tmp_path / "a", progress=False, device="cpu", name="x")
    b = train("mlp", "digits", epochs=0, store=tmp_path / "b", progress=False, device="auto")
    c = train("mlp", "digits", epochs=0, store=tmp_path / "b", progress=False, lr=2e-3)
    assert a.run_id == b.run_id != c.run_id


def test_continuing_equals_training_in_one_go(tmp_path: Path) -> None:
    """More epochs continue a run; the weights are bitwise those of one uninterrupted call."""
    straight = train("cnn", "digits", epochs=3, store=tmp_path / "a", progress=False, batch_size=64)
    train("cnn", "digits", epochs=1, store=tmp_path / "b", progress=False, batch_size=64)
    resumed = train("cnn", "digits", epochs=3, store=tmp_path / "b", progress=False, batch_size=64)
    assert resumed.trained == [2, 3]
    assert [e.weights_sha256 for e in resumed.meta.epochs] == [
        e.weights_sha256 for e in straight.meta.epochs]


def test_sgd_with_momentum_trains(store: Path) -> None:
    result = train("mlp", "digits", epochs=3, store=store, progress=False, optimizer="sgd", lr=0.05, momentum=0.9)
    losses = [e.val_loss for e in result.meta.epochs]
    assert losses[-1] < losses[0] * 0.5


@pytest.mark.slow
def test_resnet_reaches_90_percent_on_digits(trained_store: StoreFactory) -> None:
    """The quick start's training (the session's master, trained from scratch by `train`) reaches 90 %."""
    store = trained_store("resnet", epochs=5)
    [run] = [json.loads(p.read_text()) for p in store.glob("*/run.json")]
    assert run["epochs"][-1]["val_accuracy"] >= 0.90


def test_damaged_checkpoint_is_refused_on_resume(store: Path) -> None:
    result = train("mlp", "digits", epochs=1, store=store, progress=False)
    ckpt = result.path / "checkpoints/epoch-0001.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checkpoint of epoch 1 was modified or damaged"):
        train("mlp", "digits", epochs=2, store=store, progress=False)


def test_missing_optimizer_state_is_a_clear_error(store: Path) -> None:
    result = train("mlp", "digits", epochs=1, store=store, progress=False)
    (result.path / "checkpoints/epoch-0001.optim.pt").unlink()
    with pytest.raises(IntegrityError, match="optimizer state of epoch 1 is missing"):
        train("mlp", "digits", epochs=2, store=store, progress=False)


def test_a_run_in_training_is_not_trained_twice(store: Path) -> None:
    result = train("mlp", "digits", epochs=0, store=store, progress=False)
    with FileLock(result.path / ".lock", "run"), pytest.raises(LockedError, match=f"process {os.getpid()}"):
        train("mlp", "digits", epochs=1, store=store, progress=False)


TRAIN_ARGS = ["train", "cnn", "digits", "--epochs", "4", "--batch-size", "8", "--quiet"]


@pytest.mark.slow
def test_killed_training_resumes_bitwise(trained_store: StoreFactory, tmp_path: Path) -> None:
    """SIGKILL in the middle of training, rerun: the same checkpoints as an uninterrupted run."""
    # the uninterrupted run of TRAIN_ARGS: in-process with one thread, trained once per session (read-only master)
    reference = trained_store("cnn", epochs=4, batch_size=8)
    assert killed_and_resumed_training(TRAIN_ARGS, tmp_path / "killed") == checkpoint_hashes(reference)
