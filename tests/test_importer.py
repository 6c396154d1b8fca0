"""`landscape import`: runs from weights saved elsewhere; the grid's centre is the file's own loss."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import tree

from landscape_cli import grid
from landscape_cli.data import load_dataset
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.exchange.importer import import_run
from landscape_cli.models import create_model
from landscape_cli.store import Store


class Hyper:
    """A Lightning-style hyper-parameter object: `weights_only` refuses it; the import never builds it."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


def _digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_dataset("digits")
    return (d.train_x[:n].float() / 255 - d.info.mean[0]) / d.info.std[0], d.train_y[:n]


def _trained_states() -> list[dict[str, torch.Tensor]]:
    """Three snapshots of an mlp trained here (as another tool would have saved them)."""
    torch.manual_seed(0)
    model = create_model("mlp", 1, 10, 8)
    x, y = _digits_batch(256)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    states = []
    for step in range(11):
        if step % 5 == 0:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return states


def _own_loss(state: dict[str, torch.Tensor]) -> float:
    model = create_model("mlp", 1, 10, 8)
    model.load_state_dict(state)
    x, y = _digits_batch()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_three_formats_import_and_grid_at_their_own_loss(tmp_path: Path, store: Path) -> None:
    from safetensors.torch import save_file

    states = _trained_states()
    files = tmp_path / "ckpts"
    files.mkdir()
    torch.save(states[0], files / "epoch-0.pt")  # plain torch.save(model.state_dict())
    torch.save({"state_dict": {f"model.{k}": v for k, v in states[1].items()}, "epoch": 5, "global_step": 40,
                "hyper_parameters": argparse.Namespace(lr=0.3), "extra": Hyper(0.3)}, files / "epoch-5.ckpt")
    save_file(states[2], str(files / "epoch-10.safetensors"))
    result = import_run("mlp", "digits", [files], store=store, progress=False, name="theirs")
    assert result.imported == [0, 5, 10] and result.meta.config.imported is not None
    origins = {o["epoch"]: o for o in result.meta.model["imported"]}
    assert origins[5]["reader"] == "restricted" and any("Hyper" in p for p in origins[5]["placeholders"])
    g = grid("theirs", width=3, pairs=1, batches=1, batch_size=64, store=store, progress=False)
    ds = g.to_xarray()
    for epoch, state in zip((0, 5, 10), states, strict=True):
        assert float(ds.center_loss.sel(epoch=epoch, batch=0)) == pytest.approx(_own_loss(state), rel=1e-5)
    again = import_run("mlp", "digits", [files], store=store, progress=False)
    assert again.existed and again.run_id == result.run_id  # the same weights: the same run, nothing written
    from landscape_cli.store.verify import verify

    assert verify(store).ok


def test_epochs_come_from_the_option_when_names_hold_several_numbers(tmp_path: Path, store: Path) -> None:
    states = _trained_states()
    paths = []
    for i, state in enumerate(states):
        path = tmp_path / f"epoch={i}-step={100 * i}.ckpt"
        torch.save({"state_dict": state}, path)
        paths.append(path)
    with pytest.raises(UsageError, match="--epochs"):
        import_run("mlp", "digits", paths, store=store, progress=False)
    result = import_run("mlp", "digits", paths, epochs=[2, 4, 6], store=store, progress=False)
    assert [r.epoch for r in result.meta.epochs] == [2, 4, 6]


@pytest.mark.parametrize("case", ["mismatch", "pickled-module", "code", "ragged-dataset"])
def test_bad_imports_are_one_line_and_write_nothing(tmp_path: Path, store: Path, case: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    if case == "mismatch":
        path = tmp_path / "epoch-1.pt"
        torch.save(create_model("cnn", 1, 10, 8).state_dict(), path)
        needle, model, dataset = "do not fit the model", "mlp", "digits"
    elif case == "pickled-module":
        path = tmp_path / "epoch-1.pt"
        torch.save(create_model("mlp", 1, 10, 8), path)
        needle, model, dataset = "not weights", "mlp", "digits"
    elif case == "code":
        class Evil:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, (f"touch {marker}",))

        path = tmp_path / "epoch-1.pt"
        torch.save({"payload": Evil()}, path)
        needle, model, dataset = "os", "mlp", "digits"
    else:
        path = tmp_path / "epoch-1.pt"
        torch.save(create_model("mlp", 1, 10, 8).state_dict(), path)
        monkeypatch.syspath_prepend(str(Path(__file__).parent / "userland"))
        needle, model, dataset = "train has 10 inputs but 9 targets", "toy_factories:regressor", "toy_factories:ragged"
    store.mkdir(parents=True, exist_ok=True)
    before = tree(store)
    with pytest.raises(UsageError, match=needle):
        import_run(model, dataset, [path], store=store, progress=False)
    assert tree(store) == before and not marker.exists()


def test_a_checkpoint_replaced_by_code_is_one_line_and_never_runs(tmp_path: Path, cli: Any, store: Path) -> None:
    """A run checkpoint swapped for a pickle that would run code, its recorded hash updated to match:
    `weights_only` refuses it, and `grid` says so in one line (no traceback), the code never runs."""
    states = _trained_states()
    src = tmp_path / "epoch-0.pt"
    torch.save(states[0], src)
    run = import_run("mlp", "digits", [src], store=store, progress=False, name="victim")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    ckpt = Store(store).file(run.run_id, run.meta.epochs[0].checkpoint)
    torch.save({"state_dict": Evil()}, ckpt)
    meta = json.loads(Store(store).run_file(run.run_id).read_text())
    from landscape_cli._io import file_sha256, write_json

    meta["epochs"][0]["sha256"] = file_sha256(ckpt)
    write_json(Store(store).run_file(run.run_id), meta)
    done = cli("grid", "victim", "--width", "3", "--pairs", "1", "--batches", "1", "-q")
    assert done.exit_code == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("Error: checkpoint of epoch 0") and "not a weights-only file" in line
    assert not marker.exists()
    with pytest.raises(IntegrityError):
        from landscape_cli.models.checkpoints import load

        load(ckpt)
