"""`landscape connect`: a curve trained between two checkpoints (Garipov et al. 2018), stored like every result.

Two small CNNs on digits (seeds 0 and 1) are trained once for the module; the curves between them are trained once
into a read-only master store. Every number the library computes is recomputed here by hand: a curve's points from
its stored files with the Bernstein polynomials and the chain written out, their loss with BatchNorm statistics
recomputed by a loop of its own.
"""

from __future__ import annotations

import json
import shutil
from math import comb
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import Cli, StoreFactory, Train, kill_after, run_in_process, tree

from landscape_cli.store import Store
from landscape_cli.store.meta import CurveMeta

RUN_OPTIONS = {"epochs": 3, "batch_size": 32, "lr": 0.01}
RUNS = (Train("cnn", seed=0, name="seed0", **RUN_OPTIONS), Train("cnn", seed=1, name="seed1", **RUN_OPTIONS))
CURVES = (*RUNS, Cli("connect", "seed0", "seed1", "--epochs", "3", "--name", "bez", "--quiet"),
          Cli("connect", "seed0:2", "seed1", "--shape", "polychain", "--bends", "2", "--epochs", "2", "--name", "poly",
              "--quiet"))


@pytest.fixture(scope="module")
def curves(trained_store: StoreFactory) -> Path:
    """The master store with both runs and two curves: bezier 1 bend (3 epochs), polychain 2 bends (from epoch 2)."""
    return trained_store.build(*CURVES)


def _curve(store: Path, name: str) -> CurveMeta:
    st = Store(store)
    return st.read_curve(*st.find_curve(name))


def _endpoint(store: Path, run_id: str, key: int) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict, read straight from the file run.json names."""
    st = Store(store)
    record = st.read_run(run_id).record(key)
    assert record is not None
    state: dict[str, torch.Tensor] = torch.load(st.file(run_id, record.checkpoint), weights_only=True)["state_dict"]
    return state


def _by_hand(store: Path, meta: CurveMeta, t: float, epoch: int | None = None) -> dict[str, torch.Tensor]:
    """φ(t) in float64 from the stored bends and endpoint checkpoints: Σ_k B_k(t)·P_k (Bernstein, degree n + 1) for
    a Bézier curve; for a chain, the segment t falls in (n + 1 of equal length in t), linearly."""
    from landscape_cli.models.checkpoints import load_bends

    cfg = meta.config
    record = meta.epochs[-1] if epoch is None else meta.epochs[epoch]
    bends = load_bends(Store(store).curve_path(meta.run, meta.id, record.file), record.sha256, "bends")
    a, b = _endpoint(store, cfg.run_a, cfg.epoch_a), _endpoint(store, cfg.run_b, cfg.epoch_b)
    points = [a, *bends, b]
    degree = len(points) - 1
    if cfg.shape == "bezier":
        weights = [comb(degree, k) * t ** k * (1 - t) ** (degree - k) for k in range(degree + 1)]
    else:
        segment = min(int(t * degree), degree - 1)
        s = t * degree - segment
        weights = [0.0] * (degree + 1)
        weights[segment], weights[segment + 1] = 1 - s, s
    return {name: sum(w * p[name].double() for w, p in zip(weights, points, strict=True))
            for name in bends[0]}


@pytest.mark.parametrize("name", ["bez", "poly"])
def test_a_point_of_a_stored_curve_is_the_formula_of_its_files(curves: Path, name: str) -> None:
    from landscape_cli.connecting import curve_model

    meta = _curve(curves, name)
    assert len(meta.epochs) == meta.epochs_done + 1 and meta.config.bends == (1 if name == "bez" else 2)
    for t in (0.0, 0.2, 0.5, 0.7, 1.0):
        expected = _by_hand(curves, meta, t)
        got = dict(curve_model(curves, meta, t).named_parameters())
        assert set(got) == set(expected)
        for k, v in expected.items():
            assert torch.allclose(got[k].double(), v, atol=1e-6, rtol=0), (name, t, k)
    # the ends are the checkpoints, bit for bit
    a = _endpoint(curves, meta.config.run_a, meta.config.epoch_a)
    b = _endpoint(curves, meta.config.run_b, meta.config.epoch_b)
    for t, end in ((0.0, a), (1.0, b)):
        for k, p in curve_model(curves, meta, t).named_parameters():
            assert torch.equal(p, end[k]), (t, k)


def _loss_by_hand(store: Path, meta: CurveMeta, t: float, epoch: int | None = None) -> float:
    """The train split's mean cross-entropy at φ(t): BatchNorm statistics reset, then a cumulative average over one
    pass in train mode (pieces of the curve's batch size, in order, no grad), then evaluated in eval mode."""
    from landscape_cli import load_dataset
    from landscape_cli.models.checkpoints import build_model

    cfg = meta.config
    record = Store(store).read_run(cfg.run_a).record(cfg.epoch_a)
    assert record is not None
    model = build_model(torch.load(Store(store).file(cfg.run_a, record.checkpoint), weights_only=True))
    weights = _by_hand(store, meta, t, epoch)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(weights[k].float())
    data = load_dataset("digits")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms, "the test model has BatchNorm"
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    x, y = data.train_x, data.train_y
    with torch.no_grad():
        for i in range(0, len(y), cfg.batch_size):
            model(data.prepare(x[i:i + cfg.batch_size], torch.device("cpu")))
        model.eval()
        total = sum(F.cross_entropy(model(data.prepare(x[i:i + 100], torch.device("cpu"))), y[i:i + 100],
                                    reduction="sum").item() for i in range(0, len(y), 100))
    return total / len(y)


def test_the_loss_at_a_point_recomputes_batchnorm_on_the_train_split(curves: Path) -> None:
    from landscape_cli.connecting import curve_loss

    meta = _curve(curves, "bez")
    for t in (0.0, 0.5):
        loss, accuracy = curve_loss(curves, meta, t, device="cpu")
        assert loss == pytest.approx(_loss_by_hand(curves, meta, t), abs=1e-5)
        assert accuracy is not None and 0 <= accuracy <= 1


def test_training_lowers_the_loss_along_the_curve_below_the_straight_line(curves: Path) -> None:
    from landscape_cli.connecting import curve_loss

    meta = _curve(curves, "bez")
    # epoch 0 is the straight line (1 − t)·w_A + t·w_B
    a = _endpoint(curves, meta.config.run_a, meta.config.epoch_a)
    b = _endpoint(curves, meta.config.run_b, meta.config.epoch_b)
    for k, v in _by_hand(curves, meta, 0.3, epoch=0).items():
        assert torch.allclose(v, 0.7 * a[k].double() + 0.3 * b[k].double(), atol=1e-6), k
    inner = (0.25, 0.5, 0.75)
    line = [curve_loss(curves, meta, t, epoch=0, device="cpu")[0] for t in inner]
    curve = [curve_loss(curves, meta, t, device="cpu")[0] for t in inner]
    assert sum(curve) / 3 < sum(line) / 3, (line, curve)
    assert meta.epochs[-1].train_loss < meta.epochs[0].train_loss  # the training's own mean along the curve fell


def _bends_hashes(store: Path) -> list[str]:
    """Each epoch's bends hash of the store's one curve, each recomputed from its file."""
    from landscape_cli.models.checkpoints import bends_hash, load_bends

    st = Store(store)
    [run_id] = [r for r in st.run_ids() if st.curve_ids(r)]
    [curve_id] = st.curve_ids(run_id)
    meta = st.read_curve(run_id, curve_id)
    out = []
    for e in meta.epochs:
        computed = bends_hash(load_bends(st.curve_path(run_id, curve_id, e.file), e.sha256, "bends"))
        assert computed == e.weights_sha256
        out.append(computed)
    return out


def test_a_killed_connect_resumes_bitwise(trained_store: StoreFactory, tmp_path: Path) -> None:
    """SIGKILL somewhere after epoch 1's bends are written, the same command again: every epoch's bends are
    bitwise those of an uninterrupted training."""
    args = ["connect", "seed0", "seed1", "--epochs", "6", "--batch-size", "8", "--quiet"]
    reference = trained_store.copy(*RUNS, to=tmp_path / "reference")
    done = run_in_process(*args, "--store", str(reference))
    assert done.returncode == 0, done.stderr
    expected = _bends_hashes(reference)
    assert len(expected) == 7

    store = trained_store.copy(*RUNS, to=tmp_path / "killed")
    kill_after(args, store, "*/curves/*/epoch-0001.pt", (0.05, 0.3))  # somewhere inside a later epoch
    [curve_file] = store.glob("*/curves/*/curve.json")
    assert 1 <= len(json.loads(curve_file.read_text())["epochs"]) < 7, "the kill should land mid-training"
    resumed = run_in_process(*args, "--store", str(store))
    assert resumed.returncode == 0, resumed.stderr
    assert not list(store.rglob("*.partial"))
    assert _bends_hashes(store) == expected
    assert len(list(curve_file.parent.glob("*.optim.pt"))) == 1  # only the last epoch's optimizer state is kept


def test_bad_input_is_one_line_and_writes_nothing(trained_store: StoreFactory, tmp_path: Path) -> None:
    store = trained_store.copy(*RUNS, Train("mlp", epochs=0, name="mlp"), to=tmp_path / "store")
    st = Store(store)
    seed0 = st.resolve("seed0")
    last = st.read_run(seed0).epochs[-1]
    imported = run_in_process("import", "cnn", "digits", str(st.file(seed0, last.checkpoint)), "--epochs", "3",
                              "--name", "imported", "--store", str(store), "--quiet")
    assert imported.returncode == 0, imported.stderr
    cases = {
        ("seed0", "seed0:3"): "same checkpoint",
        ("seed0", "mlp"): "same architecture",
        ("seed0", "seed1", "--bends", "0"): "--bends",
        ("seed0:99", "seed1"): "no checkpoint for epoch 99",
        ("imported", "seed1", "--optimizer", "sgd", "--batch-size", "32"): "--lr",
    }
    before = tree(store)
    for args, words in cases.items():
        result = run_in_process("connect", *args, "--store", str(store), "--quiet")
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
        assert words in lines[0], (args, lines[0])
        assert tree(store) == before, args
    # an imported run without any settings: all three named at once
    result = run_in_process("connect", "imported", "seed1", "--store", str(store))
    assert "give --optimizer, --lr, --batch-size" in result.stderr and tree(store) == before


def test_a_new_curve_stopped_before_its_first_epoch_leaves_no_trace(trained_store: StoreFactory, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from landscape_cli import connect, connecting

    store = trained_store.copy(*RUNS, to=tmp_path / "store")
    before = tree(store)

    def stopped(*args: Any, **kwargs: Any) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(connecting, "_epoch", stopped)
    with pytest.raises(KeyboardInterrupt):
        connect("seed0", "seed1", epochs=1, store=store, progress=False)
    assert tree(store) == before and not list(store.glob("*/curves"))


def test_ls_lists_the_curve_under_both_runs_and_verify_checks_its_files(curves: Path, tmp_path: Path) -> None:
    st = Store(curves)
    a, b = st.resolve("seed0"), st.resolve("seed1")
    bez = _curve(curves, "bez")
    text = run_in_process("ls", "--store", str(curves))
    assert text.returncode == 0, text.stderr
    rows = [line for line in text.stdout.splitlines() if bez.id in line]
    assert len(rows) == 2 and all("curve bezier 1 bend" in r and "3/3" in r and "complete" in r for r in rows)
    assert sorted(f"-> {b}:3" in r for r in rows) == [False, True] and any(f"<- {a}:3" in r for r in rows)
    listing = json.loads(run_in_process("ls", "--json", "--store", str(curves)).stdout)
    by_run = {r["id"]: {c["id"]: c for c in r["curves"]} for r in listing["runs"]}
    assert by_run[a][bez.id]["role"] == "from" and by_run[b][bez.id]["role"] == "to"
    assert by_run[a][bez.id]["epochs_done"] == 3 and by_run[a][bez.id]["status"] == "complete"
    assert len(by_run[a]) == len(by_run[b]) == 2

    store = tmp_path / "damaged"
    shutil.copytree(curves, store)
    assert run_in_process("verify", "--store", str(store)).returncode == 0
    damaged = Store(store).curve_path(a, bez.id, bez.epochs[1].file)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    report = run_in_process("verify", "--json", "--store", str(store))
    assert report.returncode != 0
    problems = json.loads(report.stdout)["problems"]
    assert [p["path"] for p in problems] == [str(damaged)]
    assert "bends of epoch 1" in problems[0]["problem"] and "landscape connect" in problems[0]["fix"]
