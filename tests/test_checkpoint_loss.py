"""The train loss at the checkpoint: each trained epoch records the train split evaluated at its checkpoint in
eval mode beside the running mean over its mini-batches; titles print the former and label the latter; the extra
pass leaves continued training bitwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import StoreFactory, one_thread

from landscape_cli.store import Store
from landscape_cli.store.meta import EpochRecord

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())


def _independent(store: Path, run_id: str, record: EpochRecord) -> tuple[float, float]:
    """Mean cross-entropy (float64) and accuracy of the checkpoint over the whole train split in one pass, eval mode."""
    import torch

    from landscape_cli.data import load_dataset
    from landscape_cli.models.checkpoints import build_model

    st = Store(store)
    model = build_model(torch.load(st.file(run_id, record.checkpoint), weights_only=True)).eval()
    data = load_dataset("digits")
    with torch.no_grad():
        out = model(data.normalize(data.train_x)).double()
    y = data.train_y
    return float(torch.nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def test_each_epoch_records_the_train_loss_at_its_checkpoint(trained_store: StoreFactory) -> None:
    store = trained_store("cnn", epochs=2)  # a BatchNorm model: eval mode (running statistics) matters
    [run] = Store(store).runs()
    raw = json.loads(Store(store).run_file(run.id).read_text())
    for rec, stored in zip(run.epochs, raw["epochs"], strict=True):
        assert "checkpoint_train_loss" in stored and "checkpoint_train_accuracy" in stored
        loss, accuracy = _independent(store, run.id, rec)
        assert rec.checkpoint_train_loss == pytest.approx(loss, rel=1e-5)
        assert rec.checkpoint_train_accuracy == pytest.approx(accuracy, abs=1e-12)
        assert rec.train_at_checkpoint() == (rec.checkpoint_train_loss, rec.checkpoint_train_accuracy)
    epoch0, *trained = run.epochs
    assert epoch0.checkpoint_train_loss == epoch0.train_loss  # epoch 0 is evaluated, not trained
    for rec in trained:  # the running mean over the epoch's mini-batches is another number
        assert rec.train_loss != pytest.approx(rec.checkpoint_train_loss, rel=1e-3)


def test_continuing_a_run_stays_bitwise(trained_store: StoreFactory, tmp_path: Path) -> None:
    from landscape_cli import train

    straight = Store(trained_store("cnn", epochs=2)).runs()[0]
    with one_thread():  # (as the master was trained)
        train("cnn", "digits", epochs=1, store=tmp_path / "b", progress=False)
        resumed = train("cnn", "digits", epochs=2, store=tmp_path / "b", progress=False)
    assert resumed.trained == [2]
    fields = ("weights_sha256", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "checkpoint_train_loss",
              "checkpoint_train_accuracy")
    assert [[getattr(e, f) for f in fields] for e in resumed.meta.epochs] == \
        [[getattr(e, f) for f in fields] for e in straight.epochs]


def test_an_old_record_without_it_reads_and_is_labelled_a_running_mean(tmp_path: Path) -> None:
    from landscape_cli.views.readers import select_sources, train_text

    shutil.copytree(LEGACY2 / "store", tmp_path / "store")
    st = Store(tmp_path / "store")
    [line] = select_sources(st, ["legacy2"], ["line"])  # epochs 0 and 3 of a run trained before
    rec3 = line.run.record(3)
    assert rec3 is not None and rec3.checkpoint_train_loss is None and rec3.train_at_checkpoint() is None
    assert "checkpoint_train_loss" not in rec3.to_json()  # written back as it was
    assert train_text(line, 3) == (f"train loss (running mean over epoch 3) {rec3.train_loss:.3g}, "
                                   f"acc {100 * rec3.train_accuracy:.1f}%")
    rec0 = line.run.record(0)
    assert rec0 is not None and train_text(line, 0).startswith(f"train loss {rec0.train_loss:.3g}, acc ")
    # an imported run's train loss was evaluated at each checkpoint
    [imported] = select_sources(st, ["imported"], [])
    rec = imported.run.record(3)
    assert rec is not None and train_text(imported, 3).startswith(f"train loss {rec.train_loss:.3g}, acc ")


def test_titles_print_the_loss_at_the_checkpoint(trained_store: StoreFactory, tmp_path: Path) -> None:
    from conftest import Grid, Train

    import landscape_cli

    store = trained_store.copy(Train("cnn", epochs=2, name="c"),
                               Grid("c", epochs=[2], width=3, pairs=1, batches=1, batch_size=64, name="g"),
                               to=tmp_path / "store")
    [run] = Store(store).runs()
    rec = run.record(2)
    assert rec is not None and rec.checkpoint_train_loss is not None
    title = " ".join(landscape_cli.plot(["c"], grids=["g"], epochs=[2], store=store, out=tmp_path / "a.png")
                     .figure._suptitle.get_text().split())
    want = f"train loss {rec.checkpoint_train_loss:.3g}, acc {100 * rec.checkpoint_train_accuracy:.1f}%"
    assert want in title and "running mean" not in title
    assert np.isfinite(rec.train_loss) and f"{rec.train_loss:.3g}" != f"{rec.checkpoint_train_loss:.3g}"
