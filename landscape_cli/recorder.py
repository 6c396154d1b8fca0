"""The Recorder: a run in the store made from any training loop, its checkpoints kept as training goes.

`landscape train` trains its own recipe; research trains in its own loop (or in Lightning, or in Hugging
Face's Trainer: see `integrations/`). A `Recorder`, made before the first optimizer step, keeps a run of that
training in the store: the initial weights as the checkpoint at step 0, then a checkpoint every `every_steps`
optimizer steps and at each epoch's end (`epoch_end()`), each with its step, the epochs completed, the learning
rate of the optimizer's first parameter group and the training loss seen (the mean of the losses passed to
`step()` since the checkpoint before). Every command then works on the run in any later process, with no
training script: the run records how to rebuild the model (a factory reference that `models.build` calls, or a
Hugging Face config) and which data scores it (a built-in dataset, a dataset factory or text:PATH), as
`landscape import` records them, and the recorder refuses at once, in one line, a factory whose model does not
take the training model's weights.

Identity. The run id covers the initial weights (their hash), the optimizer's class and hyper-parameters, the
model and data references, `every_steps`, the loss and an optional `tag` (`TrainConfig.recorded`). Running the
same script again finds the same run: at the steps the run already holds the recorder only checks that the
weights are bitwise the recorded ones (nothing is written), and past its last checkpoint it records again, so a
longer training, or one killed and started over, extends the run. Weights that differ at a recorded step are
refused in one line (the training no longer repeats the recorded one: seed it, or record it under another tag).

Writes follow `train`'s order: the checkpoint file (written under a temporary name and renamed), the tracked
λmax, then run.json, so a SIGKILL at any moment keeps every checkpoint recorded before it, and a new run that
fails before its step 0 leaves no trace. The recorder copies the weights when a checkpoint is due and a thread
writes the files while training goes on (one checkpoint after the other), so a checkpoint costs the loop its copy
and probe outputs, not its serialization, hashes and fsyncs; `close()`, `meta` and the interpreter's exit wait for
the writes handed over, and a write that fails is raised at the loop's next call. One recorder (or `train`) per run
at a time: the run's lock is held until `close()`.

The checkpoints are written from a copy of the model that `build()` makes, exactly as later commands rebuild
it, so a grid of a recorded run equals, value for value, the grid of the same weights imported with
`landscape import`. The copy lives on the CPU, or on the training model's device when λmax is tracked. Each
checkpoint also records what that copy computes on the run's probe samples (`models.probes`: a few training samples
of `data`, saved with the run), by which later commands recognise the model they rebuild.
"""

from __future__ import annotations

import inspect
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from landscape_cli._io import file_sha256, leave_no_trace, make_dirs, now, remove_partials
from landscape_cli._version import __version__
from landscape_cli.config import MAX_CHECKPOINT_EVERY, HessianConfig, TrainConfig, check_batches, positive_int
from landscape_cli.data import check_block_size, dataset_record, dataset_source, load_dataset
from landscape_cli.data.losses import get_loss, loss_for_task
from landscape_cli.errors import IntegrityError, LandscapeError, UsageError
from landscape_cli.exchange.unpickle import match_state
from landscape_cli.kernel.evaluate import evaluate_split
from landscape_cli.models import build, checkpoints, hf, model_source, probes
from landscape_cli.models.records import check_fits, model_args, model_record
from landscape_cli.plugins import Source, one_line
from landscape_cli.store import Store, checkpoint_name
from landscape_cli.store.locks import FileLock
from landscape_cli.store.meta import EpochRecord, LambdaTrack, RunMeta
from landscape_cli.store.retention import apply_retention, parse_keep, remove_unkept
from landscape_cli.training import LambdaTracker, continued_settings, lambda_settings

NEW, VERIFYING, RESUMED = "new", "verifying", "resumed"  # Recorder.status
# what a framework's callback takes from its Trainer, not from its own options
FROM_TRAINER = frozenset({"model", "optimizer", "model_factory", "data", "every_steps"})
LAMBDA_TAG = "landscape/lambda_max"  # the TensorBoard scalar of the tracked λmax
# param-group keys that choose an implementation, not the numbers (left out of the run's identity)
IMPLEMENTATION_KEYS = frozenset({"params", "foreach", "fused", "capturable", "differentiable"})


@dataclass(frozen=True)
class ModelRef:
    """How every later process rebuilds the recorded model: a source `models.build` resolves, and the arguments it
    is built with (None: a factory's `input_shape` and `num_outputs`, or a built-in's arguments, from the data).

    `Recorder(model_factory=...)` takes a reference string (`pkg.module:factory`, `./file.py:factory`, a built-in
    model's name); the integrations pass a ModelRef (a Hugging Face model's config, `integrations.huggingface`)."""

    source: Source
    args: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)  # library releases the run records beside torch's
    hparams: dict[str, Any] | None = None  # keyword arguments the factory is called with (a LightningModule's)


class Recorder:
    """Keeps a run of a training loop in the store: step 0 now, then a checkpoint every `every_steps` optimizer steps
    (`step()`) and at each epoch's end (`epoch_end()`). Usable as a context manager (closed on exit).

    model, optimizer: what is trained (the model's `state_dict()` is what is checkpointed; the learning rate recorded
    is that of the optimizer's first parameter group). Make the recorder before the first optimizer step.
    model_factory: how later processes rebuild the model: `pkg.module:factory` or `./file.py:factory` called with
    `input_shape` and `num_outputs` (as `landscape train` and `import` call it), or a built-in model's name. Its
    model must take `model.state_dict()` (a common key prefix such as `net.` is stripped, as `import` does).
    data: what scores the run (grids, Hessians): a built-in dataset (`digits`), a dataset factory or text:PATH
    (`block_size`); `loss` as `landscape train --loss`.
    every_steps: a checkpoint every N optimizer steps (None: at epoch ends only). tag: any text that tells apart
    trainings that start from the same weights with the same optimizer (another data order, schedule...).
    track_lambda_max=K: λmax of the training loss at step 0 and every K steps, as `train --track-lambda-max` (on the
    train split's first `track_batches` batches of `track_batch_size`, default `landscape hessian`'s batch size),
    stored with the run; `writer`: a TensorBoard SummaryWriter that also receives each value (`landscape/lambda_max`).
    keep: the retention policy, as `train --keep` (`every=K,last=N,epochs`). data_dir: where a built-in dataset is
    downloaded (`--data-dir`). verbose: one line on stderr when the run is made, found, verified and closed
    (`status` says the same: "new", "verifying", "resumed").
    """

    status: str  # NEW: this recorder made the run; VERIFYING: a rerun, at steps the run holds; RESUMED: past them
    _meta: RunMeta
    _tracker: LambdaTracker | None
    _probes: probes.ProbeInputs | None  # the run's probe samples (None: a run recorded before probes were)
    _until: int  # the step of the run's last checkpoint: up to it a rerun verifies, after it it records

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        model_factory: str | ModelRef,
        data: str,
        every_steps: int | None = None,
        store: Store | str | os.PathLike[str] | None = None,
        name: str | None = None,
        loss: str | None = None,
        block_size: int | None = None,
        tag: str | None = None,
        track_lambda_max: int | None = None,
        track_batches: int = 1,
        track_batch_size: int | None = None,
        writer: Any = None,
        keep: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        verbose: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UsageError(f"Recorder: model is a {type(model).__name__}, not a torch.nn.Module")
        optimizer = unwrap_optimizer(optimizer)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(f"Recorder: optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
        if every_steps is not None:
            _whole(every_steps, "every_steps")
            positive_int(every_steps, "every_steps", maximum=MAX_CHECKPOINT_EVERY)
        if tag is not None and (not isinstance(tag, str) or not tag.strip()):
            raise UsageError(f"Recorder: tag={tag!r}: give a non-empty text (or None)")
        policy = parse_keep(keep)
        if loss is not None:
            get_loss(loss)
        ref = model_factory if isinstance(model_factory, ModelRef) else ModelRef(model_source(model_factory))
        data_src = dataset_source(data)
        check_block_size(data_src, block_size)
        dataset = load_dataset(data_src, data_dir, block_size=block_size)
        scorer = get_loss(loss) if loss is not None else loss_for_task(dataset.task)
        scorer.check_targets(dataset.train_y, f"dataset {data_src.ref!r}")
        settings = None
        if track_lambda_max is not None:
            batch_size = track_batch_size if track_batch_size is not None else HessianConfig.batch_size
            for value, option in ((track_lambda_max, "track_lambda_max"), (track_batches, "track_batches"),
                                  (batch_size, "track_batch_size")):
                _whole(value, option)
                positive_int(value, option)
            settings = lambda_settings(track_lambda_max, track_batches, batch_size)
            check_batches(track_batches, batch_size, False, "train", dataset_record(data_src, dataset))

        self.model, self.optimizer, self.every_steps = model, optimizer, every_steps
        self.writer, self.verbose = writer, verbose
        self.steps = 0  # optimizer steps counted by step()
        self.epochs = 0  # epochs completed (epoch_end() calls)
        self.written: list[int] = []  # steps whose checkpoints this recorder wrote
        self.verified: list[int] = []  # steps whose recorded checkpoints this training repeated
        self._ref, self._data, self._scorer = ref, dataset, scorer
        self._losses: list[tuple[Tensor | float, float]] = []  # (loss, steps it stands for) since the last checkpoint
        self._since = time.perf_counter()
        self._closed = False
        self._writing: threading.Thread | None = None  # the thread writing the newest checkpoint handed over
        self._failed: BaseException | None = None  # what a write raised (raised again in the loop's thread)
        self._loaded_at = -1  # the step whose weights the scoring copy holds
        self._last_key = 0  # the step whose weights were last written or verified (step 0: by the constructor)
        self._device = _device_of(model) if settings is not None else torch.device("cpu")
        args = ref.args if ref.args is not None else model_args(ref.source, dataset, TrainConfig.activation)
        if ref.hparams is not None:  # recorded with the run: every later process calls the factory with them
            args = {**args, "hparams": ref.hparams}
        self._net = self._build(args)
        self._expected = self._net.state_dict()
        try:
            initial = self._snapshot()
        except UsageError as e:  # match_state's or fit_state's line, said of the factory rather than of a file
            detail = str(e).removesuffix(": give the model and arguments the file was saved from")
            detail = detail.partition("do not fit the model")[2].lstrip(": ") or detail
            raise UsageError(f"model_factory {ref.source.ref!r} does not build the architecture being trained "
                             f"({type(model).__name__}): {detail}: give a factory whose model takes "
                             f"{type(model).__name__}'s state_dict") from None
        self._probe(data_src)

        group = optimizer.param_groups[0]
        config = TrainConfig(
            ref.source.name, data_src.name, batch_size=0, optimizer=type(optimizer).__name__.lower(),
            lr=_number(group.get("lr")), momentum=_number(group.get("momentum")),
            weight_decay=_number(group.get("weight_decay")), model_sha256=ref.source.sha256,
            data_sha256=dataset.sha256, loss=loss, block_size=dataset.block_size, checkpoint_every=every_steps,
            recorded={"initial_weights": initial, "optimizer": f"{type(optimizer).__module__}."
                      f"{type(optimizer).__qualname__}", "param_groups": [_hyper(g) for g in optimizer.param_groups],
                      **({"tag": tag} if tag is not None else {})})
        self.store = Store.of(store)
        self.run_id = config.run_id
        st = self.store
        if name is not None:
            st.check_name(name, self.run_id)
        st.ensure_writable()
        self.path = st.run_dir(self.run_id)
        new_dirs = [] if self.path.exists() else [self.path]
        with leave_no_trace(new_dirs, st.run_file(self.run_id)):
            make_dirs(st.checkpoints_dir(self.run_id))
            self._lock: FileLock = st.run_lock(self.run_id).acquire(
                "one recorder (or `landscape train`) per run at a time: wait for it or stop it")
            try:
                remove_partials(st.checkpoints_dir(self.run_id))
                if st.has_run(self.run_id):
                    self._reopen(name, policy, settings, initial)
                else:
                    self._create(config, args, data_src, name, policy, settings)
            except BaseException:
                self._lock.release()
                raise

    # -- the training loop's calls --

    def add_loss(self, loss: Tensor | float, steps: float = 1.0) -> None:
        """A training loss seen, standing for `steps` optimizer steps (a logged mean over several); a tensor of
        several values counts as its mean. Kept on its device until the next checkpoint (no synchronization)."""
        value = loss.detach().float().mean() if isinstance(loss, Tensor) else float(loss)
        self._losses.append((value, float(steps)))

    def step(self, loss: Tensor | float | None = None) -> None:
        """Count one optimizer step (call it after `optimizer.step()`), with the loss of its mini-batch where given;
        λmax is estimated every `track_lambda_max` steps and a checkpoint saved every `every_steps`."""
        self._check_open()
        if self._failed is not None:
            self._drain()
        if loss is not None:
            self.add_loss(loss)
        self.steps += 1
        tracker = self._tracker
        if tracker is not None and self.steps > self._until and self.steps % int(tracker.track.settings["every"]) == 0:
            self._measure()
        if self.every_steps is not None and self.steps % self.every_steps == 0:
            self._checkpoint(epoch_end=False)

    def epoch_end(self) -> None:
        """An epoch is complete: a checkpoint at this step (the one `every_steps` saved here becomes the epoch's)."""
        self._check_open()
        self.epochs += 1
        self._checkpoint(epoch_end=True)

    def log_landscape(self, *, width: int = 11, span: float = 1.0, batches: int = 1, batch_size: int = 256,
                      stats: bool = True, **options: Any) -> Any:
        """The landscape of the newest checkpoint into `writer` (the SummaryWriter given to the recorder): a random
        filter-normalized plane of `width`² points (`span`, on `batches` train batches; `options` are `grid`'s, e.g.
        `dims=1`, `pairs=1`), computed as `landscape grid RUN --at-steps STEP` computes it (the grid is kept in the
        store, one grid growing a checkpoint per call) and logged as `landscape plot --tensorboard` logs it: the
        figure as an image and, with `stats`, its sharpness numbers as scalars, at the checkpoint's step. Returns
        what was logged. Call it after `step()` or `epoch_end()` made a checkpoint (e.g. every few epochs)."""
        from landscape_cli.engine.compute import grid
        from landscape_cli.views.tensorboard import log_grid

        if self.writer is None:
            raise UsageError("Recorder.log_landscape needs a TensorBoard writer: Recorder(..., writer=SummaryWriter())")
        self._drain()  # the checkpoint in run.json before the grid reads it
        key = self._last_key
        options.setdefault("pairs", 1)
        made = grid(self.run_id, at_steps=[key], width=width, span=span, batches=batches, batch_size=batch_size,
                    store=self.store, progress=False, **options)
        return log_grid(self.writer, self.run_id, grid=made.grid_id, at_steps=[key], store=self.store, stats=stats)

    def close(self) -> None:
        """Release the run (its tracked λmax written); the checkpoints are already in the store. Idempotent."""
        if self._closed:
            return
        self._drain()  # a failed write closes the recorder there; the lock is never released while a write goes on
        self._closed = True
        try:
            if self._tracker is not None and self.steps > self._until:
                self.store.write_lambda_track(self._tracker.track)
        finally:
            self._lock.release()
        held = [r.key for r in self.meta.epochs]
        verified = f", {len(self.verified)} verified" if self.verified else ""
        self._say(f"run {self.run_id}: {len(self.written)} checkpoints written{verified}; it holds "
                  f"{len(held)} checkpoints, steps {held[0]}-{held[-1]}")

    def __repr__(self) -> str:
        return (f"Recorder(run {self.run_id}, step {self.steps}, epoch {self.epochs}, {self.status}"
                f"{', closed' if self._closed else ''})")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def meta(self) -> RunMeta:
        """The run's metadata as this recorder last wrote or read it (once the checkpoints handed over are written)."""
        self._drain()
        return self._meta

    @property
    def closed(self) -> bool:
        return self._closed

    # -- making or finding the run --

    def _create(self, config: TrainConfig, args: dict[str, Any], data_src: Source, name: str | None,
                policy: dict[str, Any] | None, settings: dict[str, Any] | None) -> None:
        """A new run: its metadata and the checkpoint of step 0, scored on both splits as `train`'s epoch 0 is."""
        st = self.store
        self._meta = RunMeta(
            id=self.run_id, name=name, config=config, model=model_record(self._ref.source, args, self._net),
            dataset=dataset_record(data_src, self._data), epochs_requested=0, epochs=[], resume=None,
            versions={"landscape": __version__, "torch": torch.__version__, "python": platform.python_version(),
                      **self._ref.versions},
            created=now(), retention=policy)
        self._until = -1
        self.status = NEW
        self._probes = probes.write_inputs(st, self.run_id, self._data)
        self._tracker = self._make_tracker(settings, [])
        if self._tracker is not None:
            self._measure()
        with torch.random.fork_rng(devices=_rng_devices(self._device)):
            train_loss, train_acc = evaluate_split(self._net, self._data, "train", self._device, scorer=self._scorer)
            val_loss, val_acc = evaluate_split(self._net, self._data, "val", self._device, scorer=self._scorer)
        self._write(0, True, {"train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                              "val_accuracy": val_acc, "checkpoint_train_loss": train_loss,
                              "checkpoint_train_accuracy": train_acc}, wait=True)
        when = (f"every {self.every_steps} steps and at each epoch end" if self.every_steps is not None
                else "at each epoch end")
        self._say(f"recording run {self.run_id} in {st.root} (step 0 saved; a checkpoint {when})")

    def _reopen(self, name: str | None, policy: dict[str, Any] | None, settings: dict[str, Any] | None,
                initial: str) -> None:
        """The run this training made before: checked, renamed or given the new retention policy, and followed."""
        st = self.store
        meta = st.read_run(self.run_id)
        self._meta = meta
        self._probes = probes.run_inputs(st, self.run_id, meta.epochs)
        first = meta.record(0)
        if meta.config.recorded is None or first is None or first.weights_sha256 != initial:
            raise IntegrityError(f"run {self.run_id} in {st.root} is not the recording of this training (its run.json "
                                 "was edited or damaged): run `landscape verify`")
        track = st.read_lambda_track(self.run_id)
        recorded = track.settings if track is not None else None
        settings = continued_settings(recorded, settings)
        if recorded != settings:
            raise UsageError(f"run {self.run_id} was recorded with {_describe(recorded)}: record it with the same "
                             f"(asked: {_describe(settings)})")
        changed = False
        if name is not None and meta.name != name:
            meta.name, changed = name, True
        if policy is not None and meta.retention != policy:
            meta.retention = policy
            apply_retention(st, meta, write=False)
            changed = True
        if changed:
            st.write_run(meta)
            remove_unkept(st, meta)
        self._until = meta.epochs[-1].key
        kept = [p for p in track.values if p.step <= self._until] if track is not None else []
        self._tracker = self._make_tracker(settings, kept)
        for point in kept:
            self._log(point.step, point.value)
        self.verified.append(0)
        if self._until == 0:
            self.status = RESUMED
            self._say(f"run {self.run_id} holds step 0 only (the same initial weights): recording from there")
        else:
            self.status = VERIFYING
            self._say(f"run {self.run_id} already holds steps 0-{self._until}: checking that this training repeats "
                      f"them (nothing is written up to step {self._until}), then recording after it")

    def _make_tracker(self, settings: dict[str, Any] | None, kept: list[Any]) -> LambdaTracker | None:
        if settings is None:
            return None
        return LambdaTracker(LambdaTrack(self.run_id, settings, kept), self._net, self._data, self._device,
                             self._scorer, None)

    # -- checkpoints --

    def _checkpoint(self, epoch_end: bool) -> None:
        key = self.steps
        if key <= self._until:  # a step the run holds (or the one just saved, an epoch ending there)
            self._verify(key, epoch_end)
            return
        self._load()  # hashed once, as the checkpoint is made
        self._write(key, epoch_end, {"train_loss": self._mean_loss(), "train_accuracy": None, "val_loss": None,
                                     "val_accuracy": None})

    def _write(self, key: int, epoch_end: bool, metrics: dict[str, Any], wait: bool = False) -> None:
        """Checkpoint file, tracked λmax, then run.json (and the retention policy applied): `train`'s order.

        The weights are copied and the probe outputs computed here; the files are written by a thread while training
        goes on (writes in order, one after the other: `_submit`), so that a checkpoint costs the loop its copy,
        not its serialization, hashes and fsyncs. `wait`: return once it is written."""
        st, meta = self.store, self._meta
        ckpt = checkpoints.make_checkpoint(self._net, meta.model, meta.dataset, meta.config.identity(), self.epochs,
                                           key)  # a copy of the weights: the thread writes what they are now
        probe = probes.record(self._net, self._probes) if self._probes is not None else None
        name, epochs = checkpoint_name(self.epochs, key), self.epochs
        lr = _number(self.optimizer.param_groups[0].get("lr"))
        held = self._tracker.track if self._tracker is not None else None  # its values as they are now
        track = LambdaTrack(held.run, held.settings, list(held.values)) if held is not None else None
        now_s = time.perf_counter()
        seconds, self._since = round(now_s - self._since, 3), now_s
        self._until = self._last_key = key
        self.written.append(key)

        def write() -> None:
            path = st.file(self.run_id, name)
            checkpoints.save(path, ckpt)
            if track is not None:
                st.write_lambda_track(track)
            meta.epochs.append(EpochRecord(
                epoch=epochs, train_loss=metrics["train_loss"], train_accuracy=metrics["train_accuracy"],
                val_loss=metrics["val_loss"], val_accuracy=metrics["val_accuracy"], seconds=seconds,
                checkpoint=name, sha256=file_sha256(path), weights_sha256=checkpoints.state_hash(ckpt["state_dict"]),
                checkpoint_train_loss=metrics.get("checkpoint_train_loss"),
                checkpoint_train_accuracy=metrics.get("checkpoint_train_accuracy"),
                step=key, epoch_end=epoch_end, lr=lr, probe=probe))
            self._save_meta()

        self._submit(write)
        if wait:
            self._drain()

    def _submit(self, write: Callable[[], None]) -> None:
        """`write` in a thread of its own, once the writes before it are done (none after a failed one). The thread
        is not a daemon: a process whose script ends or raises still writes what it was handed before exiting."""
        previous = self._writing

        def run() -> None:
            if previous is not None:
                previous.join()
            if self._failed is not None:
                return
            try:
                write()
            except BaseException as e:  # raised in the training loop's thread, at its next call
                self._failed = e

        thread = threading.Thread(target=run, name=f"landscape-recorder-{self.run_id}")
        thread.start()
        self._writing = thread

    def _drain(self) -> None:
        """Wait for the checkpoints handed to the writing thread; a write that failed is raised here (the recorder is
        then closed, its lock released: the run holds every checkpoint before the failed one)."""
        thread, self._writing = self._writing, None
        if thread is not None:
            thread.join()
        if self._failed is not None:
            error, self._failed = self._failed, None
            if not self._closed:
                self._closed = True
                self._lock.release()
            raise error

    def _save_meta(self) -> None:
        st, meta = self.store, self._meta
        meta.epochs_requested = max(meta.epochs_done, 0)
        if meta.retention is not None:
            apply_retention(st, meta, write=False)
        st.write_run(meta)
        if meta.retention is not None:
            remove_unkept(st, meta)

    def _verify(self, key: int, epoch_end: bool) -> None:
        """A step the run holds: the weights must be the recorded ones. Nothing is written, except that a checkpoint
        saved by every_steps where an epoch then ends (just now, or before a kill) is recorded as the epoch's end."""
        self._drain()
        meta = self._meta
        record = meta.record(key)
        if record is None:
            where = f"the end of epoch {self.epochs}" if epoch_end else f"every {self.every_steps} steps"
            self._refuse(UsageError(
                f"run {self.run_id} has no checkpoint at step {key}, where this training saves one ({where}); it "
                f"holds steps {_spans([r.key for r in meta.epochs])}: its epochs were of other lengths; record this "
                "training as another run with Recorder(..., tag=...)"))
        assert record is not None
        if key != self._last_key:  # steps were taken since the weights were last written or checked
            digest = self._snapshot()
            if digest != record.weights_sha256:
                self._refuse(IntegrityError(
                    f"run {self.run_id}: the weights at step {key} differ from its recorded checkpoint (weights sha256 "
                    f"{digest[:12]}, recorded {record.weights_sha256[:12]}): this training no longer repeats the "
                    "recorded one (data order, schedule, edited code or nondeterministic kernels); seed it to repeat "
                    "it, or record it as another run with Recorder(..., tag=...)"))
            self._losses.clear()
            self._since = time.perf_counter()
            self.verified.append(key)
            self._last_key = key
        if epoch_end and record.epoch_end is False:
            record.epoch, record.epoch_end = self.epochs, True
            self._save_meta()
        elif epoch_end and record.epoch != self.epochs:
            self._refuse(UsageError(
                f"run {self.run_id} recorded step {key} as the end of epoch {record.epoch}, this training as the end "
                f"of epoch {self.epochs}: record it as another run with Recorder(..., tag=...)"))
        if key == self._until and self.status == VERIFYING:
            self.status = RESUMED
            self._say(f"run {self.run_id}: steps 0-{key} verified (the same weights): recording from step {key} on")

    def _refuse(self, error: LandscapeError) -> None:
        """Close the recorder (its lock released, nothing written) and raise the one-line error."""
        self.close()
        raise error

    # -- the scoring copy of the model --

    def _build(self, args: dict[str, Any]) -> nn.Module:
        """The model as later commands rebuild it (the user's random number generators untouched)."""
        ref = self._ref.source.ref
        try:
            with torch.random.fork_rng(devices=[]):
                net = build(self._ref.source, args)
        except LandscapeError:
            raise
        except Exception as e:  # the user's factory failed: say how it was called
            raise UsageError(f"model_factory {ref!r} failed when called as later commands call it "
                             f"({_call_text(args)}) with {one_line(e)}") from e
        return net.float().to(self._device).eval()

    def _snapshot(self) -> str:
        """The training model's weights loaded into the scoring copy; their hash (that of the checkpoint they make)."""
        self._load()
        return checkpoints.state_hash(self._net.state_dict())

    def _load(self) -> None:
        """The training model's weights loaded into the scoring copy (once per step)."""
        if self._loaded_at != self.steps:
            with torch.no_grad():
                state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                self._net.load_state_dict(self._fit(state))
            self._loaded_at = self.steps

    def _fit(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._ref.source.kind == hf.KIND and isinstance(self._net, hf.CausalLM):
            return hf.fit_state(state, self._net, f"the model {type(self.model).__name__}")
        return match_state(state, self._expected, Path(type(self.model).__name__))

    def _probe(self, data_src: Source) -> None:
        """The first two training samples scored before anything is written: a model that does not fit the data is
        one line now, not a failure in a later `landscape grid`."""
        x = self._data.prepare(self._data.train_x[:2], self._device)
        y = self._data.train_y[:2].to(self._device)
        with torch.random.fork_rng(devices=_rng_devices(self._device)):  # the user's training draws on
            check_fits(self._net, x, y, self._scorer, f"the model {self._ref.source.ref!r}",
                       f"dataset {data_src.ref!r}", {"train": self._data.train_y, "val": self._data.val_y})

    def _measure(self) -> None:
        tracker = self._tracker
        assert tracker is not None
        self._load()
        tracker.measure(self._net, self.steps, self.epochs + 1 if self.steps else 0)  # the epoch in progress, as train
        point = tracker.track.values[-1]
        self._log(point.step, point.value)

    def _log(self, step: int, value: float) -> None:
        if self.writer is not None and math.isfinite(value):
            self.writer.add_scalar(LAMBDA_TAG, value, global_step=step)

    def _mean_loss(self) -> float:
        """The mean of the losses seen since the last checkpoint, weighted by the steps each stands for (NaN: none)."""
        losses, self._losses = self._losses, []
        total = sum(w for _, w in losses)
        if not total:
            return float("nan")
        return math.fsum(float(v) * w for v, w in losses) / total

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"the recorder of run {self.run_id} is closed: make a new Recorder to record more")

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"landscape: {text}", file=sys.stderr, flush=True)


def landscape_logging(every: int | None, grid: dict[str, Any] | None, options: dict[str, Any],
                      what: str) -> tuple[int | None, dict[str, Any]]:
    """A callback's `landscape_every` (epochs between two landscapes logged to the writer) and `landscape` (the
    options of `Recorder.log_landscape`), checked: one line without a writer, or for a count that is not whole."""
    if every is None:
        return None, dict(grid or {})
    _whole(every, "landscape_every")
    positive_int(every, "landscape_every")
    if options.get("writer") is None:
        raise UsageError(f"{what}(landscape_every={every}) logs landscapes to TensorBoard: give writer=SummaryWriter()")
    return every, dict(grid or {})


def log_when_due(recorder: Recorder, every: int | None, grid: dict[str, Any]) -> None:
    """After an epoch-end checkpoint: its landscape into the writer every `every` epochs."""
    if every is not None and recorder.epochs % every == 0:
        recorder.log_landscape(**grid)


def callback_options(options: dict[str, Any], what: str) -> dict[str, Any]:
    """A framework callback's extra options: the Recorder's, less what the callback takes itself (one line else)."""
    allowed = set(inspect.signature(Recorder).parameters) - FROM_TRAINER
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(f"{what}: unexpected option {unknown[0]!r}: the options are the Recorder's: "
                         f"{', '.join(sorted(allowed))}")
    return options


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside the wrappers frameworks hand out (Lightning's LightningOptimizer, accelerate's
    AcceleratedOptimizer): its class and hyper-parameters are what the run records."""
    for _ in range(4):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer


def _whole(value: Any, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{option} must be a whole number, got {value!r}")


def _number(value: Any) -> float:
    """A hyper-parameter as a float (a tensor learning rate included; absent: 0)."""
    if value is None:
        return 0.0
    return float(value.item() if isinstance(value, Tensor) else value)


def _plain(value: Any) -> Any:
    """A hyper-parameter as JSON the run id can cover: numbers, text, lists; an object by its type's name only (never
    by its address, which changes from one process to the next)."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    """A parameter group's hyper-parameters (what changes the numbers) and the size of its parameters."""
    out = {str(k): _plain(v) for k, v in sorted(group.items()) if k not in IMPLEMENTATION_KEYS}
    params = list(group.get("params", []))
    return {**out, "tensors": len(params), "elements": sum(int(p.numel()) for p in params)}


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None and first.device.type != "meta" else torch.device("cpu")


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def _call_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in args.items()
                     if k in ("input_shape", "num_outputs", "in_channels", "num_classes", "image_size"))


def _describe(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return "no λmax tracking"
    return (f"track_lambda_max={settings['every']}, track_batches={settings['batches']}, "
            f"track_batch_size={settings['batch_size']}")


def _spans(keys: list[int]) -> str:
    """The steps a run holds, in one short phrase: "0-450 (12 checkpoints)"."""
    return f"{keys[0]}-{keys[-1]} ({len(keys)} checkpoints)" if len(keys) > 1 else str(keys[0])

