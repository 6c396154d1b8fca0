"""The Lightning and Hugging Face callbacks record a real `Trainer` as a run that `landscape grid` grids later.

Each test trains a tiny model with the framework's own Trainer on the CPU (digits-like images for Lightning, a
repeated sentence's characters for a 1-layer GPT-2), then grids the run with the CLI from a fresh store handle.
A framework that is not installed is one line naming the extra (simulated by hiding it from `sys.modules`).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import checkpoint_hashes, one_thread, run_in_process

import landscape_cli
from landscape_cli.errors import UsageError
from landscape_cli.store import Store

LIT_MODULE = '''
"""A LightningModule whose class, with the hyper-parameters it saves, is the run's model factory."""
import lightning.pytorch as pl
import torch
from torch import nn


class DigitsNet(pl.LightningModule):
    def __init__(self, hidden, lr=0.1, num_outputs=10):
        super().__init__()
        self.save_hyperparameters()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def make_net(input_shape, num_outputs):  # the same network as a plain factory (for `landscape import`)
    return DigitsNet(hidden=12, num_outputs=num_outputs)


def digits_like():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, 8, 8, generator=g)
    y = (x.flatten(1)[:, :10].argmax(1))  # a class a small net can learn
    return {"train": (x[:320], y[:320]), "val": (x[320:], y[320:]), "task": "classification"}
'''

GPT_DATA = '''
"""A repeated sentence's characters: windows of 8 tokens and the next character at each position."""
import torch

TEXT = "the cat sat on the mat and the dog ran to the park. " * 12
VOCAB = sorted(set(TEXT))
BLOCK = 8


def windows():
    ids = torch.tensor([VOCAB.index(c) for c in TEXT])
    n = (len(ids) - 1) // BLOCK
    return ids[:n * BLOCK].view(n, BLOCK), ids[1:n * BLOCK + 1].view(n, BLOCK)


def make_data():
    x, y = windows()
    return {"train": (x[:64], y[:64]), "val": (x[64:], y[64:]), "task": "classification", "num_outputs": 32}
'''


def test_a_lightning_fit_records_a_run_the_cli_grids(tmp_path: Path, store: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from landscape_cli.integrations.lightning import LandscapeCallback

    (tmp_path / "recorded_lit.py").write_text(LIT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("recorded_lit")
    x, y = mod.digits_like()["train"]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)  # 5 batches an epoch
    callback = LandscapeCallback(data="recorded_lit:digits_like", every_steps=3, store=store, verbose=False)
    trainer = pl.Trainer(callbacks=[callback], max_epochs=2, enable_checkpointing=False, logger=False,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    model = mod.DigitsNet(hidden=12)
    with one_thread():
        trainer.fit(model, loader)
    rec = callback.recorder
    assert rec is not None and rec.closed and rec.status == "new"
    meta = Store(store).read_run(rec.run_id)
    assert meta.model["name"] == "recorded_lit:DigitsNet"  # the class itself is the factory, with its hparams
    assert meta.model["args"]["hparams"] == {"hidden": 12, "lr": 0.1, "num_outputs": 10}
    assert [r.key for r in meta.epochs] == [0, 3, 5, 6, 9, 10]
    assert [r.epoch_end for r in meta.epochs] == [True, False, True, False, False, True]
    assert all(math.isfinite(r.train_loss) for r in meta.epochs) and meta.epochs[-1].lr == 0.1
    final = torch.load(Store(store).file(rec.run_id, meta.epochs[-1].checkpoint), weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())  # the weights the fit ended with
    checkpoint_hashes(store)
    done = run_in_process("grid", rec.run_id, "--at-steps", "0,10", "--width", "3", "--pairs", "1", "--batches", "1",
                          "--batch-size", "64", "--store", str(store), "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["run"] == rec.run_id and made["steps"] == [0, 10] and made["rows_done"] == made["rows_total"] == 6
    # the same weights imported (as files a Lightning run saved elsewhere): the same grid, value for value
    files = []
    for key in (0, 10):
        record = meta.record(key)
        assert record is not None
        files.append(tmp_path / f"weights-{key}.pt")
        torch.save(torch.load(Store(store).file(rec.run_id, record.checkpoint), weights_only=True)["state_dict"],
                   files[-1])
    imported = run_in_process("import", "recorded_lit:make_net", "recorded_lit:digits_like", *map(str, files),
                              "--epochs", "0,2", "--name", "imported", "--store", str(store), "--quiet")
    assert imported.returncode == 0, imported.stderr
    options: dict[str, Any] = {"width": 3, "pairs": 1, "batches": 1, "batch_size": 64, "progress": False}
    ours = landscape_cli.grid(rec.run_id, at_steps=[0, 10], store=Store(store), **options).to_xarray()
    theirs = landscape_cli.grid("imported", epochs=[0, 2], store=Store(store), **options).to_xarray()
    for name in ("loss", "accuracy", "center_loss"):
        assert np.array_equal(ours[name].values, theirs[name].values), name


@pytest.mark.slow
def test_a_callback_logs_the_landscape_every_n_epochs_into_the_users_writer(tmp_path: Path, store: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """landscape_every=2 on a 3-epoch fit: one landscape image, at the step of epoch 2's end; no writer: one line."""
    pl = pytest.importorskip("lightning.pytorch")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from landscape_cli.integrations.lightning import LandscapeCallback

    with pytest.raises(UsageError, match="give writer=SummaryWriter"):
        LandscapeCallback(data="recorded_lit:digits_like", landscape_every=1)
    (tmp_path / "recorded_lit2.py").write_text(LIT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("recorded_lit2")
    x, y = mod.digits_like()["train"]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)  # 5 batches an epoch
    writer = SummaryWriter(str(tmp_path / "tb"))
    callback = LandscapeCallback(data="recorded_lit2:digits_like", store=store, verbose=False, writer=writer,
                                 landscape_every=2, landscape={"width": 3, "batch_size": 64})
    trainer = pl.Trainer(callbacks=[callback], max_epochs=3, enable_checkpointing=False, logger=False,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    with one_thread():
        trainer.fit(mod.DigitsNet(hidden=8), loader)
    writer.close()
    [event_file] = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0})
    events.Reload()
    [tag] = events.Tags()["images"]
    assert [image.step for image in events.Images(tag)] == [10]


def test_a_lightning_module_holding_more_than_its_network_records_the_network(tmp_path: Path, store: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from landscape_cli.integrations.lightning import LandscapeCallback

    (tmp_path / "nets.py").write_text("from torch import nn\n\ndef make_net(input_shape, num_outputs):\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_outputs))\n")
    (tmp_path / "data.py").write_text(LIT_MODULE)
    namespace: dict[str, Any] = {}
    exec(compile((tmp_path / "nets.py").read_text(), "nets.py", "exec"), namespace)

    class Weighted(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = namespace["make_net"]((1, 8, 8), 10)
            self.criterion = torch.nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 10))  # a buffer of its own

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.criterion(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=0.01)

    with pytest.raises(UsageError, match="unexpected option 'every'"):
        LandscapeCallback(data=f"{tmp_path / 'data.py'}:digits_like", every=2)
    x, y = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
    callback = LandscapeCallback(data=f"{tmp_path / 'data.py'}:digits_like", model_factory=f"{tmp_path}/nets.py:make_net",
                                 module="net", every_steps=2, store=store, verbose=False)
    trainer = pl.Trainer(callbacks=[callback], max_epochs=1, enable_checkpointing=False, logger=False,
                         accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    model = Weighted()
    with one_thread():
        trainer.fit(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32))
    rec = callback.recorder
    assert rec is not None
    meta = Store(store).read_run(rec.run_id)
    assert [r.key for r in meta.epochs] == [0, 2, 4] and meta.config.optimizer == "adam"
    final = torch.load(Store(store).file(rec.run_id, meta.epochs[-1].checkpoint), weights_only=True)["state_dict"]
    assert sorted(final) == ["1.bias", "1.weight"] and torch.equal(final["1.weight"], model.net[1].weight)
    g = landscape_cli.grid(rec.run_id, epochs=[1], width=3, pairs=1, batches=1, batch_size=64, store=Store(store),
                           progress=False)
    assert g.complete


def test_a_lightning_module_later_commands_cannot_build_asks_for_a_factory(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An argument the module does not save, and a class defined in the running script: one line each."""
    pytest.importorskip("lightning.pytorch")
    from landscape_cli.integrations.lightning import class_factory

    (tmp_path / "unsaved_lit.py").write_text("import lightning.pytorch as pl\n\nclass Wide(pl.LightningModule):\n"
                                             "    def __init__(self, hidden):\n        super().__init__()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    wide = importlib.import_module("unsaved_lit").Wide(8)
    with pytest.raises(UsageError) as refused:
        class_factory(wide)
    text = str(refused.value)
    assert "\n" not in text and "model_factory=" in text and "takes hidden" in text and "save_hyperparameters" in text
    local = type("Local", (type(wide),), {"__qualname__": "test.<locals>.Local"})
    with pytest.raises(UsageError, match="defined in the script being run"):
        class_factory(local(8))


def test_a_hugging_face_trainer_records_a_run_the_cli_grids(tmp_path: Path, store: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from landscape_cli.integrations.huggingface import LandscapeCallback

    data_file = tmp_path / "gpt_data.py"
    data_file.write_text(GPT_DATA)
    namespace: dict[str, Any] = {}
    exec(compile(GPT_DATA, str(data_file), "exec"), namespace)
    x, _ = namespace["windows"]()
    train = [{"input_ids": row, "labels": row} for row in x[:64]]  # transformers shifts the labels itself
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=8, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2,
                                          per_device_train_batch_size=16, logging_steps=1, save_strategy="steps",
                                          save_steps=4, save_only_model=True,
                                          report_to=[], use_cpu=True, disable_tqdm=True, learning_rate=3e-3, seed=0)
    callback = LandscapeCallback(data=f"{data_file}:make_data", every_steps=3, store=store, verbose=False)
    transformers.logging.set_verbosity_error()
    with one_thread():
        transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
    rec = callback.recorder
    assert rec is not None and rec.closed
    meta = Store(store).read_run(rec.run_id)
    assert meta.model["args"]["class"] == "GPT2LMHeadModel" and meta.model["args"]["config"]["n_embd"] == 16
    assert [r.key for r in meta.epochs] == [0, 3, 4, 6, 8]  # 4 steps an epoch: every 3 steps and each epoch's end
    assert [r.epoch_end for r in meta.epochs] == [True, False, True, False, True]
    assert all(math.isfinite(r.train_loss) for r in meta.epochs)  # logged every step: each checkpoint has its loss
    assert meta.epochs[1].train_loss > meta.epochs[-1].train_loss
    final = torch.load(Store(store).file(rec.run_id, meta.epochs[-1].checkpoint), weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], v.cpu()) for k, v in model.state_dict().items())
    done = run_in_process("grid", rec.run_id, "--at-steps", "0,8", "--width", "3", "--pairs", "1", "--batches", "1",
                          "--batch-size", "16", "--store", str(store), "--quiet")
    assert done.returncode == 0, done.stderr
    centre = landscape_cli.open(rec.run_id, store=Store(store)).center_loss.values[:, 0]  # [checkpoint, batch]
    assert centre[1] < centre[0]  # the training lowered the loss the run is scored with
    # the Trainer's own checkpoints of steps 4 and 8, imported (`import hf:DIR`): the same grid, value for value
    out = tmp_path / "out"
    imported = run_in_process("import", f"hf:{out / 'checkpoint-4'}", f"{data_file}:make_data",
                              str(out / "checkpoint-4"), str(out / "checkpoint-8"), "--epochs", "1,2", "--name",
                              "imported", "--store", str(store), "--quiet")
    assert imported.returncode == 0, imported.stderr
    options: dict[str, Any] = {"width": 3, "pairs": 1, "batches": 1, "batch_size": 16, "progress": False}
    ours = landscape_cli.grid(rec.run_id, at_steps=[4, 8], store=Store(store), **options).to_xarray()
    ours = ours.swap_dims(checkpoint="step").sel(step=[4, 8])  # the grid also holds step 0 (made above)
    theirs = landscape_cli.grid("imported", epochs=[1, 2], store=Store(store), **options).to_xarray()
    for name in ("loss", "accuracy", "center_loss"):
        assert np.array_equal(ours[name].values, theirs[name].values), name


@pytest.mark.parametrize(("module", "hidden", "extra"), [
    ("landscape_cli.integrations.lightning", ("lightning", "lightning.pytorch"), "landscape-cli[lightning]"),
    ("landscape_cli.integrations.huggingface", ("transformers",), "landscape-cli[hf]"),
])
def test_a_missing_framework_is_one_line_naming_the_extra(module: str, hidden: tuple[str, ...], extra: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(UsageError) as refused:
        importlib.import_module(module)
    message = str(refused.value)
    assert "\n" not in message and f"pip install '{extra}'" in message
    assert module not in sys.modules
    import landscape_cli.integrations  # the package itself needs neither framework

    assert landscape_cli.integrations.__doc__
