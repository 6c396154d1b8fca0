"""Training: checkpoints after every epoch, resumable and reproducible.

Epoch 0 is the untrained model (evaluated and checkpointed, not trained); epochs 1..N train. The
data order of each epoch is drawn from a generator seeded by (seed, epoch), and the optimizer state
is saved with every checkpoint, so a run stopped at any moment and resumed from its last complete
checkpoint ends with bitwise the same weights as an uninterrupted run (on CPU).

Each epoch records the train split's loss twice: `train_loss`, the running mean over the epoch's
mini-batches (what the optimizer saw, the weights moving under it), and `checkpoint_train_loss`, the
train split evaluated at the saved checkpoint in eval mode (one more pass, drawing no random numbers),
the value a landscape at that checkpoint is comparable with.

Each checkpoint also records what its model computes on the run's probe samples (`models.probes`: 8 training
samples saved once with the run, the outputs in eval and BatchNorm-train mode, drawing no random number and
leaving every buffer and mode as it was), so that later commands can tell that the model they rebuild is the
one trained. An epoch whose every training loss is NaN is reported by one warning line on stderr (the run is
still made: a diverged run is a result, but almost always a mistake).

With `track_lambda_max=K` the top Hessian eigenvalue λmax of the training loss is estimated at step 0
and after every K optimizer steps (Cohen et al. 2021, "edge of stability"): on fixed probe batches (the
train split's first `track_batches` batches of `track_batch_size`, never shuffled), BatchNorm in train
mode, over the parameters `landscape hessian` perturbs by default, by Lanczos warm-started from the
previous eigenvector and stopped as soon as its residual is at most 1e-3 (a few products: tracks begun
by earlier releases go on with ARPACK, as they were computed). Tracking changes nothing of the training
(no random number is drawn from the run's generators; modes and buffers restored): the checkpoints are
bitwise those of a run without it, and its settings are not part of the run's id. The values are written with each epoch's
checkpoint (`Store.write_lambda_track`); the warm-start vector travels with the optimizer state, so a
resumed run computes the same numbers as one trained in one go.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape_cli._io import file_sha256, leave_no_trace, make_dirs, now, remove_partials
from landscape_cli._progress import progress_bar
from landscape_cli._version import __version__
from landscape_cli.config import CurveConfig, TrainConfig, check_batches, positive_int
from landscape_cli.curvature.spectrum import extreme_eigenpairs, top_eigenpair
from landscape_cli.data import Dataset, check_block_size, dataset_record, dataset_source, load_dataset
from landscape_cli.data.losses import Loss, get_loss, loss_for_task, scored
from landscape_cli.directions import perturbed_names
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.kernel.batches import Batches
from landscape_cli.kernel.device import select_device, tune_allocator, use_channels_last
from landscape_cli.kernel.evaluate import evaluate_split
from landscape_cli.kernel.hvp import operator
from landscape_cli.models import build, checkpoints, model_source, probes, takes_tokens
from landscape_cli.models.records import model_args, model_record, probe
from landscape_cli.plugins import Source
from landscape_cli.store import Store, checkpoint_name, optimizer_name
from landscape_cli.store.meta import EpochRecord, FileRecord, LambdaPoint, LambdaTrack, RunMeta
from landscape_cli.store.retention import apply_retention, parse_keep, remove_unkept

MAX_EPOCHS = 100_000
LAMBDA_TOL = 1e-5  # ARPACK's tolerance for the tracked λmax (tracks made before the adaptive Lanczos)
LAMBDA_NCV = 10  # their Lanczos basis size (warm-started: few restarts)
LAMBDA_RESIDUAL = 1e-2  # the adaptive Lanczos stops at ‖Hv − λv‖/|λ| <= this (λ's own error ~ its square)
LAMBDA_STEPS = 40  # at most this many products per estimate
LAMBDA_VECTOR = "lambda_max_vector"  # the warm-start vector's key in the optimizer-state file


@dataclass
class TrainResult:
    run_id: str
    path: Path
    meta: RunMeta
    trained: list[int] = field(default_factory=list)  # epochs trained (or evaluated) by this call

    @property
    def existed(self) -> bool:
        return not self.trained


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    digest = hashlib.sha256(f"landscape-data-order:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def lambda_settings(every: int | None, batches: int, batch_size: int) -> dict[str, Any] | None:
    """What `train --track-lambda-max` records (and a continuation must repeat); None without tracking."""
    if every is None:
        return None
    return {"every": every, "batches": batches, "batch_size": batch_size, "split": "train", "bn": "train",
            "parameters": "weights (no bias or BatchNorm)",
            "method": "lanczos, warm-started, stopped at residual <= tol", "tol": LAMBDA_RESIDUAL,
            "max_steps": LAMBDA_STEPS}


WHAT_IS_ASKED = ("every", "batches", "batch_size", "split", "bn", "parameters")  # what the user's options set


def continued_settings(recorded: dict[str, Any] | None, asked: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tracking settings a continuation computes with: the recorded ones where the user asked for the same
    (so a track begun with ARPACK, by an earlier release, goes on with ARPACK: the same numbers as in one go);
    else what was asked (which the caller refuses where they differ from a recorded track)."""
    if recorded is not None and asked is not None and all(recorded.get(k) == asked.get(k) for k in WHAT_IS_ASKED):
        return recorded
    return asked


def _describe(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return "no --track-lambda-max"
    return (f"--track-lambda-max {settings['every']} --track-batches {settings['batches']} "
            f"--track-batch-size {settings['batch_size']}")


def make_optimizer(config: TrainConfig | CurveConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer a run (or a curve's bends, `connect`) trains with: SGD with momentum, or Adam; weight decay on
    the parameters given (a curve's bends, never its endpoints)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)




def train(
    model: str,
    dataset: str,
    *,
    epochs: int = 10,
    batch_size: int = TrainConfig.batch_size,
    optimizer: str = TrainConfig.optimizer,
    lr: float = TrainConfig.lr,
    momentum: float = TrainConfig.momentum,
    weight_decay: float = TrainConfig.weight_decay,
    activation: str = TrainConfig.activation,
    seed: int = TrainConfig.seed,
    loss: str | None = TrainConfig.loss,
    block_size: int | None = TrainConfig.block_size,
    device: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    name: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    track_lambda_max: int | None = None,
    track_batches: int = 1,
    track_batch_size: int | None = None,
    checkpoint_every: int | None = None,
    keep: str | dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` on `dataset`, checkpointing epochs 0..`epochs` into a content-addressed run.

    Running it again with the same configuration trains nothing (or resumes where a stopped run
    left off; more epochs continue the run). Returns the run's id, directory and metadata. `block_size`: the
    characters per sample of a `text:PATH` dataset (default 64; part of the run's identity).

    `track_lambda_max=K`: estimate λmax at step 0 and every K optimizer steps on the train split's first
    `track_batches` batches of `track_batch_size` (default `batch_size`) samples; stored with the run
    (`Store.read_lambda_track`), not part of its id; a continuation must use the same settings.

    `checkpoint_every=N`: a checkpoint every N optimizer steps as well as at every epoch's end (part of the run's
    id; its checkpoints are keyed by step). A run killed within an epoch continues from its last step checkpoint
    (optimizer state, running means and the position in the epoch's data order are kept with it) and ends bitwise
    as an uninterrupted run. `keep`: the retention policy (`--keep every=K,last=N,epochs`; see `parse_keep`).
    """
    model_src, data_src = model_source(model), dataset_source(dataset)
    if not model_src.builtin and activation != TrainConfig.activation:
        raise UsageError(f"--activation replaces the activations of the built-in models only: {model_src.ref!r} is "
                         "your model and is never rewritten (build the activation into its factory)")
    if takes_tokens(model_src) and activation != TrainConfig.activation:
        raise UsageError(f"--activation rewrites the built-in image models only: {model_src.ref!r} keeps its GELU")
    check_block_size(data_src, block_size)
    if loss is not None:
        get_loss(loss)
    # a factory's data is part of the run's identity: load it first (a built-in dataset is named by its name)
    data = None if data_src.builtin else load_dataset(data_src, data_dir, block_size=block_size)
    config = TrainConfig(model_src.name, data_src.name, batch_size, optimizer, lr, momentum, weight_decay, activation,
                         seed, model_sha256=model_src.sha256, data_sha256=data.sha256 if data else None, loss=loss,
                         block_size=data.block_size if data else None, checkpoint_every=checkpoint_every)
    config.validate()
    policy = parse_keep(keep) if not isinstance(keep, dict) else keep
    positive_int(epochs, "--epochs", minimum=0, maximum=MAX_EPOCHS)
    if track_lambda_max is not None:
        positive_int(track_lambda_max, "--track-lambda-max")
        positive_int(track_batches, "--track-batches")
        positive_int(track_batch_size if track_batch_size is not None else batch_size, "--track-batch-size")
    settings = lambda_settings(track_lambda_max, track_batches,
                               track_batch_size if track_batch_size is not None else batch_size)
    dev = select_device(device)
    st = Store.of(store)
    run_id = config.run_id
    if name is not None:
        st.check_name(name, run_id)
    if st.has_run(run_id):
        meta = st.read_run(run_id)
        if meta.config.imported is not None:
            raise UsageError(f"run {run_id} was imported (`landscape import`): it has no training to continue")
        if (meta.epochs_done >= epochs and (name is None or meta.name == name)
                and (policy is None or meta.retention == policy)):
            return TrainResult(run_id, st.run_dir(run_id), meta)
    st.ensure_writable()
    if data is None:
        data = load_dataset(data_src, data_dir)  # before the run directory exists: a missing dataset changes nothing
    scorer = get_loss(loss) if loss is not None else loss_for_task(data.task)
    scorer.check_targets(data.train_y, f"dataset {data_src.ref!r}")
    probe(model_src, data_src, data, config.activation, scorer)
    if settings is not None:
        check_batches(settings["batches"], settings["batch_size"], False, "train", dataset_record(data_src, data))
    run_dir = st.run_dir(run_id)
    new_dirs = [] if run_dir.exists() else [run_dir]
    with leave_no_trace(new_dirs, st.run_file(run_id)):
        make_dirs(st.checkpoints_dir(run_id))
        with st.run_lock(run_id).acquire("wait for that training to finish, or stop it and run this command again"):
            remove_partials(st.checkpoints_dir(run_id))
            return _train_locked(st, run_id, config, epochs, dev, data, name, progress, on_epoch, model_src, data_src,
                                 scorer, settings, policy)








def _train_locked(st: Store, run_id: str, config: TrainConfig, epochs: int, device: torch.device,
                  data: Dataset, name: str | None, progress: bool,
                  on_epoch: Callable[[EpochRecord], None] | None, model_src: Source, data_src: Source,
                  scorer: Loss, settings: dict[str, Any] | None = None,
                  policy: dict[str, Any] | None = None) -> TrainResult:
    run_dir = st.run_dir(run_id)
    args = model_args(model_src, data, config.activation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build(model_src, args)
    if st.has_run(run_id):
        meta = st.read_run(run_id)
    else:
        meta = RunMeta(
            id=run_id,
            name=None,
            config=config,
            model=model_record(model_src, args, net),
            dataset=dataset_record(data_src, data),
            epochs_requested=epochs,
            epochs=[],
            resume=None,
            versions={"landscape": __version__, "torch": torch.__version__, "python": platform.python_version()},
            created=now(),
        )
    if name is not None:
        meta.name = name
    meta.epochs_requested = max(epochs, meta.epochs_requested)
    if policy is not None and meta.retention != policy:
        meta.retention = policy
        if meta.epochs:
            apply_retention(st, meta)
    steps = (len(data.train_y) + config.batch_size - 1) // config.batch_size
    every = config.checkpoint_every
    last = meta.epochs[-1] if meta.epochs else None
    start = last.epoch + 1 if last is not None else 0  # a step checkpoint's epoch: the epochs completed before it
    first_batch = 0 if last is None or last.epoch_end is not False else int(last.step or 0) - last.epoch * steps
    if last is not None and last.epoch_end is not False and start > epochs:
        st.write_run(meta)
        return TrainResult(run_id, run_dir, meta)

    track = st.read_lambda_track(run_id) if last is not None else None
    settings = continued_settings(track.settings if track is not None else None, settings)
    if last is not None and (track.settings if track is not None else None) != settings:
        raise UsageError(f"run {run_id} was trained with {_describe(track.settings if track else None)}: continue "
                         f"it with the same (asked: {_describe(settings)})")
    opt = make_optimizer(config, net.parameters())
    vector, sums = None, None
    if last is not None:
        vector, sums = _restore(st, meta, net, opt)
    tune_allocator()
    channels_last = use_channels_last(net, device)
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    _move_optimizer_state(opt, device)
    # the probe samples: a new run's saved now (before its run.json names them); a run made before probes were
    # recorded records none when it continues
    prober = probes.run_inputs(st, run_id, meta.epochs) if meta.epochs else probes.write_inputs(st, run_id, data)
    if last is not None or st.has_run(run_id):  # a new run's metadata is first written with its epoch 0
        st.write_run(meta)
    tracker = None
    if settings is not None:
        done_step = (last.step if last.step is not None else last.epoch * steps) if last is not None else -1
        kept = [p for p in track.values if p.step <= done_step] if track is not None else []
        tracker = LambdaTracker(LambdaTrack(run_id, settings, kept), net, data, device, scorer, vector)

    trained = []
    warned = False
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        if epoch == 0:
            train_loss, train_acc = evaluate_split(net, data, "train", device, channels_last=channels_last,
                                                   scorer=scorer)
            at_loss, at_acc = train_loss, train_acc
            all_nan = math.isnan(train_loss)
            if tracker is not None:
                tracker.measure(net, 0, 0)
        else:
            begin = (epoch - 1) * steps
            saver = None
            if every is not None:
                def saver(b: int, running: _Running, epoch: int = epoch, begin: int = begin) -> None:
                    step = begin + b + 1
                    if step % every == 0 and b + 1 < steps:
                        loss, acc = running.means()
                        metrics = {"train_loss": loss, "train_accuracy": acc, "val_loss": None, "val_accuracy": None,
                                   "seconds": round(time.perf_counter() - running.since, 3)}
                        _save_epoch(st, meta, net, opt, epoch - 1, metrics, tracker, step=step, epoch_end=False,
                                    running=running, prober=prober, channels_last=channels_last)
                        running.since = time.perf_counter()
            train_loss, train_acc, all_nan = _train_epoch(net, opt, data, config, epoch, device, channels_last,
                                                          progress, scorer,
                                                          tracker.hook(net, begin, epoch) if tracker else None,
                                                          first_batch, sums, saver)
            first_batch, sums = 0, None
            at_loss, at_acc = _at_checkpoint(net, data, device, channels_last, scorer)
        val_loss, val_acc = evaluate_split(net, data, "val", device, channels_last=channels_last, scorer=scorer)
        metrics = {"train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                   "val_accuracy": val_acc, "seconds": round(time.perf_counter() - t0, 3),
                   "checkpoint_train_loss": at_loss, "checkpoint_train_accuracy": at_acc}
        stepped = every is not None
        record = _save_epoch(st, meta, net, opt, epoch, metrics, tracker, step=epoch * steps if stepped else None,
                             epoch_end=True if stepped else None, prober=prober, channels_last=channels_last)
        trained.append(epoch)
        if all_nan and not warned:  # once per call: a diverged run's every later epoch is NaN too
            warned = True
            _warn(nan_warning(run_id, epoch, config))
        if on_epoch is not None:
            on_epoch(record)
    return TrainResult(run_id, run_dir, meta, trained)


class LambdaTracker:
    """λmax of the training loss on fixed probe batches, warm-started from the last eigenvector."""

    def __init__(self, track: LambdaTrack, net: nn.Module, data: Dataset, device: torch.device, scorer: Loss,
                 vector: np.ndarray | None) -> None:
        s = track.settings
        self.track = track
        self.device = device
        self.batches = Batches(data, "train", s["batches"], s["batch_size"]).on(device, False)
        self.names = perturbed_names({k: v.detach() for k, v in net.named_parameters()})
        self.loss = scorer
        self.vector = vector

    def hook(self, net: nn.Module, first: int, epoch: int) -> Callable[[int], None]:
        """What `_train_epoch` calls after its mini-batch b: step first + b + 1 of the run, measured every K."""
        every = int(self.track.settings["every"])

        def after(b: int) -> None:
            if (first + b + 1) % every == 0:
                self.measure(net, first + b + 1, epoch)

        return after

    def measure(self, net: nn.Module, step: int, epoch: int) -> None:
        """One estimate at the model's weights; random numbers, modes, buffers and requires_grad given back."""
        devices = [self.device] if self.device.type == "cuda" else []
        from scipy.sparse.linalg import ArpackError

        settings = self.track.settings
        with torch.random.fork_rng(devices=devices), \
                operator(net, self.batches, self.names, "train", None, self.loss) as op:
            vector: np.ndarray | None
            try:
                if "ncv" in settings:  # a track begun by an earlier release: ARPACK, as it was
                    pairs = extreme_eigenpairs(op, 1, "LA", 0, tol=float(settings["tol"]), v0=self.vector,
                                               ncv=int(settings["ncv"]))
                    value, residual, vector = float(pairs.values[0]), float(pairs.residuals[0]), pairs.vectors[:, 0]
                else:
                    value, residual, vector = top_eigenpair(op, self.vector, float(settings["tol"]),
                                                            int(settings["max_steps"]))
            except (ArpackError, np.linalg.LinAlgError):  # products not finite (diverged): no value, the run goes on
                value = residual = float("nan")
                vector = None
        if vector is None or not np.isfinite(vector).all() or not np.isfinite(value):
            self.vector = None  # the next estimate starts afresh (seeded)
        else:  # kept as float32, as the optimizer-state file keeps it: a resumed run starts from the same vector
            self.vector = vector.astype(np.float32).astype(np.float64)
        self.track.values.append(LambdaPoint(step, epoch, value, residual))


def _at_checkpoint(net: nn.Module, data: Dataset, device: torch.device, channels_last: bool,
                   scorer: Loss) -> tuple[float, float | None]:
    """The train split's loss and accuracy at the checkpoint just made (eval mode, as import scores one).

    Any random numbers the model might draw are given back (`fork_rng`): continuing a run stays bitwise."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return evaluate_split(net, data, "train", device, channels_last=channels_last, scorer=scorer)


class _Running:
    """The running sums of an epoch (loss × units, correct, units), the mini-batches scored and how many of their
    losses were NaN, and when the last checkpoint was saved."""

    def __init__(self, device: torch.device, saved: dict[str, Any] | None = None) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.units = 0
        self.nans = torch.zeros((), device=device, dtype=torch.int64)  # counted on the device: no sync per step
        self.batches: int | None = 0  # None: unknown (an epoch resumed from a step checkpoint of an earlier release)
        if saved is not None:  # as a step checkpoint kept them: the resumed epoch's means are the uninterrupted ones
            self.loss = saved["loss"].to(device)
            self.correct = saved["correct"].to(device)
            self.units = int(saved["units"])
            if isinstance(saved.get("nans"), Tensor) and "batches" in saved:
                self.nans, self.batches = saved["nans"].to(device), int(saved["batches"])
            else:
                self.batches = None
        self.since = time.perf_counter()
        self.has_accuracy = True

    def add(self, loss: Tensor, correct: Tensor, count: int) -> None:
        self.loss += loss.detach() * count
        self.correct += correct
        self.units += count
        self.nans += torch.isnan(loss.detach()).long()
        if self.batches is not None:
            self.batches += 1

    @property
    def all_nan(self) -> bool:
        """Whether every loss of the epoch's mini-batches was NaN (False where unknown)."""
        return bool(self.batches) and int(self.nans.item()) == self.batches

    def means(self) -> tuple[float, float | None]:
        if not self.units:
            return float("nan"), None
        return self.loss.item() / self.units, (self.correct.item() / self.units if self.has_accuracy else None)

    def state(self) -> dict[str, Any]:
        out = {"loss": self.loss.detach().cpu().clone(), "correct": self.correct.detach().cpu().clone(),
               "units": self.units}
        if self.batches is not None:
            out.update(nans=self.nans.detach().cpu().clone(), batches=self.batches)
        return out


def _train_epoch(net: nn.Module, opt: torch.optim.Optimizer, data: Dataset, config: TrainConfig,
                 epoch: int, device: torch.device, channels_last: bool, progress: bool,
                 scorer: Loss, on_step: Callable[[int], None] | None = None, first: int = 0,
                 sums: dict[str, Any] | None = None,
                 checkpoint: Callable[[int, _Running], None] | None = None) -> tuple[float, float | None, bool]:
    """One pass over the training set in an order fixed by (seed, epoch); running mean loss/accuracy over the
    scored units (samples, or tokens that are not padding), and whether every mini-batch's loss was NaN. A
    mini-batch of padding only is skipped.

    `first`, `sums`: continue the epoch at mini-batch `first` with the running sums a step checkpoint kept.
    `checkpoint(b, running)` is called after mini-batch b (and after `on_step`): where step checkpoints are saved."""
    x_all, y_all = data.train_x, data.train_y
    n = len(y_all)
    order = torch.randperm(n, generator=epoch_generator(config.seed, epoch))
    steps = (n + config.batch_size - 1) // config.batch_size
    net.train()
    running = _Running(device, sums)
    running.has_accuracy = scorer.has_accuracy
    with progress_bar(f"epoch {epoch}", steps, unit="batches", enabled=progress) as bar:
        if first:
            bar.advance(first)
        for step in range(first, steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            y_cpu = y_all[idx]
            count = scored(y_cpu)  # counted on the CPU: no device sync
            if count:  # else nothing to score: no loss, no step
                x = data.prepare(x_all[idx], device, channels_last)
                y = y_cpu.to(device)
                out = net(x)
                loss = scorer(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running.add(loss, scorer.correct(out.detach(), y), count)
            if on_step is not None:
                on_step(step)
            if checkpoint is not None:
                checkpoint(step, running)
            bar.advance()
    return (running.loss.item() / running.units,
            running.correct.item() / running.units if scorer.has_accuracy else None, running.all_nan)


def nan_warning(run_id: str, epoch: int, config: TrainConfig) -> str:
    """The warning of an epoch whose every training loss is NaN."""
    what = "the untrained model's training loss" if epoch == 0 else f"every training loss of epoch {epoch}"
    return (f"run {run_id}: {what} is NaN: a run whose every loss is NaN is almost always a mistake: try a lower "
            f"--lr (it is {config.lr:g}), check the data for NaN or infinite values, or use another --optimizer; the "
            "run is kept as it is")


def _warn(text: str) -> None:
    """A warning as one line on stderr (the command goes on)."""
    print(f"Warning: {' '.join(text.split())}", file=sys.stderr, flush=True)


def _save_epoch(st: Store, meta: RunMeta, net: nn.Module, opt: torch.optim.Optimizer, epoch: int,
                metrics: dict[str, Any], tracker: LambdaTracker | None = None, step: int | None = None,
                epoch_end: bool | None = None, running: _Running | None = None,
                prober: probes.ProbeInputs | None = None, channels_last: bool = False) -> EpochRecord:
    """Checkpoint, optimizer state (with λmax's warm-start vector), the tracked λmax, then metadata: a kill at
    any point leaves a resumable run (values of epochs run.json does not record are recomputed). With `prober`
    the record holds what the model computes on the run's probe samples (nothing of the model or the random
    generators changes).

    `step`: a run with step checkpoints (`epoch` is then the epochs completed); its optimizer-state file also
    keeps the random number generator's state and, within an epoch, the epoch's running sums (`running`)."""
    ckpt = checkpoints.make_checkpoint(net, meta.model, meta.dataset, meta.config.identity(), epoch, step)
    probe = probes.record(net, prober, channels_last) if prober is not None else None
    ckpt_path = st.file(meta.id, checkpoint_name(epoch, step))
    checkpoints.save(ckpt_path, ckpt)
    optim_path = st.file(meta.id, optimizer_name(epoch, step))
    state: dict[str, Any] = {"epoch": epoch, "optimizer": _cpu_state(opt.state_dict())}
    if step is not None:
        state["step"] = step
        state["rng"] = torch.get_rng_state()
        if running is not None:
            state["running"] = running.state()
    if tracker is not None and tracker.vector is not None:
        state[LAMBDA_VECTOR] = torch.from_numpy(tracker.vector.astype(np.float32))
    checkpoints.save(optim_path, state)
    if tracker is not None:
        st.write_lambda_track(tracker.track)
    previous = meta.resume
    record = EpochRecord(epoch=epoch, train_loss=metrics["train_loss"], train_accuracy=metrics["train_accuracy"],
                         val_loss=metrics["val_loss"], val_accuracy=metrics["val_accuracy"],
                         seconds=metrics["seconds"], checkpoint=checkpoint_name(epoch, step),
                         sha256=file_sha256(ckpt_path), weights_sha256=checkpoints.state_hash(ckpt["state_dict"]),
                         checkpoint_train_loss=metrics.get("checkpoint_train_loss"),
                         checkpoint_train_accuracy=metrics.get("checkpoint_train_accuracy"),
                         step=step, epoch_end=epoch_end, lr=metrics.get("lr"), probe=probe)
    meta.epochs.append(record)
    meta.resume = FileRecord(optimizer_name(epoch, step), file_sha256(optim_path), epoch, step)
    if meta.retention is not None:
        apply_retention(st, meta, write=False)
    st.write_run(meta)
    if previous and previous.file != meta.resume.file:
        st.file(meta.id, previous.file).unlink(missing_ok=True)
    if meta.retention is not None:
        remove_unkept(st, meta)
    return record


def _restore(st: Store, meta: RunMeta, net: nn.Module,
             opt: torch.optim.Optimizer) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Weights and optimizer state of the last checkpoint; returns λmax's warm-start vector where it was saved and
    the running sums of an epoch a step checkpoint interrupted (the random generator's state is restored)."""
    last = meta.epochs[-1]
    ckpt = checkpoints.load_epoch(st, meta.id, last)
    net.load_state_dict(ckpt["state_dict"])
    resume = meta.resume
    if not resume or resume.key != last.key:
        raise IntegrityError(
            f"run {meta.id}: the optimizer state of {last.label} is missing, so training cannot "
            "continue exactly; train a new run (e.g. with another --seed) or keep the checkpoints it has"
        )
    state = checkpoints.load(st.file(meta.id, resume.file), resume.sha256, f"optimizer state of {last.label}")
    opt.load_state_dict(state["optimizer"])
    if isinstance(state.get("rng"), Tensor):
        torch.set_rng_state(state["rng"])
    vector = state.get(LAMBDA_VECTOR)
    running = state.get("running") if last.epoch_end is False else None
    return (vector.double().numpy() if isinstance(vector, Tensor) else None), running


def _cpu_state(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_state(v) for v in obj]
    return obj


def _move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, Tensor) and k != "step":
                state[k] = v.to(device)
