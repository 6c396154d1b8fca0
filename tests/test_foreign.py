"""Weights saved by other tools: torch.save layouts, Lightning, safetensors, and pickles that would run code."""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from landscape_cli.errors import UsageError
from landscape_cli.exchange.unpickle import checkpoint_files, epoch_numbers, match_state, read_weights


class Net(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class Callback:
    """A user's own class, as Lightning pickles callbacks' state: torch.load(weights_only=True) refuses it."""

    def __init__(self) -> None:
        self.patience = 3


class RunsCode:
    """Unpickled normally, this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def _plant(marker: str) -> None:
    Path(marker).write_text("pwned")


class CallsTestFunction:
    """Unpickled normally, this calls a function of this module that writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (_plant, (str(self.marker),))


@pytest.fixture
def model() -> Net:
    torch.manual_seed(0)
    net = Net()
    net(torch.randn(8, 1, 6, 6))  # training mode: the BatchNorm buffers move away from their defaults
    return net.eval()


def expected_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(state: dict[str, Tensor], model: nn.Module) -> None:
    want = model.state_dict()
    assert list(state) == list(want)
    for k, v in want.items():
        assert torch.equal(state[k], v), k
        assert state[k].dtype == v.dtype, k


def one_line_error(path: Path) -> str:
    with pytest.raises(UsageError) as info:
        read_weights(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --- layouts -------------------------------------------------------------------------------------


def test_plain_state_dict(tmp_path: Path, model: Net) -> None:
    path = tmp_path / "epoch-1.pt"
    torch.save(model.state_dict(), path)
    found = read_weights(path)
    assert (found.source, found.reader, found.placeholders, found.extra) == ("state dict", "weights_only", [], {})
    assert_same(found.state, model)
    assert_same(match_state(found.state, model.state_dict(), path), model)


def test_lightning_checkpoint_is_read_by_the_restricted_unpickler(tmp_path: Path, model: Net) -> None:
    path = tmp_path / "epoch=3-step=40.ckpt"
    torch.save({
        "epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict(("model." + k, v) for k, v in model.state_dict().items()),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "hyper_parameters": argparse.Namespace(lr=0.1, layers=[1, 2]),
        "callbacks": {"x": Callback()},
    }, path)
    with pytest.raises(Exception, match=r"(?i)weights.only"):  # what makes the restricted unpickler necessary
        torch.load(path, map_location="cpu", weights_only=True)
    found = read_weights(path)
    assert (found.source, found.reader) == ("['state_dict']", "restricted")
    assert found.placeholders == ["argparse.Namespace", f"{Callback.__module__}.Callback"]
    assert found.extra == {"epoch": 3, "global_step": 40}
    assert_same(match_state(found.state, model.state_dict(), path), model)


def test_model_key_with_module_prefix(tmp_path: Path, model: Net) -> None:
    path = tmp_path / "ckpt_7.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 7}, path)
    found = read_weights(path)
    assert (found.source, found.reader, found.extra) == ("['model']", "weights_only", {"epoch": 7})
    assert_same(match_state(found.state, model.state_dict(), path), model)


def test_safetensors(tmp_path: Path, model: Net) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ckpt_2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    found = read_weights(path)
    assert (found.source, found.reader) == ("safetensors", "safetensors")
    assert_same(match_state(found.state, model.state_dict(), path), model)


def test_legacy_format(tmp_path: Path, model: Net) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain, _use_new_zipfile_serialization=False)
    assert_same(read_weights(plain).state, model)  # torch.load(weights_only=True) reads it
    with_objects = tmp_path / "objects.pt"
    torch.save({"state_dict": model.state_dict(), "hp": argparse.Namespace(lr=0.1)}, with_objects,
               _use_new_zipfile_serialization=False)
    assert "_use_new_zipfile_serialization=False" in one_line_error(with_objects)


# --- files that must not run code, and files that hold no weights -------------------------------


@pytest.mark.parametrize("payload", [RunsCode, CallsTestFunction])
def test_code_in_the_pickle_never_runs(tmp_path: Path, model: Net, payload: type) -> None:
    # The payload really runs when the file is unpickled normally (else this test would prove nothing).
    probe, probe_marker = tmp_path / "probe.pt", tmp_path / "probe-ran"
    torch.save(payload(probe_marker), probe)
    torch.load(probe, weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "pwned"
    beside = tmp_path / "beside.pt"
    torch.save({"state_dict": model.state_dict(), "hook": payload(marker)}, beside)
    found = read_weights(beside)
    assert found.reader == "restricted"
    assert found.placeholders == ([f"{os.system.__module__}.system"] if payload is RunsCode else [f"{__name__}._plant"])
    assert_same(found.state, model)
    assert not marker.exists()

    alone = tmp_path / "alone.pt"
    torch.save(payload(marker), alone)
    assert "not weights" in one_line_error(alone)
    assert not marker.exists()


def test_whole_pickled_module_names_its_class(tmp_path: Path, model: Net) -> None:
    path = tmp_path / "model.pt"
    torch.save(model, path)
    message = one_line_error(path)
    assert f"{Net.__module__}.Net object" in message and "model.state_dict()" in message


def test_dict_without_weights_names_the_classes(tmp_path: Path) -> None:
    path = tmp_path / "config.pt"
    torch.save({"config": argparse.Namespace(lr=0.1), "epoch": 1}, path)
    message = one_line_error(path)
    assert "'config', 'epoch'" in message and "argparse.Namespace" in message


@pytest.mark.parametrize("name", ["random.pt", "random.safetensors", "empty.ckpt", "truncated.pt",
                                  "truncated.safetensors", "folder"])
def test_not_a_checkpoint(tmp_path: Path, model: Net, name: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / name
    if name.startswith("random"):
        noise = torch.randint(0, 256, (500,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        path.write_bytes(noise.numpy().tobytes())
    elif name.startswith("empty"):
        path.write_bytes(b"")
    elif name == "truncated.pt":
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif name == "truncated.safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.mkdir()
    one_line_error(path)


# --- fitting the model ---------------------------------------------------------------------------


def test_prefixes_are_stripped(model: Net) -> None:
    want = expected_state(model)
    for prefix in ("model.", "module.", "net.", "module.model.", "backbone."):
        assert_same(match_state({prefix + k: v for k, v in want.items()}, model.state_dict(), Path("f.pt")), model)


def test_mismatches_are_named_in_one_line(model: Net) -> None:
    want = expected_state(model)

    def error(state: dict[str, Tensor], expected: dict[str, Tensor] = want) -> str:
        with pytest.raises(UsageError) as info:
            match_state(state, expected, Path("run/f.pt"))
        message = str(info.value)
        assert "\n" not in message and "run/f.pt" in message
        return message

    missing = {("model." + k): v for k, v in want.items() if k != "fc.bias"}
    assert "missing keys fc.bias" in (m := error(missing)) and "prefix 'model.'" in m
    assert "unexpected keys head.weight" in error({**want, "head.weight": torch.zeros(2)})
    wider = expected_state(Net(channels=3))
    assert "shape mismatch conv.weight: file [4, 3, 3, 3], model [4, 1, 3, 3]" in error(wider)
    counter = {**want, "bn.num_batches_tracked": want["bn.num_batches_tracked"].int()}
    assert "dtype mismatch bn.num_batches_tracked: file torch.int32, model torch.int64" in error(counter)
    many = {f"x{i}": torch.zeros(1) for i in range(5)}
    assert "unexpected keys x0, x1, x2 and 2 more" in error(many)


def test_float16_file_into_a_float32_model(model: Net) -> None:
    want = expected_state(model)
    half = {k: v.half() if v.is_floating_point() else v for k, v in want.items()}
    state = match_state(half, model.state_dict(), Path("f.pt"))
    for k, v in want.items():
        assert state[k].dtype == v.dtype
        assert torch.equal(state[k], half[k].to(v.dtype))
    assert state["bn.num_batches_tracked"] is half["bn.num_batches_tracked"]  # integer buffers untouched


def test_missing_batch_counters_are_filled(model: Net) -> None:
    old = {k: v for k, v in expected_state(model).items() if not k.endswith("num_batches_tracked")}
    state = match_state({"module." + k: v for k, v in old.items()}, model.state_dict(), Path("f.pt"))
    assert torch.equal(state["bn.num_batches_tracked"], torch.tensor(0))
    assert state["bn.num_batches_tracked"].dtype == torch.int64
    assert list(state) == list(model.state_dict())


# --- files and epochs ----------------------------------------------------------------------------


def test_epoch_numbers_from_file_names() -> None:
    paths = [Path("run/epoch-3.pt"), Path("ckpt_12.safetensors"), Path("7.pt")]
    assert epoch_numbers(paths, None) == [3, 12, 7]
    assert epoch_numbers(paths, [0, 1, 2]) == [0, 1, 2]


@pytest.mark.parametrize(("names", "epochs", "message"), [
    (["epoch=3-step=1200.ckpt"], None, "epoch=3-step=1200.ckpt holds several numbers (3, 1200)"),
    (["last.ckpt"], None, "last.ckpt holds no number"),
    (["a-3.pt", "b-3.pt"], None, "a-3.pt and b-3.pt both name epoch 3"),
    (["a.pt", "b.pt"], [1], "gives 1 epoch(s) for 2 file(s)"),
    (["a.pt", "b.pt"], [4, 4], "epoch 4 twice"),
    (["a.pt"], [-1], "epochs are 0 or more"),
])
def test_epoch_numbers_errors(names: list[str], epochs: list[int] | None, message: str) -> None:
    with pytest.raises(UsageError) as info:
        epoch_numbers([Path(n) for n in names], epochs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_files(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name in ("epoch-10.pt", "epoch-2.pt", "epoch-1.ckpt", "w.safetensors", "x.bin", "y.pth", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.pt").mkdir()  # a folder, not a file
    single = tmp_path / "other.weights"  # a file named explicitly is taken whatever its suffix
    single.write_bytes(b"x")
    assert [p.name for p in checkpoint_files([folder, single])] == [
        "epoch-1.ckpt", "epoch-2.pt", "epoch-10.pt", "w.safetensors", "x.bin", "y.pth", "other.weights"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    for paths, message in (([tmp_path / "nope.pt"], "no such file or folder"), ([empty], "holds no checkpoint files"),
                           ([folder / "x.bin", folder], "given twice"), ([], "no checkpoint files given")):
        with pytest.raises(UsageError) as info:
            checkpoint_files(paths)
        assert message in str(info.value) and "\n" not in str(info.value)
