"""What the store holds, summarized for `landscape ls` (reads metadata only: no torch, no zarr)."""

from __future__ import annotations

import os
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


def grid_summaries(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    grids_dir = run_dir / GRIDS_DIR
    if not grids_dir.is_dir():
        return out
    for d in sorted(grids_dir.iterdir()):
        if not (d / GRID_FILE).is_file():
            continue
        try:
            meta = read_json(d / GRID_FILE)
        except (IntegrityError, OSError) as e:
            out.append({"id": d.name, "status": "damaged", "error": str(e)})
            continue
        out.append(grid_summary(d, meta))
    return out


def grid_summary(grid_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    cfg = meta["config"]
    epochs = meta.get("epochs", [])
    rows_total = len(epochs) * cfg["pairs"] * cfg["width"]
    rows_done = count_done_rows(grid_dir)
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
        "done": rows_done / rows_total if rows_total else 0.0,
        "diverged": meta.get("diverged"),
        "path": str(grid_dir),
    }


def count_done_rows(grid_dir: Path) -> int:
    """Rows recorded as done: each is one chunk file of the `done` array (chunks of one element)."""
    root = grid_dir / "landscape.zarr" / "done" / "c"
    n = 0
    for _root, _dirs, files in os.walk(root):
        n += sum(1 for f in files if not f.endswith(".partial"))
    return n


def list_runs(store: Store) -> list[dict[str, Any]]:
    return [run_summary(store, meta) for meta in store.runs()]
