"""Grids: checkpoint -> directions -> evaluation -> Zarr, row by row, resumable and shareable.

`grid()` computes the loss landscape of a run around the checkpoints of the requested epochs. The
work is cut into rows (one y value of one direction pair of one epoch, all batches and x values);
each row is claimed with a lock file, computed, written, and marked done. So a killed grid resumes
where it stopped (`resume=True`), and several processes on one grid share the rows between them;
a row whose holder died is taken over.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__, checkpoints, directions, gridstore
from ._io import leave_no_trace, make_dirs, now, short_hash
from ._perf import select_device, tune_allocator, use_channels_last
from ._progress import progress_bar, stderr_console
from .config import GridConfig, positive_int
from .data import load_dataset
from .errors import GridStateError, IntegrityError, RunNotFoundError, UsageError
from .evaluate import PlaneEvaluator
from .locks import is_locked
from .meta import EpochRecord, GridMeta, RunMeta
from .store import Store


@dataclass
class GridResult:
    grid_id: str
    run_id: str
    path: Path
    zarr_path: Path
    meta: GridMeta
    computed_rows: int = 0
    rows_done: int = 0
    rows_total: int = 0
    diverged: int = 0
    repaired: list[str] = field(default_factory=list)
    seconds_rows: float = 0.0  # time spent evaluating and writing rows (excludes set-up)

    @property
    def complete(self) -> bool:
        return self.rows_total > 0 and self.rows_done == self.rows_total

    def open(self) -> Any:
        """The grid's Zarr group, read-only."""
        return gridstore.open_group(self.zarr_path, "r")

    def to_xarray(self) -> Any:
        """The grid as an xarray Dataset (needs xarray installed)."""
        import xarray as xr

        return xr.open_zarr(self.zarr_path)


def grid(
    run: str,
    *,
    epochs: list[int] | None = None,
    width: int = 41,
    span: float = 1.0,
    pairs: int = 3,
    batches: int = 3,
    batch_size: int = 256,
    seed: int | None = None,
    norm: str | None = None,
    perturb_biasbn: bool = False,
    layer: str | None = None,
    single_kernel: bool = False,
    bn: str = "train",
    directions_from: str | None = None,
    from_grid: str | None = None,
    gradient: bool = True,
    device: str = "auto",
    name: str | None = None,
    resume: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> GridResult:
    """Compute the loss landscape of `run` around the checkpoints of `epochs` (default: all).

    The grid covers a, b in [-span, span] (`width` points each) along `pairs` seeded random
    direction pairs, normalized against each epoch's weights (`norm`), for the training set's first
    `batches` mini-batches. The same call again computes nothing; with `resume=True` it computes
    what an interrupted call left. `gradient=False` skips the projected gradient at the centre (one
    backward pass per batch and pair, drawn as arrows by `plot`), keeping the memory to that of
    forward passes; a later call with gradients adds them. `from_grid` names a grid of the run whose
    configuration (and, unless `epochs` is given, epochs) to use instead of the other options.
    Returns where the grid is and how far it got.
    """
    st = Store.of(store)
    run_id = st.resolve(run)
    run_meta = st.read_run(run_id)
    recorded = {r.epoch: r for r in run_meta.epochs}
    if not recorded:
        raise GridStateError(f"run {run_id} has no checkpoint yet: train it first (`landscape train ...`)")
    if from_grid is not None:
        _, gid = st.find_grid(from_grid, run_id)
        source = st.read_grid(run_id, gid)
        c = source.config
        width, span, pairs, batches, batch_size = c.width, c.span, c.pairs, c.batches, c.batch_size
        seed, norm, perturb_biasbn, layer = c.seed, c.norm, c.perturb_biasbn, c.layer
        single_kernel, bn, directions_from = c.single_kernel, c.bn, None
        if epochs is None:
            epochs = source.epochs or None
    wanted = _epochs(epochs, recorded, run_id)

    seed, norm = _inherit_directions(st, run_meta, directions_from, seed, norm)
    cfg = GridConfig(run_id, width, span, pairs, batches, batch_size, seed, norm, perturb_biasbn, layer,
                     single_kernel, bn).validate()
    train_size = int(run_meta.dataset["train_size"])
    if batches * batch_size > train_size:
        raise UsageError(
            f"--batches {batches} x --batch-size {batch_size} = {batches * batch_size} images, but "
            f"{run_meta.dataset['name']} has {train_size} training images: at most "
            f"{train_size // batch_size} batches of {batch_size}"
        )
    dev = select_device(device)
    first = checkpoints.load_epoch(st, run_id, recorded[wanted[0]])
    weights = _parameters(first)
    names = directions.perturbed_names(weights, perturb_biasbn=perturb_biasbn, layer=layer,
                                       single_kernel=single_kernel)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    del first, weights  # only their names and shapes are needed from here on
    grid_id = cfg.grid_id
    grid_dir = st.grid_dir(run_id, grid_id)
    if name is not None:
        st.check_grid_name(run_id, grid_id, name)
    try:
        existing = _read_meta(st, run_id, cfg)
        status = _status(st, run_id, existing, wanted, gradient) if existing is not None else None
    except IntegrityError:
        if not resume:
            raise
        existing, status = None, None  # --resume rebuilds the damaged metadata below

    if existing is not None and status is not None:
        if status["complete"] and not resume and (name is None or existing.name == name):
            return _result(st, existing)  # (--resume goes on to check every chunk)
        if status["partial"] and not resume:
            busy = " (another process is computing it: --resume joins in)" if status["busy"] else ""
            raise GridStateError(
                f"grid {grid_id} of run {run_id} is {status['percent']:.0f}% done "
                f"({status['rows_done']} of {status['rows_total']} rows){busy}: pass --resume to continue it"
            )

    st.ensure_writable()
    data = load_dataset(run_meta.dataset["name"], data_dir)  # before anything is written
    new_dirs = [d for d in (grid_dir.parent, grid_dir) if not d.exists()]
    with leave_no_trace(new_dirs, st.grid_file(run_id, grid_id)):
        make_dirs(st.locks_dir(run_id, grid_id))
        with _structure_lock(st, run_id, grid_id):
            meta = _prepare(st, run_meta, cfg, wanted, shapes, name)

    tune_allocator()
    return _compute(st, run_meta, meta, cfg, wanted, names, shapes, data, dev, progress, gradient)


def _epochs(epochs: list[int] | None, recorded: dict[int, EpochRecord], run_id: str) -> list[int]:
    available = sorted(recorded)
    if epochs is None:
        return available
    if not epochs:
        raise UsageError("--epochs is empty: give epoch numbers like 0,1,9")
    missing = [e for e in epochs if e not in recorded]
    if missing:
        have = ",".join(str(e) for e in available)
        raise UsageError(
            f"run {run_id} has no checkpoint for epoch {','.join(map(str, missing))}: it has epochs {have} "
            "(train more epochs with the same `landscape train` command and a larger --epochs)"
        )
    return list(dict.fromkeys(epochs))


def _inherit_directions(st: Store, run_meta: RunMeta, directions_from: str | None, seed: int | None,
                        norm: str | None) -> tuple[int, str]:
    """--directions-from GRID: use that grid's random draw (and normalization unless given)."""
    if directions_from is None:
        return (0 if seed is None else seed), (norm or "filter")
    try:  # a grid of this run first (names like "main" repeat across runs), then any run's
        src_run, src_grid = st.find_grid(directions_from, run_meta.id)
    except RunNotFoundError:
        src_run, src_grid = st.find_grid(directions_from)
    src_meta = st.read_grid(src_run, src_grid)
    src_name, src_args = st.read_run(src_run).architecture
    name, args = run_meta.architecture
    same = src_name == name and {k: v for k, v in src_args.items() if k != "activation"} == {
        k: v for k, v in args.items() if k != "activation"}
    if not same:
        raise UsageError(
            f"--directions-from {directions_from}: that grid is of a {src_name} {src_args}, this run "
            f"is a {name} {args}: directions must come from a grid of the same architecture"
        )
    src_cfg = src_meta.config
    if seed is not None and seed != src_cfg.seed:
        raise UsageError(f"--seed {seed} contradicts --directions-from {directions_from} (seed {src_cfg.seed})")
    return int(src_cfg.seed), norm or str(src_cfg.norm)


def _parameters(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's trainable parameters (not buffers), in the model's order."""
    model = checkpoints.build_model(checkpoint)
    return {k: v.detach() for k, v in model.named_parameters()}


def _read_meta(st: Store, run_id: str, cfg: GridConfig) -> GridMeta | None:
    """The grid's grid.json (None if there is none yet); damaged or edited is an IntegrityError."""
    if not st.has_grid(run_id, cfg.grid_id):
        return None
    path = st.grid_file(run_id, cfg.grid_id)
    try:
        meta = st.read_grid(run_id, cfg.grid_id)
    except IntegrityError as e:
        raise IntegrityError(
            f"{path} does not match the grid's configuration (edited or damaged): the same `landscape grid` "
            "command with --resume rebuilds it"
        ) from e
    if meta.config.identity() != cfg.identity():
        raise IntegrityError(
            f"{path} does not match the grid's configuration (edited or damaged): the same `landscape grid` "
            "command with --resume rebuilds it"
        )
    return meta


def _status(st: Store, run_id: str, meta: GridMeta, wanted: list[int], gradient: bool) -> dict[str, Any]:
    rows = gridstore.Rows(st.zarr_path(run_id, meta.id), "r")
    have = rows.epochs
    cfg = meta.config
    per_epoch = cfg.pairs * cfg.width
    rows_done = 0
    old_complete = centers = True
    for e in wanted:
        if e in have:
            ei = have.index(e)
            n = sum(int(rows.done(ei, p).sum()) for p in range(cfg.pairs))
            rows_done += n
            old_complete &= n == per_epoch
            centers &= all(rows.center_done(ei, p, gradient) for p in range(cfg.pairs))
    new = [e for e in wanted if e not in have]
    rows_total = len(wanted) * per_epoch
    busy = any(is_locked(p) for p in st.locks_dir(run_id, meta.id).glob("*.lock"))
    return {
        "complete": not new and old_complete and centers,  # (gradients missing after --no-gradient: more to do)
        "partial": not old_complete,  # rows already started for a requested epoch are unfinished
        "rows_done": rows_done,
        "rows_total": rows_total,
        "percent": 100.0 * rows_done / rows_total if rows_total else 0.0,
        "busy": busy,
    }


@contextlib.contextmanager
def _structure_lock(st: Store, run_id: str, grid_id: str) -> Any:
    """Creating or growing the arrays is brief: wait for another process doing it."""
    lock = st.grid_lock(run_id, grid_id)
    deadline = time.monotonic() + 120
    while not lock.try_acquire():
        if time.monotonic() > deadline:
            lock.acquire()  # raises LockedError naming the holder
        time.sleep(0.05)
    try:
        yield lock
    finally:
        lock.release()


def _prepare(st: Store, run_meta: RunMeta, cfg: GridConfig, wanted: list[int], shapes: dict[str, tuple[int, ...]],
             name: str | None) -> GridMeta:
    """Create the grid (directions, arrays, grid.json) or add the new epochs; metadata last."""
    run_id, grid_id = run_meta.id, cfg.grid_id
    zarr_path = st.zarr_path(run_id, grid_id)
    attrs = {"grid": grid_id, "run": run_id, "config": cfg.identity(),
             "model": run_meta.model, "dataset": run_meta.dataset["name"]}
    try:
        meta = _read_meta(st, run_id, cfg)
    except IntegrityError:  # only with --resume: grid() refused otherwise
        meta = None
        damaged_meta = True
    else:
        damaged_meta = False
    if meta is None:
        records = [directions.ensure_stored(st, run_id, shapes, cfg.seed, p) for p in range(cfg.pairs)]
        epochs_so_far: list[int] = []
        if damaged_meta and (zarr_path / "zarr.json").exists():
            # rebuild grid.json around the arrays that exist: their epochs come from the Zarr group
            gridstore.repair(zarr_path, cfg, attrs, [])
            epochs_so_far = gridstore.stored_epochs(zarr_path)
            if gridstore.open_group(zarr_path)["loss"].shape[0] != len(epochs_so_far):  # type: ignore[union-attr]
                raise IntegrityError(
                    f"grid {grid_id}: grid.json and the epoch coordinates are both damaged, so which epoch "
                    f"each slice holds is unknown: delete {st.grid_dir(run_id, grid_id)} and compute the grid again"
                )
            stderr_console().print(f"[yellow]grid {grid_id}: rebuilt damaged grid.json from the command and arrays[/]")
        else:
            gridstore.create(zarr_path, cfg, attrs)
        meta = GridMeta(
            id=grid_id,
            name=name,
            run=run_id,
            config=cfg,
            epochs=epochs_so_far,
            directions=records,
            parameters=short_hash(directions.parameter_signature(shapes)),
            versions={"landscape": __version__, "torch": torch.__version__, "python": platform.python_version()},
            created=now(),
        )
        if damaged_meta:
            st.write_grid(meta)
    for what in gridstore.repair(zarr_path, cfg, attrs, list(meta.epochs)):
        stderr_console().print(f"[yellow]grid {grid_id}: rebuilt damaged {what} from grid.json[/]")
    epochs = list(meta.epochs) + [e for e in wanted if e not in meta.epochs]
    changed = epochs != meta.epochs or (name is not None and meta.name != name)
    gridstore.grow(zarr_path, epochs)
    if changed or not st.has_grid(run_id, grid_id):
        meta.epochs = epochs
        if name is not None:
            meta.name = name
        meta.updated = now()
        st.write_grid(meta)
    return meta


def _compute(st: Store, run_meta: RunMeta, meta: GridMeta, cfg: GridConfig, wanted: list[int], names: list[str],
             shapes: dict[str, tuple[int, ...]], data: Any, device: torch.device, progress: bool,
             gradient: bool) -> GridResult:
    run_id, grid_id = run_meta.id, meta.id
    rows = gridstore.Rows(st.zarr_path(run_id, grid_id))
    index = {e: i for i, e in enumerate(rows.epochs)}
    xs = [float(v) for v in rows["x"][:]]
    ys = [float(v) for v in rows["y"][:]]
    total = len(wanted) * cfg.pairs * cfg.width
    repaired: list[str] = []

    def count_done() -> int:
        return sum(int(rows.done(index[e], p).sum()) for e in wanted for p in range(cfg.pairs))

    computed = 0
    seconds_rows = 0.0
    batches_cpu = [
        (data.train_x[i * cfg.batch_size:(i + 1) * cfg.batch_size],
         data.train_y[i * cfg.batch_size:(i + 1) * cfg.batch_size])
        for i in range(cfg.batches)
    ]
    with progress_bar(f"grid {grid_id}", total * cfg.width, unit="points", enabled=progress,
                      completed=count_done() * cfg.width) as bar:
        while True:
            made, waiting = 0, 0
            for e in wanted:
                ei = index[e]
                todo = {}
                for p in range(cfg.pairs):
                    missing = _rows_todo(rows, ei, e, p, repaired)
                    # rows another process holds right now are not ours to load the model for
                    todo[p] = [y for y in missing if not is_locked(st.row_lock(run_id, grid_id, e, p, y).path)]
                    waiting += len(missing) - len(todo[p])
                need_center = [p for p in range(cfg.pairs) if not rows.center_done(ei, p, gradient)]
                if not any(todo.values()) and not need_center:
                    continue
                record = run_meta.record(e)
                assert record is not None
                ckpt = checkpoints.load_epoch(st, run_id, record)
                model = checkpoints.build_model(ckpt).to(device)
                del ckpt
                channels_last = use_channels_last(model, device)
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                batches = [(data.prepare(x, device, channels_last), y.to(device)) for x, y in batches_cpu]
                evaluator = PlaneEvaluator(model, batches, cfg.bn)
                weights = dict(model.named_parameters())
                for p in range(cfg.pairs):
                    if not todo[p] and p not in need_center:
                        continue
                    raw = directions.load_recorded(st, run_id, meta.directions[p], shapes)
                    # one raw direction in memory at a time, normalized into the parameters' layout
                    d1 = directions.normalize(raw.pop("d1"), weights, names, cfg.norm, cfg.single_kernel, like=True)
                    d2 = directions.normalize(raw.pop("d2"), weights, names, cfg.norm, cfg.single_kernel, like=True)
                    with evaluator.plane(d1, d2) as plane:
                        for y in todo[p]:
                            lock = st.row_lock(run_id, grid_id, e, p, y)
                            if not lock.try_acquire():
                                waiting += 1
                                continue
                            try:
                                if rows.row_done(ei, p, y):
                                    continue
                                t0 = time.perf_counter()
                                loss, acc = plane.evaluate([(a, ys[y]) for a in xs])
                                rows.write_row(ei, p, y, loss.T, acc.T)
                                seconds_rows += time.perf_counter() - t0
                                computed += 1
                                made += 1
                                bar.advance(cfg.width)
                            finally:
                                lock.release()
                                with contextlib.suppress(OSError):
                                    lock.path.unlink()
                        if p in need_center:  # after the rows: its backward pass never overlaps them
                            rows.write_center(ei, p, plane.center(gradient), gradient)
                del evaluator, model, batches
            if not waiting:
                break
            # rows held by other processes: wait for them, or take them over if their holder dies
            bar.set_description(f"grid {grid_id} (sharing)")
            bar.set_completed(count_done() * cfg.width)
            if not made:
                time.sleep(0.2)
    done_rows, total_rows, diverged = rows.progress()
    return GridResult(grid_id, run_id, st.grid_dir(run_id, grid_id), st.zarr_path(run_id, grid_id), meta, computed,
                      done_rows, total_rows, diverged, repaired, seconds_rows)


def _rows_todo(rows: gridstore.Rows, ei: int, epoch: int, p: int, repaired: list[str]) -> list[int]:
    """Rows not done yet; a done row whose chunks no longer decode is reported and redone."""
    done = rows.done(ei, p, repaired.append)
    todo = []
    for y, is_done in enumerate(done):
        if not is_done:
            todo.append(y)
        elif not rows.row_readable(ei, p, y):
            repaired.append(f"row {y} of pair {p}, epoch {epoch}")
            stderr_console().print(f"[yellow]damaged chunk in row {y} of pair {p}, epoch {epoch}: recomputing[/]")
            rows.clear_row(ei, p, y)
            todo.append(y)
    return todo


def _result(st: Store, meta: GridMeta) -> GridResult:
    zarr_path = st.zarr_path(meta.run, meta.id)
    done, total, diverged = gridstore.Rows(zarr_path, "r").progress()
    return GridResult(meta.id, meta.run, st.grid_dir(meta.run, meta.id), zarr_path, meta, 0, done, total, diverged)


def list_layers(run: str, store: Store | str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The parameter tensors of a run's model: what `--layer` accepts."""
    st = Store.of(store)
    run_id = st.resolve(run)
    meta = st.read_run(run_id)
    if not meta.epochs:
        raise GridStateError(f"run {run_id} has no checkpoint yet: train it first")
    weights = _parameters(checkpoints.load_epoch(st, run_id, meta.epochs[-1]))
    return [
        {"name": n, "shape": list(w.shape), "parameters": w.numel(),
         "kind": "bias/batchnorm" if directions.is_bias_or_bn(w) else ("conv" if w.dim() == 4 else "weight"),
         "perturbed_by_default": not directions.is_bias_or_bn(w)}
        for n, w in weights.items()
    ]


def parse_epochs(text: str | None) -> list[int] | None:
    """'0,1,9' or '0-3,9' -> [0, 1, 9] / [0, 1, 2, 3, 9]; None -> None (all)."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UsageError(f"bad --epochs {text!r}: give epoch numbers like 0,1,9 or a range like 0-9") from None
    for e in out:
        positive_int(e, "an epoch number", minimum=0)
    return out
