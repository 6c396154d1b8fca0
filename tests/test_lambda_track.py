"""`landscape train --track-lambda-max K`: λmax during training (Cohen et al. 2021), stored with the run, drawn by
`landscape plot RUN --lambda-max`; tracking changes no weight and not the run's id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import killed_and_resumed_training, run_in_process

from landscape_cli.curvature.hessian import hessian
from landscape_cli.errors import UsageError
from landscape_cli.store import Store
from landscape_cli.store.meta import LambdaPoint
from landscape_cli.training import train

# the cnn has BatchNorm (train mode: batch statistics, buffers restored); 1437 digits / 256 = 6 steps per epoch
RUN: dict[str, Any] = {"batch_size": 256, "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "progress": False}
TRACK: dict[str, Any] = {"track_lambda_max": 3, "track_batches": 1, "track_batch_size": 64}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lambda")
    out = {k: root / k for k in ("tracked", "plain", "continued")}
    train("cnn", "digits", epochs=4, store=out["tracked"], **RUN, **TRACK)
    train("cnn", "digits", epochs=4, store=out["plain"], **RUN)
    first = train("cnn", "digits", epochs=2, store=out["continued"], **RUN, **TRACK)
    # a kill in epoch 3 after its values were written but before run.json recorded it: they are recomputed
    st = Store(out["continued"])
    track = st.read_lambda_track(first.run_id)
    assert track is not None
    track.values.append(LambdaPoint(15, 3, 123.0, 0.0))
    st.write_lambda_track(track)
    train("cnn", "digits", epochs=4, store=out["continued"], **RUN, **TRACK)
    return out


def _only(store: Path) -> tuple[Store, Any]:
    st = Store(store)
    [run] = st.runs()
    return st, run


def test_values_every_k_steps_from_step_0(stores: dict[str, Path]) -> None:
    st, run = _only(stores["tracked"])
    track = st.read_lambda_track(run.id)
    assert track is not None
    assert [p.step for p in track.values] == list(range(0, 4 * 6 + 1, 3))
    assert [p.epoch for p in track.values] == [0] + [1 + (s - 1) // 6 for s in range(3, 25, 3)]
    assert all(p.value > 0 and p.residual <= track.settings["tol"] == 1e-2 for p in track.values)
    assert track.settings["every"] == 3 and track.settings["batch_size"] == 64 and track.settings["batches"] == 1


def test_the_value_at_an_epoch_end_is_the_hessian_commands(stores: dict[str, Path], tmp_path: Path) -> None:
    st, run = _only(stores["tracked"])
    track = st.read_lambda_track(run.id)
    assert track is not None
    tracked = {p.step: p.value for p in track.values}
    result = hessian(run.id, epochs=[2, 4], top=1, batches=1, batch_size=64, split="train", bn="train", probes=2,
                     store=stores["tracked"], progress=False)
    for row in result.summary():
        expected = tracked[row["epoch"] * 6]
        assert abs(row["eigenvalues"][0] - expected) <= 1e-3 * abs(expected), (row, expected)


def test_tracking_changes_no_weight_and_not_the_run_id(stores: dict[str, Path]) -> None:
    _st_t, tracked = _only(stores["tracked"])
    st_p, plain = _only(stores["plain"])
    assert tracked.id == plain.id
    assert [e.weights_sha256 for e in tracked.epochs] == [e.weights_sha256 for e in plain.epochs]
    assert [e.sha256 for e in tracked.epochs] == [e.sha256 for e in plain.epochs]  # the checkpoint files, bitwise
    assert [e.val_loss for e in tracked.epochs] == [e.val_loss for e in plain.epochs]
    assert st_p.read_lambda_track(plain.id) is None


def test_a_continued_run_has_the_values_of_one_trained_in_one_go(stores: dict[str, Path]) -> None:
    st_t, tracked = _only(stores["tracked"])
    st_c, continued = _only(stores["continued"])
    assert [e.weights_sha256 for e in continued.epochs] == [e.weights_sha256 for e in tracked.epochs]
    assert st_c.read_lambda_track(continued.id) == st_t.read_lambda_track(tracked.id)


# what the previous release wrote into lambda_max.json: ARPACK with a basis of 10, warm-started
ARPACK_SETTINGS = {"method": "lanczos (ARPACK), warm-started", "ncv": 10, "tol": 1e-5}


def test_a_track_begun_by_the_previous_release_goes_on_with_arpack(tmp_path: Path) -> None:
    """Its settings are kept (not refused as "other tracking"), and its later values are ARPACK's: continued after
    epoch 1 or trained in one go from epoch 0, an ARPACK track has the same values at every step."""
    stores = {}
    for label, stops in (("one-go", (2,)), ("continued", (1, 2))):
        stores[label] = tmp_path / label
        result = train("cnn", "digits", epochs=0, store=stores[label], **RUN, **TRACK)
        st = Store(stores[label])
        track = st.read_lambda_track(result.run_id)
        assert track is not None and "ncv" not in track.settings  # the adaptive Lanczos, now
        track.settings = {k: v for k, v in track.settings.items() if k not in ("method", "tol", "max_steps")} | \
            ARPACK_SETTINGS  # as the previous release wrote it
        st.write_lambda_track(track)
        for epochs in stops:
            train("cnn", "digits", epochs=epochs, store=stores[label], **RUN, **TRACK)
    tracks = {label: Store(path).read_lambda_track(_only(path)[1].id) for label, path in stores.items()}
    assert tracks["continued"] == tracks["one-go"]
    assert tracks["one-go"].settings["ncv"] == 10 and len(tracks["one-go"].values) == 5


def test_the_adaptive_estimate_equals_arpacks(stores: dict[str, Path]) -> None:
    """The tracker's few-product Lanczos and ARPACK (the Hessian command's) agree to 1e-6 on a checkpoint."""
    import torch

    from landscape_cli.curvature.spectrum import extreme_eigenpairs, top_eigenpair
    from landscape_cli.data import load_dataset
    from landscape_cli.directions import perturbed_names
    from landscape_cli.kernel.batches import Batches
    from landscape_cli.kernel.hvp import operator
    from landscape_cli.models.checkpoints import build_model, load_epoch

    st, run = _only(stores["tracked"])
    net = build_model(load_epoch(st, run.id, run.record(2)))
    batches = Batches(load_dataset("digits"), "train", 1, 64).on(torch.device("cpu"), False)
    names = perturbed_names({k: v.detach() for k, v in net.named_parameters()})
    with operator(net, batches, names, "train", None) as op:
        value, residual, vector = top_eigenpair(op, None, 1e-4, 60)
        reference = extreme_eigenpairs(op, 1, "LA", 0, tol=1e-8)
    assert residual <= 1e-4
    assert abs(value - reference.values[0]) <= 1e-6 * abs(reference.values[0])
    assert abs(float(vector @ reference.vectors[:, 0])) > 1 - 1e-6  # the same eigenvector (unit norm both)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_and_resumed_has_the_same_values(stores: dict[str, Path], tmp_path: Path) -> None:
    args = ["train", "cnn", "digits", "--epochs", "4", "--batch-size", "256", "--optimizer", "sgd", "--lr", "0.05",
            "--momentum", "0", "--track-lambda-max", "3", "--track-batches", "1", "--track-batch-size", "64", "-q"]
    hashes = killed_and_resumed_training(args, tmp_path / "store")
    st_t, tracked = _only(stores["tracked"])
    st_k, killed = _only(tmp_path / "store")
    assert hashes == [e.weights_sha256 for e in tracked.epochs]
    assert st_k.read_lambda_track(killed.id) == st_t.read_lambda_track(tracked.id)


@pytest.mark.parametrize("options", [["--track-lambda-max", "2"], ["--track-batches", "2"], []])
def test_continuing_with_other_tracking_is_refused_in_one_line(stores: dict[str, Path], tmp_path: Path,
                                                               options: list[str]) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(stores["tracked"], store)
    settings = {"--track-lambda-max": "3", "--track-batches": "1", "--track-batch-size": "64"}
    for flag, value in zip(options[::2], options[1::2], strict=True):
        settings[flag] = value
    track = [] if not options else [x for kv in settings.items() for x in kv]
    result = run_in_process("train", "cnn", "digits", "--epochs", "5", "--batch-size", "256", "--optimizer", "sgd",
                            "--lr", "0.05", "--momentum", "0", *track, "--store", str(store), "--quiet")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--track-lambda-max 3 --track-batches 1 --track-batch-size 64" in lines[0], lines
    _st, run = _only(store)
    assert len(run.epochs) == 5  # nothing trained


def test_tracking_cannot_start_on_a_run_trained_without_it(stores: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(stores["plain"], store)
    with pytest.raises(UsageError, match="no --track-lambda-max"):
        train("cnn", "digits", epochs=5, store=store, **RUN, **TRACK)


def test_plot_lambda_max_writes_a_png_and_prints_the_stored_values(stores: dict[str, Path], tmp_path: Path) -> None:
    st, run = _only(stores["tracked"])
    out = tmp_path / "sharp.png"
    result = run_in_process("plot", run.id, "--lambda-max", "--json", "--out", str(out),
                            "--store", str(stores["tracked"]))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = json.loads(result.stdout)
    track = st.read_lambda_track(run.id)
    assert track is not None
    assert shown["values"] == [p.to_json() for p in track.values]
    assert shown["two_over_lr"] == pytest.approx(2 / 0.05) and shown["optimizer"] == "sgd" and shown["note"] is None
    default = run_in_process("plot", run.id, "--lambda-max", "--store", str(stores["tracked"]))
    assert default.returncode == 0, default.stderr
    assert Path(default.stdout.strip()).is_file()


def test_plot_lambda_max_of_adam_says_what_2_over_lr_is_not(tmp_path: Path) -> None:
    store = tmp_path / "adam"
    r = train("mlp", "digits", epochs=1, batch_size=512, lr=1e-3, track_lambda_max=2, track_batch_size=32,
              store=store, progress=False)
    from landscape_cli.views.sharpness_figure import plot_lambda_max

    fig = plot_lambda_max(r.run_id, out=tmp_path / "a.svg", store=store)
    assert fig.note is not None and "not of Adam" in fig.note and fig.threshold == pytest.approx(2000.0)
    assert [p.step for p in fig.track.values] == [0, 2]
    missing = run_in_process("plot", r.run_id, "--lambda-max", "--store", str(tmp_path / "none"))
    assert missing.returncode != 0


def test_plot_lambda_max_never_imports_torch(stores: dict[str, Path], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    _st, run = _only(stores["tracked"])
    code = (
        "import sys; from landscape_cli.cli import app; "
        f"app(['plot', {run.id!r}, '--lambda-max', '--out', {str(tmp_path / 'l.png')!r}, '--store', "
        f"{str(stores['tracked'])!r}], standalone_mode=False); "
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "False", done.stderr
    assert (tmp_path / "l.png").is_file()


def test_the_edge_of_stability_example_parses_and_its_factories_make_a_regression() -> None:
    import subprocess

    from conftest import REPO

    subprocess.run(["bash", "-n", str(REPO / "examples" / "edge_of_stability.sh")], check=True)
    import importlib.util

    spec = importlib.util.spec_from_file_location("edge_of_stability", REPO / "examples" / "edge_of_stability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.make_data()
    (x, y), (vx, _vy) = data["train"], data["val"]
    assert data["task"] == "regression" and x.shape == (512, 64) and y.shape == (512, 10) and y.dtype.is_floating_point
    assert vx.shape == (256, 64) and float(y.sum()) == 512.0
    assert module.make_model((64,), 10)(x[:3]).shape == (3, 10)
