"""Typed metadata of runs and grids (run.json, grid.json), with a format version checked on read.

Every reader goes through `RunMeta.from_json` / `GridMeta.from_json`: a missing key, a wrong type or
a format this release does not know is an `IntegrityError` naming the file, never a `KeyError` deep
in a command. Older formats are migrated in memory when read and written in the current format the
next time the file is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from landscape_cli.config import CurveConfig, GridConfig, HessianConfig, TrainConfig
from landscape_cli.errors import GridStateError, IntegrityError, UsageError

RUN_FORMAT = 1
GRID_FORMAT = 2  # 1: landscape 0.1.0 (2-D random grids only); 2: adds "axes" and "kind" records
GRID_FORMATS_READ = (1, 2)


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: Path | str, label: str | None = None) -> Any:
    """`d[key]` of `kind`; else one IntegrityError naming the file and the field (`label`, default `key`)."""
    name = label or key
    if not isinstance(d, dict) or key not in d:
        raise IntegrityError(f"{where} has no {name!r} (damaged or not written by landscape): run `landscape verify`")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise IntegrityError(f"{where}: {name!r} is {text}, not the expected type (damaged): run `landscape verify`")
    return value


def _format(d: Any, known: tuple[int, ...], where: Path | str) -> int:
    fmt = _need(d, "format", int, where)
    if fmt not in known:
        newer = fmt > max(known)
        raise IntegrityError(
            f"{where} has format {fmt}, which this landscape does not know"
            + (": it was written by a newer release; upgrade landscape to read it" if newer else
               " (damaged): run `landscape verify`")
        )
    return int(fmt)


def _optional(d: Any, key: str, kind: type | tuple[type, ...], where: Path | str, label: str | None = None) -> Any:
    """`d[key]` if it is of `kind`; None where it is absent or null (a wrong type: one IntegrityError)."""
    if not isinstance(d, dict) or d.get(key) is None:
        return None
    return _need(d, key, kind, where, label)


def _bad(where: Path | str, key: str, value: Any, expected: str) -> IntegrityError:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return IntegrityError(f"{where}: {key!r} is {text}, not {expected} (damaged): run `landscape verify`")


def _count(value: Any) -> bool:
    """Whether `value` is an int >= 0 (a checkpoint's key, a pair, a count), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _keys(d: Any, key: str, where: Path | str) -> list[int]:
    """A list of checkpoint keys (epochs, or steps): ints >= 0, each once."""
    values = _need(d, key, list, where)
    if not all(_count(v) for v in values) or len(set(values)) != len(values):
        raise _bad(where, key, values, "a list of distinct checkpoint numbers (integers >= 0)")
    return [int(v) for v in values]


def _name(d: Any, where: Path | str) -> str | None:
    """A result's `name`: a string, or None where it has none."""
    name = _optional(d, "name", str, where)
    return str(name) if name is not None else None


def _relative(value: str, key: str, where: Path | str) -> str:
    """A file path a metadata file records relative to its directory: never absolute, never leading out of it."""
    parts = value.replace("\\", "/").split("/")
    if not value or value.startswith("/") or ".." in parts or "\x00" in value:
        raise _bad(where, key, value, "a path inside the run's directory")
    return value


def _stamps(d: dict[str, Any], where: Path | str = "") -> dict[str, Any]:
    """The versions and times every metadata file carries (absent ones read as empty; a wrong type: IntegrityError)."""
    versions = _optional(d, "versions", dict, where) or {}
    created = _optional(d, "created", str, where)
    return {"versions": dict(versions), "created": created or "",
            "updated": _optional(d, "updated", str, where)}


def _stamps_json(versions: dict[str, str], created: str, updated: str | None) -> dict[str, Any]:
    return {"versions": versions, "created": created, **({"updated": updated} if updated is not None else {})}


_ITEM_INDENT = " " * 4  # an item of a list held by a top-level key, at indent=2


def _copied(value: Any) -> Any:
    """A JSON tree's containers copied (the numbers and strings in them are immutable)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _shallow(record: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, in their order, the values themselves (not copies)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


@dataclass
class ProbeRecord:
    """What a checkpoint's model computed on the run's probe samples when the checkpoint was made
    (`landscape_cli.models.probes` says exactly what is stored): `inputs` is the sha256 of the run's probe-samples
    file (`probes_name(inputs)` in the run directory); `device` and `dtype` computed the values; `shape` is the
    outputs' shape; `sketch` is 0 where each sample's output values are stored as they are, else the number of
    count-sketch values per sample; `eval` in eval mode, `bn_train` with BatchNorm in training mode (None: the model
    has no BatchNorm)."""

    inputs: str
    device: str
    dtype: str
    shape: list[int]
    sketch: int
    eval: list[float]
    bn_train: list[float] | None = None

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> ProbeRecord:
        shape = _need(d, "shape", list, where)
        bn = d.get("bn_train")
        values = [_need(d, "eval", list, where), *([bn] if bn is not None else [])]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in shape) or not isinstance(bn, list | None) \
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for vs in values for v in vs):
            raise IntegrityError(f"{where}: a checkpoint's probe record is not the expected type (damaged): run "
                                 "`landscape verify`")
        return cls(str(_need(d, "inputs", str, where)), str(_need(d, "device", str, where)),
                   str(_need(d, "dtype", str, where)), list(shape), int(_need(d, "sketch", int, where)),
                   [float(v) for v in values[0]], [float(v) for v in bn] if bn is not None else None)

    def to_json(self) -> dict[str, Any]:
        out = _shallow(self)  # the lists as they are (asdict's deep copies cost more than the JSON)
        if self.bn_train is None:
            del out["bn_train"]
        return out


@dataclass
class EpochRecord:
    """One checkpoint of a run: its metrics and where its weights are (relative to the run directory).

    `train_loss`/`train_accuracy` of a trained epoch >= 1 are the running mean over the epoch's
    mini-batches (the weights changing under it, in training mode); of epoch 0 and of an imported run
    they are the train split evaluated at the checkpoint. `checkpoint_train_loss`/`_accuracy` are the
    train split evaluated at the checkpoint in eval mode (as `val_loss` is), recorded since they were
    added (older records lack them: None, and omitted from the JSON).

    A run with step checkpoints (`train --checkpoint-every`, the recorder) gives every record its `step`
    (optimizer steps taken when it was saved); `epoch` is then the number of epochs completed by then and
    `epoch_end` says whether it was saved at an epoch's end. A record of a checkpoint saved within an epoch
    has `train_loss` = the running mean over that epoch's mini-batches so far, and no val or checkpoint
    values (None, not evaluated). A run's checkpoints are keyed by step where there are steps, else by
    epoch (`key`): grids, Hessian results and curves name their checkpoints by that key. `removed`: the
    file was deleted by the run's retention policy (`--keep`); the record stays, so keys never change.
    `probe`: what the model computed on the run's probe samples when the checkpoint was made (`ProbeRecord`;
    None in runs made before probes were recorded, and then omitted from the JSON).
    Runs without steps write records exactly as earlier releases did."""

    epoch: int
    train_loss: float
    train_accuracy: float | None  # None for a regression
    val_loss: float | None  # None: a checkpoint saved within an epoch (not evaluated)
    val_accuracy: float | None
    seconds: float
    checkpoint: str
    sha256: str
    weights_sha256: str
    checkpoint_train_loss: float | None = None  # None: not recorded (a record written before it was)
    checkpoint_train_accuracy: float | None = None  # None also for a regression
    step: int | None = None  # optimizer steps taken (runs with step checkpoints only)
    epoch_end: bool | None = None  # saved at the end of `epoch` (runs with step checkpoints only)
    lr: float | None = None  # the learning rate of the last step (a recorded run's, where known)
    removed: bool = False  # deleted by the retention policy
    probe: ProbeRecord | None = None  # the outputs on the run's probe samples (None: not recorded)

    @property
    def key(self) -> int:
        """How grids and analyses name this checkpoint: its step where the run has steps, else its epoch."""
        return self.step if self.step is not None else self.epoch

    @property
    def label(self) -> str:
        return f"step {self.step}" if self.step is not None else f"epoch {self.epoch}"

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> EpochRecord:
        num = (int, float)
        acc = (int, float, type(None))

        def optional(key: str) -> float | None:
            value = _need(d, key, acc, where)
            return None if value is None else float(value)

        def absent(key: str) -> float | None:
            return optional(key) if isinstance(d, dict) and key in d else None

        stepped = isinstance(d, dict) and d.get("step") is not None
        return cls(int(_need(d, "epoch", int, where)), float(_need(d, "train_loss", num, where)),
                   optional("train_accuracy"),
                   absent("val_loss") if stepped else float(_need(d, "val_loss", num, where)),  # type: ignore[arg-type]
                   absent("val_accuracy") if stepped else optional("val_accuracy"),
                   float(_need(d, "seconds", num, where)),
                   str(_need(d, "checkpoint", str, where)), str(_need(d, "sha256", str, where)),
                   str(_need(d, "weights_sha256", str, where)), absent("checkpoint_train_loss"),
                   absent("checkpoint_train_accuracy"),
                   int(_need(d, "step", int, where)) if stepped else None,
                   bool(_need(d, "epoch_end", bool, where)) if stepped else None,
                   absent("lr"), bool(d.get("removed", False)) if isinstance(d, dict) else False,
                   ProbeRecord.from_json(d["probe"], where) if isinstance(d, dict) and d.get("probe") is not None
                   else None)

    def to_json(self) -> dict[str, Any]:
        out = _shallow(self)
        if self.checkpoint_train_loss is None:  # not recorded: the record as older releases wrote it
            del out["checkpoint_train_loss"], out["checkpoint_train_accuracy"]
        for key in ("step", "epoch_end", "lr"):  # absent from runs without steps: written as before
            if out[key] is None:
                del out[key]
        if not self.removed:
            del out["removed"]
        if self.probe is None:  # not recorded: the record as earlier releases wrote it
            del out["probe"]
        else:
            out["probe"] = self.probe.to_json()
        return out

    def json_text(self, record: dict[str, Any]) -> str:
        """`record` (this record's `to_json()`) as run.json holds it, an item of its `epochs` list: encoded once and
        kept while the record is unchanged (a run rewrites run.json at every checkpoint; encoding all its records
        each time made recording hundreds of checkpoints quadratic)."""
        kept = self.__dict__.get("_json_text")
        if kept is not None and kept[0] == record:
            return str(kept[1])
        text = json.dumps(record, indent=2).replace("\n", "\n" + _ITEM_INDENT)
        self.__dict__["_json_text"] = (_copied(record), text)  # a copy: a list changed in place is a change
        return text

    def train_at_checkpoint(self, imported: bool = False) -> tuple[float, float | None] | None:
        """The train split's loss and accuracy at the checkpoint: as recorded, else `train_loss` where it was
        evaluated there (epoch 0; every epoch of an `imported` run); None where only the running mean over the
        epoch's mini-batches is known."""
        if self.checkpoint_train_loss is not None:
            return self.checkpoint_train_loss, self.checkpoint_train_accuracy
        if imported or (self.epoch == 0 and not self.step):
            return self.train_loss, self.train_accuracy
        return None


@dataclass
class FileRecord:
    """A file of the run (relative path) with the sha256 it had when it was written."""

    file: str
    sha256: str
    epoch: int | None = None
    step: int | None = None  # the step of the checkpoint it continues from (runs with step checkpoints)

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> FileRecord:
        epoch, step = _optional(d, "epoch", int, where), _optional(d, "step", int, where)
        return cls(_relative(str(_need(d, "file", str, where)), "file", where), str(_need(d, "sha256", str, where)),
                   int(epoch) if epoch is not None else None, int(step) if step is not None else None)

    @property
    def key(self) -> int | None:
        return self.step if self.step is not None else self.epoch

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "file": self.file, "sha256": self.sha256,
                **({"step": self.step} if self.step is not None else {})}


@dataclass
class RunMeta:
    """run.json: the training configuration, the model and dataset, and one record per checkpoint."""

    id: str
    name: str | None
    config: TrainConfig
    model: dict[str, Any]  # {"name", "args", "parameters"}: what rebuilds the model
    dataset: dict[str, Any]  # {"name", "channels", "size", "num_classes", "train_size", "val_size"}
    epochs_requested: int
    epochs: list[EpochRecord]
    resume: FileRecord | None  # the optimizer state of the last epoch (to continue training exactly)
    versions: dict[str, str]
    created: str
    updated: str | None = None
    retention: dict[str, Any] | None = None  # the `--keep` policy checkpoints are removed by (None: all kept)
    format: int = RUN_FORMAT

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> RunMeta:
        _format(d, (RUN_FORMAT,), where)
        config = _need(d, "config", dict, where)
        _check_train_config(config, where)
        try:
            cfg = TrainConfig.from_dict(config)
        except TypeError as e:
            raise IntegrityError(f"{where}: the training configuration is incomplete ({e}): damaged") from e
        model = _need(d, "model", dict, where)
        _need(model, "name", str, where, "model.name")
        _need(model, "args", dict, where, "model.args")
        dataset = _need(d, "dataset", dict, where)
        _need(dataset, "name", str, where, "dataset.name")
        for key in ("train_size", "val_size"):
            if key in dataset and not _count(dataset[key]):
                raise _bad(where, f"dataset.{key}", dataset[key], "a number of samples")
        _need(dataset, "train_size", int, where, "dataset.train_size")
        resume = d.get("resume")
        requested = _need(d, "epochs_requested", int, where)
        if requested < 0:
            raise _bad(where, "epochs_requested", requested, "a number of epochs >= 0")
        epochs = [EpochRecord.from_json(e, where) for e in _need(d, "epochs", list, where)]
        for record in epochs:
            _relative(record.checkpoint, "checkpoint", where)
        if len({r.key for r in epochs}) != len(epochs):
            raise _bad(where, "epochs", [r.key for r in epochs], "one record per checkpoint")
        return cls(
            id=str(_need(d, "id", str, where)),
            name=_name(d, where),
            config=cfg,
            model=model,
            dataset=dataset,
            epochs_requested=int(requested),
            epochs=epochs,
            resume=FileRecord.from_json(resume, where) if resume else None,
            **_stamps(d, where),
            retention=_optional(d, "retention", dict, where),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "name": self.name,
            "config": self.config.identity(),
            "model": self.model,
            "dataset": self.dataset,
            "epochs_requested": self.epochs_requested,
            "epochs": [e.to_json() for e in self.epochs],
            "resume": self.resume.to_json() if self.resume else None,
            **_stamps_json(self.versions, self.created, self.updated),
            **({"retention": self.retention} if self.retention is not None else {}),
        }

    def to_text(self) -> str:
        """run.json's text: `json.dumps(self.to_json(), indent=2)` and a newline, byte for byte, with each
        checkpoint's record encoded once (`EpochRecord.json_text`)."""
        out = self.to_json()
        records = out["epochs"]
        if not records:
            return json.dumps(out, indent=2) + "\n"
        mark = f"epochs-{uuid.uuid4().hex}"  # a placeholder no other value can spell
        out["epochs"] = mark
        head = json.dumps(out, indent=2)
        items = ",\n".join(_ITEM_INDENT + e.json_text(r) for e, r in zip(self.epochs, records, strict=True))
        return head.replace(json.dumps(mark), f"[\n{items}\n  ]", 1) + "\n"

    def require_checkpoints(self) -> None:
        """Refuse (GridStateError) a run with no checkpoint yet: nothing can be computed from it."""
        if not self.epochs:
            raise GridStateError(f"run {self.id} has no checkpoint yet: train it first (`landscape train ...`)")

    def record(self, key: int) -> EpochRecord | None:
        """The record of the checkpoint `key` (its epoch, or its step in a run with steps; None if there is none)."""
        return next((r for r in self.epochs if r.key == key), None)

    @property
    def has_steps(self) -> bool:
        """Whether the run's checkpoints are keyed by step (`train --checkpoint-every`, the recorder)."""
        return any(r.step is not None for r in self.epochs)

    @property
    def epoch_numbers(self) -> list[int]:
        """The keys of the checkpoints the run holds (epochs; steps in a run with steps), removed ones left out."""
        return [r.key for r in self.epochs if not r.removed]

    @property
    def epochs_done(self) -> int:
        """Training epochs completed (the last epoch-end checkpoint's epoch; -1 before epoch 0 is saved)."""
        ends = [r.epoch for r in self.epochs if r.epoch_end is not False]
        return max(ends) if ends else -1

    def completed(self, keys: Sequence[int]) -> list[int] | None:
        """The epochs completed at each checkpoint of `keys` (the `epoch` coordinate of a grid or Hessian result of
        a run with steps; -1 for a key the run has no record of); None for a run without steps."""
        if not self.has_steps:
            return None
        return [r.epoch if (r := self.record(k)) is not None else -1 for k in keys]

    def label(self, key: int) -> str:
        """How a checkpoint is named to the user: "epoch 3", or "step 150" in a run with steps."""
        return f"step {key}" if self.has_steps else f"epoch {key}"

    def select(self, epochs: Sequence[int] | None, steps: Sequence[int] | None = None) -> list[int]:
        """The checkpoint keys `--epochs` and `--at-steps` name, in the order given (every held one if neither).

        In a run with steps, epoch k is its checkpoint at the end of epoch k. A number the run has no checkpoint
        for, or whose checkpoint the retention policy removed, is one UsageError line saying what it has."""
        if epochs is None and steps is None:
            return self.epoch_numbers
        if steps is not None and not self.has_steps:
            raise UsageError(f"--at-steps: run {self.id} keeps one checkpoint per epoch, with no steps recorded: "
                             "select them with --epochs")
        keys: list[int] = []
        for e in epochs or []:
            found = next((r for r in self.epochs if r.epoch == e and r.epoch_end is not False), None)
            if found is None:
                ends = [r.epoch for r in self.epochs if r.epoch_end is not False]
                have = _spans(ends) if self.has_steps else ",".join(map(str, ends))
                raise UsageError(f"run {self.id} has no checkpoint for epoch {e}: it has epochs {have} "
                                 "(train more epochs with the same `landscape train` command and a larger --epochs)")
            keys.append(found.key)
        for s in steps or []:
            found = self.record(s)
            if found is None:
                raise UsageError(f"run {self.id} has no checkpoint at step {s}: it has steps "
                                 f"{_spans([r.key for r in self.epochs])}")
            keys.append(s)
        if not keys:
            raise UsageError("--epochs is empty: give epoch numbers like 0,1,9")
        removed = [self.label(k) for k in keys if (r := self.record(k)) is not None and r.removed]
        if removed:
            raise UsageError(f"run {self.id}: the checkpoint of {removed[0]} was removed by the run's retention policy "
                             f"(--keep {describe_keep(self.retention)}): choose one it kept ({self.kept_text()})")
        unique = list(dict.fromkeys(keys))
        return sorted(unique) if self.has_steps else unique  # by step: the order a grid stores them in

    def kept_text(self) -> str:
        if self.has_steps:
            return f"steps {_spans(self.epoch_numbers)}"
        return f"epochs {','.join(map(str, self.epoch_numbers))}"

    @property
    def architecture(self) -> tuple[str, dict[str, Any]]:
        """What must match for two runs' weights to be interchangeable: model name and arguments."""
        return str(self.model["name"]), dict(self.model["args"])


# the type of each field of a training configuration as run.json records it (`TrainConfig.identity`)
_TRAIN_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,), "dataset": (str,), "batch_size": (int,), "optimizer": (str,), "lr": (int, float),
    "momentum": (int, float), "weight_decay": (int, float), "activation": (str,), "seed": (int,),
    "model_sha256": (str, type(None)), "data_sha256": (str, type(None)), "loss": (str, type(None)),
    "imported": (list, type(None)), "block_size": (int, type(None)), "checkpoint_every": (int, type(None)),
    "recorded": (dict, type(None)), "procedure": (int,),
}


def _check_train_config(config: dict[str, Any], where: Path | str) -> None:
    """Each field of run.json's training configuration of its type (one IntegrityError naming the field)."""
    for key, kinds in _TRAIN_FIELDS.items():
        if key not in config:
            continue
        value = config[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _bad(where, f"config.{key}", value, "the expected type")
        if key in ("batch_size", "seed", "block_size", "checkpoint_every") and isinstance(value, int) and value < 0:
            raise _bad(where, f"config.{key}", value, "a number >= 0")
    imported = config.get("imported")
    if imported is not None and not all(isinstance(h, str) for h in imported):
        raise _bad(where, "config.imported", imported, "a list of weights hashes")


def _spans(numbers: list[int]) -> str:
    """0,1,2,3,7 -> "0-3,7" (a long list of checkpoints stays one readable line)."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) if runs else "none"


def describe_keep(policy: dict[str, Any] | None) -> str:
    """A retention policy as `--keep` spells it."""
    if not policy:
        return "all"
    parts = []
    if policy.get("every"):
        parts.append(f"every={policy['every']}")
    if policy.get("last"):
        parts.append(f"last={policy['last']}")
    if policy.get("epochs"):
        parts.append("epochs")
    return ",".join(parts) or "none"


@dataclass(frozen=True)
class DirectionSidecar:
    """A direction file's JSON sidecar: its id, what defines it (`spec`, with the pair) and its sha256."""

    id: str
    spec: dict[str, Any]
    sha256: str

    @property
    def pair(self) -> int:
        return int(self.spec.get("pair", 0))

    @classmethod
    def from_json(cls, d: Any, where: Path) -> DirectionSidecar:
        if not isinstance(d, dict) or not isinstance(d.get("spec"), dict):
            raise IntegrityError(f"{where}: not a direction record (damaged): run `landscape verify`")
        pair = d["spec"].get("pair", 0)
        if not _count(pair):
            raise _bad(where, "spec.pair", pair, "a pair number >= 0")
        return cls(_need(d, "id", str, where), d["spec"], _need(d, "sha256", str, where))


@dataclass
class DirectionRecord:
    """A stored direction file a grid uses (relative to the run directory), with its hash."""

    pair: int
    id: str
    file: str
    sha256: str

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> DirectionRecord:
        pair = _need(d, "pair", int, where)
        if pair < 0:
            raise _bad(where, "pair", pair, "a pair number >= 0")
        return cls(int(pair), str(_need(d, "id", str, where)),
                   _relative(str(_need(d, "file", str, where)), "file", where), str(_need(d, "sha256", str, where)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvaluatorRecord:
    """How a grid's points are computed, fixed when the grid is created and recorded in grid.json.

    `points_per_pass` 1 is the in-place loop; more is the batched evaluator (that many points per
    forward pass, `torch.func.vmap`). Values are bitwise reproducible for the same device type,
    thread count, precision, evaluator and points per pass; on CUDA the grid runs with
    deterministic kernels (cuDNN's deterministic algorithms, no autotuning, a fixed cuBLAS
    workspace) so that a resumed grid matches an uninterrupted one bitwise. `threads` records, per
    writer ("one process", "shard I/N", "ranks"), the torch thread counts its processes computed
    rows with (empty for grids made before it was recorded).
    """

    points_per_pass: int = 1
    precision: str = "fp32"
    device: str = "cpu"  # the device type
    threads: dict[str, list[int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "batched" if self.points_per_pass > 1 else "loop"

    @property
    def deterministic(self) -> bool:
        return True  # CPU kernels are, for one thread count; CUDA is made so by the engine's deterministic kernels

    def same_evaluator(self, other: EvaluatorRecord) -> bool:
        """Whether two records name the same evaluator (thread counts aside)."""
        return (self.points_per_pass, self.precision, self.device) == (other.points_per_pass, other.precision,
                                                                       other.device)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "points_per_pass": self.points_per_pass, "precision": self.precision,
                               "device": self.device, "deterministic": self.deterministic}
        if self.threads:
            out["threads"] = {w: list(c) for w, c in self.threads.items()}
        return out

    @classmethod
    def from_json(cls, d: Any, precision: str, where: Path | str = "grid.json") -> EvaluatorRecord | None:
        """The recorded evaluator (None for a grid made before evaluators were recorded); IntegrityError where
        a field is of the wrong type."""
        if d is None or d == {}:
            return None
        if not isinstance(d, dict):
            raise _bad(where, "evaluator", d, "an evaluator record")
        per_pass = _optional(d, "points_per_pass", int, where, "evaluator.points_per_pass")
        if per_pass is not None and per_pass < 1:
            raise _bad(where, "evaluator.points_per_pass", per_pass, "a number of points >= 1")
        threads = _optional(d, "threads", dict, where, "evaluator.threads") or {}
        if not all(isinstance(c, list) and all(_count(n) for n in c) for c in threads.values()):
            raise _bad(where, "evaluator.threads", threads, "thread counts per writer")
        return cls(int(per_pass or 1), str(_optional(d, "precision", str, where, "evaluator.precision") or precision),
                   str(_optional(d, "device", str, where, "evaluator.device") or "cpu"),
                   {str(w): [int(c) for c in counts] for w, counts in threads.items()})

    def describe(self) -> str:
        per = f"{self.points_per_pass} point{'s' if self.points_per_pass > 1 else ''} per pass"
        return f"the {self.name} evaluator ({per}, {self.precision}) on {self.device}"


@dataclass
class GridMeta:
    """grid.json: the grid's configuration (its id is the hash of it), epochs and direction files.

    `ranges` is the [lo, hi] of each axis as created (a kind may choose them, e.g. a PCA plane
    covers its path); `kind` holds what the grid's direction kind recorded when the grid was made
    (e.g. a PCA plane's explained variance and path, the checkpoint an interpolation ends at).
    """

    id: str
    name: str | None
    run: str
    config: GridConfig
    epochs: list[int]
    directions: list[DirectionRecord]
    parameters: str
    versions: dict[str, str]
    created: str
    updated: str | None = None
    ranges: list[tuple[float, float]] = field(default_factory=list)
    kind: dict[str, Any] = field(default_factory=dict)
    evaluator: EvaluatorRecord | None = None  # how points are computed (None: made before it was recorded)
    batchnorm: bool | None = None  # whether the model has BatchNorm layers (None: made before it was recorded)
    format: int = GRID_FORMAT

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> GridMeta:
        fmt = _format(d, GRID_FORMATS_READ, where)
        identity = _need(d, "config", dict, where)
        try:
            cfg = GridConfig.from_identity(identity)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
            raise IntegrityError(f"{where}: the grid configuration cannot be read ({e}): damaged; run "
                                 "`landscape verify`") from e
        if fmt >= 2:
            ranges = _ranges(_need(d, "ranges", list, where), where)
        else:  # the first release made square random grids only: the ranges are in the configuration
            ranges = [(float(a.lo), float(a.hi)) for a in cfg.axes if a.lo is not None and a.hi is not None]
        if len(ranges) != cfg.dims:
            raise IntegrityError(f"{where}: {len(ranges)} axis ranges for a {cfg.dims}-D grid (damaged): run "
                                 "`landscape verify`")
        run = _need(d, "run", str, where)
        if run != cfg.run:
            raise _bad(where, "run", run, f"the run of its configuration ({cfg.run})")
        return cls(
            id=str(_need(d, "id", str, where)),
            name=_name(d, where),
            run=str(run),
            config=cfg,
            epochs=_keys(d, "epochs", where),
            directions=[DirectionRecord.from_json(r, where) for r in _need(d, "directions", list, where)],
            parameters=str(_optional(d, "parameters", str, where) or ""),
            **_stamps(d, where),
            ranges=ranges,
            kind=_kind_facts(_optional(d, "kind", dict, where) or {}, where) if fmt >= 2 else {},
            evaluator=EvaluatorRecord.from_json(d.get("evaluator"), cfg.precision, where),
            batchnorm=_optional(d, "batchnorm", bool, where),
            format=GRID_FORMAT,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "name": self.name,
            "run": self.run,
            "config": self.config.identity(),
            "epochs": self.epochs,
            "directions": [r.to_json() for r in self.directions],
            "parameters": self.parameters,
            "ranges": [list(r) for r in self.ranges],
            "kind": self.kind,
            "evaluator": self.evaluator.to_json() if self.evaluator is not None else {},
            **({"batchnorm": self.batchnorm} if self.batchnorm is not None else {}),
            **_stamps_json(self.versions, self.created, self.updated),
        }


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_number(x) for x in v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return v is None or isinstance(v, str)


# what the views read of grid.json's `kind` facts (written by the grid's direction kind), by key: a check of the
# value, and of the fields of a record (each optional): a fact of another type is damage, refused on read
_KIND_FACTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "target": (dict, {"run": _text, "epoch": lambda v: v is None or _int(v), "label": _text, "sha256": _text}),
    "path": (dict, {"distance": _numbers, "x": _numbers, "y": _numbers, "residual": _numbers, "epoch": _numbers}),
    "curve": (dict, {"id": _text, "name": _text, "epoch": _int, "bends": _int, "start": _int, "shape": _text,
                     "end": lambda v: isinstance(v, dict)}),
    "explained_variance_ratio": (_numbers, {}),
    "singular_values": (_numbers, {}),
    "through": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), {}),
    "hessian": (str, {}),
    "epochs": (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()), {}),
}
_EPOCH_FACTS: dict[str, Any] = {"eigenvalues": _numbers, "file": lambda v: isinstance(v, str),
                                "sha256": lambda v: isinstance(v, str)}


def _kind_facts(kind: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """grid.json's `kind` facts, the ones the views read checked for their types (one IntegrityError naming it)."""
    for key, (check, fields) in _KIND_FACTS.items():
        if key not in kind:
            continue
        value = kind[key]
        ok = isinstance(value, check) if isinstance(check, type) else check(value)
        records = list(value.values()) if key == "epochs" and ok else [value] if fields and ok else []
        for record in records:
            for name, field_ok in (_EPOCH_FACTS if key == "epochs" else fields).items():
                if name in record and not field_ok(record[name]):
                    raise _bad(where, f"kind.{key}.{name}", record[name], "the expected type")
        if not ok:
            raise _bad(where, f"kind.{key}", value, "the expected type")
    return dict(kind)


def _ranges(values: list[Any], where: Path | str) -> list[tuple[float, float]]:
    """grid.json's `ranges`: one [lo, hi] of finite numbers per axis."""
    out = []
    for r in values:
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                                for v in r)
                and all(math.isfinite(v) for v in r)):
            raise _bad(where, "ranges", values, "one [low, high] pair of finite numbers per axis")
        out.append((float(r[0]), float(r[1])))
    return out


HESSIAN_FORMAT = 1


@dataclass
class HessianMeta:
    """hessian.json: curvature results of a run (eigenpairs, trace, density) for a growing set of epochs.

    `eigenvectors` maps each finished epoch to the direction file holding its top eigenvectors. `computed_with`
    maps each epoch computed since it was recorded to the device and torch thread count that computed it: a
    product's reductions may differ in the last bits with either, so results resumed elsewhere say so (absent
    from results made before it was recorded).
    """

    id: str
    name: str | None
    run: str
    config: HessianConfig
    epochs: list[int]
    eigenvectors: dict[int, DirectionRecord]
    parameters: str
    versions: dict[str, str]
    created: str
    updated: str | None = None
    format: int = HESSIAN_FORMAT
    computed_with: dict[int, dict[str, Any]] = field(default_factory=dict)  # {key: {"device", "threads"}}

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> HessianMeta:
        _format(d, (HESSIAN_FORMAT,), where)
        try:
            cfg = HessianConfig.from_identity(_need(d, "config", dict, where))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise IntegrityError(f"{where}: the configuration cannot be read ({e}): damaged; run "
                                 "`landscape verify`") from e
        vectors = _need(d, "eigenvectors", dict, where)
        if not all(isinstance(e, str) and e.isdigit() and e.isascii() for e in vectors):
            raise _bad(where, "eigenvectors", sorted(vectors), "records keyed by checkpoint numbers")
        run = _need(d, "run", str, where)
        if run != cfg.run:
            raise _bad(where, "run", run, f"the run of its configuration ({cfg.run})")
        return cls(
            id=str(_need(d, "id", str, where)),
            name=_name(d, where),
            run=str(run),
            config=cfg,
            epochs=_keys(d, "epochs", where),
            eigenvectors={int(e): DirectionRecord.from_json(r, where) for e, r in vectors.items()},
            parameters=str(d.get("parameters") or ""),
            **_stamps(d, where),
            computed_with=_computed_with(d, where),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "name": self.name,
            "run": self.run,
            "config": self.config.identity(),
            "epochs": self.epochs,
            "eigenvectors": {str(e): r.to_json() for e, r in sorted(self.eigenvectors.items())},
            "parameters": self.parameters,
            **_stamps_json(self.versions, self.created, self.updated),
            **({"computed_with": {str(e): dict(w) for e, w in sorted(self.computed_with.items())}}
               if self.computed_with else {}),
        }


def _computed_with(d: Any, where: Path | str) -> dict[int, dict[str, Any]]:
    """hessian.json's `computed_with` ({key: {"device": str, "threads": int}}; absent: {}), its types checked."""
    found = _optional(d, "computed_with", dict, where) or {}
    for key, value in found.items():
        if not (isinstance(key, str) and key.isdigit() and key.isascii() and isinstance(value, dict)
                and isinstance(value.get("device"), str) and _count(value.get("threads"))):
            raise _bad(where, "computed_with", found, "the device and thread count of each checkpoint's results")
    return {int(k): {"device": str(v["device"]), "threads": int(v["threads"])} for k, v in found.items()}


CURVE_FORMAT = 1
# the type of each field of a curve's configuration as curve.json records it (`CurveConfig.to_json`)
_CURVE_FIELDS: dict[str, tuple[type, ...]] = {
    "run_a": (str,), "epoch_a": (int,), "weights_a": (str,), "run_b": (str,), "epoch_b": (int,), "weights_b": (str,),
    "shape": (str,), "bends": (int,), "optimizer": (str,), "lr": (int, float), "momentum": (int, float),
    "weight_decay": (int, float), "batch_size": (int,), "seed": (int,),
}


@dataclass
class CurveEpoch:
    """One epoch of a curve's training: the file of its bends (relative to the curve's directory), the file's and
    the bends' sha256, and the training loss (the mean over the epoch's mini-batches, each at its sampled t)."""

    epoch: int
    file: str
    sha256: str
    weights_sha256: str
    train_loss: float
    seconds: float

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> CurveEpoch:
        return cls(int(_need(d, "epoch", int, where)), str(_need(d, "file", str, where)),
                   str(_need(d, "sha256", str, where)), str(_need(d, "weights_sha256", str, where)),
                   float(_need(d, "train_loss", (int, float), where)), float(_need(d, "seconds", (int, float), where)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CurveMeta:
    """curve.json: a curve between two checkpoints (`landscape connect`), stored with its first endpoint's run.

    `epochs` holds one record per trained epoch (epoch 0: the bends on the straight line, before training);
    `resume` the optimizer state of the last one (to continue training exactly)."""

    id: str
    name: str | None
    config: CurveConfig
    epochs_requested: int
    epochs: list[CurveEpoch]
    resume: FileRecord | None
    versions: dict[str, str]
    created: str
    updated: str | None = None
    format: int = CURVE_FORMAT

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> CurveMeta:
        _format(d, (CURVE_FORMAT,), where)
        config = _need(d, "config", dict, where)
        for key, kinds in _CURVE_FIELDS.items():
            if key in config and (not isinstance(config[key], kinds) or isinstance(config[key], bool)):
                raise _bad(where, f"config.{key}", config[key], "the expected type")
        try:
            cfg = CurveConfig.from_json(config)
        except (TypeError, ValueError) as e:
            raise IntegrityError(f"{where}: the curve's configuration cannot be read ({e}): damaged; run "
                                 "`landscape verify`") from e
        resume = d.get("resume")
        requested = _need(d, "epochs_requested", int, where)
        if requested < 0:
            raise _bad(where, "epochs_requested", requested, "a number of epochs >= 0")
        epochs = [CurveEpoch.from_json(e, where) for e in _need(d, "epochs", list, where)]
        for record in epochs:
            _relative(record.file, "file", where)
        return cls(
            id=str(_need(d, "id", str, where)),
            name=_name(d, where),
            config=cfg,
            epochs_requested=int(requested),
            epochs=epochs,
            resume=FileRecord.from_json(resume, where) if resume else None,
            **_stamps(d, where),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "name": self.name,
            "config": self.config.to_json(),
            "identity": self.config.identity(),
            "epochs_requested": self.epochs_requested,
            "epochs": [e.to_json() for e in self.epochs],
            "resume": self.resume.to_json() if self.resume else None,
            **_stamps_json(self.versions, self.created, self.updated),
        }

    @property
    def run(self) -> str:
        """The run the curve is stored with (its first endpoint's)."""
        return self.config.run_a

    @property
    def epochs_done(self) -> int:
        return self.epochs[-1].epoch if self.epochs else -1


@dataclass
class Damaged:
    """A run or grid whose metadata cannot be read: listed, never used."""

    id: str
    error: str


def epoch_record(run: RunMeta, key: int) -> EpochRecord:
    """The record of the checkpoint `key`; one line if the run has none, or its retention policy removed it."""
    record = run.record(key)
    if record is None:
        raise GridStateError(f"run {run.id} has no checkpoint for {run.label(key)}")
    if record.removed:
        raise GridStateError(f"run {run.id}: the checkpoint of {record.label} was removed by the run's retention policy "
                             f"(--keep {describe_keep(run.retention)}); it holds {run.kept_text()}")
    return record


LAMBDA_FORMAT = 1


@dataclass(frozen=True)
class LambdaPoint:
    """One estimate of λmax during training: after `step` optimizer steps (mini-batches of the run), in `epoch`."""

    step: int
    epoch: int
    value: float
    residual: float  # ‖Hv − λv‖ / |λ| of the estimate

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "lambda_max": self.value, "residual": self.residual}


@dataclass
class LambdaTrack:
    """The run's λmax tracked during training (`train --track-lambda-max`): its settings and values.

    `settings`: every (K steps), batches, batch_size, split, bn, parameters...: fixed for the run's life
    (not part of its id); continuing with others is refused.
    """

    run: str
    settings: dict[str, Any]
    values: list[LambdaPoint]
    format: int = LAMBDA_FORMAT

    @classmethod
    def from_json(cls, d: Any, where: Path | str) -> LambdaTrack:
        _format(d, (LAMBDA_FORMAT,), where)
        points = []
        for p in _need(d, "values", list, where):
            points.append(LambdaPoint(int(_need(p, "step", int, where)), int(_need(p, "epoch", int, where)),
                                      float(_need(p, "lambda_max", (int, float), where)),
                                      float(_need(p, "residual", (int, float), where))))
        return cls(str(_need(d, "run", str, where)), dict(_need(d, "settings", dict, where)), points)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "run": self.run, "settings": self.settings,
                "values": [p.to_json() for p in self.values]}
