"""Preparing a grid: created (directions, Zarr arrays, grid.json last) or grown to new epochs, under its lock.

The grid's metadata is read back against its configuration (`read_meta`), the evaluator it was made
with is kept (`recorded_evaluator`: asking for another one is refused, so no grid mixes two), and
`prepare_grid` makes or grows the grid. Notes about repaired files go to the caller's `note`.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from landscape_cli._io import now, short_hash
from landscape_cli._version import __version__
from landscape_cli.config import GridConfig
from landscape_cli.directions import GridContext, get_kind, parameter_signature
from landscape_cli.engine.distributed import Share
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.store import Store, check_tree
from landscape_cli.store.grid_arrays import create, grow, open_group, repair, stored_epochs
from landscape_cli.store.locks import FileLock
from landscape_cli.store.meta import EvaluatorRecord, GridMeta


def writer(share: Share) -> str:
    """Who writes rows, as the evaluator record names it: "one process", "shard I/N" or "ranks"."""
    return "ranks" if share.how == "rank" else share.describe()


def read_meta(st: Store, run_id: str, cfg: GridConfig) -> GridMeta | None:
    """The grid's grid.json (None if there is none yet); damaged or edited is an IntegrityError."""
    if not st.has_grid(run_id, cfg.grid_id):
        return None
    problem = IntegrityError(
        f"{st.grid_file(run_id, cfg.grid_id)} does not match the grid's configuration (edited or damaged): the same "
        "`landscape grid` command with --resume rebuilds it"
    )
    try:
        meta = st.read_grid(run_id, cfg.grid_id)
    except IntegrityError as e:
        raise problem from e
    if meta.config.identity() != cfg.identity():
        raise problem
    return meta


def recorded_evaluator(existing: GridMeta | None, points_per_pass: int | None, dev: torch.device,
                       grid_id: str) -> EvaluatorRecord | None:
    """The evaluator the grid was created with; asking for another one is refused (no grid mixes two)."""
    if existing is None:
        return None
    recorded = existing.evaluator
    if recorded is None:  # made before evaluators were recorded: by the loop
        recorded = EvaluatorRecord(1, existing.config.precision, dev.type)
    if points_per_pass is not None and points_per_pass != recorded.points_per_pass:
        raise UsageError(f"grid {grid_id} is computed by {recorded.describe()}: continue it without "
                         f"--points-per-pass (or with --points-per-pass {recorded.points_per_pass}), so that no grid "
                         "mixes points of two evaluators")
    if recorded.device != dev.type:
        raise UsageError(f"grid {grid_id} is computed by {recorded.describe()}: continue it with --device "
                         f"{recorded.device}, so that no grid mixes points of two devices")
    return recorded


def with_threads(evaluator: EvaluatorRecord, who: str, threads: int, grid_id: str,
                 note: Callable[[str], None]) -> EvaluatorRecord:
    """The record with this writer's thread count added; a single process resuming with another count is told."""
    seen = evaluator.threads.get(who, [])
    if threads in seen:
        return evaluator
    if seen and who == "one process":
        note(f"grid {grid_id} was computed with {','.join(map(str, seen))} torch thread(s) and continues with "
             f"{threads}: rows computed now may differ from the earlier ones in the last bits (bitwise equality "
             "needs the same thread count)")
    return EvaluatorRecord(evaluator.points_per_pass, evaluator.precision, evaluator.device,
                           {**evaluator.threads, who: [*seen, threads]})


@contextlib.contextmanager
def grid_lock(st: Store, run_id: str, grid_id: str) -> Iterator[FileLock]:
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


def prepare_grid(ctx: GridContext, wanted: list[int], name: str | None, loss_of: Any, evaluation: EvaluatorRecord,
                 note: Callable[[str], None], batchnorm: bool | None = None) -> GridMeta:
    """Create the grid (directions, arrays, grid.json) or add the new epochs; metadata last. `batchnorm`: whether
    the model has BatchNorm layers, recorded in grid.json (and added to a grid made before it was, when it
    is written next)."""
    st, run_meta, cfg = ctx.store, ctx.run, ctx.config
    kind = get_kind(cfg.kind)
    run_id, grid_id = run_meta.id, cfg.grid_id
    zarr_path = st.zarr_path(run_id, grid_id)
    attrs = {"grid": grid_id, "run": run_id, "config": cfg.identity(),
             "model": run_meta.model, "dataset": run_meta.dataset["name"]}
    check_tree(zarr_path, f"grid {grid_id}")  # no pipe where a chunk belongs: reading or replacing it would block
    try:
        meta = read_meta(st, run_id, cfg)
    except IntegrityError:  # only with --resume: grid() refused otherwise
        meta = None
        damaged_meta = True
    else:
        damaged_meta = False
    if meta is None:
        prepared = kind.prepare(ctx, loss_of)
        layout = kind.layout(cfg, prepared.ranges, prepared.info)
        layout.steps = ctx.run.has_steps
        attrs.update(kind.attributes(prepared.info))
        epochs_so_far: list[int] = []
        around_arrays = damaged_meta and st.has_zarr(run_id, grid_id)
        if around_arrays:
            # rebuild grid.json around the arrays that exist: their epochs come from the Zarr group
            repair(zarr_path, layout, attrs, [])
            epochs_so_far = stored_epochs(zarr_path)
            if open_group(zarr_path)["loss"].shape[0] != len(epochs_so_far):  # type: ignore[union-attr]
                raise IntegrityError(
                    f"grid {grid_id}: grid.json and the epoch coordinates are both damaged, so which epoch "
                    f"each slice holds is unknown: delete {st.grid_dir(run_id, grid_id)} and compute the grid again"
                )
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
            evaluator=evaluation,
            batchnorm=batchnorm,
        )
        if damaged_meta:
            st.write_grid(meta)
            if around_arrays:  # said once it is written (a directory where it belongs: one error line instead)
                note(f"grid {grid_id}: rebuilt damaged grid.json from the command and arrays")
    layout = kind.layout(cfg, meta.ranges, meta.kind)
    layout.steps = ctx.run.has_steps
    attrs.update(kind.attributes(meta.kind))
    rebuilt = repair(zarr_path, layout, attrs, list(meta.epochs))
    for what in rebuilt:
        note(f"grid {grid_id}: rebuilt damaged {what} from grid.json")
    epochs = list(meta.epochs) + [e for e in wanted if e not in meta.epochs]
    known = meta.kind.get("epochs", {})
    facts = kind.epoch_facts(ctx, meta, [e for e in epochs if str(e) not in known])
    if facts:
        meta.kind = {**meta.kind, "epochs": {**known, **facts}}
    renamed = name is not None and meta.name != name
    if renamed:  # an existing grid asked for under another --name
        was = f"was {meta.name!r}" if meta.name is not None else "was unnamed"
        note(f"grid {grid_id} is now named {name!r} ({was}): the same grid, computed once")
    changed = epochs != meta.epochs or bool(facts) or renamed or meta.evaluator != evaluation
    meta.evaluator = evaluation
    if meta.batchnorm is None:
        meta.batchnorm = batchnorm
    if rebuilt or epochs != meta.epochs or stored_epochs(zarr_path) != epochs:  # a grid as it was: nothing written
        grow(zarr_path, epochs, ctx.run.completed(epochs))
    if changed or not st.has_grid(run_id, grid_id):
        meta.epochs = epochs
        if name is not None:
            meta.name = name
        meta.updated = now()
        st.write_grid(meta)
    return meta
