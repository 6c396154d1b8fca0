"""Step checkpoints (`train --checkpoint-every N`) and their retention (`--keep`).

One small cnn on digits (64 per batch: 23 optimizer steps per epoch), trained once per module with and without
step checkpoints: the step run's epoch ends are bitwise the epoch-only run's epochs, its step checkpoints are
the weights of a training loop written out here, a SIGKILL within an epoch loses nothing, and the retention
policy removes only what it may.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import checkpoint_hashes, kill_after, one_thread, run_in_process

TRAIN = ["cnn", "digits", "--epochs", "2", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05",
         "--momentum", "0.9"]
KW: dict[str, Any] = {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                      "progress": False}
STEPS = 23  # ceil(1437 / 64): the digits train split


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An epoch-only run and the same run with a checkpoint every 10 steps, each in its own store."""
    from landscape_cli.training import train

    out = {}
    with one_thread():
        for label, every in (("epochs", None), ("steps", 10)):
            root = tmp_path_factory.mktemp(label)
            out[label] = (root, train("cnn", "digits", checkpoint_every=every, store=root, **KW))
    return out


def test_epoch_only_runs_keep_their_id_and_records(runs: dict[str, Any]) -> None:
    """No step field anywhere in an epoch-only run: its id and run.json are as earlier releases wrote them."""
    from landscape_cli.config import TrainConfig

    root, result = runs["epochs"]
    assert result.run_id == TrainConfig("cnn", "digits", batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9).run_id
    text = (root / result.run_id / "run.json").read_text()
    assert '"step"' not in text and "checkpoint_every" not in text and "epoch_end" not in text
    assert [r.checkpoint for r in result.meta.epochs] == [f"checkpoints/epoch-{e:04d}.pt" for e in range(3)]


def test_step_checkpoints_are_keyed_by_step_and_the_epoch_ends_equal_the_epoch_only_run(runs: dict[str, Any]) -> None:
    _, plain = runs["epochs"]
    _, stepped = runs["steps"]
    assert stepped.run_id != plain.run_id  # --checkpoint-every is part of the identity
    meta = stepped.meta
    steps = [r.step for r in meta.epochs]
    assert steps == [0, 10, 20, 23, 30, 40, 46]
    assert [r.epoch for r in meta.epochs] == [0, 0, 0, 1, 1, 1, 2]
    assert [r.epoch_end for r in meta.epochs] == [True, False, False, True, False, False, True]
    assert meta.select([1, 2]) == [23, 46] and meta.select(None, [10, 40]) == [10, 40]
    ends = {r.epoch: r for r in meta.epochs if r.epoch_end}
    for r in plain.meta.epochs:
        assert ends[r.epoch].weights_sha256 == r.weights_sha256, f"epoch {r.epoch}"
        assert ends[r.epoch].train_loss == r.train_loss and ends[r.epoch].val_loss == r.val_loss
    within = [r for r in meta.epochs if r.epoch_end is False]
    assert all(r.val_loss is None and r.train_loss > 0 for r in within)


def test_a_step_checkpoint_holds_the_weights_of_a_plain_training_loop(runs: dict[str, Any]) -> None:
    """Step 30 (7 steps into epoch 2), recomputed by a loop written here from the initial weights."""
    from landscape_cli.data import load_dataset
    from landscape_cli.models.checkpoints import build_model, load_epoch
    from landscape_cli.store import Store
    from landscape_cli.training import epoch_generator

    root, result = runs["steps"]
    st = Store(root)
    meta = result.meta
    net = build_model(load_epoch(st, meta.id, meta.record(0)))
    data = load_dataset("digits")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    net.train()
    with one_thread():
        for epoch, batches in ((1, STEPS), (2, 7)):
            order = torch.randperm(len(data.train_y), generator=epoch_generator(0, epoch))
            for b in range(batches):
                idx = order[b * 64:(b + 1) * 64]
                x = (data.train_x[idx].float() / 255.0 - mean) / std  # the digits' standardization
                loss = torch.nn.functional.cross_entropy(net(x), data.train_y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    stored = load_epoch(st, meta.id, meta.record(30))["state_dict"]
    for name, value in net.state_dict().items():
        assert torch.equal(stored[name], value), name  # bitwise: the same operations in the same order


@pytest.mark.slow
def test_a_kill_within_an_epoch_resumes_bitwise(runs: dict[str, Any], tmp_path: Path) -> None:
    """SIGKILL after a step checkpoint of epoch 2 and before its end; the rerun continues from that step (its
    optimizer state, running means and place in the data order) and every checkpoint equals the uninterrupted run's."""
    _, uninterrupted = runs["steps"]
    store = tmp_path / "killed"
    args = [*TRAIN, "--checkpoint-every", "10"]
    def recorded_step_30(root: Path) -> bool:  # run.json names the checkpoint (the file alone is not yet resumable)
        return any('"step": 30' in p.read_text() for p in root.glob("*/run.json"))

    kill_after(["train", *args, "-q"], store, recorded_step_30, (0.0, 0.02), seed=1)
    from landscape_cli.store import Store

    [run] = Store(store).runs()
    assert run.epochs[-1].epoch_end is False or run.epochs[-1].step == 40, "the kill should land within epoch 2"
    resumed = run_in_process("train", *args, "--store", str(store), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(store.rglob("*.partial"))
    assert checkpoint_hashes(store) == [r.weights_sha256 for r in uninterrupted.meta.epochs]
    [run] = Store(store).runs()
    assert [r.train_loss for r in run.epochs] == [r.train_loss for r in uninterrupted.meta.epochs]
    assert len(list((store / run.id / "checkpoints").glob("*.optim.pt"))) == 1  # only the last one is kept


def test_at_steps_on_an_epoch_only_run_and_a_missing_step_are_one_line(runs: dict[str, Any]) -> None:
    root, plain = runs["epochs"]
    out = run_in_process("hessian", plain.run_id, "--store", str(root), "--at-steps", "10")
    assert out.returncode != 0 and "keeps one checkpoint per epoch" in out.stderr, out.stderr
    root, stepped = runs["steps"]
    out = run_in_process("hessian", stepped.run_id, "--store", str(root), "--at-steps", "11")
    assert out.returncode != 0 and "no checkpoint at step 11" in out.stderr and "0,10,20,23" in out.stderr


def test_retention_removes_only_what_nothing_refers_to(tmp_path: Path) -> None:
    """Train 1 epoch with step checkpoints, grid one of them, then continue with --keep last=1: every checkpoint
    goes except the newest, epoch... the one the grid uses; records stay (keys never change), files go, and
    asking for a removed checkpoint is one line."""
    store = tmp_path / "store"
    base = ["cnn", "digits", "--batch-size", "64", "--checkpoint-every", "5", "--store", str(store), "-q"]
    assert run_in_process("train", *base, "--epochs", "1").returncode == 0
    from landscape_cli.store import Store

    [run] = Store(store).runs()
    grid = run_in_process("grid", run.id, "--store", str(store), "--at-steps", "10", "--width", "3", "--pairs", "1",
                          "--batches", "1", "--batch-size", "32", "-q")
    assert grid.returncode == 0, grid.stderr
    out = run_in_process("train", *base, "--epochs", "2", "--keep", "last=1,epochs", "--json")
    assert out.returncode == 0, out.stderr
    [run] = Store(store).runs()
    assert run.retention == {"last": 1, "epochs": True}
    assert json.loads((store / run.id / "run.json").read_text())["retention"] == {"last": 1, "epochs": True}
    kept = [r.step for r in run.epochs if not r.removed]
    assert kept == [0, 10, 23, 46], kept  # epoch ends, the grid's checkpoint, the newest
    files = sorted(p.name for p in (store / run.id / "checkpoints").glob("step-*.pt") if ".optim" not in p.name)
    assert files == [f"step-{s:09d}.pt" for s in kept]
    assert [r.step for r in run.epochs] == [0, 5, 10, 15, 20, 23, 25, 30, 35, 40, 45, 46]
    refused = run_in_process("grid", run.id, "--store", str(store), "--at-steps", "15", "--width", "3", "--pairs", "1",
                             "--batches", "1", "-q")
    assert refused.returncode != 0
    assert "removed by the run's retention policy (--keep last=1,epochs)" in refused.stderr, refused.stderr
    verify = run_in_process("verify", "--store", str(store))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_keep_every_counts_in_the_runs_cadence(tmp_path: Path) -> None:
    """every=4 with a checkpoint every 5 steps keeps the steps that are multiples of 20 (plus the epoch ends and
    the newest): the README's example, whose grid then finds steps 20, 40 and 60."""
    store = tmp_path / "store"
    out = run_in_process("train", "cnn", "digits", "--epochs", "3", "--batch-size", "64", "--checkpoint-every", "5",
                         "--keep", "every=4,epochs", "--store", str(store), "-q")
    assert out.returncode == 0, out.stderr
    from landscape_cli.store import Store

    [run] = Store(store).runs()
    assert [r.step for r in run.epochs if not r.removed] == [0, 20, 23, 40, 46, 60, 69]
    assert run.select(None, [20, 40, 60]) == [20, 40, 60]


@pytest.mark.slow
def test_a_pca_plane_over_hundreds_of_step_checkpoints_is_numpys(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """208 checkpoints (every step of 9 epochs of an mlp), memory-mapped and reduced chunk by chunk (5000 values of
    every checkpoint at a time): the components and the path are those of numpy's SVD of the whole trajectory."""
    import numpy as np

    import landscape_cli
    from landscape_cli.directions import pca as pca_module
    from landscape_cli.store import Store
    from landscape_cli.training import train

    with one_thread():
        run = train("mlp", "digits", epochs=9, batch_size=64, checkpoint_every=1, store=tmp_path, progress=False)
    keys = run.meta.epoch_numbers
    assert len(keys) == 208 and keys[:3] == [0, 1, 2] and keys[-1] == 207
    monkeypatch.setattr(pca_module, "CHUNK_VALUES", 5000)  # a bound on what is held at once: many chunks per tensor
    with one_thread():
        g = landscape_cli.grid(run.run_id, directions="pca", width=3, batches=1, batch_size=64, store=Store(tmp_path),
                               progress=False)
    ds = g.to_xarray()
    st = Store(tmp_path)
    states = [torch.load(st.file(run.run_id, run.meta.record(k).checkpoint), weights_only=True)["state_dict"]
              for k in keys]
    names = [n for n in states[0] if states[0][n].dim() > 1]  # the weights a grid moves (no biases)
    flat = np.stack([np.concatenate([s[n].double().reshape(-1).numpy() for n in names]) for s in states])
    d = flat - flat[-1]
    _, sv, vt = np.linalg.svd(d - d.mean(axis=0), full_matrices=False)
    raw = torch.load(g.path.parent.parent / g.meta.directions[0].file, weights_only=True)
    for j, key in enumerate(("d1", "d2")):
        mine = np.concatenate([raw[key][n].double().reshape(-1).numpy() for n in names])
        assert abs(abs(float(mine @ vt[j])) - 1) < 1e-6, key  # the same component (up to its sign rule)
        coords = d @ (vt[j] * np.sign(mine @ vt[j]))
        assert np.allclose(ds[("path_x", "path_y")[j]].values, coords, atol=1e-6)
    assert np.allclose(ds.attrs["explained_variance_ratio"], sv[:2] ** 2 / (sv ** 2).sum(), rtol=1e-8)
    assert list(ds.step.values) == [207]
