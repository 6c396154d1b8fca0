"""What the store holds, summarized for `landscape ls` (reads metadata and done-marks only: no torch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from landscape_cli._io import dir_size
from landscape_cli.errors import IntegrityError, LandscapeError
from landscape_cli.store import Store, check_tree
from landscape_cli.store.locks import holder
from landscape_cli.store.meta import CurveMeta, Damaged, GridMeta, HessianMeta, RunMeta


def run_status(store: Store, meta: RunMeta) -> str:
    """complete, training (someone holds the run), or stopped (rerun the command to resume)."""
    if holder(store.run_lock_path(meta.id)) is not None:
        return "training"
    if meta.has_steps:
        done = meta.epochs_done >= meta.epochs_requested and meta.epochs[-1].epoch_end is not False
    else:
        done = len(meta.epochs) > meta.epochs_requested
    return "complete" if done else "stopped"


def run_summary(store: Store, meta: RunMeta | Damaged) -> dict[str, Any]:
    if isinstance(meta, Damaged):
        return {"id": meta.id, "status": "damaged", "error": meta.error, "grids": []}
    # the newest checkpoint evaluated on the val split (a step checkpoint within an epoch is not)
    last = next((r for r in reversed(meta.epochs) if r.val_loss is not None), meta.epochs[-1] if meta.epochs else None)
    cfg = meta.config
    return {
        "id": meta.id,
        "name": meta.name,
        "model": cfg.model,
        "dataset": cfg.dataset,
        # only a model built with an activation has one to show (a factory's model or gpt is never rewritten)
        "activation": cfg.activation if "activation" in meta.model.get("args", {}) else "-",
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "epochs_done": (max(meta.epochs_done, 0) if meta.has_steps else max(len(meta.epochs) - 1, 0))
        if meta.epochs else None,
        "epochs_requested": meta.epochs_requested,
        "epochs": meta.epoch_numbers,  # the checkpoints the run holds (their steps, in a run with steps)
        **({"steps": True, "checkpoints": len(meta.epoch_numbers)} if meta.has_steps else {}),
        "imported": cfg.imported is not None,  # `landscape import`: epochs as given, not trained here
        "status": run_status(store, meta),
        "val_accuracy": last.val_accuracy if last else None,
        "val_loss": last.val_loss if last else None,
        "size_bytes": dir_size(store.run_dir(meta.id)),
        "path": str(store.run_dir(meta.id)),
        "grids": [_each(grid_summary, store, meta.id, g) for g in store.grids(meta.id)],
        "hessians": [_each(hessian_summary, store, meta.id, h) for h in store.hessians(meta.id)],
        "curves": [_each(curve_summary, store, meta.id, c) for c in store.curves(meta.id)],
    }


def _each(summarize: Callable[[Store, str, Any], dict[str, Any]], store: Store, run_id: str,
          meta: GridMeta | HessianMeta | CurveMeta | Damaged) -> dict[str, Any]:
    """One result's summary; a result that cannot be read is listed as damaged, never breaking its siblings' listing."""
    try:
        return summarize(store, run_id, meta)
    except (LandscapeError, OSError, KeyError, ValueError, RuntimeError, TypeError) as e:  # zarr's: ValueErrors
        return {"id": meta.id, "status": "damaged", "error": str(e) or type(e).__name__}


def grid_summary(store: Store, run_id: str, meta: GridMeta | Damaged) -> dict[str, Any]:
    """What `ls` shows of a grid, with its progress read from the Zarr done-marks."""
    if isinstance(meta, Damaged):
        return {"id": meta.id, "status": "damaged", "error": meta.error}
    from landscape_cli.curvature.stats import summary
    from landscape_cli.store.grid_arrays import Rows

    cfg = meta.config
    zarr_path = store.zarr_path(run_id, meta.id)
    try:
        check_tree(zarr_path, f"grid {meta.id}")  # no pipe where a chunk belongs: reading it would block
        rows = Rows(zarr_path, "r")
        rows_done, rows_total, diverged = rows.progress()
    except (OSError, ValueError, KeyError, IntegrityError) as e:
        return {"id": meta.id, "status": "damaged", "error": f"cannot read {zarr_path}: {e}"}
    lost = [e for e in meta.epochs if e not in rows.epochs]
    if lost:
        return {"id": meta.id, "status": "damaged", "error": f"{store.grid_file(run_id, meta.id)}: 'epochs' lists "
                f"{','.join(map(str, lost))}, which its arrays do not hold (damaged): run `landscape verify`"}
    shape = [len(meta.epochs), cfg.pairs, cfg.batches, *(a.count for a in reversed(cfg.axes))]
    steps = _keyed_by_step(zarr_path)
    return {
        "id": meta.id,
        "name": meta.name,
        "kind": cfg.kind,
        "dims": cfg.dims,
        "description": describe_grid(meta),
        "epochs": meta.epochs,  # the checkpoints it holds: their steps in a grid of a run with steps
        **({"steps": True} if steps else {}),
        "dimensions": ["checkpoint" if steps else "epoch", "pair", "batch", *(("y", "x") if cfg.dims == 2 else ("x",))],
        "shape": shape,
        "width": cfg.width,
        "span": cfg.span,
        "ranges": [list(r) for r in meta.ranges],
        "norm": cfg.norm,
        "bn": cfg.bn,
        "layer": cfg.layer,
        "layers": list(cfg.layers) if cfg.layers is not None else None,  # --layer patterns
        "precision": cfg.precision,
        "evaluator": meta.evaluator.to_json() if meta.evaluator else {},  # how its points are computed
        "facts": meta.kind,
        "rows_done": rows_done,
        "rows_total": rows_total,
        "done": rows_done / rows_total if rows_total else 0.0,
        "diverged": diverged,
        "status": "complete" if rows_total and rows_done == rows_total else "partial",
        "path": str(store.grid_dir(run_id, meta.id)),
        "stats": summary(store, run_id, meta),  # per epoch: the mean landscape's metrics (None while incomplete)
    }


def describe_grid(meta: GridMeta) -> str:
    """A grid's kind and shape in a few words: "random 2-D 41x41 ±1", "interpolate 1-D 41 t∈[-0.5, 1.5] to epoch 9"."""
    cfg = meta.config
    shape = "x".join(str(a.count) for a in reversed(cfg.axes))
    spans = f"±{cfg.span:g}" if cfg.span is not None else " ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in meta.ranges)
    out = f"{cfg.kind} {cfg.dims}-D {shape} {spans}"
    if cfg.kind == "interpolate":
        target = meta.kind.get("target")
        target = target if isinstance(target, dict) else {"run": cfg.target_run, "epoch": cfg.target_epoch}
        where = "" if target.get("run") == meta.run else f" of run {target.get('label') or target.get('run')}"
        out += f" to epoch {target.get('epoch')}{where}"
    return out


def hessian_summary(store: Store, run_id: str, meta: HessianMeta | Damaged) -> dict[str, Any]:
    """What `ls --json` shows of a run's curvature results (`landscape hessian`)."""
    if isinstance(meta, Damaged):
        return {"id": meta.id, "status": "damaged", "error": meta.error}
    import numpy as np
    import zarr

    try:
        check_tree(store.hessian_zarr(run_id, meta.id), f"curvature results {meta.id}")
        done = np.asarray(zarr.open_array(store.hessian_zarr(run_id, meta.id) / "done", mode="r")[:]) > 0
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        return {"id": meta.id, "status": "damaged", "error": f"cannot read its done-marks: {e}"}
    cfg = meta.config
    steps = {"steps": True} if _keyed_by_step(store.hessian_zarr(run_id, meta.id)) else {}
    return {"id": meta.id, "name": meta.name, "epochs": meta.epochs, **steps,
            "epochs_done": [e for e, d in zip(meta.epochs, done, strict=False) if d], "top": cfg.top,
            "batches": "all" if cfg.whole else cfg.batches, "batch_size": cfg.batch_size, "bn": cfg.bn, "density": cfg.density,
            "status": "complete" if done.size and done.all() else "partial",
            "path": str(store.hessian_dir(run_id, meta.id))}


def curve_summary(store: Store, run_id: str, meta: CurveMeta | Damaged) -> dict[str, Any]:
    """What `ls` shows of a curve with the run as an endpoint (`landscape connect`): listed under both runs, `role`
    says which end this run is ("from": RUN_A, where the curve is stored; "to": RUN_B)."""
    if isinstance(meta, Damaged):
        return {"id": meta.id, "status": "damaged", "error": meta.error}
    cfg = meta.config
    if holder(store.curve_lock(meta.run, meta.id).path) is not None:
        status = "training"
    else:
        status = "complete" if meta.epochs_done >= meta.epochs_requested else "stopped"
    last = meta.epochs[-1] if meta.epochs else None
    return {"id": meta.id, "name": meta.name, "role": "from" if cfg.run_a == run_id else "to",
            "description": describe_curve(meta), "shape": cfg.shape, "bends": cfg.bends,
            "run_a": cfg.run_a, "epoch_a": cfg.epoch_a, "run_b": cfg.run_b, "epoch_b": cfg.epoch_b,
            "optimizer": cfg.optimizer, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "epochs_done": meta.epochs_done, "epochs_requested": meta.epochs_requested, "status": status,
            "train_loss": last.train_loss if last else None,  # the mean along the curve in its last epoch
            "line_loss": meta.epochs[0].train_loss if meta.epochs else None,  # epoch 0: along the straight line
            "path": str(store.curve_dir(meta.run, meta.id))}


def describe_curve(meta: CurveMeta) -> str:
    """A curve in a few words: "bezier 1 bend 1a2b3c4d5e6f:5 -> 6f5e4d3c2b1a:5" (each end: run and checkpoint)."""
    cfg = meta.config
    return (f"{cfg.shape} {cfg.bends} bend{'s' if cfg.bends > 1 else ''} {cfg.run_a}:{cfg.epoch_a} -> "
            f"{cfg.run_b}:{cfg.epoch_b}")


def _keyed_by_step(zarr_path: Any) -> bool:
    """Whether a grid's (or results') Zarr group names its checkpoints by step (a run with step checkpoints)."""
    from landscape_cli.store.grid_arrays import key_array, open_group

    try:
        return key_array(set(open_group(zarr_path, "r").array_keys())) == "step"
    except (OSError, ValueError, KeyError, RuntimeError, TypeError):
        return False


def list_runs(store: Store) -> list[dict[str, Any]]:
    return [run_summary(store, meta) for meta in store.runs()]
