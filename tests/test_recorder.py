"""`landscape_cli.Recorder`: a plain training loop recorded as a run that every command analyses later.

One script (written into each test's directory, so its factory is a file the run records) trains a small MLP on
digits with SGD, a step schedule and a fixed data order, and records a checkpoint every 5 optimizer steps and at
each epoch's end (12 steps per epoch). It runs in-process, or in a subprocess that is SIGKILLed mid-training.
The recorded run is gridded and its Hessian computed from a fresh Store, against the same weights imported with
`landscape import`; re-running the script verifies and appends; a changed start is another run; a training that
no longer repeats the recorded one is refused in one line. README's recipes run as written.
"""

from __future__ import annotations

import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, checkpoint_hashes, run_in_process, subprocess_env, tree

import landscape_cli
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.recorder import Recorder
from landscape_cli.store import Store
from landscape_cli.store.meta import RunMeta

EVERY = 5
STEPS_PER_EPOCH = 12  # digits' 1437 training samples in batches of 128
SCRIPT = '''
"""A training loop of one's own, recorded (the tests' script): argv store epochs seed tamper pause."""
import sys
import time

import torch
from torch import nn

import landscape_cli


def make_model(input_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, num_outputs))


def main(argv, **options):
    store, epochs, seed, tamper, pause = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    data = landscape_cli.load_dataset("digits")
    torch.manual_seed(seed)
    model = make_model(input_shape=(1, 8, 8), num_outputs=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    losses = []
    every = options.pop("every_steps", 5)
    with landscape_cli.Recorder(model, opt, model_factory=f"{__file__}:make_model", data="digits", every_steps=every,
                                store=store, verbose=False, **options) as rec:
        for epoch in range(epochs):
            order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(epoch))
            for idx in order.split(128):
                x, y = data.prepare(data.train_x[idx], torch.device("cpu")), data.train_y[idx]
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                if rec.steps + 1 == tamper:  # a training that no longer repeats the recorded one
                    with torch.no_grad():
                        model[1].weight[0, 0] += 1e-3
                rec.step(loss=loss)
                losses.append(loss.item())
                time.sleep(pause)
            rec.epoch_end()
    return rec, losses


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def _keys(epochs: int) -> list[int]:
    """The checkpoints the script records: step 0, every 5 steps, and each epoch's end."""
    ends = [STEPS_PER_EPOCH * e for e in range(1, epochs + 1)]
    return sorted({0, *range(EVERY, STEPS_PER_EPOCH * epochs + 1, EVERY), *ends})


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "record_digits.py"
    path.write_text(SCRIPT)
    return path


def _record(script: Path, store: Path, epochs: int = 2, seed: int = 0, tamper: int = 0,
            **options: Any) -> tuple[Recorder, list[float]]:
    """The script's `main`, in this process (one torch thread, as the subprocesses run); `options` are the Recorder's."""
    main = runpy.run_path(str(script))["main"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result: tuple[Recorder, list[float]] = main([str(store), str(epochs), str(seed), str(tamper), "0"], **options)
    finally:
        torch.set_num_threads(threads)
    return result


def test_a_plain_loop_records_steps_epochs_lr_and_loss(script: Path, store: Path) -> None:
    rec, losses = _record(script, store)
    assert rec.status == "new" and rec.written == _keys(2) and rec.closed
    meta = Store(store).read_run(rec.run_id)  # a fresh handle: what another process reads
    assert [r.key for r in meta.epochs] == _keys(2) == [0, 5, 10, 12, 15, 20, 24]
    assert [r.epoch for r in meta.epochs] == [0, 0, 0, 1, 1, 1, 2]
    assert [r.epoch_end for r in meta.epochs] == [True, False, False, True, False, False, True]
    assert meta.select([1, 2]) == [12, 24] and meta.epochs_done == 2
    # the learning rate when each was saved: StepLR halves it after every 10 steps
    assert [r.lr for r in meta.epochs] == [0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]
    # the loss seen: the mean of the losses passed since the checkpoint before
    previous = 0
    for r in meta.epochs[1:]:
        assert r.train_loss == pytest.approx(math.fsum(losses[previous:r.key]) / (r.key - previous), rel=1e-12)
        assert r.val_loss is None and r.checkpoint_train_loss is None
        previous = r.key
    first = meta.epochs[0]  # step 0 is scored on both splits, as `train`'s epoch 0
    assert first.val_loss is not None and first.checkpoint_train_loss == first.train_loss > 2.0
    assert meta.config.recorded is not None and meta.config.recorded["optimizer"] == "torch.optim.sgd.SGD"
    assert meta.config.checkpoint_every == EVERY and meta.config.optimizer == "sgd" and meta.config.lr == 0.2
    checkpoint_hashes(store)  # every record's file holds the weights it names
    final = torch.load(Store(store).file(rec.run_id, meta.epochs[-1].checkpoint), weights_only=True)["state_dict"]
    make_model = runpy.run_path(str(script))["make_model"]  # the factory's model takes the recorded weights
    make_model((1, 8, 8), 10).load_state_dict(final)


def test_the_recorded_run_grids_and_curves_as_the_same_weights_imported(script: Path, store: Path,
                                                                        tmp_path: Path) -> None:
    from landscape_cli.curvature.hessian import hessian

    rec, _ = _record(script, store)
    meta = Store(store).read_run(rec.run_id)
    files = []
    for key in (0, 12, 24):  # the epoch ends, as plain state_dict files trained "elsewhere"
        record = meta.record(key)
        assert record is not None
        ckpt = torch.load(Store(store).file(rec.run_id, record.checkpoint), weights_only=True)
        files.append(tmp_path / f"weights-{key}.pt")
        torch.save(ckpt["state_dict"], files[-1])
    done = run_in_process("import", f"{script}:make_model", "digits", *map(str, files), "--epochs", "0,1,2",
                          "--name", "imported", "--store", str(store), "--quiet")
    assert done.returncode == 0, done.stderr
    options: dict[str, Any] = {"width": 5, "pairs": 1, "batches": 1, "batch_size": 64, "progress": False}
    recorded = landscape_cli.grid(rec.run_id, at_steps=[0, 12, 24], store=Store(store), **options).to_xarray()
    imported = landscape_cli.grid("imported", epochs=[0, 1, 2], store=Store(store), **options).to_xarray()
    for name in ("loss", "accuracy", "center_loss"):
        assert np.array_equal(recorded[name].values, imported[name].values), name
    assert np.isfinite(recorded.loss.values).all()
    curvature: dict[str, Any] = {"top": 1, "batches": 1, "batch_size": 64, "probes": 8, "progress": False}
    ours = hessian(rec.run_id, at_steps=[24], store=Store(store), **curvature).summary()[0]["eigenvalues"][0]
    theirs = hessian("imported", epochs=[2], store=Store(store), **curvature).summary()[0]["eigenvalues"][0]
    assert ours == pytest.approx(theirs, rel=1e-6) and ours > 0


def test_running_the_script_again_verifies_then_appends(script: Path, store: Path, tmp_path: Path) -> None:
    first, _ = _record(script, store, epochs=1)
    assert first.written == [0, 5, 10, 12]
    before = tree(store)
    again, _ = _record(script, store, epochs=1)  # the same training: nothing is written
    assert again.run_id == first.run_id and again.status == "resumed" and again.written == []
    assert again.verified == [0, 5, 10, 12] and tree(store) == before
    longer, _ = _record(script, store, epochs=2)  # a longer training: checked up to step 12, recorded after
    assert longer.run_id == first.run_id and longer.verified == [0, 5, 10, 12] and longer.written == [15, 20, 24]
    assert {k: v for k, v in tree(store).items() if "step-" in k and k in before} == \
        {k: v for k, v in before.items() if "step-" in k}  # the first checkpoints untouched
    in_one_go, _ = _record(script, tmp_path / "one-go", epochs=2)
    assert in_one_go.run_id == first.run_id
    assert checkpoint_hashes(store) == checkpoint_hashes(tmp_path / "one-go")  # bitwise the same run


def test_a_step_checkpoint_where_an_epoch_ends_becomes_the_epochs(script: Path, store: Path) -> None:
    rec, _ = _record(script, store, every_steps=4)  # steps 12 and 24: every 4 steps, and an epoch's end
    meta = Store(store).read_run(rec.run_id)
    assert [r.key for r in meta.epochs] == [0, 4, 8, 12, 16, 20, 24] == rec.written
    assert [(r.epoch, r.epoch_end) for r in meta.epochs if r.key in (8, 12, 24)] == [(0, False), (1, True), (2, True)]
    assert meta.select([0, 1, 2]) == [0, 12, 24]
    # killed after step 12's checkpoint, before the epoch's end was recorded: the rerun records it
    meta.epochs = meta.epochs[:4]
    meta.epochs[-1].epoch, meta.epochs[-1].epoch_end = 0, False
    Store(store).write_run(meta)
    again, _ = _record(script, store, every_steps=4)
    assert again.verified == [0, 4, 8, 12] and again.written == [16, 20, 24]
    assert Store(store).read_run(rec.run_id).select([1, 2]) == [12, 24]
    assert checkpoint_hashes(store) == [r.weights_sha256 for r in Store(store).read_run(rec.run_id).epochs]


def test_other_initial_weights_are_another_run(script: Path, store: Path) -> None:
    first, _ = _record(script, store, epochs=1)
    other, _ = _record(script, store, epochs=1, seed=1)
    assert other.run_id != first.run_id and other.status == "new"
    assert sorted(Store(store).run_ids()) == sorted([first.run_id, other.run_id])
    initial = {Store(store).read_run(r).config.recorded["initial_weights"]  # type: ignore[index]
               for r in (first.run_id, other.run_id)}
    assert len(initial) == 2


def test_a_training_that_no_longer_repeats_the_recorded_one_is_refused_in_one_line(script: Path, store: Path) -> None:
    first, _ = _record(script, store, epochs=1)
    before = tree(store)
    with pytest.raises(IntegrityError) as refused:
        _record(script, store, epochs=2, tamper=3)  # other weights from step 3 on: step 5 no longer matches
    message = str(refused.value)
    assert "\n" not in message and "step 5" in message and "differ" in message and "tag=" in message
    assert first.run_id in message
    assert tree(store) == before  # nothing written
    after, _ = _record(script, store, epochs=2)  # the lock was released: the real training goes on
    assert after.written == [15, 20, 24]


def test_a_factory_that_does_not_build_the_trained_model_is_refused_before_anything_is_written(
        tmp_path: Path, store: Path) -> None:
    (tmp_path / "other.py").write_text("from torch import nn\n\ndef make(input_shape, num_outputs):\n"
                                       "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_outputs))\n")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UsageError) as refused:
        Recorder(model, opt, model_factory=f"{tmp_path / 'other.py'}:make", data="digits", store=store, verbose=False)
    assert "\n" not in str(refused.value) and "does not build the architecture" in str(refused.value)
    assert not store.exists() or not list(store.iterdir())
    with pytest.raises(UsageError, match="every_steps must be"):
        Recorder(model, opt, model_factory=f"{tmp_path / 'other.py'}:make", data="digits", every_steps=0,
                 store=store)


class Writer:
    """What a TensorBoard SummaryWriter is asked to log."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((tag, value, global_step))


def test_lambda_max_is_tracked_stored_and_logged_as_train_tracks_it(script: Path, store: Path) -> None:
    from landscape_cli.curvature.hessian import hessian

    track = {"track_lambda_max": 6, "track_batches": 1, "track_batch_size": 64}
    writer = Writer()
    rec, _ = _record(script, store, epochs=1, writer=writer, **track)
    stored = Store(store).read_lambda_track(rec.run_id)
    assert stored is not None and stored.settings["every"] == 6 and stored.settings["batch_size"] == 64
    assert [(p.step, p.epoch) for p in stored.values] == [(0, 0), (6, 1), (12, 1)]  # the epoch in progress, as train
    assert writer.scalars == [("landscape/lambda_max", p.value, p.step) for p in stored.values]
    curvature = hessian(rec.run_id, at_steps=[12], top=1, batches=1, batch_size=64, bn="train", probes=2,
                        store=Store(store), progress=False).summary()[0]["eigenvalues"][0]
    assert curvature == pytest.approx(stored.values[-1].value, rel=1e-3)
    again = Writer()
    longer, _ = _record(script, store, epochs=2, writer=again, **track)  # verified up to 12, then tracked on
    assert longer.verified == [0, 5, 10, 12] and longer.written == [15, 20, 24]
    stored = Store(store).read_lambda_track(rec.run_id)
    assert stored is not None and [p.step for p in stored.values] == [0, 6, 12, 18, 24]
    assert [s for _, _, s in again.scalars] == [0, 6, 12, 18, 24]  # the stored values, then the new ones
    with pytest.raises(UsageError, match="recorded with track_lambda_max=6") as refused:
        _record(script, store, epochs=2, track_lambda_max=4, track_batch_size=64)
    assert "\n" not in str(refused.value)


def test_the_landscape_of_a_checkpoint_is_logged_to_tensorboard_as_plot_logs_it(script: Path, store: Path,
                                                                                 tmp_path: Path) -> None:
    """`log_landscape` grids the newest checkpoint (the same grid `landscape grid --at-steps` finds done) and logs
    its figure and stats into the user's SummaryWriter, read back by TensorBoard's own reader at the step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "tb"
    writer = SummaryWriter(str(logdir))
    rec, _ = _record(script, store, epochs=1, writer=writer)
    logged = rec.log_landscape(width=5, batch_size=64)
    writer.close()
    again = landscape_cli.grid(rec.run_id, at_steps=[12], width=5, span=1.0, pairs=1, batches=1, batch_size=64,
                               store=Store(store), progress=False)
    assert again.computed_rows == 0 and again.complete  # the very grid log_landscape made
    [event_file] = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    [tag] = events.Tags()["images"]
    [image] = events.Images(tag)
    assert image.step == 12 and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 300
    scalars = {t: events.Scalars(t) for t in events.Tags()["scalars"]}
    assert scalars and all([e.step for e in v] == [12] for v in scalars.values()), scalars.keys()
    assert logged is not None
    with pytest.raises(UsageError, match="needs a TensorBoard writer"):
        _record(script, tmp_path / "other", epochs=1)[0].log_landscape()


def test_the_retention_policy_removes_the_checkpoints_within_epochs(script: Path, store: Path) -> None:
    rec, _ = _record(script, store, keep="epochs")
    meta = Store(store).read_run(rec.run_id)
    assert [r.key for r in meta.epochs if r.removed] == [5, 10, 15, 20] and meta.epoch_numbers == [0, 12, 24]
    assert sorted(p.name for p in (store / rec.run_id / "checkpoints").iterdir()) == [
        "step-000000000.pt", "step-000000012.pt", "step-000000024.pt"]
    refused = run_in_process("grid", rec.run_id, "--at-steps", "5", "--store", str(store))
    assert refused.returncode == 2 and "retention policy" in refused.stderr
    again, _ = _record(script, store, keep="epochs")  # removed checkpoints are still checked by their hashes
    assert again.verified == _keys(2) and again.written == []


@pytest.mark.slow
def test_a_run_killed_mid_recording_keeps_its_checkpoints_and_a_rerun_resumes(script: Path, store: Path,
                                                                               tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(script), str(store), "3", "0", "0", "0.05"], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    seen = 0
    while time.time() < deadline and seen < 4 and proc.poll() is None:
        runs = list(store.glob("*/run.json"))
        seen = len(json.loads(runs[0].read_text())["epochs"]) if runs else 0
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    [run] = Store(store).runs()
    assert isinstance(run, RunMeta)
    kept = [r.key for r in run.epochs]
    assert 4 <= len(kept) < len(_keys(3)) and kept == _keys(3)[:len(kept)]
    checkpoint_hashes(store)  # every checkpoint recorded before the kill is whole
    rec, _ = _record(script, store, epochs=3)
    assert rec.status == "resumed" and rec.verified == kept and rec.written == _keys(3)[len(kept):]
    assert not list(store.rglob("*.partial"))
    _record(script, tmp_path / "one-go", epochs=3)
    assert checkpoint_hashes(store) == checkpoint_hashes(tmp_path / "one-go")


def test_a_failed_write_is_raised_in_the_loop_and_the_run_keeps_the_checkpoints_before_it(
        script: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints are written by a thread while training goes on: a write that fails (a full disk) is raised at the
    loop's next call to the recorder, which is then closed; the run holds every checkpoint before the failed one."""
    from landscape_cli.errors import StoreError
    from landscape_cli.models import checkpoints

    save, calls = checkpoints.save, []

    def failing(path: Path, obj: dict[str, Any]) -> None:
        calls.append(path)
        if len(calls) == 4:  # steps 0, 5 and 10 are written; step 12's write fails
            raise StoreError(f"cannot write {path}: No space left on device")
        save(path, obj)

    monkeypatch.setattr(checkpoints, "save", failing)
    with pytest.raises(StoreError, match="No space left on device"):
        _record(script, store, epochs=2)
    assert len(calls) == 4  # nothing written after the failed one
    [run] = Store(store).runs()
    assert [r.key for r in run.epochs] == [0, 5, 10]
    checkpoint_hashes(store)
    monkeypatch.setattr(checkpoints, "save", save)
    rec, _ = _record(script, store, epochs=2)  # the lock was released: the same training resumes the run
    assert rec.verified == [0, 5, 10] and rec.written == [12, 15, 20, 24]


def test_a_script_that_ends_without_closing_its_recorder_writes_every_checkpoint(script: Path, store: Path,
                                                                                 tmp_path: Path) -> None:
    """The writing thread is not a daemon: the interpreter finishes the writes handed to it before exiting."""
    ends = tmp_path / "no_close.py"
    slow = ("import landscape_cli.models.checkpoints as _c\n_save = _c.save\n"  # the last write still going on at exit
            "def _slow(path, obj):\n    time.sleep(0.3)\n    _save(path, obj)\n_c.save = _slow\n\n\ndef main(")
    ends.write_text(SCRIPT.replace("    with landscape_cli.Recorder(", "    if True:\n        rec = landscape_cli.Recorder(")
                    .replace("verbose=False, **options) as rec:", "verbose=False, **options)")
                    .replace("def main(", slow, 1))
    out = subprocess.run([sys.executable, str(ends), str(store), "1", "0", "0", "0"], cwd=tmp_path,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    [run] = Store(store).runs()
    assert [r.key for r in run.epochs] == _keys(1)
    checkpoint_hashes(store)


# --- README's recipes, run as written -------------------------------------------------------------------------


RECIPES = ("recorder", "lightning", "huggingface")


def _recipe(name: str) -> str:
    """The python block after `<!-- recipe: NAME -->` in README.md."""
    marker = f"<!-- recipe: {name} -->"
    text = (REPO / "README.md").read_text()
    assert marker in text, f"no {marker} in README.md"
    found = re.search(r"```python\n(.*?)```", text.split(marker, 1)[1], re.S)
    assert found, f"README.md: no python block after {marker}"
    return found.group(1)


@pytest.mark.parametrize("name", RECIPES)
def test_readme_recipe_runs_as_written(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each recipe is a script of its own (its first line names its file, which its factories refer to): written
    there and run as `python FILE` runs it, in an empty directory, with LANDSCAPE_STORE set."""
    if name == "lightning":
        pytest.importorskip("lightning")
    if name == "huggingface":
        pytest.importorskip("transformers")
        pytest.importorskip("accelerate")
    code = _recipe(name)
    filename = re.match(r"# (\S+\.py)\b", code)
    assert filename, "a recipe's first line names its file: # train_something.py ..."
    path = tmp_path / filename.group(1)
    path.write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LANDSCAPE_STORE", str(tmp_path / "runs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
    finally:
        torch.set_num_threads(threads)
    [run] = Store(tmp_path / "runs").runs()
    assert isinstance(run, RunMeta) and run.has_steps and len(run.epochs) >= 3
    assert os.environ["LANDSCAPE_STORE"] == str(tmp_path / "runs")
