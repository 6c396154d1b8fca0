"""Grids: the library's `grid()`: options -> configuration -> prepared store -> plan -> execution.

`grid()` computes the loss landscape of a run around the checkpoints of the requested epochs, along
the axes its direction kind makes (random planes and lines, interpolation between checkpoints, the
PCA plane of the training trajectory). The configuration is built once (`plan.resolve`), the grid
is created or grown under its lock (`_prepare`: directions, Zarr arrays, grid.json last), and the
missing rows are computed by `execute` (resumable, shareable between processes).
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

from landscape_cli import __version__
from landscape_cli._io import leave_no_trace, make_dirs, now, short_hash
from landscape_cli._progress import stderr_console
from landscape_cli.config import GridConfig, positive_int
from landscape_cli.data import load_dataset
from landscape_cli.directions import GridContext, get_kind, parameter_signature
from landscape_cli.engine import distributed
from landscape_cli.engine.distributed import Share
from landscape_cli.engine.execute import Evaluation, checkpoint_loss, deterministic_kernels, execute, load_epoch_model
from landscape_cli.engine.plan import GridOptions, Plan, resolve, status
from landscape_cli.errors import GridStateError, IntegrityError, LandscapeError, UsageError
from landscape_cli.kernel.batches import Batches
from landscape_cli.kernel.device import select_device, tune_allocator
from landscape_cli.models import checkpoints
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows, create, grow, open_group, repair, stored_epochs
from landscape_cli.store.locks import is_locked
from landscape_cli.store.meta import GridMeta, RunMeta, epoch_record

MAX_POINTS_PER_PASS = 4096


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
    share: Share = field(default_factory=Share)  # which processes computed it (one, shards, ranks)
    evaluation: Evaluation | None = None  # None when nothing was computed

    @property
    def complete(self) -> bool:
        return self.rows_total > 0 and self.rows_done == self.rows_total

    def open(self) -> Any:
        """The grid's Zarr group, read-only."""
        return open_group(self.zarr_path, "r")

    def to_xarray(self) -> Any:
        """The grid as an xarray Dataset (needs xarray installed)."""
        import xarray as xr

        return xr.open_zarr(self.zarr_path)


def grid(
    run: str,
    *,
    epochs: list[int] | None = None,
    directions: str = "random",
    dims: int | None = None,
    width: int = 41,
    span: float | None = None,
    range: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    pairs: int | None = None,
    batches: int | str = 3,
    batch_size: int = 256,
    split: str = "train",
    seed: int | None = None,
    norm: str | None = None,
    perturb_biasbn: bool = False,
    layer: str | None = None,
    single_kernel: bool = False,
    bn: str = "train",
    directions_from: str | None = None,
    to_epoch: int | None = None,
    to: str | None = None,
    from_grid: str | None = None,
    gradient: bool = True,
    device: str = "auto",
    name: str | None = None,
    resume: bool = False,
    store: Store | str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    precision: str = "fp32",
    points_per_pass: int | None = None,
    shard: str | None = None,
) -> GridResult:
    """Compute the loss landscape of `run` around the checkpoints of `epochs` (default: all).

    By default the grid covers a, b in [-1, 1] (`width` points each, `span` or `range`/`yrange` to
    change it) along `pairs` seeded random direction pairs, normalized against each epoch's weights
    (`norm`), for the `split`'s first `batches` mini-batches (or "all": the whole split, the loss
    averaged over samples); `dims=1` makes lines along each
    pair's first direction. `directions="interpolate"` gives the line (1 − t)·w_A + t·w_B from each
    epoch A to `to_epoch` (or to `to`, another run "RUN[:EPOCH]"); `directions="pca"` the plane of the
    top two principal components of the trajectory of `epochs`, centred at its last checkpoint.
    The same call again computes nothing; with `resume=True` it computes what an interrupted call
    left. `gradient=False` skips the projected gradient at the centre (one backward pass per batch
    and pair, drawn as arrows by `plot`); a later call with gradients adds them. `from_grid` names a
    grid of the run whose configuration (and, unless `epochs` is given, epochs) to use instead.
    `precision` ("fp32", "tf32", "bf16") is part of the grid's identity; `points_per_pass` (default:
    1 on CPU, from free memory on a GPU) is fixed when the grid is created. `shard` "I/N" computes
    only this process's share of the rows (a job array); under torchrun the ranks share the grid.
    Returns where the grid is and how far it got (on torchrun ranks other than 0: of their share).
    """
    opts = GridOptions(
        epochs=tuple(epochs) if epochs is not None else None, directions=directions, dims=dims, width=width, span=span,
        range=range, yrange=yrange, pairs=pairs, batches=batches, batch_size=batch_size, split=split, seed=seed, norm=norm,
        perturb_biasbn=perturb_biasbn, layer=layer, single_kernel=single_kernel, bn=bn, directions_from=directions_from,
        to_epoch=to_epoch, to=to, from_grid=from_grid, precision=precision,
    )
    with distributed.session(shard) as sess:
        try:
            if points_per_pass is not None:
                positive_int(points_per_pass, "--points-per-pass", maximum=MAX_POINTS_PER_PASS)
            select_device(device)
            st = Store.of(store)
            run_meta = st.read_run(st.resolve(run))
            cfg, wanted = resolve(st, run_meta, opts)
        except LandscapeError as e:
            sess.agree(e)
            raise
        sess.agree(None)
        return compute(st, run_meta, cfg, wanted, gradient=gradient, device=device, name=name, resume=resume,
                       data_dir=data_dir, progress=progress, points_per_pass=points_per_pass, session=sess)


def compute(st: Store, run_meta: RunMeta, cfg: GridConfig, wanted: list[int], *, gradient: bool = True,
            device: str = "auto", name: str | None = None, resume: bool = False,
            data_dir: str | os.PathLike[str] | None = None, progress: bool = True,
            points_per_pass: int | None = None, session: distributed.Session | None = None) -> GridResult:
    """Create (or grow) the grid `cfg` of the run, then compute what is missing for the epochs `wanted`
    (with a partial `session`: this process's share of it)."""
    sess = session or distributed.Session(distributed.Share())
    share = sess.share
    kind = get_kind(cfg.kind)
    if points_per_pass is not None:
        positive_int(points_per_pass, "--points-per-pass", maximum=MAX_POINTS_PER_PASS)
    dev = sess.device(select_device(device))
    deterministic_kernels(dev)
    weights = _parameters(checkpoints.load_epoch(st, run_meta.id, epoch_record(run_meta, wanted[0])))
    names = kind.names(weights, cfg)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    del weights  # only their names and shapes are needed from here on
    ctx = GridContext(st, run_meta, cfg, shapes, names)
    run_id, grid_id = run_meta.id, cfg.grid_id
    gradient = gradient and kind.gradient
    batches: Batches | None = None

    def prepare() -> tuple[GridMeta | GridResult, Evaluation | None]:
        """Checks, then the grid created or grown: (its metadata, evaluation), or (the result, None) when
        there is nothing to do."""
        nonlocal batches
        if name is not None:
            st.check_grid_name(run_id, grid_id, name)
        try:
            existing = _read_meta(st, run_id, cfg)
            state = status(Rows(st.zarr_path(run_id, grid_id), "r"), cfg, wanted, gradient) if existing else None
        except IntegrityError:
            if not resume:
                raise
            existing, state = None, None  # --resume rebuilds the damaged metadata below
        recorded = _recorded_evaluation(existing, points_per_pass, dev, grid_id)
        if existing is not None and state is not None:
            if state.complete and not resume and (name is None or existing.name == name):
                return _result(st, existing), None  # (--resume goes on to check every chunk)
            if state.partial and not resume and not share.partial:
                busy = any(is_locked(p) for p in st.locks_dir(run_id, grid_id).glob("*.lock"))
                hint = " (another process is computing it: --resume joins in)" if busy else ""
                raise GridStateError(
                    f"grid {grid_id} of run {run_id} is {state.percent:.0f}% done "
                    f"({state.rows_done} of {state.rows_total} rows){hint}: pass --resume to continue it"
                )

        st.ensure_writable()
        data = load_dataset(run_meta.dataset["name"], data_dir, recorded=run_meta.dataset)  # before anything is written
        kind.before_prepare(ctx, wanted, device, data_dir, progress)
        batches = Batches.of(data, cfg)
        evaluation = recorded or _new_evaluation(ctx, wanted[0], batches, dev, points_per_pass)
        grid_dir = st.grid_dir(run_id, grid_id)
        new_dirs = [d for d in (grid_dir.parent, grid_dir) if not d.exists()]
        with leave_no_trace(new_dirs, st.grid_file(run_id, grid_id)):
            make_dirs(st.locks_dir(run_id, grid_id))
            with _grid_lock(st, run_id, grid_id):
                loss_of = lambda e: checkpoint_loss(ctx, batches, dev, e)  # noqa: E731
                meta = _prepare(ctx, wanted, name, loss_of, evaluation)
        return meta, evaluation

    prepared, evaluation = sess.lead(prepare)
    if isinstance(prepared, GridResult):
        return prepared
    meta = prepared
    assert evaluation is not None
    if batches is None:  # a rank other than 0: rank 0 prepared the grid
        batches = Batches.of(load_dataset(run_meta.dataset["name"], data_dir, recorded=run_meta.dataset), cfg)
    tune_allocator()
    rows = Rows(st.zarr_path(run_id, grid_id))
    outcome = execute(ctx, meta, rows, Plan.of(rows, cfg, wanted), batches, dev, progress and sess.leader, gradient,
                      share, evaluation)
    everyone = sess.gather((outcome.computed_rows, outcome.seconds_rows, outcome.repaired))
    done_rows, total_rows, diverged = rows.progress()
    return GridResult(grid_id, run_id, st.grid_dir(run_id, grid_id), st.zarr_path(run_id, grid_id), meta,
                      sum(c for c, _, _ in everyone), done_rows, total_rows, diverged,
                      [r for _, _, rs in everyone for r in rs], max(s for _, s, _ in everyone), share=share,
                      evaluation=evaluation)


def _recorded_evaluation(existing: GridMeta | None, points_per_pass: int | None, dev: torch.device,
                         grid_id: str) -> Evaluation | None:
    """The evaluation the grid was created with; asking for another one is refused (no grid mixes two)."""
    if existing is None:
        return None
    recorded = Evaluation.from_json(existing.evaluator, existing.config.precision)
    if recorded is None:  # made before evaluators were recorded: by the loop
        recorded = Evaluation(1, existing.config.precision, dev.type)
    if points_per_pass is not None and points_per_pass != recorded.points_per_pass:
        raise UsageError(f"grid {grid_id} is computed by {recorded.describe()}: continue it without "
                         f"--points-per-pass (or with --points-per-pass {recorded.points_per_pass}), so that no grid "
                         "mixes points of two evaluators")
    if recorded.device != dev.type:
        raise UsageError(f"grid {grid_id} is computed by {recorded.describe()}: continue it with --device "
                         f"{recorded.device}, so that no grid mixes points of two devices")
    return recorded


def _new_evaluation(ctx: GridContext, epoch: int, batches: Batches, dev: torch.device,
                    points_per_pass: int | None) -> Evaluation:
    """A new grid's evaluation: the points per pass given, else 1 on CPU and what fits in free memory on a GPU."""
    if points_per_pass is None:
        if dev.type == "cuda":
            from landscape_cli.kernel.batched import choose_points_per_pass

            em = load_epoch_model(ctx, epoch, batches, dev)
            points_per_pass = choose_points_per_pass(em.model, em.evaluator.batches, dev)
            del em
        else:
            points_per_pass = 1
    return Evaluation(points_per_pass, ctx.config.precision, dev.type)


def _parameters(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's trainable parameters (not buffers), in the model's order."""
    model = checkpoints.build_model(checkpoint)
    return {k: v.detach() for k, v in model.named_parameters()}


def _read_meta(st: Store, run_id: str, cfg: GridConfig) -> GridMeta | None:
    """The grid's grid.json (None if there is none yet); damaged or edited is an IntegrityError."""
    if not st.has_grid(run_id, cfg.grid_id):
        return None
    path = st.grid_file(run_id, cfg.grid_id)
    problem = IntegrityError(
        f"{path} does not match the grid's configuration (edited or damaged): the same `landscape grid` "
        "command with --resume rebuilds it"
    )
    try:
        meta = st.read_grid(run_id, cfg.grid_id)
    except IntegrityError as e:
        raise problem from e
    if meta.config.identity() != cfg.identity():
        raise problem
    return meta


@contextlib.contextmanager
def _grid_lock(st: Store, run_id: str, grid_id: str) -> Any:
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


def _prepare(ctx: GridContext, wanted: list[int], name: str | None, loss_of: Any, evaluation: Evaluation) -> GridMeta:
    """Create the grid (directions, arrays, grid.json) or add the new epochs; metadata last."""
    st, run_meta, cfg = ctx.store, ctx.run, ctx.config
    kind = get_kind(cfg.kind)
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
        prepared = kind.prepare(ctx, loss_of)
        layout = kind.layout(cfg, prepared.ranges, prepared.info)
        attrs.update(kind.attributes(prepared.info))
        epochs_so_far: list[int] = []
        if damaged_meta and (zarr_path / "zarr.json").exists():
            # rebuild grid.json around the arrays that exist: their epochs come from the Zarr group
            repair(zarr_path, layout, attrs, [])
            epochs_so_far = stored_epochs(zarr_path)
            if open_group(zarr_path)["loss"].shape[0] != len(epochs_so_far):  # type: ignore[union-attr]
                raise IntegrityError(
                    f"grid {grid_id}: grid.json and the epoch coordinates are both damaged, so which epoch "
                    f"each slice holds is unknown: delete {st.grid_dir(run_id, grid_id)} and compute the grid again"
                )
            stderr_console().print(f"[yellow]grid {grid_id}: rebuilt damaged grid.json from the command and arrays[/]")
        else:
            create(zarr_path, layout, attrs)
        meta = GridMeta(
            id=grid_id,
            name=name,
            run=run_id,
            config=cfg,
            epochs=epochs_so_far,
            directions=prepared.directions,
            parameters=short_hash(parameter_signature(ctx.shapes)),
            versions={"landscape": __version__, "torch": torch.__version__, "python": platform.python_version()},
            created=now(),
            ranges=prepared.ranges,
            kind=prepared.info,
            evaluator=evaluation.to_json(),
        )
        if damaged_meta:
            st.write_grid(meta)
    layout = kind.layout(cfg, meta.ranges, meta.kind)
    attrs.update(kind.attributes(meta.kind))
    for what in repair(zarr_path, layout, attrs, list(meta.epochs)):
        stderr_console().print(f"[yellow]grid {grid_id}: rebuilt damaged {what} from grid.json[/]")
    epochs = list(meta.epochs) + [e for e in wanted if e not in meta.epochs]
    known = meta.kind.get("epochs", {})
    facts = kind.epoch_facts(ctx, meta, [e for e in epochs if str(e) not in known])
    if facts:
        meta.kind = {**meta.kind, "epochs": {**known, **facts}}
    changed = (epochs != meta.epochs or bool(facts) or (name is not None and meta.name != name)
               or meta.evaluator != evaluation.to_json())
    meta.evaluator = evaluation.to_json()
    grow(zarr_path, epochs)
    if changed or not st.has_grid(run_id, grid_id):
        meta.epochs = epochs
        if name is not None:
            meta.name = name
        meta.updated = now()
        st.write_grid(meta)
    return meta


def _result(st: Store, meta: GridMeta) -> GridResult:
    zarr_path = st.zarr_path(meta.run, meta.id)
    done, total, diverged = Rows(zarr_path, "r").progress()
    return GridResult(meta.id, meta.run, st.grid_dir(meta.run, meta.id), zarr_path, meta, 0, done, total, diverged)


def list_layers(run: str, store: Store | str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The parameter tensors of a run's model: what `--layer` accepts."""
    from landscape_cli.directions import is_bias_or_bn

    st = Store.of(store)
    run_id = st.resolve(run)
    meta = st.read_run(run_id)
    if not meta.epochs:
        raise GridStateError(f"run {run_id} has no checkpoint yet: train it first")
    weights = _parameters(checkpoints.load_epoch(st, run_id, meta.epochs[-1]))
    return [
        {"name": n, "shape": list(w.shape), "parameters": w.numel(),
         "kind": "bias/batchnorm" if is_bias_or_bn(w) else ("conv" if w.dim() == 4 else "weight"),
         "perturbed_by_default": not is_bias_or_bn(w)}
        for n, w in weights.items()
    ]
