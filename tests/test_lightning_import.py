"""`landscape import` of checkpoints written by the real `lightning` package: the epoch each file stores is used
when --epochs is absent, counted as this tool counts epochs (0 = the initial weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch


def _train(tmp_path: Path, every_n_train_steps: int | None = None) -> tuple[Path, dict[int, dict[str, torch.Tensor]]]:
    """Train the built-in mlp on digits for 2 epochs with Lightning's ModelCheckpoint; the weights after each
    epoch of training, as Lightning's own loop had them (the independent record the import is checked against)."""
    # imported here, not at collection: lightning takes seconds to import, in every worker that collects this file
    L = pytest.importorskip("lightning", reason="the lightning package (the test extra) is not installed")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from landscape_cli.data import load_dataset
    from landscape_cli.models import create_model

    data = load_dataset("digits")
    x = data.prepare(data.train_x[:256], torch.device("cpu"))
    y = data.train_y[:256]
    after: dict[int, dict[str, torch.Tensor]] = {}

    class Module(L.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = create_model("mlp", in_channels=1, num_classes=10, image_size=8)

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            inputs, targets = batch
            return nn.functional.cross_entropy(self.model(inputs), targets)

        def on_train_epoch_end(self) -> None:  # epochs of training done so far -> the weights
            after[self.current_epoch + 1] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    folder = tmp_path / "lightning"
    kwargs = {"every_n_train_steps": every_n_train_steps} if every_n_train_steps else {"every_n_epochs": 1}
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=-1, **kwargs)
    trainer = L.Trainer(max_epochs=2, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=64))
    return folder, after


def test_lightning_checkpoints_import_at_the_epochs_they_store(cli: Any, tmp_path: Path) -> None:
    folder, after = _train(tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]  # Lightning's own names: several numbers each
    done = cli("import", "mlp", "digits", str(folder), "--name", "lit", "--json")
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["imported"] == [1, 2]  # epoch=0 was saved after one epoch of training: this tool's epoch 1
    from landscape_cli.models.checkpoints import load_epoch
    from landscape_cli.store import Store

    st = Store()
    run = st.read_run(out["id"])
    for record in run.epochs:
        stored = load_epoch(st, run.id, record)["state_dict"]
        for key, value in after[record.epoch].items():
            assert torch.equal(stored[key], value), (record.epoch, key)


def test_a_lightning_checkpoint_saved_inside_an_epoch_needs_epochs(cli: Any, tmp_path: Path, store: Path) -> None:
    folder, _ = _train(tmp_path, every_n_train_steps=3)
    inside = [p for p in folder.iterdir() if p.name.startswith("epoch=0-step=3")]
    assert inside, sorted(p.name for p in folder.iterdir())
    done = cli("import", "mlp", "digits", str(inside[0]))
    assert done.exit_code == 2
    line = done.stderr.strip()
    assert "\n" not in line and "saved inside epoch 0" in line and "--epochs" in line
    assert not store.exists() or not any(store.iterdir())
    assert cli("import", "mlp", "digits", str(inside[0]), "--epochs", "1").exit_code == 0
