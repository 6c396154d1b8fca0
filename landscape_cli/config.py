"""Frozen configurations: the one source for CLI defaults, ids and checkpoint metadata."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from landscape_cli._io import short_hash
from landscape_cli.errors import UnknownNameError, UsageError

OPTIMIZERS = ("adam", "sgd")
ACTIVATIONS = ("relu", "sigmoid", "tanh")  # what --activation rewrites built-in models with (models/ builds them)
DEVICES = ("auto", "cpu", "cuda", "mps")
# Bump when the training procedure changes in a way that changes the weights, so old runs keep their ids.
TRAINING_PROCEDURE = 1
MAX_SEED = 2**63 - 1


def choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise UnknownNameError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def positive_int(value: int, option: str, minimum: int = 1, maximum: int | None = None) -> int:
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(f"{option} must be {bound}, got {value}")
    return value


def finite(value: float, option: str, *, positive: bool = False, below: float | None = None) -> float:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive number" if positive else "a number >= 0"
        raise UsageError(f"{option} must be {kind}, got {value}")
    if below is not None and value >= below:
        raise UsageError(f"{option} must be below {below}, got {value}")
    return value


GLOB_CHARACTERS = "*?["  # a --layer value with one of these is a pattern (fnmatch), not a parameter's name


def layer_selection(layer: str | Sequence[str] | None) -> tuple[str | None, tuple[str, ...] | None]:
    """--layer (one value or several) as a configuration records it: (layer, layers).

    One exact parameter name stays `layer`, as grids made before patterns spell it (so their ids do not
    change); a glob pattern, or several values, become `layers`: sorted, without repeats (the selection is
    their union, in the model's order, whatever order they were given in).
    """
    if layer is None:
        return None, None
    values = [layer] if isinstance(layer, str) else list(layer)
    if not values:
        return None, None
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise UsageError(f"--layer {v!r}: give a parameter name or a pattern such as 'blocks.3.*' "
                             "(`landscape layers RUN` lists the names)")
    unique = sorted(set(values))
    if len(unique) == 1 and not any(c in unique[0] for c in GLOB_CHARACTERS):
        return unique[0], None
    return None, tuple(unique)


def check_layers(layer: str | None, layers: tuple[str, ...] | None, single_kernel: bool) -> None:
    """What a configuration's --layer fields must satisfy (one exact name or patterns, never both)."""
    if layer is not None and layers is not None:
        raise UsageError("give --layer as one exact name (layer) or as patterns (layers), not both")
    if layers is not None and (not layers or layer_selection(layers) != (None, layers)):
        raise UsageError(f"layers={list(layers)}: patterns are recorded sorted and without repeats, and one exact "
                         "name as layer= (`layer_selection` spells them)")
    if single_kernel and layer is None:
        raise UsageError("--single-kernel needs --layer naming one convolution weight (not a pattern)")


MAX_CHECKPOINT_EVERY = 10**9


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the weights of every epoch (not the epoch count, device or name).

    The number of epochs is not part of the identity: asking for more epochs continues the same run.
    """

    model: str
    dataset: str
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    activation: str = "relu"
    seed: int = 0
    # added since the first release: in the identity only when set, so no existing run changes id
    model_sha256: str | None = None  # of the file defining a model factory (an edited model: a new run)
    data_sha256: str | None = None  # of a dataset factory's tensors or a text file's bytes (changed data: a new run)
    loss: str | None = None  # --loss, when given (else the dataset's task chooses)
    imported: tuple[str, ...] | None = None  # `landscape import`: each epoch's weights hash, in order
    block_size: int | None = None  # a text dataset's characters per sample (--block-size)
    checkpoint_every: int | None = None  # --checkpoint-every N: a checkpoint every N optimizer steps too
    # a run the Recorder made of the user's own training loop (landscape_cli.recorder): the initial weights' hash,
    # the optimizer class and its hyper-parameters, every_steps... (a dict: left out of the object's __hash__)
    recorded: dict[str, Any] | None = field(default=None, hash=False)

    def validate(self) -> TrainConfig:
        choice(self.activation, ACTIVATIONS, "activation")
        choice(self.optimizer, OPTIMIZERS, "optimizer")
        positive_int(self.batch_size, "--batch-size")
        finite(self.lr, "--lr", positive=True)
        finite(self.momentum, "--momentum", below=1.0)
        finite(self.weight_decay, "--weight-decay")
        positive_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)
        if self.block_size is not None:
            positive_int(self.block_size, "--block-size")
        if self.checkpoint_every is not None:
            positive_int(self.checkpoint_every, "--checkpoint-every", maximum=MAX_CHECKPOINT_EVERY)
        if self.optimizer == "adam" and self.momentum != 0:
            raise UsageError("--momentum applies to --optimizer sgd only (adam uses its own betas)")
        return self

    def identity(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items()
               if k not in ("model_sha256", "data_sha256", "loss", "imported", "block_size", "checkpoint_every",
                            "recorded") or v is not None}
        if self.imported is not None:
            out["imported"] = list(self.imported)
        return {**out, "procedure": TRAINING_PROCEDURE}

    @property
    def run_id(self) -> str:
        return short_hash(self.identity())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if fields.get("imported") is not None:
            fields["imported"] = tuple(fields["imported"])
        return cls(**fields)


NORMS = ("filter", "filter-std", "layer", "none")
BN_MODES = ("train", "eval", "recompute")
PRECISIONS = ("fp32", "tf32", "bf16")  # fp32: TF32 off on CUDA; tf32: allowed for matmuls and convolutions
SPLITS = ("train", "val")
IDENTITY_FORMAT = 1  # part of every grid id: never change it (ids of existing grids would change)
MAX_WIDTH = 1001
RANDOM = "random"
# the identity spelling of each direction kind (the first release wrote "random-normal")
KIND_IDENTITY = {RANDOM: "random-normal"}


@dataclass(frozen=True)
class Axis:
    """One axis of a grid: coefficients from `lo` to `hi` (`count` points) along a direction of `kind`.

    `lo`/`hi` are None when the kind chooses the range when the grid is made (a PCA plane covers
    its projected path); the chosen range is recorded in grid.json and the Zarr coordinates.
    """

    kind: str
    count: int
    lo: float | None
    hi: float | None

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> Axis:
        lo, hi = d["lo"], d["hi"]
        return cls(str(d["kind"]), int(d["count"]), None if lo is None else float(lo), None if hi is None else float(hi))

    @property
    def symmetric_span(self) -> float | None:
        """s when the axis covers [-s, s] exactly, else None."""
        if self.lo is None or self.hi is None or self.lo != -self.hi:
            return None
        return self.hi


def square_axes(kind: str, width: int, span: float, dims: int = 2) -> tuple[Axis, ...]:
    """`dims` axes of `width` points each covering [-span, span] (the first release's only shape)."""
    return tuple(Axis(kind, width, -span, span) for _ in range(dims))


@dataclass(frozen=True)
class CurveRef:
    """The trained curve a grid evaluates (`--directions curve|curve-plane --along CURVE`): the curve's id, the
    training epoch of its bends (the curve's last when the grid was made: another trained epoch is another grid),
    the sha256 of those bends (`CurveEpoch.weights_sha256`) and the key of the checkpoint it starts at (t = 0: the
    grid's one epoch)."""

    id: str
    epoch: int
    bends_sha256: str
    start: int

    def identity(self) -> dict[str, Any]:
        return {"id": self.id, "epoch": self.epoch, "bends_sha256": self.bends_sha256, "start": self.start}

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> CurveRef:
        return cls(str(d["id"]), int(d["epoch"]), str(d["bends_sha256"]), int(d["start"]))


@dataclass(frozen=True)
class MetricRef:
    """A user metric of a grid (`--metric`): its name (the stored array's), reference and the sha256 of the file
    defining it (None: a function given to the Python API)."""

    name: str
    ref: str
    sha256: str | None

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "sha256": self.sha256}

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> MetricRef:
        return cls(str(d["name"]), str(d["ref"]), None if d.get("sha256") is None else str(d["sha256"]))


@dataclass(frozen=True)
class PlaneRef:
    """The three checkpoints of a `--directions plane` grid: the centre A (a key of the grid's run: its one epoch)
    and B, C as (run id, key)."""

    centre: int
    points: tuple[tuple[str, int], ...]

    def identity(self) -> dict[str, Any]:
        return {"centre": self.centre, "through": [{"run": r, "epoch": k} for r, k in self.points]}

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> PlaneRef:
        return cls(int(d["centre"]), tuple((str(p["run"]), int(p["epoch"])) for p in d["through"]))


@dataclass(frozen=True)
class GridConfig:
    """Everything that determines a grid's values except which epochs it covers.

    A grid is its axes (1 or 2, x first): each a direction kind, a range and a number of points;
    the Zarr layout, coordinates, id and plot type follow from them. The epoch axis grows: asking
    an existing grid for more epochs adds them to the same grid, so epochs computed once are never
    computed again. Kind options (`target_*` for interpolation, `trajectory` for PCA) are None for
    kinds that do not use them and then stay out of the id.
    """

    run: str
    axes: tuple[Axis, ...] = square_axes(RANDOM, 41, 1.0)
    pairs: int = 3
    batches: int = 3
    batch_size: int = 256
    seed: int = 0
    norm: str = "filter"
    perturb_biasbn: bool = False
    layer: str | None = None
    single_kernel: bool = False
    bn: str = "train"
    split: str = "train"  # the data the points are evaluated on
    whole: bool = False  # --batches all: the whole split at every point, streamed in batch_size pieces
    target_run: str | None = None  # interpolate: the run and epoch the line ends at (t = 1)
    target_epoch: int | None = None
    trajectory: tuple[int, ...] | None = None  # pca: the checkpoints whose trajectory defines the plane
    precision: str = "fp32"  # the forward passes' arithmetic (PRECISIONS)
    layers: tuple[str, ...] | None = None  # --layer patterns (or several names): in the identity only when given
    curve: CurveRef | None = None  # curve, curve-plane: the trained curve evaluated (in the identity only when set)
    plane: PlaneRef | None = None  # plane: the three checkpoints it goes through (in the identity only when set)
    metrics: tuple[MetricRef, ...] | None = None  # user metrics stored beside loss and accuracy (identity: when set)

    @property
    def kind(self) -> str:
        """The direction kind of the grid's axes (mixed kinds are not supported yet)."""
        return self.axes[0].kind

    @property
    def dims(self) -> int:
        return len(self.axes)

    @property
    def width(self) -> int:
        """Points along x."""
        return self.axes[0].count

    @property
    def rows(self) -> int:
        """Work units per (epoch, pair): the points along y (1 for a line)."""
        return self.axes[1].count if self.dims == 2 else 1

    @property
    def points_per_row(self) -> int:
        return self.axes[0].count

    @property
    def span(self) -> float | None:
        """s when every axis covers [-s, s] (random grids), else None."""
        spans = {a.symmetric_span for a in self.axes}
        return spans.pop() if len(spans) == 1 else None

    def validate(self) -> GridConfig:
        if self.dims not in (1, 2):
            raise UsageError(f"--dims must be 1 or 2, got {self.dims}")
        if len({a.kind for a in self.axes}) != 1:
            raise UsageError("axes of different direction kinds are not supported yet: use one --directions for both")
        for axis, name in zip(self.axes, ("--width", "--width"), strict=False):
            positive_int(axis.count, name, minimum=2, maximum=MAX_WIDTH)
            if axis.lo is not None and axis.hi is not None:
                check_range(axis.lo, axis.hi, "--range")
        positive_int(self.pairs, "--pairs", maximum=1000)
        positive_int(self.batches, "--batches")
        positive_int(self.batch_size, "--batch-size")
        positive_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)
        choice(self.norm, NORMS, "--norm")
        choice(self.bn, BN_MODES, "--bn mode")
        choice(self.split, SPLITS, "--split")
        choice(self.precision, PRECISIONS, "--precision")
        if self.whole and self.batches != 1:
            raise UsageError("--batches all is stored as one batch entry")
        check_layers(self.layer, self.layers, self.single_kernel)
        return self

    def identity(self) -> dict[str, Any]:
        """What the grid id is the hash of. A 2-D square random grid is spelled as the first release spelled
        it (width, span), so its id is unchanged; every key added since is left out at its old default."""
        out: dict[str, Any] = {"run": self.run}
        span = self.span
        if self.kind == RANDOM and self.dims == 2 and span is not None and self.axes[0].count == self.axes[1].count:
            out.update(width=self.axes[0].count, span=span)
        else:
            out["axes"] = [a.identity() for a in self.axes]
        out.update(pairs=self.pairs, batches=self.batches, batch_size=self.batch_size, seed=self.seed, norm=self.norm,
                   perturb_biasbn=self.perturb_biasbn, layer=self.layer, single_kernel=self.single_kernel, bn=self.bn,
                   directions=KIND_IDENTITY.get(self.kind, self.kind))
        if self.whole:
            out["batches"] = "all"
        if self.split != "train":
            out["split"] = self.split
        if self.target_run is not None:
            out["target"] = {"run": self.target_run, "epoch": self.target_epoch}
        if self.trajectory is not None:
            out["trajectory"] = list(self.trajectory)
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.curve is not None:
            out["curve"] = self.curve.identity()
        if self.plane is not None:
            out["plane"] = self.plane.identity()
        if self.metrics:
            out["metrics"] = [m.identity() for m in self.metrics]
        out["format"] = IDENTITY_FORMAT
        return out

    @property
    def grid_id(self) -> str:
        return short_hash(self.identity())

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> GridConfig:
        """The configuration whose `identity()` is `d` (as grid.json stores it)."""
        if d.get("format") != IDENTITY_FORMAT:
            raise ValueError(f"unknown grid configuration format {d.get('format')!r}")
        kinds = {v: k for k, v in KIND_IDENTITY.items()}
        kind = kinds.get(d["directions"], d["directions"])
        if "axes" in d:
            axes = tuple(Axis.from_identity(a) for a in d["axes"])
        else:
            axes = square_axes(kind, int(d["width"]), float(d["span"]))
        known = {"run", "axes", "width", "span", "pairs", "batches", "batch_size", "seed", "norm", "perturb_biasbn",
                 "layer", "single_kernel", "bn", "directions", "target", "trajectory", "split", "precision", "layers",
                 "curve", "plane", "metrics", "format"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        target = d.get("target") or {}
        trajectory = d.get("trajectory")
        whole = d["batches"] == "all"
        return cls(run=str(d["run"]), axes=axes, pairs=int(d["pairs"]), batches=1 if whole else int(d["batches"]),
                   batch_size=int(d["batch_size"]), seed=int(d["seed"]), norm=str(d["norm"]),
                   perturb_biasbn=bool(d["perturb_biasbn"]), layer=d["layer"], single_kernel=bool(d["single_kernel"]),
                   bn=str(d["bn"]), split=str(d.get("split", "train")), whole=whole,
                   target_run=target.get("run"), target_epoch=target.get("epoch"),
                   trajectory=tuple(int(e) for e in trajectory) if trajectory is not None else None,
                   precision=str(d.get("precision", "fp32")),
                   layers=tuple(str(p) for p in d["layers"]) if d.get("layers") is not None else None,
                   curve=CurveRef.from_identity(d["curve"]) if d.get("curve") is not None else None,
                   plane=PlaneRef.from_identity(d["plane"]) if d.get("plane") is not None else None,
                   metrics=tuple(MetricRef.from_identity(m) for m in d["metrics"]) if d.get("metrics") else None)


MAX_POINTS_PER_PASS = 4096


@dataclass(frozen=True)
class GridRequest:
    """What the user asks of a grid: every `landscape grid` option that says what to compute (None: the
    direction kind's default). The CLI's options take their defaults from here, and `engine.plan.resolve`
    turns a request into the grid's `GridConfig` (its identity) and the epochs to compute.

    `gradient`, `name`, `resume` and `points_per_pass` are not part of the grid's identity: they say
    whether the centre gradients are added, the grid's label, whether an unfinished grid may be
    continued, and (fixed when the grid is made) how many points one forward pass evaluates.
    """

    epochs: tuple[int, ...] | None = None  # None: all of the run's (with at_steps None)
    at_steps: tuple[int, ...] | None = None  # checkpoints by step (a run with step checkpoints)
    directions: str = "random"
    dims: int | None = None  # the kind's largest
    width: int = 41
    span: float | None = None
    range: tuple[float, float] | None = None
    yrange: tuple[float, float] | None = None
    pairs: int | None = None
    batches: int | str = 3  # or "all"
    batch_size: int = 256
    split: str = "train"
    seed: int | None = None
    norm: str | None = None
    perturb_biasbn: bool = False
    layer: str | tuple[str, ...] | None = None  # a parameter's name, or glob patterns over the names
    single_kernel: bool = False
    bn: str | None = None  # None: the kind's default (train; recompute for curve and curve-plane)
    directions_from: str | None = None
    to_epoch: int | None = None
    to: str | None = None  # RUN2[:EPOCH]: interpolate to another run
    along: str | None = None  # --directions curve|curve-plane: the trained curve (its id, prefix or name)
    through: tuple[str, ...] | None = None  # --directions plane: B and C (EPOCH, RUN or RUN:EPOCH each)
    metrics: tuple[Any, ...] | None = None  # --metric module:function (or NAME=REF); the API: functions too
    from_grid: str | None = None  # continue this grid of the run with its own configuration
    precision: str = "fp32"
    gradient: bool = True
    points_per_pass: int | None = None  # None: 1 on CPU, from free memory on a GPU
    name: str | None = None
    resume: bool = False

    def checked(self) -> GridRequest:
        """The request with `batches` parsed and what needs no file checked (once, wherever it came from)."""
        if self.points_per_pass is not None:
            positive_int(self.points_per_pass, "--points-per-pass", maximum=MAX_POINTS_PER_PASS)
        epochs = tuple(self.epochs) if self.epochs is not None else None
        steps = tuple(self.at_steps) if self.at_steps is not None else None
        layer, layers = layer_selection(self.layer)
        return replace(self, batches=parse_batches(self.batches), epochs=epochs, at_steps=steps, layer=layers or layer)


GridOptions = GridRequest  # the name earlier releases gave the request


@dataclass(frozen=True)
class Runtime:
    """How a computation runs, never what it computes: nothing here changes a result's identity or values'
    meaning (the evaluator a new grid gets from the device is recorded in its metadata)."""

    device: str = "auto"
    data_dir: str | os.PathLike[str] | None = None
    progress: bool = True  # a progress bar with an ETA on stderr
    shard: str | None = None  # "I/N": this process computes shard I of N of a grid's rows
    store: Any = None  # a Store, a path, or None: $LANDSCAPE_STORE, else ./runs
    report: Callable[[str], None] | None = None  # notes such as "damaged chunk ... recomputed" (None: to stderr)

    def note(self, text: str) -> None:
        if self.report is not None:
            self.report(text)
        else:
            print(text, file=sys.stderr)


def split_options(request: GridRequest | None, runtime: Runtime | None,
                  options: dict[str, Any]) -> tuple[GridRequest, Runtime]:
    """A request and a runtime from keyword options (`grid(run, width=21, device="cpu")`), over the given ones."""
    request_fields = {f.name for f in fields(GridRequest)}
    runtime_fields = {f.name for f in fields(Runtime)}
    unknown = sorted(set(options) - request_fields - runtime_fields)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}: options are GridRequest's and Runtime's fields")
    asked = {k: v for k, v in options.items() if k in request_fields}
    for key in ("epochs", "at_steps"):
        if asked.get(key) is not None:
            asked[key] = tuple(asked[key])
    if asked.get("layer") is not None and not isinstance(asked["layer"], str):
        asked["layer"] = tuple(asked["layer"])
    how = {k: v for k, v in options.items() if k in runtime_fields}
    return replace(request or GridRequest(), **asked), replace(runtime or Runtime(), **how)


HESSIAN_BN_MODES = ("train", "eval")
MAX_TOP = 100


CURVE_SHAPES = ("bezier", "polychain")
MAX_BENDS = 16


@dataclass(frozen=True)
class CurveConfig:
    """Everything that determines a trained curve between two checkpoints (`landscape connect`) except how many
    epochs it is trained for (more epochs continue the same curve): its endpoints' weights (by hash, in order:
    A→B and B→A are different curves), its shape and bends, and how it is trained. `bn`: BatchNorm in train mode
    while training (batch statistics at each sampled t), statistics recomputed at each evaluated t (Garipov)."""

    run_a: str
    epoch_a: int  # the checkpoint's key (its step, in a run with steps)
    weights_a: str  # the weights sha256 of that checkpoint
    run_b: str
    epoch_b: int
    weights_b: str
    shape: str = "bezier"
    bends: int = 1
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0

    def validate(self) -> CurveConfig:
        choice(self.shape, CURVE_SHAPES, "shape")
        positive_int(self.bends, "--bends", maximum=MAX_BENDS)
        choice(self.optimizer, OPTIMIZERS, "optimizer")
        finite(self.lr, "--lr", positive=True)
        finite(self.momentum, "--momentum", below=1.0)
        finite(self.weight_decay, "--weight-decay")
        positive_int(self.batch_size, "--batch-size")
        positive_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)
        if self.optimizer == "adam" and self.momentum != 0:
            raise UsageError("--momentum applies to --optimizer sgd only (adam uses its own betas)")
        return self

    def identity(self) -> dict[str, Any]:
        """What the curve's id hashes: the endpoints by their weights (not by run id or name) and the training."""
        return {"a": self.weights_a, "b": self.weights_b, "shape": self.shape, "bends": self.bends,
                "optimizer": self.optimizer, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size, "seed": self.seed,
                "format": CURVE_IDENTITY_FORMAT}

    @property
    def curve_id(self) -> str:
        return short_hash(self.identity())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CurveConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


CURVE_IDENTITY_FORMAT = 1


@dataclass(frozen=True)
class HessianConfig:
    """Everything that determines a run's curvature results except which epochs they cover.

    The Hessian is that of the mean of the batches' losses (the average of the per-batch values a
    grid stores), over the parameters a grid with the same --perturb-biasbn / --layer perturbs.
    """

    run: str
    top: int = 2  # eigenpairs with the largest eigenvalues
    batches: int = 3
    batch_size: int = 256
    bn: str = "train"
    perturb_biasbn: bool = False
    layer: str | None = None
    tol: float = 1e-3  # eigenpairs whose residual ‖Hv − λv‖/|λ| exceeds it are marked not converged
    probes: int = 100  # Hutchinson probes for the trace
    density: bool = False
    density_probes: int = 4
    density_steps: int = 60
    bins: int = 200
    seed: int = 0
    split: str = "train"
    whole: bool = False  # --batches all
    layers: tuple[str, ...] | None = None  # --layer patterns (or several names): in the identity only when given

    def validate(self) -> HessianConfig:
        positive_int(self.top, "--top", maximum=MAX_TOP)
        positive_int(self.batches, "--batches")
        choice(self.split, SPLITS, "--split")
        positive_int(self.batch_size, "--batch-size")
        choice(self.bn, HESSIAN_BN_MODES, "--bn mode")
        finite(self.tol, "--tol", positive=True, below=1.0)
        positive_int(self.probes, "--probes", minimum=2, maximum=100_000)
        positive_int(self.density_probes, "--density-probes", maximum=1000)
        positive_int(self.density_steps, "--steps", minimum=2, maximum=1000)
        positive_int(self.bins, "--bins", minimum=2, maximum=100_000)
        positive_int(self.seed, "--seed", minimum=0, maximum=MAX_SEED)
        check_layers(self.layer, self.layers, False)
        return self

    def identity(self) -> dict[str, Any]:
        out = {**asdict(self), "format": 1}
        if self.layers is None:  # added since: left out unless given, so no existing result changes id
            out.pop("layers")
        else:
            out["layers"] = list(self.layers)
        if not self.density:  # the density's settings do not change the other results
            for key in ("density_probes", "density_steps", "bins"):
                out.pop(key)
        out.pop("whole")
        if self.whole:
            out["batches"] = "all"
        if self.split == "train":
            out.pop("split")
        return out

    @property
    def hessian_id(self) -> str:
        return short_hash({"hessian": self.identity()})

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> HessianConfig:
        if d.get("format") != 1:
            raise ValueError(f"unknown Hessian configuration format {d.get('format')!r}")
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if fields.get("batches") == "all":
            fields.update(batches=1, whole=True)
        if fields.get("layers") is not None:
            fields["layers"] = tuple(fields["layers"])
        return cls(**fields)


def check_range(lo: float, hi: float, option: str) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"{option} {lo:g},{hi:g}: both ends must be finite numbers")
    if lo >= hi:
        raise UsageError(f"{option} {lo:g},{hi:g}: the low end must be below the high end")
    return lo, hi


def parse_range(text: str | None, option: str = "--range") -> tuple[float, float] | None:
    """'LO,HI' -> (LO, HI), both finite and LO < HI; None -> None."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(f"bad {option} {text!r}: give two numbers LO,HI like -0.5,1.5") from None
    return check_range(lo, hi, option)


def parse_batches(text: str | int) -> int | str:
    """--batches: a number of mini-batches, or "all" (the whole split)."""
    if isinstance(text, int) or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"bad --batches {text!r}: give a number of mini-batches, or all (the whole split)") from None


def data_size(dataset: dict[str, Any], split: str) -> int:
    """The number of samples of a split, from a run's dataset record."""
    return int(dataset["train_size" if split == "train" else "val_size"])


def check_batches(batches: int, batch_size: int, whole: bool, split: str, dataset: dict[str, Any]) -> None:
    """Refuse more samples than the split has (the grid's batches are its first ones)."""
    size = data_size(dataset, split)
    unit = sample_word(dataset)
    if not whole and batches * batch_size > size:
        raise UsageError(
            f"--batches {batches} x --batch-size {batch_size} = {batches * batch_size} {unit}, but "
            f"{dataset['name']} has {size} {'training' if split == 'train' else 'validation'} {unit}: at most "
            f"{size // batch_size} batches of {batch_size} (or --batches all)"
        )


def sample_word(dataset: dict[str, Any]) -> str:
    """What a run's samples are called in messages: images for the built-in (image) datasets, else samples."""
    return "samples" if "source" in dataset else "images"


MAX_LISTED = 1_000_000  # numbers one --epochs / --at-steps may name (a range is checked before it is expanded)


def parse_epochs(text: str | None) -> list[int] | None:
    """'0,1,9' or '0-3,9' -> [0, 1, 9] / [0, 1, 2, 3, 9]; None -> None (all)."""
    return _parse_numbers(text, "--epochs", "epoch", "epoch numbers like 0,1,9 or a range like 0-9")


def parse_steps(text: str | None) -> list[int] | None:
    """--at-steps '10,20' or '0-30,50' -> step numbers, parsed as `parse_epochs` parses epochs; None -> None."""
    return _parse_numbers(text, "--at-steps", "step", "step numbers like 10,20 or a range like 0-50")


def _parse_numbers(text: str | None, option: str, what: str, example: str) -> list[int] | None:
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            lo, hi = (int(v) for v in part.split("-", 1)) if "-" in part[1:] else (int(part), int(part))
        except ValueError:
            raise UsageError(f"bad {option} {text!r}: give {example}") from None
        if hi - lo >= MAX_LISTED or len(out) + hi - lo >= MAX_LISTED:  # before expanding the range
            raise UsageError(f"{option} {text!r} names over {MAX_LISTED:,} {what}s: give the ones the run has "
                             "(`landscape ls` lists them)")
        out.extend(range(lo, hi + 1))
    for n in out:
        positive_int(n, f"a {what} number", minimum=0)
    return out
