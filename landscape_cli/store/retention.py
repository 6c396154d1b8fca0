"""Retention of a run's checkpoints (`--keep`): which are kept, and removing the others safely.

A policy is a dict of rules, any of which keeps a checkpoint: `every` (every k-th checkpoint of the run's
cadence: the epochs that are multiples of k, or in a run with step checkpoints every N steps the steps that are
multiples of k × N), `last` (the newest n) and `epochs` (every checkpoint saved at an epoch's end).
The newest checkpoint is always kept (training continues from it), and so is every checkpoint a grid, a
Hessian result, an interpolation line or a curve (`connect`) of any run in the store refers to. A removed checkpoint keeps its
record in run.json, marked `removed`, so no key ever changes; the record is written before the file is deleted,
so a kill in between leaves a file nobody reads, never a record of a missing file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from landscape_cli.errors import UsageError

if TYPE_CHECKING:
    from landscape_cli.store import Store
    from landscape_cli.store.meta import RunMeta

KEEP_HELP = ("every=K (every k-th checkpoint: epochs, or steps, that are multiples of k), last=N (the newest n), "
             "epochs (epoch ends), comma-separated; all: keep every one")


def parse_keep(text: str | None) -> dict[str, Any] | None:
    """`--keep every=10,last=5,epochs` -> {"every": 10, "last": 5, "epochs": True}; None or "all": no policy."""
    if text is None or text.strip() in ("", "all"):
        return None
    policy: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        name, eq, value = part.partition("=")
        if name == "epochs" and not eq:
            policy["epochs"] = True
            continue
        if name in ("every", "last") and eq:
            try:
                number = int(value)
            except ValueError:
                number = 0
            if number >= 1:
                policy[name] = number
                continue
        raise UsageError(f"bad --keep {text!r} at {part!r}: give {KEEP_HELP}")
    return policy


def referenced(st: Store, run_id: str) -> set[int]:
    """The checkpoint keys of `run_id` that results in the store refer to (never removed)."""
    from landscape_cli.store.meta import Damaged

    keys: set[int] = set()
    for grid in st.grids(run_id):
        if not isinstance(grid, Damaged):
            keys.update(grid.epochs)
    for result in st.hessians(run_id):
        if not isinstance(result, Damaged):
            keys.update(result.epochs)
    for other in st.run_ids():
        for grid in st.grids(other):
            if not isinstance(grid, Damaged) and grid.config.target_run == run_id and grid.config.target_epoch is not None:
                keys.add(int(grid.config.target_epoch))
    for curve in st.curves(run_id):  # the endpoints of curves from or to this run (`connect`)
        if isinstance(curve, Damaged):
            continue
        if curve.config.run_a == run_id:
            keys.add(curve.config.epoch_a)
        if curve.config.run_b == run_id:
            keys.add(curve.config.epoch_b)
    return keys


def apply_retention(st: Store, meta: RunMeta, write: bool = True) -> list[int]:
    """Mark the checkpoints the run's policy no longer keeps as removed (and write run.json with `write`);
    returns their keys. Files are deleted by `remove_unkept`, after run.json records it."""
    policy = meta.retention
    if not policy or len(meta.epochs) < 2:
        return []
    candidates = [i for i, r in enumerate(meta.epochs[:-1]) if not r.removed and not _kept(policy, meta, i)]
    if not candidates:
        return []
    used = referenced(st, meta.id)
    removed = []
    for i in candidates:
        record = meta.epochs[i]
        if record.key not in used:
            record.removed = True
            removed.append(record.key)
    if removed and write:
        st.write_run(meta)
    return removed


def remove_unkept(st: Store, meta: RunMeta) -> None:
    """Delete the files of the checkpoints marked removed (run.json already says so)."""
    for record in meta.epochs:
        if record.removed:
            st.file(meta.id, record.checkpoint).unlink(missing_ok=True)


def _kept(policy: dict[str, Any], meta: RunMeta, i: int) -> bool:
    record = meta.epochs[i]
    if policy.get("epochs") and record.epoch_end is not False:
        return True
    if policy.get("every") and record.key % (int(policy["every"]) * _cadence(meta)) == 0:
        return True
    return bool(policy.get("last")) and i >= len(meta.epochs) - int(policy["last"])


def _cadence(meta: RunMeta) -> int:
    """Steps between two regular checkpoints of a run with steps (`--checkpoint-every`, the recorder's
    `every_steps`); 1 for a run keyed by epoch."""
    if not meta.has_steps:
        return 1
    every = meta.config.checkpoint_every or (meta.config.recorded or {}).get("every_steps")
    return int(every) if every else 1
