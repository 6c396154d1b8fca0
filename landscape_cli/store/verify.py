"""Integrity checks: re-hash every file the store recorded a hash for (curves' included), and decode every grid
chunk; with `behaviour` (what `landscape verify` passes: `models.checkpoints.behaviour_problem`), also rebuild the
model of every run that recorded probe outputs and check that it still computes them.

Reads metadata, files and Zarr chunks only (no torch, unless `behaviour` rebuilds models), and changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from landscape_cli._io import PARTIAL_SUFFIX, file_sha256
from landscape_cli.errors import IntegrityError
from landscape_cli.store import Store, check_tree, probes_name
from landscape_cli.store.grid_arrays import DECODE_ERRORS, Rows
from landscape_cli.store.meta import FileRecord, GridMeta, RunMeta

# (store, run) -> None, or (where, what is wrong, what to do) when the run's model no longer computes what it recorded
Behaviour = Callable[[Store, RunMeta], tuple[str, str, str] | None]


@dataclass
class Problem:
    run: str
    path: str
    problem: str
    fix: str


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: {
        "runs": 0, "checkpoints": 0, "optimizer_states": 0, "probe_samples": 0, "models": 0, "directions": 0,
        "grids": 0, "chunks": 0, "curves": 0, "curve_files": 0})
    leftovers: list[str] = field(default_factory=list)  # temporary files of killed writers (never read)
    unfinished: list[str] = field(default_factory=list)  # grids whose creation was killed before any row

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Store | str | os.PathLike[str] | None = None, run: str | None = None,
           behaviour: Behaviour | None = None) -> Report:
    """Check every run of the store (or one run) and report each mismatch with what to do; with `behaviour`, also
    each run whose rebuilt model no longer computes the outputs it recorded on its probe samples (one problem per
    run)."""
    st = Store.of(store)
    report = Report()
    run_ids = [st.resolve(run)] if run is not None else st.run_ids()  # "" is refused: an empty reference
    for run_id in run_ids:
        _verify_run(st, run_id, report, behaviour)
        for root, _dirs, files in os.walk(st.run_dir(run_id)):
            report.leftovers += [os.path.join(root, f) for f in files if PARTIAL_SUFFIX in f]
    return report


def _file(report: Report, run_id: str, path: Path, expected: str | None, what: str, fix: str) -> bool:
    if not path.is_file():
        report.problems.append(Problem(run_id, str(path), f"{what} is missing", fix))
        return False
    if expected is not None and file_sha256(path) != expected:
        report.problems.append(Problem(run_id, str(path), f"{what} does not match its recorded sha256", fix))
        return False
    return True


def _verify_run(st: Store, run_id: str, report: Report, behaviour: Behaviour | None = None) -> None:
    run_dir = st.run_dir(run_id)
    report.checked["runs"] += 1
    retrain = (f"delete {run_dir} and run its `landscape train` command again (on CPU it reproduces the same "
               "weights), or restore the file from a backup")
    meta: RunMeta | None = None
    try:
        meta = st.read_run(run_id)
    except IntegrityError as e:
        what = "not valid JSON" if "not valid JSON" in str(e) else "damaged"
        report.problems.append(Problem(run_id, str(st.run_file(run_id)), f"{st.run_file(run_id)}: {what}",
                                       f"restore it from a backup, or {retrain}"))
    if meta is not None and meta.config.recorded is not None:  # the user's own loop, recorded: its script remakes it
        retrain = (f"delete {run_dir} and run the training script that recorded it again (a seeded script remakes "
                   "the same run, with the same id), or restore the file from a backup")
    if meta is not None and meta.config.imported is not None:  # no training command makes these weights again
        retrain = (f"delete {run_dir} and import the checkpoint files again with the same `landscape import` "
                   "command (the run is made again with the same id), or restore the file from a backup")
    if meta is not None:
        for rec in meta.epochs:
            if rec.removed:  # deleted by the run's retention policy, as run.json says
                continue
            report.checked["checkpoints"] += 1
            _file(report, run_id, st.file(run_id, rec.checkpoint), rec.sha256, f"checkpoint of {rec.label}", retrain)
        if meta.resume:
            report.checked["optimizer_states"] += 1
            _file(report, run_id, st.file(run_id, meta.resume.file), meta.resume.sha256,
                  f"optimizer state of {_resume_label(meta.resume)}",
                  "training cannot be continued exactly; the checkpoints and grids are unaffected")
        _verify_behaviour(st, meta, report, behaviour, retrain)
    for sidecar in st.direction_sidecars(run_id):
        report.checked["directions"] += 1
        try:
            record = st.direction_sidecar(sidecar)
        except (IntegrityError, OSError) as e:
            report.problems.append(Problem(run_id, str(sidecar), f"damaged direction record ({e})",
                                           f"delete {sidecar}: it is written again from the direction file"))
            continue
        direction = st.direction_of(sidecar)
        _file(report, run_id, direction, record.sha256, f"direction pair {record.pair} ({record.id})",
              f"delete {direction} and {sidecar}, then rerun the grids that use it "
              "with --resume (the seeded draw is made again, identical)")
    for grid_id in st.grid_ids(run_id, with_metadata=False):
        _verify_grid(st, run_id, grid_id, report)
    for curve_id in st.curve_ids(run_id):
        _verify_curve(st, run_id, curve_id, report)


def _verify_behaviour(st: Store, meta: RunMeta, report: Report, behaviour: Behaviour | None, retrain: str) -> None:
    """The run's probe-samples files (by their hashes) and, with `behaviour`, its model rebuilt on them."""
    inputs = sorted({r.probe.inputs for r in meta.epochs if r.probe is not None})
    for sha in inputs:
        report.checked["probe_samples"] += 1
        _file(report, meta.id, st.file(meta.id, probes_name(sha)), sha, "probe samples",
              f"restore it from a backup, or {retrain}")
    if behaviour is not None and inputs:
        report.checked["models"] += 1
        found = behaviour(st, meta)
        if found is not None:
            report.problems.append(Problem(meta.id, *found))


def _verify_curve(st: Store, run_id: str, curve_id: str, report: Report) -> None:
    """A curve stored with the run (`landscape connect`): curve.json, every epoch's bends, the last optimizer state."""
    report.checked["curves"] += 1
    curve_dir = st.curve_dir(run_id, curve_id)
    retrain = (f"delete {curve_dir} and run the curve's `landscape connect` command again (on CPU it trains the same "
               "curve), or restore the file from a backup")
    try:
        meta = st.read_curve(run_id, curve_id)
    except (IntegrityError, OSError) as e:
        what = "not valid JSON" if "not valid JSON" in str(e) else "damaged"
        report.problems.append(Problem(run_id, str(st.curve_file(run_id, curve_id)), f"curve.json is {what}",
                                       retrain))
        return
    for rec in meta.epochs:
        report.checked["curve_files"] += 1
        _file(report, run_id, st.curve_path(run_id, curve_id, rec.file), rec.sha256,
              f"bends of epoch {rec.epoch} of curve {curve_id}", retrain)
    if meta.resume:
        report.checked["curve_files"] += 1
        _file(report, run_id, st.curve_path(run_id, curve_id, meta.resume.file), meta.resume.sha256,
              f"optimizer state of epoch {meta.resume.epoch} of curve {curve_id}",
              "the curve's training cannot be continued exactly; its bends are unaffected")


def _rows_done(zarr_path: Path) -> int:
    """Rows marked done in a grid's arrays (those that a grid.json would be needed to read); 0 if unreadable."""
    try:
        return Rows(zarr_path, "r").progress()[0]
    except (IntegrityError, OSError):
        return 0


def _verify_grid(st: Store, run_id: str, grid_id: str, report: Report) -> None:
    report.checked["grids"] += 1
    rerun = (f"`landscape grid {run_id} --grid {grid_id} --resume` recomputes damaged rows and rebuilds Zarr "
             "metadata (for a damaged grid.json, rerun the grid's original command with --resume)")
    meta: GridMeta | None = None
    grid_file, zarr_path = st.grid_file(run_id, grid_id), st.zarr_path(run_id, grid_id)
    if not grid_file.is_file():
        if zarr_path.exists() and _rows_done(zarr_path):
            report.problems.append(Problem(run_id, str(grid_file), "grid.json is missing", rerun))
        elif zarr_path.exists():  # a creation killed before its metadata: nothing computed, nothing lost
            report.unfinished.append(str(st.grid_dir(run_id, grid_id)))
        return
    try:
        meta = st.read_grid(run_id, grid_id)
    except IntegrityError as e:
        problem = ("grid.json is not valid JSON" if "not valid JSON" in str(e) else
                   "grid.json does not match its grid id (edited or damaged)" if "grid id" in str(e) else
                   f"grid.json is damaged ({e})")
        report.problems.append(Problem(run_id, str(grid_file), problem, rerun))
    if meta is not None:
        for rec in meta.directions:
            _file(report, run_id, st.file(run_id, rec.file), rec.sha256, f"direction pair {rec.pair} of the grid",
                  "delete the direction file and its .json record, then rerun the grid with --resume")
    try:
        check_tree(zarr_path, f"grid {grid_id}")  # no pipe where a chunk belongs: reading it would block
    except IntegrityError as e:
        report.problems.append(Problem(run_id, str(zarr_path), str(e).split(": `")[0], rerun))
        return
    try:
        rows = Rows(zarr_path, "r")
    except IntegrityError as e:
        report.problems.append(Problem(run_id, str(zarr_path), str(e).split(":")[0] + ": metadata damaged", rerun))
        return
    recorded = list(meta.epochs) if meta is not None else []
    # an axis longer than grid.json lists is a growth a kill interrupted (grid.json is written last)
    if meta is not None and rows.epochs[:len(recorded)] != recorded:
        report.problems.append(Problem(run_id, str(zarr_path),
                                       f"epoch axis {rows.epochs} differs from grid.json {meta.epochs}", rerun))
    n_epochs = len(rows.epochs)
    pairs, height = rows.pairs, rows.height
    for ei in range(n_epochs):
        for p in range(pairs):
            for y in range(height):
                report.checked["chunks"] += 1
                damaged: list[str] = []
                if not rows.row_done(ei, p, y, damaged.append):
                    if damaged:
                        report.problems.append(Problem(run_id, str(zarr_path), f"damaged {damaged[0]}", rerun))
                    continue
                report.checked["chunks"] += 3
                if not rows.row_readable(ei, p, y):
                    report.problems.append(Problem(
                        run_id, str(zarr_path), f"damaged chunk: row {y} of pair {p}, epoch {rows.epochs[ei]}", rerun))
            try:
                flag = rows["center_done"][ei, p]
            except DECODE_ERRORS:
                flag = 1
            if flag and not rows.center_done(ei, p, gradient=False):
                report.problems.append(Problem(run_id, str(zarr_path),
                                               f"damaged centre values of pair {p}, epoch {rows.epochs[ei]}", rerun))


def _resume_label(resume: FileRecord) -> str:
    return f"step {resume.step}" if resume.step is not None else f"epoch {resume.epoch}"
