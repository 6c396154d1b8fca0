"""Executing a grid's plan: who computes which rows, on which device, with which evaluator.

One process takes the missing rows one by one: each is claimed with a lock file, computed by the
direction kind's slice of that epoch's model, written, and marked done. Several processes on one
grid (`grid --resume` twice) share the rows between them; a row whose holder died is taken over.
Rows held by another process are waited for, so every process returns with the grid complete.

A shard or torchrun rank (`distributed.Share`) computes only the rows and centres the static
partition gives it, without locks, and returns when they are written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from landscape_cli._progress import progress_bar
from landscape_cli.data.losses import run_loss
from landscape_cli.directions import EpochModel, GridContext, get_kind
from landscape_cli.engine.distributed import Share
from landscape_cli.engine.plan import Plan
from landscape_cli.kernel.batches import Batches
from landscape_cli.kernel.device import use_channels_last
from landscape_cli.kernel.evaluate import Evaluator
from landscape_cli.kernel.metrics import reload
from landscape_cli.models import checkpoints
from landscape_cli.store.grid_arrays import Rows
from landscape_cli.store.locks import is_locked
from landscape_cli.store.meta import EvaluatorRecord, GridMeta, epoch_record


def deterministic_kernels(device: torch.device) -> None:
    """On CUDA: deterministic cuDNN algorithms, no autotuning, a fixed cuBLAS workspace (bitwise resume)."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Outcome:
    computed_rows: int = 0
    repaired: list[str] = field(default_factory=list)
    seconds_rows: float = 0.0  # time spent evaluating and writing rows (excludes set-up)




def load_epoch_model(ctx: GridContext, epoch: int, batches: Batches, device: torch.device,
                     evaluation: EvaluatorRecord | None = None) -> EpochModel:
    """The checkpoint of `epoch` as a model on `device`, with an evaluator on the grid's batches."""
    evaluation = evaluation or EvaluatorRecord(precision=ctx.config.precision, device=device.type)
    ckpt = checkpoints.load_epoch(ctx.store, ctx.run.id, epoch_record(ctx.run, epoch))
    model = checkpoints.build_model(ckpt).to(device)
    del ckpt
    channels_last = use_channels_last(model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    scorer = run_loss(ctx.run.dataset, ctx.run.config.loss)
    metrics = [reload(m) for m in ctx.config.metrics or ()]
    return EpochModel(epoch, model, Evaluator(model, batches.on(device, channels_last), ctx.config.bn, batches.weights,
                                              scorer, points_per_pass=evaluation.points_per_pass,
                                              precision=evaluation.precision, metrics=metrics))


def try_metrics(ctx: GridContext, batches: Batches, device: torch.device, epoch: int) -> None:
    """The grid's user metrics once on the checkpoint's first batch, before a new grid is written: a metric that
    raises, or returns something else than one number, is one line and nothing is left behind."""
    em = load_epoch_model(ctx, epoch, batches, device)
    x, y = em.evaluator.batches[0]
    with torch.no_grad():
        out = em.model(x)
    for metric in em.evaluator.metrics:
        metric(out, y)


def checkpoint_loss(ctx: GridContext, batches: Batches, device: torch.device, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """A checkpoint's own loss and accuracy on the grid's batches, in the grid's BatchNorm mode."""
    return load_epoch_model(ctx, epoch, batches, device).evaluator.values()


class CheckpointValues:
    """What a kind's `prepare` gets (a `CheckpointLoss`): called with an epoch, that checkpoint's own loss and
    accuracy on the grid's batches; `model(epoch)` its model with an evaluator on the grid's batches and device,
    for kinds that evaluate other weights when they prepare a grid (a curve's straight line and ensembles)."""

    def __init__(self, ctx: GridContext, batches: Batches, device: torch.device) -> None:
        self.ctx, self.batches, self.device = ctx, batches, device

    def __call__(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return checkpoint_loss(self.ctx, self.batches, self.device, epoch)

    def model(self, epoch: int) -> EpochModel:
        return load_epoch_model(self.ctx, epoch, self.batches, self.device)


def execute(ctx: GridContext, meta: GridMeta, rows: Rows, plan: Plan, batches: Batches, device: torch.device,
            progress: bool, gradient: bool, share: Share | None = None, evaluation: EvaluatorRecord | None = None,
            note: Callable[[str], None] = print) -> Outcome:
    """Compute every missing row and centre of the plan's epochs (sharing them with other processes), or
    with a partial `share` the missing ones of that share. A damaged row that is recomputed is told to `note`."""
    st, run_id, cfg = ctx.store, ctx.run.id, ctx.config
    share = share or Share()
    kind = get_kind(cfg.kind)
    gradient = gradient and kind.gradient
    per_row = len(plan.xs)
    out = Outcome()
    mine = (lambda ei, p, y: share.owns_row(ei, p, y, cfg.pairs, cfg.rows)) if share.partial else None
    title = f"grid {meta.id}" + (f" ({share.describe()})" if share.partial else "")
    with progress_bar(title, plan.total_rows_of(mine) * per_row, unit="points", enabled=progress,
                      completed=plan.rows_done(rows, mine) * per_row) as bar:
        while True:
            made, waiting = 0, 0
            for e in plan.epochs:
                ei = plan.index[e]
                todo = {}
                for p in range(cfg.pairs):
                    missing = _rows_todo(rows, ei, e, p, out.repaired, note)
                    if mine is not None:  # a shard or rank: its rows only, no locks, nobody to wait for
                        todo[p] = [y for y in missing if mine(ei, p, y)]
                        continue
                    # rows another process holds right now are not ours to load the model for
                    todo[p] = [y for y in missing if not is_locked(st.row_lock(run_id, meta.id, e, p, y).path)]
                    waiting += len(missing) - len(todo[p])
                centers = share.owns_center(ei) if share.partial else True
                need_center = [p for p in range(cfg.pairs) if centers and not rows.center_done(ei, p, gradient)]
                if not any(todo.values()) and not need_center:
                    continue
                em = load_epoch_model(ctx, e, batches, device, evaluation)
                for p in range(cfg.pairs):
                    if not todo[p] and p not in need_center:
                        continue
                    with kind.slice(ctx, meta, em, p) as s:
                        for y in todo[p]:
                            lock = st.row_lock(run_id, meta.id, e, p, y) if mine is None else None
                            if lock is not None and not lock.try_acquire():
                                waiting += 1
                                continue
                            try:
                                if rows.row_done(ei, p, y):
                                    continue
                                t0 = time.perf_counter()
                                loss, acc = s.evaluate(plan.points(y))
                                extra = {m.name: s.metric_values[..., k].T for k, m in enumerate(s.metrics)}
                                rows.write_row(ei, p, y, loss.T, acc.T, extra)
                                out.seconds_rows += time.perf_counter() - t0
                                out.computed_rows += 1
                                made += 1
                                bar.advance(per_row)
                            finally:
                                if lock is not None:
                                    lock.release(remove=True)  # the row's lock file goes while still held
                        if p in need_center:  # after the rows: its backward pass never overlaps them
                            rows.write_center(ei, p, s.center(gradient), gradient)
                del em
            if not waiting:
                break
            # rows held by other processes: wait for them, or take them over if their holder dies
            bar.set_description(f"grid {meta.id} (sharing)")
            bar.set_completed(plan.rows_done(rows) * per_row)
            if not made:
                time.sleep(0.2)
    return out


def _rows_todo(rows: Rows, ei: int, epoch: int, p: int, repaired: list[str], note: Callable[[str], None]) -> list[int]:
    """Rows not done yet; a done row whose chunks no longer decode is reported and redone."""
    done = rows.done(ei, p, repaired.append)
    todo = []
    for y, is_done in enumerate(done):
        if not is_done:
            todo.append(y)
        elif not rows.row_readable(ei, p, y):
            repaired.append(f"row {y} of pair {p}, epoch {epoch}")
            note(f"damaged chunk in row {y} of pair {p}, epoch {epoch}: recomputing")
            rows.clear_row(ei, p, y)
            todo.append(y)
    return todo
