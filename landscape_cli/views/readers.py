"""What every view and export reads, and how it chooses it: the grids of runs (`select_sources`, as
`landscape plot` chooses them), a run's curvature results (`select_hessian`), a grid's values per
epoch (`read_epoch` for a plane, `read_line` for a line), a PCA grid's trajectory (`read_path`,
`trajectory`), and the texts that name what a grid is (`geometry`, `axis_labels`, `kind_text`, ...).
Accuracy is read NaN wherever the loss is not finite (`accuracy_where_finite`), old grids included.

Reads run.json, grid.json and the Zarr arrays through the store; never imports torch, matplotlib or
plotly: figures (`figures`, `hessian_figure`), pages (`page`), notebooks (`notebook`) and exports
(`landscape_cli.exchange.export`) draw or write what it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli.errors import GridStateError, IntegrityError, LandscapeError, UsageError
from landscape_cli.store import Store, check_tree
from landscape_cli.store.grid_arrays import DECODE_ERRORS, Rows, accuracy_where_finite
from landscape_cli.store.hessian_arrays import read_results
from landscape_cli.store.meta import Damaged, EpochRecord, GridMeta, HessianMeta, RunMeta

METRICS = ("loss", "accuracy")
FAR_FROM_PLANE = 0.5  # a checkpoint's residual/distance above which the path is said to lie far from the plane


@dataclass
class Source:
    """One grid of one run, as read from the store."""

    run_id: str
    run: RunMeta
    grid_id: str
    grid: GridMeta
    path: Path  # the grid's directory
    zarr_path: Path
    plots_dir: Path
    _coords: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    store: Store | None = field(default=None, repr=False, compare=False)  # the store it was read from

    @property
    def label(self) -> str:
        return f"{self.name}: {model_text(self, '/')}"

    @property
    def name(self) -> str:
        return self.run.name or self.run_id[:8]

    @property
    def kind(self) -> str:
        return self.grid.config.kind

    @property
    def dims(self) -> int:
        return self.grid.config.dims

    @property
    def coords(self) -> list[np.ndarray]:
        """The grid's stored coordinates: [x] for a line, [x, y] for a plane."""
        if self._coords is None:
            rows = Rows(self.zarr_path, "r")
            try:
                self._coords = [np.asarray(rows[name][:], np.float64) for name in ("x", "y")[:rows.dims]]
            except DECODE_ERRORS as e:
                raise IntegrityError(
                    f"grid {self.grid_id} has damaged coordinates: `landscape grid {self.run_id} --grid "
                    f"{self.grid_id} --resume` rebuilds them (`landscape verify` lists everything that is damaged)"
                ) from e
        return self._coords

    def epoch_record(self, epoch: int) -> EpochRecord | None:
        """The run's record of the checkpoint `epoch` (its key: the step in a run with step checkpoints)."""
        return self.run.record(epoch)

    @property
    def steps(self) -> bool:
        """Whether the grid names its checkpoints by step (a run trained with --checkpoint-every)."""
        return self.run.has_steps

    @property
    def unit(self) -> str:
        """What a checkpoint's number counts: "step", or "epoch"."""
        return unit(self.run)

    def checkpoint_label(self, key: int) -> str:
        """A checkpoint's name: "step 150" or "epoch 3"."""
        return self.run.label(key)


@dataclass
class TrajectoryPath:
    """A PCA grid's trajectory as drawn: each checkpoint's coordinates on the plane (or line), its
    distance from the plane (`residual`) and from the final checkpoint (`distance`), and its own
    metric (`values`, the mean over the batches of the panel or curves it is drawn with)."""

    source: Source
    epochs: list[int]
    x: np.ndarray
    y: np.ndarray | None  # None on a line
    residual: np.ndarray
    distance: np.ndarray
    values: np.ndarray

    @property
    def off_plane(self) -> float:
        """The largest residual/distance over the checkpoints other than the final one (0: all on the plane)."""
        away = self.distance > 0
        return float(np.max(self.residual[away] / self.distance[away])) if away.any() else 0.0

    @property
    def far(self) -> bool:
        return self.off_plane > FAR_FROM_PLANE


# --- choosing what to read ------------------------------------------------------------------------


def select_sources(st: Store, runs: Sequence[str], grids: Sequence[str] = (), purpose: str = "to plot") -> list[Source]:
    """The grid of each run: named by `grids` (one for all runs, or one per run), else the newest."""
    if not runs:
        raise UsageError("name at least one run (or grid) to plot; `landscape ls` lists them")
    if grids and len(grids) not in (1, len(runs)):
        raise UsageError(f"give one --grid for all runs or one per run: got {len(grids)} for {len(runs)} runs")
    sources = []
    for i, ref in enumerate(runs):
        grid_ref = grids[0] if len(grids) == 1 else (grids[i] if grids else None)
        run_id, grid_id = st.select_grid(ref, grid_ref, purpose)
        meta = st.read_grid(run_id, grid_id)
        source = Source(run_id, st.read_run(run_id), grid_id, meta, st.grid_dir(run_id, grid_id),
                        st.zarr_path(run_id, grid_id), st.plots_dir(run_id, grid_id), store=st)
        check_tree(source.zarr_path, f"grid {grid_id}")  # no pipe where a chunk belongs: reading it would block
        rows = Rows(source.zarr_path, "r")  # its arrays' metadata (IntegrityError if damaged)
        for epoch in meta.epochs:
            _epoch_index(source, rows, epoch)
        sources.append(source)
    _check_comparable(sources)
    return sources


def check_metric(sources: list[Source], metric: str) -> None:
    """Accuracy exists for classification runs only: a regression (mean squared error) has only a loss; a user
    metric (`grid --metric`) only in the grids that computed it."""
    if metric not in METRICS:
        for s in sources:
            names = [m.name for m in s.grid.config.metrics or ()]
            if metric not in names:
                raise UsageError(f"unknown --metric {metric!r}: grid {s.grid_id} has {', '.join([*METRICS, *names])} "
                                 "(`landscape grid --metric module:function` adds one)")
    if metric == "accuracy":
        for s in sources:
            if s.run.dataset.get("task") == "regression" or s.run.config.loss == "mse":
                raise UsageError(f"--metric accuracy: run {s.run_id} is a regression (mean squared error): it has only "
                                 "a loss")


def _check_comparable(sources: list[Source]) -> None:
    """Compared grids are drawn on one set of axes: the same kind, dimensions and coordinates."""
    first = sources[0]
    for s in sources[1:]:
        a, b = first.grid.config, s.grid.config
        if (a.kind, a.dims) != (b.kind, b.dims):
            raise UsageError(
                f"cannot compare grid {first.grid_id} ({_shape_text(first)}) with grid {s.grid_id} ({_shape_text(s)}): "
                "compared grids need the same --directions and --dims"
            )
        same = len(first.coords) == len(s.coords) and all(
            c.shape == d.shape and np.allclose(c, d, rtol=1e-9, atol=1e-12) for c, d in zip(first.coords, s.coords, strict=True)
        )
        if not same:
            raise UsageError(
                f"cannot compare grid {first.grid_id} ({_shape_text(first)}) with grid {s.grid_id} ({_shape_text(s)}): "
                "compared grids need the same --width and --span (or --range and --yrange): the same "
                + ("x and y coordinates" if a.dims == 2 else "x coordinates")
            )


def _shape_text(s: Source) -> str:
    cfg = s.grid.config
    counts = "x".join(str(a.count) for a in cfg.axes)
    if cfg.kind == "random" and cfg.span is not None:
        return f"{counts}, span ±{cfg.span:g}" if cfg.dims == 2 else f"{counts} points, span ±{cfg.span:g}"
    ranges = ", ".join(f"{n} in [{lo:.3g}, {hi:.3g}]" for n, (lo, hi) in zip(_axis_names(s), s.grid.ranges, strict=False))
    return f"{kind_text(s)}, {counts}{' points' if cfg.dims == 1 else ''}, {ranges}"


def select_hessian(st: Store, run_id: str, ref: str | None) -> HessianMeta:
    """The run's curvature results named by id (prefix) or name, else the most complete: the most finished
    epochs, then the most eigenpairs, then the newest (a grid's own top-2 results never hide a fuller one)."""
    found = st.hessians(run_id)
    metas = [m for m in found if isinstance(m, HessianMeta)]
    damaged = [m for m in found if isinstance(m, Damaged)]
    if not metas and damaged:
        raise IntegrityError(f"run {run_id}'s curvature results {damaged[0].id} are damaged ({damaged[0].error})")
    if not metas:
        raise GridStateError(f"run {run_id} has no curvature results: `landscape hessian {run_id[:8]}` computes them")
    if ref is None:
        def completeness(m: HessianMeta) -> tuple[int, int, str, str]:
            try:
                finished = len(read_results(st.hessian_zarr(run_id, m.id), m.epochs))
            except (LandscapeError, OSError, KeyError, *DECODE_ERRORS):
                finished = 0
            return finished, m.config.top, m.updated or m.created or "", m.id

        return check_hessian_arrays(st, run_id, max(metas, key=completeness))
    matches = [m for m in metas if m.name == ref] or [m for m in metas if m.id.startswith(ref)]
    if len(matches) != 1:
        broken = [m for m in damaged if m.id.startswith(ref)]
        if not matches and len(broken) == 1:
            raise IntegrityError(f"curvature results {broken[0].id} are damaged ({broken[0].error})")
        known = ", ".join(m.id + (f" ({m.name})" if m.name else "") for m in metas)
        raise UsageError(f"--hessian {ref!r} matches {len(matches)} of the run's curvature results ({known})")
    return check_hessian_arrays(st, run_id, matches[0])


def check_hessian_arrays(st: Store, run_id: str, meta: HessianMeta) -> HessianMeta:
    """`meta`, once every array of its results' Zarr group decodes (they are small); else one IntegrityError line
    naming the damaged results and what to do."""
    import warnings

    import zarr

    path = st.hessian_zarr(run_id, meta.id)
    check_tree(path, f"curvature results {meta.id} of run {run_id}")
    try:
        with warnings.catch_warnings():  # a member without its metadata: refused below, not warned of
            warnings.simplefilter("ignore")
            root: Any = zarr.open_group(path, mode="r", use_consolidated=False)
            names = {name for name, _ in root.arrays()}
            missing = {"done", "eigenvalues", "trace", "lambda_min"} - names
            if missing:
                raise KeyError(", ".join(sorted(missing)))
            for name in sorted(names):
                np.asarray(root[name][...])
    except (OSError, KeyError, *DECODE_ERRORS) as e:  # zarr's own errors are ValueErrors
        raise IntegrityError(
            f"curvature results {meta.id} of run {run_id} are damaged ({type(e).__name__}: {e}): `landscape verify` "
            f"lists what is damaged; delete {st.hessian_dir(run_id, meta.id)} and run their `landscape hessian` "
            "command again"
        ) from e
    return meta


# --- reading --------------------------------------------------------------------------------------


def _damaged(source: Source, what: str, epoch: int | None) -> IntegrityError:
    where = f", {source.checkpoint_label(epoch)}" if epoch is not None else ""
    return IntegrityError(
        f"grid {source.grid_id} has a damaged chunk ({what}{where}): "
        f"`landscape grid {source.run_id} --grid {source.grid_id} --resume` recomputes it "
        "(`landscape verify` lists everything that is damaged)"
    )


def _metric(rows: Rows, loss: str, accuracy: str, metric: str, index: tuple[Any, ...]) -> np.ndarray:
    """The loss array's values at `index`, or the accuracy's, NaN where the loss is not finite (as the kernel
    now stores it; a grid stored before holds the argmax accuracy of NaN logits there): float64."""
    if metric not in METRICS:  # a user metric (`grid --metric`): its own array; none is stored at the centre
        if loss == "center_loss":
            return np.full(np.asarray(rows[loss][index]).shape, np.nan)
        return np.asarray(rows.root[metric][index], np.float64)  # type: ignore[index]
    values = np.asarray(rows[loss][index], np.float64)
    if metric == "loss":
        return values
    return np.asarray(accuracy_where_finite(np.asarray(rows[accuracy][index], np.float64), values))


@dataclass
class EpochData:
    values: np.ndarray  # [P, B, H, W]
    done: np.ndarray  # [P, H]
    center: np.ndarray  # [B]
    grad_a: np.ndarray  # [P, B]
    grad_b: np.ndarray


def _epoch_index(source: Source, rows: Rows, epoch: int) -> int:
    """Where the grid's arrays hold checkpoint `epoch` (one that grid.json lists but its arrays lack: damaged)."""
    try:
        return rows.epochs.index(epoch)
    except ValueError:
        raise IntegrityError(
            f"grid {source.grid_id}: grid.json's 'epochs' lists {source.checkpoint_label(epoch)}, which its arrays do not hold "
            f"(damaged): `landscape verify` lists what is damaged; delete the grid's directory "
            f"({source.path}) and run its `landscape grid` command again"
        ) from None


def read_epoch(source: Source, epoch: int, metric: str) -> EpochData:
    rows = Rows(source.zarr_path, "r")
    ei = _epoch_index(source, rows, epoch)
    pairs, height = rows["done"].shape[1], rows["done"].shape[2]
    # chunk by chunk, in order: a damaged chunk is named, and no read is left pending when we stop
    values = np.full((pairs, rows["loss"].shape[2], height, rows["loss"].shape[4]), np.nan)
    done = np.zeros((pairs, height), bool)
    ga = np.full((pairs, rows["grad_a"].shape[2]), np.nan)
    gb = np.full_like(ga, np.nan)
    what = "centre values"
    try:
        center = _metric(rows, "center_loss", "center_accuracy", metric, (ei,))
        for p in range(pairs):
            what = f"centre gradient of pair {p}"
            ga[p], gb[p] = rows["grad_a"][ei, p], rows["grad_b"][ei, p]
            for y in range(height):
                what = f"row {y} of pair {p}"
                done[p, y] = rows["done"][ei, p, y] > 0
                if done[p, y]:
                    values[p, :, y, :] = _metric(rows, "loss", "accuracy", metric, (ei, p, slice(None), y, slice(None)))
    except DECODE_ERRORS as e:
        raise _damaged(source, what, epoch) from e
    return EpochData(values, done, center, ga, gb)


@dataclass
class LineData:
    values: np.ndarray  # [P, B, W]
    done: np.ndarray  # [P]


def read_line(source: Source, epoch: int, metric: str) -> LineData:
    rows = Rows(source.zarr_path, "r")
    ei = _epoch_index(source, rows, epoch)
    pairs, batches, width = rows["loss"].shape[1:4]
    values = np.full((pairs, batches, width), np.nan)
    done = np.zeros(pairs, bool)
    what = ""
    try:
        for p in range(pairs):
            what = f"the line of pair {p}"
            done[p] = rows["done"][ei, p] > 0
            if done[p]:
                values[p] = _metric(rows, "loss", "accuracy", metric, (ei, p, slice(None), slice(None)))
    except DECODE_ERRORS as e:
        raise _damaged(source, what, epoch) from e
    return LineData(values, done)


@dataclass
class PathData:
    epochs: list[int]
    x: np.ndarray
    y: np.ndarray | None
    residual: np.ndarray
    distance: np.ndarray
    own: np.ndarray  # [checkpoint, batch]: each checkpoint's own metric


def read_path(source: Source, metric: str) -> PathData | None:
    """A PCA grid's trajectory, from its Zarr arrays (distances from the final checkpoint: grid.json)."""
    if source.kind != "pca":
        return None
    rows = Rows(source.zarr_path, "r")
    try:
        root: Any = rows.root  # (zarr types a group's member as an array or a group)
        epochs = [int(e) for e in np.asarray(root["path_epoch"][:])]
        x = np.asarray(root["path_x"][:], np.float64)
        y = np.asarray(root["path_y"][:], np.float64) if source.dims == 2 else None
        residual = np.asarray(root["path_residual"][:], np.float64)
        own = np.asarray(root["path_loss"][...], np.float64)
        if metric != "loss":
            own = np.asarray(accuracy_where_finite(np.asarray(root["path_accuracy"][...], np.float64), own))
    except (*DECODE_ERRORS, KeyError) as e:
        raise IntegrityError(
            f"grid {source.grid_id} has damaged or missing trajectory arrays (path_*): `landscape grid "
            f"{source.run_id} --grid {source.grid_id} --resume` rebuilds them"
        ) from e
    recorded = (source.grid.kind.get("path") or {}).get("distance")
    if isinstance(recorded, list) and len(recorded) == len(x):
        distance = np.asarray(recorded, np.float64)
    else:  # orthonormal components (--norm none): the in-plane and off-plane parts
        distance = np.sqrt(x**2 + (y**2 if y is not None else 0.0) + residual**2)
    return PathData(epochs, x, y, residual, distance, own)


def trajectory(source: Source, data: PathData | None, batches: list[int]) -> TrajectoryPath | None:
    if data is None:
        return None
    with np.errstate(invalid="ignore"):
        values = data.own[:, batches].mean(axis=1)
    return TrajectoryPath(source, data.epochs, data.x, data.y, data.residual, data.distance, values)


@dataclass
class CurveLine:
    """What a curve grid (`--directions curve`) stores beside its values, at its t (`x`): the straight line's
    metric [batch, x], and the ensembles' accuracy (that of φ(t) with the curve's two ends [batch, x], that of
    the two ends [batch]); the line's loss for the barriers whatever the metric."""

    x: np.ndarray
    line: np.ndarray
    line_loss: np.ndarray
    ensemble: np.ndarray
    endpoints: np.ndarray


def read_curve_line(source: Source, metric: str) -> CurveLine | None:
    """A curve grid's straight line and ensembles (None for other kinds)."""
    if source.kind != "curve":
        return None
    rows = Rows(source.zarr_path, "r")
    try:
        root: Any = rows.root
        line_loss = np.asarray(root["line_loss"][...], np.float64)
        line = line_loss if metric == "loss" else np.asarray(
            accuracy_where_finite(np.asarray(root["line_accuracy"][...], np.float64), line_loss))
        ensemble = np.asarray(root["ensemble_accuracy"][...], np.float64)
        endpoints = np.asarray(root["endpoint_ensemble_accuracy"][...], np.float64)
    except (*DECODE_ERRORS, KeyError) as e:
        raise IntegrityError(
            f"grid {source.grid_id} has damaged or missing curve arrays (line_*, *ensemble_accuracy): `landscape grid "
            f"{source.run_id} --grid {source.grid_id} --resume` rebuilds them"
        ) from e
    return CurveLine(source.coords[0], line, line_loss, ensemble, endpoints)


@dataclass
class CurvePlane:
    """A curve plane's (`--directions curve-plane`) control points (w_A, the bends, w_B) and the curve projected
    onto it."""

    control_x: np.ndarray
    control_y: np.ndarray
    x: np.ndarray
    y: np.ndarray
    residual: np.ndarray
    labels: list[str] | None = None  # the points' labels (None: w_A, the bends, w_B)


def read_curve_plane(source: Source) -> CurvePlane | None:
    """A curve plane's points and curve, or a plane through three checkpoints' points (`--directions plane`: no
    curve; each point labelled "A: epoch 3")."""
    if source.kind not in ("curve-plane", "plane"):
        return None
    rows = Rows(source.zarr_path, "r")
    names = ("through_x", "through_y") if source.kind == "plane" else (
        "control_x", "control_y", "curve_x", "curve_y", "curve_residual")
    try:
        root: Any = rows.root
        arrays = [np.asarray(root[name][...], np.float64) for name in names]
    except (*DECODE_ERRORS, KeyError) as e:
        raise IntegrityError(
            f"grid {source.grid_id} has damaged or missing arrays ({', '.join(names)}): `landscape grid "
            f"{source.run_id} --grid {source.grid_id} --resume` rebuilds them"
        ) from e
    if source.kind == "plane":
        labels = [str(f.get("label", letter)) for f, letter in zip(source.grid.kind.get("through") or [{}] * 3,
                                                                     "ABC", strict=False)]
        empty = np.zeros(0)
        return CurvePlane(arrays[0], arrays[1], empty, empty, empty, labels)
    return CurvePlane(arrays[0], arrays[1], arrays[2], arrays[3], arrays[4])


def curve_text(s: Source) -> str:
    """A curve grid's curve: "bezier curve 1a2b3c4d5e6f (1 bend, training epoch 20) from epoch 9 to b epoch 9"."""
    facts = s.grid.kind.get("curve") or {}
    bends = int(facts.get("bends", 0))
    name = facts.get("name") or str(facts.get("id", ""))
    start = facts.get("start", s.grid.epochs[0] if s.grid.epochs else 0)
    return (f"{facts.get('shape', '')} curve {name} ({bends} bend{'' if bends == 1 else 's'}, training epoch "
            f"{facts.get('epoch', '?')}) from {s.checkpoint_label(int(start))} to {target_text(s)}")


# --- checkpoints: by epoch, or by step -------------------------------------------------------------


def unit(run: RunMeta) -> str:
    """What the numbers naming a run's checkpoints count: "step" (a run with step checkpoints) or "epoch"."""
    return "step" if run.has_steps else "epoch"


def key_fields(run: RunMeta, key: int) -> dict[str, int]:
    """A checkpoint as JSON outputs name it: {"epoch": E}, or in a run with step checkpoints {"step": S, "epoch":
    the epochs completed at it} (as the `step` and `epoch` coordinates of its grids)."""
    if not run.has_steps:
        return {"epoch": key}
    record = run.record(key)
    return {"step": key, "epoch": record.epoch if record is not None else -1}


def keys_json(run: RunMeta, keys: Sequence[int]) -> dict[str, list[int]]:
    """A list of checkpoints as JSON outputs name them: {"epochs": keys}, or {"steps": keys, "epochs": the epochs
    completed at each} in a run with step checkpoints."""
    if not run.has_steps:
        return {"epochs": list(keys)}
    return {"steps": list(keys), "epochs": [key_fields(run, k)["epoch"] for k in keys]}


def select_keys(run: RunMeta, have: Sequence[int], epochs: Sequence[int] | None, steps: Sequence[int] | None,
                where: str, add: str) -> list[int]:
    """The checkpoints that --epochs and --at-steps name in a run with step checkpoints (epoch E: its checkpoint
    at the end of epoch E), in step order, checked against the keys `have` of a grid (or results): one line
    naming the missing steps and those it holds (`add`: the command that adds them, `{missing}` their steps).
    In a run without steps --at-steps is refused (one line); callers select its epochs as they always did."""
    if steps is not None and not steps and not epochs:
        raise UsageError("--at-steps is empty: give step numbers like 10,20")
    wanted = sorted(run.select(list(epochs) if epochs is not None else None, list(steps) if steps is not None else None))
    missing = [k for k in wanted if k not in have]
    if missing:
        text = ",".join(map(str, missing))
        raise UsageError(f"step {text} is not in {where} (it has steps {','.join(map(str, sorted(have))) or 'none'}): "
                         f"{add.format(missing=text)} adds it")
    return wanted


# --- what a grid is, in words ---------------------------------------------------------------------


def train_text(s: Source, epoch: int) -> str:
    """The epoch's train loss (and accuracy) for titles: "train loss 0.123, acc 96.1%" at the checkpoint where the
    run recorded it, else "train loss (running mean over epoch 5) 0.14, acc 95.2%"; "" without a record."""
    rec = s.epoch_record(epoch)
    if rec is None:
        return ""
    at = rec.train_at_checkpoint(imported=s.run.config.imported is not None)
    loss, accuracy = at if at is not None else (rec.train_loss, rec.train_accuracy)
    if at is not None:
        label = "train loss"
    elif rec.epoch_end is False:  # a step checkpoint within an epoch: the mean over that epoch's steps so far
        label = f"train loss (running mean over epoch {rec.epoch + 1} so far)"
    else:
        label = f"train loss (running mean over epoch {rec.epoch})"
    return f"{label} {loss:.3g}" + ("" if accuracy is None else f", acc {100 * accuracy:.1f}%")


def checkpoint_text(s: Source, key: int) -> str:
    """A checkpoint for a figure's title: "epoch 3"; in a run with steps "step 23 (end of epoch 1)" or "step 10
    (in epoch 1)"."""
    rec = s.epoch_record(key)
    if not s.steps or rec is None:
        return s.checkpoint_label(key)
    where = f"end of epoch {rec.epoch}" if rec.epoch_end is not False else f"in epoch {rec.epoch + 1}"
    return f"step {key} ({where})"


def val_text(rec: EpochRecord) -> str:
    """"; val loss 0.41, acc 88.1%" of a checkpoint's record; "" for a step checkpoint within an epoch (not
    evaluated on the val split)."""
    if rec.val_loss is None:
        return ""
    acc = "" if rec.val_accuracy is None else f", acc {100 * rec.val_accuracy:.1f}%"
    return f"; val loss {rec.val_loss:.3g}{acc}"


def batch_text(s: Source, b: int) -> str:
    """A batch entry's name: "batch 2", or "all" for a grid over the whole split (--batches all)."""
    return f"all of {s.grid.config.split}" if s.grid.config.whole else f"batch {b}"


def _axis_names(s: Source) -> tuple[str, ...]:
    return ("t",) if s.kind in ("interpolate", "curve") else ("x", "y")[:s.dims]


def eigenvalues(s: Source, epoch: int | None) -> list[float]:
    """A Hessian grid's top eigenvalues at `epoch` (its axes), as grid.json recorded them."""
    facts = (s.grid.kind.get("epochs") or {}).get(str(epoch)) if epoch is not None else None
    return [float(v) for v in facts.get("eigenvalues") or []] if facts else []


def axis_labels(s: Source, epoch: int | None = None) -> list[str]:
    """The label of each axis: what its coordinate is (a Hessian grid's: its eigenvalue at `epoch`)."""
    if s.kind in ("interpolate", "curve"):
        return ["t"]
    if s.kind == "curve-plane":
        return ["x (along w_B − w_A)", "y (towards the bend)"]
    if s.kind == "plane":
        return ["x (along w_B − w_A)", "y (towards w_C)"]
    if s.kind == "hessian":
        values = eigenvalues(s, epoch)
        return [f"v{j + 1} (λ{j + 1} = {values[j]:.4g})" if j < len(values) else f"v{j + 1} (Hessian eigenvector)"
                for j in range(s.dims)]
    if s.kind == "pca":
        ratios = s.grid.kind.get("explained_variance_ratio") or []
        return [f"PC{j + 1} ({100 * float(ratios[j]):.1f}% of variance)" if j < len(ratios) else f"PC{j + 1}"
                for j in range(s.dims)]
    return ["x (along d1)", "y (along d2)"][:s.dims]


def target_text(s: Source) -> str:
    """The checkpoint an interpolation ends at (t = 1): "epoch B", or "<run> epoch B" for another run's ("step S" in a
    run with step checkpoints)."""
    target = s.grid.kind.get("target") or {}
    epoch = target.get("epoch", s.grid.config.target_epoch)
    run = target.get("run", s.grid.config.target_run)
    if run is not None and run != s.grid.run:
        return f"{target.get('label') or str(run)[:8]} {_target_label(s, str(run), epoch)}"
    return s.checkpoint_label(epoch) if isinstance(epoch, int) else f"epoch {epoch}"


def _target_label(s: Source, run_id: str, key: Any) -> str:
    """Another run's checkpoint `key` named as that run names it ("step 150" in a run with steps)."""
    try:
        other = s.store.read_run(run_id) if s.store is not None and isinstance(key, int) else None
    except (LandscapeError, OSError):
        other = None
    return other.label(key) if other is not None else f"epoch {key}"


def kind_text(s: Source) -> str:
    shape = "plane" if s.dims == 2 else "line"
    return {"pca": f"PCA {shape}", "interpolate": "interpolation", "random": f"random {shape}",
            "hessian": f"Hessian eigenvector {shape}", "curve": "curve between two minima",
            "curve-plane": "plane of a curve between two minima",
            "plane": "plane through three checkpoints"}.get(s.kind, f"{s.kind} {shape}")


def geometry(s: Source) -> str:
    """What the grid's axes are, for titles (a square random plane: "span ±S", as the first release wrote)."""
    cfg = s.grid.config
    if cfg.kind == "random" and cfg.span is not None:
        return f"span ±{cfg.span:g}" if cfg.dims == 2 else f"random line, span ±{cfg.span:g}"
    ranges = ", ".join(f"{n} in [{lo:.3g}, {hi:.3g}]" for n, (lo, hi) in zip(_axis_names(s), s.grid.ranges, strict=False))
    if cfg.kind == "interpolate":
        return f"interpolation from each epoch to {target_text(s)}, {ranges}"
    if cfg.kind in ("curve", "curve-plane"):
        return f"{kind_text(s)}: {curve_text(s)}, {ranges}"
    if cfg.kind == "pca" and cfg.trajectory:
        t = list(cfg.trajectory)
        epochs = f"{t[0]}–{t[-1]}" if len(t) > 2 and t == list(range(t[0], t[-1] + 1)) else ",".join(map(str, t))
        return f"{kind_text(s)} of the path over {s.unit}s {epochs}, {ranges}"
    return f"{kind_text(s)}, {ranges}"


def directions_text(s: Source) -> str:
    cfg = s.grid.config
    if cfg.kind in ("interpolate", "curve", "curve-plane"):
        return ""
    if cfg.layer:
        return f"layer {cfg.layer}"
    if cfg.layers:
        return f"layers {' '.join(cfg.layers)}"
    return "not normalized" if cfg.norm == "none" else f"{cfg.norm}-normalized"


# the built-in models (models/) with BatchNorm layers: a grid made before grids recorded whether the model has
# any (grid.json "batchnorm") falls back to this (tests/test_labels.py checks it against the registry)
BATCHNORM_MODELS = frozenset({"resnet", "plain", "cnn", "vgg"})


def model_text(s: Source, sep: str = " / ") -> str:
    """"model / activation / dataset": the activation only for a built-in model, which --activation rewrites (a
    factory's model, or gpt, is never rewritten: its recorded "relu" says nothing)."""
    cfg = s.run.config
    builtin = "activation" in s.run.model.get("args", {})
    return sep.join([cfg.model, *([cfg.activation] if builtin else []), cfg.dataset])


def has_batchnorm(s: Source) -> bool | None:
    """Whether the grid's model has BatchNorm layers (whose mode --bn sets): as the grid recorded it, else known
    for the built-in models, else None (a factory's grid made before grids recorded it)."""
    if s.grid.batchnorm is not None:
        return s.grid.batchnorm
    if "source" not in s.run.model:
        return s.run.config.model in BATCHNORM_MODELS
    return None


def batchnorm_text(s: Source) -> str:
    """"BatchNorm train" for a model with BatchNorm layers; "" for one without (or not known to have any)."""
    return f"BatchNorm {s.grid.config.bn}" if has_batchnorm(s) else ""
