"""`landscape import`: a run made from weights trained elsewhere, so every command works on them.

The files (a plain state_dict, a dict holding one under "state_dict" or "model" as Lightning and
most training scripts save, a common key prefix such as `model.` or `module.` stripped, or
`.safetensors`) are read without running any of their code (`foreign.py`), fitted to the model,
and written as the run's checkpoints, one per epoch, with each epoch's loss and accuracy on the
training and validation sets, and with what the model computes on the run's probe samples
(`models.probes`), by which later commands recognise it. The run is content-addressed by the imported
weights' hashes (and the model and dataset): importing the same files again changes nothing. Weights
that hold NaN or infinite values are imported as they are, with one warning line on stderr.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape_cli._io import file_sha256, leave_no_trace, make_dirs, now
from landscape_cli._progress import progress_bar
from landscape_cli._version import __version__
from landscape_cli.config import TrainConfig
from landscape_cli.data import Dataset, check_block_size, dataset_record, dataset_source, load_dataset
from landscape_cli.data.losses import Loss, get_loss, loss_for_task
from landscape_cli.errors import UsageError
from landscape_cli.exchange.unpickle import checkpoint_files, epoch_numbers, match_state, read_weights
from landscape_cli.kernel.device import select_device
from landscape_cli.kernel.evaluate import evaluate_split
from landscape_cli.models import build, checkpoints, model_source, probes, takes_tokens
from landscape_cli.models.records import model_args, model_record, probe
from landscape_cli.plugins import Source
from landscape_cli.store import Store, checkpoint_name
from landscape_cli.store.meta import EpochRecord, RunMeta


@dataclass
class ImportResult:
    run_id: str
    path: Path
    meta: RunMeta
    imported: list[int] = field(default_factory=list)  # epochs written by this call (empty: it existed)

    @property
    def existed(self) -> bool:
        return not self.imported


def import_run(
    model: str,
    dataset: str,
    files: list[str | os.PathLike[str]],
    *,
    epochs: list[int] | None = None,
    activation: str = TrainConfig.activation,
    loss: str | None = None,
    block_size: int | None = None,
    device: str = "auto",
    name: str | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> ImportResult:
    """Make a run of `model` on `dataset` from checkpoint `files` (or folders of them), one per epoch.
    `block_size`: a text dataset's characters per sample (as `train` takes it; default 64).

    `epochs` gives each file's epoch (else the epoch a Lightning checkpoint stores, counted as this tool
    counts them: Lightning's `epoch=k` checkpoint, saved after k + 1 epochs of training, is epoch k + 1;
    else the single number in each file name). Nothing is written unless every file reads and fits the model.
    """
    model_src, data_src = model_source(model), dataset_source(dataset)
    if not model_src.builtin and activation != TrainConfig.activation:
        raise UsageError(f"--activation applies to the built-in models only: {model_src.ref!r} is your model")
    if takes_tokens(model_src) and activation != TrainConfig.activation:
        raise UsageError(f"--activation applies to the built-in image models only: {model_src.ref!r} keeps its GELU")
    paths = checkpoint_files([Path(f).expanduser() for f in files])
    if epochs is not None:
        epoch_numbers(paths, epochs)  # a bad --epochs is refused before any file is read
    found_files = [read_weights(path) for path in paths]
    numbers = epoch_numbers(paths, epochs, found_files)
    order = sorted(range(len(paths)), key=lambda i: numbers[i])
    check_block_size(data_src, block_size)
    data = load_dataset(data_src, data_dir, block_size=block_size)
    scorer = get_loss(loss) if loss is not None else loss_for_task(data.task)
    scorer.check_targets(data.train_y, f"dataset {data_src.ref!r}")
    probe(model_src, data_src, data, activation, scorer)
    args = model_args(model_src, data, activation)
    net = build(model_src, args)
    expected = net.state_dict()
    states, origins = [], []
    for i in order:  # read and fit every file before anything is written
        found = found_files[i]
        states.append(match_state(found.state, expected, paths[i]))
        origins.append({"epoch": numbers[i], "file": str(paths[i].resolve()), "sha256": file_sha256(paths[i]),
                        "layout": found.source, "reader": found.reader, "placeholders": found.placeholders})
    hashes = [f"{numbers[i]}:{checkpoints.state_hash(state)}" for i, state in zip(order, states, strict=True)]
    config = TrainConfig(model_src.name, data_src.name, batch_size=0, optimizer="none", lr=0.0,
                         activation=activation, model_sha256=model_src.sha256, data_sha256=data.sha256, loss=loss,
                         imported=tuple(hashes), block_size=data.block_size)
    return write_run(store, config, model_src, args, net, data_src, data, scorer, states, [numbers[i] for i in order],
                     origins, name=name, device=device, progress=progress)


def write_run(store: Store | str | os.PathLike[str] | None, config: TrainConfig, model_src: Source,
              args: dict[str, Any], net: nn.Module, data_src: Source, data: Dataset, scorer: Loss,
              states: list[dict[str, torch.Tensor]], epochs: list[int], origins: list[dict[str, Any]], *,
              name: str | None, device: str, progress: bool, versions: dict[str, str] | None = None) -> ImportResult:
    """The imported run in the store: `states` (fitted to `net`, in training order) as the checkpoints of
    `epochs`, each scored on both splits, run.json written last (a failure half-way leaves no trace); a run
    that exists already is only (re)named."""
    st = Store.of(store)
    run_id = config.run_id
    if name is not None:
        st.check_name(name, run_id)
    if st.has_run(run_id):
        meta = st.read_run(run_id)
        if name is not None and meta.name != name:
            meta.name = name
            st.write_run(meta)
        return ImportResult(run_id, st.run_dir(run_id), meta)
    st.ensure_writable()
    dev = select_device(device)
    nonfinite_warning(states, epochs, origins)
    run_dir = st.run_dir(run_id)
    new_dirs = [] if run_dir.exists() else [run_dir]
    meta = RunMeta(
        id=run_id, name=name, config=config, model=model_record(model_src, args, net),
        dataset=dataset_record(data_src, data), epochs_requested=len(states) - 1, epochs=[], resume=None,
        versions={"landscape": __version__, "torch": torch.__version__, "python": platform.python_version(),
                  **(versions or {})},
        created=now(),
    )
    meta.model["imported"] = origins
    with leave_no_trace(new_dirs, st.run_file(run_id)):
        make_dirs(st.checkpoints_dir(run_id))
        inputs = probes.write_inputs(st, run_id, data)
        with progress_bar(f"import {run_id}", len(states), unit="checkpoints", enabled=progress) as bar:
            for epoch, state in zip(epochs, states, strict=True):
                t0 = time.perf_counter()
                net.load_state_dict(state)
                net.to(dev)
                train_loss, train_acc = evaluate_split(net, data, "train", dev, scorer=scorer)
                val_loss, val_acc = evaluate_split(net, data, "val", dev, scorer=scorer)
                ckpt = checkpoints.make_checkpoint(net, meta.model, meta.dataset, config.identity(), epoch)
                path = st.file(run_id, checkpoint_name(epoch))
                checkpoints.save(path, ckpt)
                meta.epochs.append(EpochRecord(
                    epoch=epoch, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                    val_accuracy=val_acc, seconds=round(time.perf_counter() - t0, 3), checkpoint=checkpoint_name(epoch),
                    sha256=file_sha256(path), weights_sha256=checkpoints.state_hash(ckpt["state_dict"]),
                    checkpoint_train_loss=train_loss, checkpoint_train_accuracy=train_acc,  # (the same: at it)
                    probe=probes.record(net, inputs)))
                bar.advance()
        st.write_run(meta)  # last: a run that failed half-way leaves no trace
    return ImportResult(run_id, run_dir, meta, list(epochs))


def nonfinite_warning(states: list[dict[str, torch.Tensor]], epochs: list[int], origins: list[dict[str, Any]]) -> None:
    """One warning line on stderr where imported weights hold NaN or infinite values (they are imported as they are:
    every loss of such a checkpoint is NaN)."""
    bad: list[tuple[int, str, int, str]] = []
    for epoch, state, origin in zip(epochs, states, origins, strict=True):
        counts = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
        total = sum(counts.values())
        if total:
            first = next(k for k, n in counts.items() if n)
            bad.append((epoch, Path(str(origin.get("file", "?"))).name, total, first))
    if not bad:
        return
    which = ", ".join(f"{e} ({f})" for e, f, _, _ in bad)
    total = sum(n for _, _, n, _ in bad)
    label = "epoch" if len(bad) == 1 else "epochs"
    print(f"Warning: the weights of {label} {which} hold {total:,} NaN or infinite values (the first in "
          f"{bad[0][3]}): every loss there will be NaN; they are imported as they are (was the file saved after "
          "training diverged?)", file=sys.stderr, flush=True)
