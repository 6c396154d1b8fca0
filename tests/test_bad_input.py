"""Bad input on every command: random (hypothesis) and at the edges; honest NaN/Inf numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Grid, StoreFactory, Train
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from landscape_cli import grid
from landscape_cli.cli import app
from landscape_cli.models import create_model

# the store every bad invocation meets: trained once per session (conftest's trained_store)
SHARED = (Train("mlp", epochs=1, name="tiny"), Grid("tiny", width=3, pairs=1, batches=1, name="g"))


@pytest.fixture(scope="module")
def shared(trained_store: StoreFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's own copy, which the random invocations may change (a successful train or grid)."""
    return trained_store.copy(*SHARED, to=tmp_path_factory.mktemp("bad-input") / "store")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    for cls in (tvd.MNIST, tvd.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")


def check(result: Any) -> None:
    """Success, or one clear error line (the last line on stderr) and a non-zero exit; never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    if result.exit_code == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert len(errors[0]) > len("Error: ") + 10


INTS = st.sampled_from(["-1", "0", "1", "2", "3", "99999999999999999999", "abc", "", "1.5", "-0"])
FLOATS = st.sampled_from(["0", "-1", "1e-3", "0.5", "nan", "inf", "-inf", "1e308", "x", ""])
REFS = st.sampled_from(["tiny", "g", "", " ", "ü-名前", "a b", "zz", "../x", "t"]) | st.text(max_size=6)
FLAG = st.booleans()


def options(draw: Any, spec: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for option, values in spec.items():
        if draw(FLAG):
            if values is None:
                args.append(option)
            else:
                args += [option, draw(values)]
    return args


@st.composite
def invocations(draw: Any, tmp: str) -> list[str]:
    command = draw(st.sampled_from(["train", "grid", "plot", "ls", "layers", "verify", "models", "datasets"]))
    if command == "train":
        args = ["train", draw(st.sampled_from(["mlp", "cnn", "resnet", "nope", ""])),
                draw(st.sampled_from(["digits", "mnist", "cifar-10", "", "zz"]))]
        args += options(draw, {
            "--epochs": INTS, "--batch-size": st.sampled_from(["-1", "0", "64", "99999999999999999999", "abc"]),
            "--optimizer": st.sampled_from(["adam", "sgd", "x"]), "--lr": FLOATS, "--momentum": FLOATS,
            "--weight-decay": FLOATS, "--activation": st.sampled_from(["relu", "tanh", "sigmoid", "gelu"]),
            "--seed": INTS, "--name": REFS, "--device": st.sampled_from(["cpu", "auto", "tpu", "cuda", "mps"]),
            "--json": None,
        })
        if "--epochs" in args and args[args.index("--epochs") + 1] in ("2", "3") and args[1] == "resnet":
            args[args.index("--epochs") + 1] = "1"  # keep the successful cases quick
    elif command == "grid":
        args = ["grid", draw(REFS)]
        args += options(draw, {
            "--epochs": st.sampled_from(["0", "1", "0,1", "5", "a", "", "0-1", "-1", "1-0"]),
            "--width": st.sampled_from(["-1", "0", "1", "2", "3", "1002", "abc"]), "--span": FLOATS,
            "--pairs": st.sampled_from(["0", "1", "2", "1001"]), "--batches": st.sampled_from(["0", "1", "9", "x"]),
            "--batch-size": st.sampled_from(["0", "1", "64", "99999"]), "--seed": INTS,
            "--norm": st.sampled_from(["filter", "filter-std", "layer", "none", "x"]),
            "--bn": st.sampled_from(["train", "eval", "x"]),
            "--layer": st.sampled_from(["1.weight", "1.bias", "3.weight", "nope", ""]), "--single-kernel": None,
            "--perturb-biasbn": None, "--resume": None, "--directions-from": REFS, "--grid": REFS, "--name": REFS,
            "--device": st.sampled_from(["cpu", "cuda"]), "--json": None,
        })
    elif command == "plot":
        args = ["plot", *draw(st.lists(REFS, min_size=0, max_size=2))]
        args += options(draw, {
            "--grid": REFS, "--epochs": st.sampled_from(["0", "1", "0,1", "7", "x", ""]), "--epoch": INTS,
            "--pair": INTS, "--batch": INTS, "--metric": st.sampled_from(["loss", "accuracy", "x"]),
            "--contour": None, "--surface": None, "--log": None, "--clip": FLOATS,
            "--reduce": st.sampled_from(["none", "mean", "batches", "pairs", "x"]), "--animate": None,
            "--out": st.sampled_from([f"{tmp}/a b.png", f"{tmp}/x.gif", f"{tmp}/x.jpg", "/proc/x.png", "", tmp]),
            "--json": None,
        })
    elif command in ("layers", "verify"):
        args = [command, *draw(st.lists(REFS, min_size=0 if command == "verify" else 1, max_size=1))]
        args += options(draw, {"--json": None})
    else:
        args = [command, *options(draw, {"--json": None, "--bogus": None})]
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(["--nope", "-z", "extra"])))
    return args


@pytest.mark.slow
def test_random_invocations_never_show_a_traceback(shared: Path, tmp_path: Path, offline: None) -> None:
    runner = CliRunner()
    tmp = str(tmp_path / "out dir")
    Path(tmp).mkdir()

    outcomes = {"success": 0, "error": 0}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(invocations(tmp))
    def run(args: list[str]) -> None:
        result = runner.invoke(app, [*args, "--store", str(shared)] if args[0] not in ("models", "datasets") else args)
        check(result)
        outcomes["success" if result.exit_code == 0 else "error"] += 1

    run()
    print(f"\nrandom invocations: {outcomes}")
    assert outcomes["success"] >= 10 and outcomes["error"] >= 10  # both paths were exercised


# --- explicit edges -----------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        check(result)
        return result

    return invoke


def test_non_ascii_names_and_paths_with_spaces(cli: Any, tmp_path: Path) -> None:
    store = str(tmp_path / "my store ü")
    name = "ü 名前 run"
    assert cli("train", "mlp", "digits", "--epochs", "1", "--name", name, "--store", store, "-q").exit_code == 0
    [run] = json.loads(cli("ls", "--json", "--store", store).stdout)["runs"]
    assert run["name"] == name
    assert cli("grid", name, "--width", "3", "--pairs", "1", "--batches", "1", "--name", "grille é",
               "--store", store, "-q").exit_code == 0
    out = tmp_path / "figure dir" / "a plot.png"
    out.parent.mkdir()
    assert cli("plot", name, "--grid", "grille é", "--out", str(out), "--store", store).exit_code == 0
    assert out.is_file()
    assert cli("verify", name, "--store", store).exit_code == 0


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["train", "mlp", "digits", "--name", ""], 2, "bad run name"),
    (["train", "mlp", "digits", "--name", "a/b"], 2, "bad run name"),
    (["train", "mlp", "digits", "--epochs", "100001"], 2, "--epochs"),
    (["train", "mlp", "digits", "--seed", "-1"], 2, "--seed"),
    (["train", "mlp", "digits", "--seed", str(2**64)], 2, "--seed"),
    (["train", "mlp", "digits", "--lr", "inf"], 2, "--lr"),
    (["train", "mlp", "digits", "--weight-decay", "-0.1"], 2, "--weight-decay"),
    (["train", "mlp", "digits", "--momentum", "1"], 2, "--momentum"),
    (["train", "", "digits"], 2, "unknown model ''"),
    (["grid", ""], 2, "empty run reference"),
    (["grid", "tiny", "--span", "-inf"], 2, "--span"),
    (["grid", "tiny", "--width", "1002"], 2, "--width must be from 2 to 1001"),
    (["grid", "tiny", "--epochs", ""], 2, "--epochs"),
    (["grid", "tiny", "--name", " "], 2, "bad grid name"),
    (["plot", "tiny", "--clip", "nan"], 2, "--clip"),
    (["plot", "tiny", "--pair", "-1"], 2, "--pair"),
    (["plot", "tiny", "--out", ""], 2, "--out"),
    (["plot"], 2, "Missing argument 'runs'"),
    (["layers", ""], 2, "empty run reference"),
    (["grid", "tiny", "--range=-1e308,1e308", "--width", "3", "--pairs", "1", "--batches", "1"], 2,
     "not representable in float32"),
    (["grid", "tiny", "--directions", "pca", "--to-epoch", "1"], 2, "--to-epoch is the end of an interpolation line"),
    (["grid", "tiny", "--to", "tiny"], 2, "--to is the end of an interpolation line"),
    (["hessian", "tiny", "--name", "a/b", "--top", "1"], 2, "bad Hessian results name"),
])
def test_edge_values(copy_store: Any, args: list[str], code: int, needle: str) -> None:
    shared = copy_store(*SHARED)  # a copy per case: a case that wrote would change no other's store
    result = CliRunner().invoke(app, [*args, "--store", str(shared)])
    check(result)
    assert result.exit_code == code and needle in result.stderr, result.stderr


def test_a_store_path_that_is_a_file_is_one_line(cli: Any, tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-store"
    a_file.write_text("x")
    for args in (["ls"], ["grid", "tiny"], ["verify"]):
        result = cli(*args, "--store", str(a_file))
        check(result)
        assert result.exit_code != 0 and "is a file, not a directory" in result.stderr, (args, result.stderr)
    assert a_file.read_text() == "x"


def test_huge_values_that_are_valid(cli: Any, tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    # a batch larger than the dataset is one batch; a huge learning rate diverges honestly
    data = json.loads(cli("train", "mlp", "digits", "--epochs", "1", "--batch-size", str(10**9), "--lr", "1e30",
                          "--store", store, "--json", "-q").stdout)
    assert len(data["epochs"]) == 2
    after = data["epochs"][1]["val_loss"]  # after one step of lr 1e30: NaN, shown as such
    assert after in ("nan", "inf", "-inf")
    assert not math.isfinite(float(after))
    listing = json.loads(cli("ls", "--json", "--store", store).stdout)
    assert listing["runs"][0]["epochs_done"] == 1


def test_diverged_points_are_stored_as_computed(trained_store: StoreFactory, tmp_path: Path) -> None:
    """NaN and Inf losses are kept exactly (never replaced), counted by ls, and plotted as such."""
    store = trained_store.copy(Train("mlp", epochs=1, name="m"), to=tmp_path / "s")  # trained once per session
    g = grid("m", store=store, width=5, pairs=1, batches=1, batch_size=64, span=1e19, epochs=[1], progress=False)
    ds = g.to_xarray()
    loss = ds.loss.sel(epoch=1, pair=0, batch=0).values
    assert (~np.isfinite(loss)).sum() > 0 and np.isfinite(loss[2, 2])
    # an independent computation at every point gives the same values, NaN for NaN and Inf for Inf
    meta = json.loads((g.path / "grid.json").read_text())
    raw = torch.load(g.path.parent.parent / meta["directions"][0]["file"], weights_only=True)
    ckpt = torch.load(next(store.glob("*/checkpoints/epoch-0001.pt")), weights_only=True)
    from landscape_cli.data import load_dataset

    d = load_dataset("digits")
    x = (d.train_x[:64].float() / 255 - d.info.mean[0]) / d.info.std[0]
    y = d.train_y[:64]
    state = ckpt["state_dict"]
    dirs = {}
    for axis in ("d1", "d2"):
        dirs[axis] = {}
        for n, w in state.items():
            if w.dim() > 1:
                r = raw[axis][n]
                dirs[axis][n] = r * (w.norm(dim=1, keepdim=True) / r.norm(dim=1, keepdim=True))
    model = create_model("mlp", 1, 10, 8)
    for yi, b in enumerate(ds.y.values):
        for xi, a in enumerate(ds.x.values):
            s = dict(state)
            for n in dirs["d1"]:
                s[n] = torch.add(torch.add(state[n], dirs["d1"][n], alpha=float(a)), dirs["d2"][n], alpha=float(b))
            model.load_state_dict(s)
            with torch.no_grad():
                expected = F.cross_entropy(model(x), y).item()
            got = float(loss[yi, xi])
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-4), (yi, xi)
    [run] = json.loads(CliRunner().invoke(app, ["ls", "--json", "--store", str(store)]).stdout)["runs"]
    assert run["grids"][0]["diverged"] == int((~np.isfinite(loss)).sum())
    from landscape_cli.views.figures import plot

    assert plot(["m"], store=store).diverged == int((~np.isfinite(loss)).sum())
