"""What the store holds, summarized for `landscape ls` (reads metadata only: no torch, no zarr)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .locks import holder
from .store import Store, dir_size, read_json

GRIDS_DIR = "grids"
GRID_FILE = "grid.json"


def run_status(store: Store, meta: dict[str, Any]) -> str:
    """complete, training (someone holds the run), or stopped (rerun the command to resume)."""
    done = len(meta.get("epochs", []))
    if holder(store.run_dir(meta["id"]) / ".lock") is not None:
        return "training"
    return "complete" if done > meta.get("epochs_requested", 0) else "stopped"


def run_summary(store: Store, meta: dict[str, Any]) -> dict[str, Any]:
    if "damaged" in meta:
        return {"id": meta["id"], "status": "damaged", "error": meta["damaged"], "grids": []}
    epochs = meta.get("epochs", [])
    last = epochs[-1] if epochs else {}
    cfg = meta["config"]
    run_dir = store.run_dir(meta["id"])
    return {
        "id": meta["id"],
        "name": meta.get("name"),
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "activation": cfg["activation"],
        "optimizer": cfg["optimizer"],
        "lr": cfg["lr"],
        "batch_size": cfg["batch_size"],
        "seed": cfg["seed"],
        "epochs_done": max(len(epochs) - 1, 0) if epochs else None,
        "epochs_requested": meta.get("epochs_requested"),
        "status": run_status(store, meta),
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "size_bytes": dir_size(run_dir),
        "path": str(run_dir),
        "grids": grid_summaries(run_dir),
    }


def grid_metas(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(directory, grid.json) of every grid of a run; a damaged grid.json gives {"damaged": why}."""
    out: list[tuple[Path, dict[str, Any]]] = []
    grids_dir = run_dir / GRIDS_DIR
    if not grids_dir.is_dir():
        return out
    for d in sorted(grids_dir.iterdir()):
        if (d / GRID_FILE).is_file():
            try:
                out.append((d, read_json(d / GRID_FILE)))
            except (IntegrityError, OSError) as e:
                out.append((d, {"id": d.name, "damaged": str(e)}))
    return out


def grid_summaries(run_dir: Path) -> list[dict[str, Any]]:
    return [grid_summary(d, meta) for d, meta in grid_metas(run_dir)]


def grid_summary(grid_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What `ls` shows of a grid, with its progress read from the Zarr done-marks."""
    if "damaged" in meta:
        return {"id": meta["id"], "status": "damaged", "error": meta["damaged"]}
    from .gridstore import ZARR_DIR, Rows

    cfg = meta["config"]
    epochs = meta.get("epochs", [])
    try:
        rows_done, rows_total, diverged = Rows(grid_dir / ZARR_DIR, "r").progress()
    except (OSError, ValueError, KeyError) as e:
        return {"id": meta["id"], "status": "damaged", "error": f"cannot read {grid_dir / ZARR_DIR}: {e}"}
    return {
        "id": meta["id"],
        "name": meta.get("name"),
        "epochs": epochs,
        "shape": [len(epochs), cfg["pairs"], cfg["batches"], cfg["width"], cfg["width"]],
        "width": cfg["width"],
        "span": cfg["span"],
        "norm": cfg["norm"],
        "bn": cfg["bn"],
        "layer": cfg.get("layer"),
        "rows_done": rows_done,
        "rows_total": rows_total,
        "done": rows_done / rows_total if rows_total else 0.0,
        "diverged": diverged,
        "status": "complete" if rows_total and rows_done == rows_total else "partial",
        "path": str(grid_dir),
    }


def list_runs(store: Store) -> list[dict[str, Any]]:
    return [run_summary(store, meta) for meta in store.runs()]


def find_grid(store: Store, ref: str, run_id: str | None = None) -> tuple[str, str]:
    """(run id, grid id) of a grid named by its name or a unique id prefix, in one run or all."""
    from .errors import AmbiguousReferenceError, RunNotFoundError, UsageError

    if not ref or not ref.strip():
        raise UsageError("empty grid reference: give a grid id (or prefix) or name; `landscape ls` lists them")
    run_ids = [run_id] if run_id else store.run_ids()
    grids = [(r, meta) for r in run_ids for _d, meta in grid_metas(store.run_dir(r))]
    by_name = [(r, g["id"]) for r, g in grids if g.get("name") == ref]
    if len(by_name) == 1:
        return by_name[0]
    matches = by_name or [(r, g["id"]) for r, g in grids if str(g["id"]).startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    where = f"run {run_id}" if run_id else f"store {store.root}"
    if not matches:
        raise RunNotFoundError(f"no grid {ref!r} in {where}: `landscape ls` lists the grids, `landscape grid RUN` makes one")
    raise AmbiguousReferenceError(
        f"grid reference {ref!r} matches {len(matches)} grids ({', '.join(g for _r, g in matches)}): give more characters"
    )
