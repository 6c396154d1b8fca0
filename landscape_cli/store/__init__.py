"""The run store: the one module that knows where things are on disk.

Layout::

    <root>/<run-id>/run.json                      RunMeta (written last)
    <root>/<run-id>/checkpoints/epoch-0000.pt     one per epoch (and the last epoch's optimizer state)
    <root>/<run-id>/directions/<dir-id>.pt        direction vectors, shared by every grid that uses them
    <root>/<run-id>/grids/<grid-id>/grid.json     GridMeta (written last)
    <root>/<run-id>/grids/<grid-id>/landscape.zarr
    <root>/<run-id>/grids/<grid-id>/locks/        one lock file per row being computed
    <root>/<run-id>/grids/<grid-id>/plots/        figures drawn by `landscape plot`
    <root>/<run-id>/curves/<curve-id>/curve.json  CurveMeta of a curve from this run's checkpoint (`connect`)
    <root>/<run-id>/curves/<curve-id>/epoch-0000.pt  its bends after each epoch (and the last's optimizer state)

Every other module asks a `Store` for paths, metadata and locks; files are written atomically
(see `_io`), metadata last, so a reader never sees a half-written run or grid.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from landscape_cli._io import atomic_write_bytes, check_hash, create_once, file_sha256, read_json, short_hash, write_json
from landscape_cli.errors import (
    AmbiguousReferenceError,
    GridStateError,
    IntegrityError,
    LandscapeError,
    RunNotFoundError,
    StoreError,
    UsageError,
)
from landscape_cli.store.locks import FileLock, is_locked
from landscape_cli.store.meta import (
    CurveMeta,
    Damaged,
    DirectionRecord,
    DirectionSidecar,
    GridMeta,
    HessianMeta,
    LambdaTrack,
    RunMeta,
)

STORE_ENV = "LANDSCAPE_STORE"
DEFAULT_STORE = "runs"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
DIRECTIONS_DIR = "directions"
GRIDS_DIR = "grids"
GRID_FILE = "grid.json"
ZARR_DIR = "landscape.zarr"
PLOTS_DIR = "plots"
LOCKS_DIR = "locks"
HESSIANS_DIR = "hessians"
HESSIAN_FILE = "hessian.json"
HESSIAN_ZARR = "hessian.zarr"
CURVES_DIR = "curves"
CURVE_FILE = "curve.json"
LAMBDA_FILE = "lambda_max.json"  # λmax tracked during training (train --track-lambda-max)
RUN_PLOTS_DIR = "plots"  # figures of the run itself (plot --lambda-max)
LOCK_FILE = ".lock"  # the run's training lock, and a grid's lock for creating or growing its arrays


def store_root(path: str | os.PathLike[str] | None = None) -> Path:
    """`--store PATH`, else `$LANDSCAPE_STORE`, else `./runs`."""
    if path is None or str(path) == "":
        path = os.environ.get(STORE_ENV) or DEFAULT_STORE
    return Path(path).expanduser()


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """A checkpoint's path relative to its run directory (what run.json records): by epoch, or by step in a run
    with step checkpoints."""
    return f"{CHECKPOINTS_DIR}/{_stem(epoch, step)}.pt"


def optimizer_name(epoch: int, step: int | None = None) -> str:
    return f"{CHECKPOINTS_DIR}/{_stem(epoch, step)}.optim.pt"


def _stem(epoch: int, step: int | None) -> str:
    return f"epoch-{epoch:04d}" if step is None else f"step-{step:09d}"


def curve_bends_name(epoch: int) -> str:
    """A curve's bends after `epoch`, relative to the curve's directory (what curve.json records)."""
    return f"{_stem(epoch, None)}.pt"


def curve_optimizer_name(epoch: int) -> str:
    """The optimizer state (and random generators) a curve's training continues from after `epoch`."""
    return f"{_stem(epoch, None)}.optim.pt"


def direction_name(direction_id: str) -> str:
    return f"{DIRECTIONS_DIR}/{direction_id}.pt"


def probes_name(sha256: str) -> str:
    """A run's probe-samples file (relative to its run directory), addressed by the sha256 of its bytes."""
    return f"probes-{sha256[:16]}.pt"


def read_metadata(path: Path) -> Any:
    """A metadata file's JSON. Where it is not a regular file (a directory, a FIFO, a device: never opened), not
    UTF-8 text or not JSON: one IntegrityError line naming it; where it cannot be read: one StoreError line (an
    OSError too, as the error it stands for)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as e:
        raise StoreError(f"{path} is missing: run `landscape verify`, or `landscape ls` for what the store holds") from e
    except OSError as e:
        raise StoreError(f"cannot read {path} ({e.strerror or e}): check its permissions") from e
    if not stat.S_ISREG(mode):
        raise IntegrityError(f"{path} is not a file (damaged: a directory, pipe or device is where landscape keeps its "
                             "metadata): remove it and run `landscape verify`")
    try:
        return read_json(path)
    except LandscapeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IntegrityError(f"{path} is not a JSON file landscape wrote ({type(e).__name__}): it was damaged; run "
                             "`landscape verify`") from e
    except OSError as e:
        raise StoreError(f"cannot read {path} ({e.strerror or e}): check its permissions") from e


def check_tree(path: Path, what: str) -> None:
    """Every entry under `path` (a Zarr group) a directory or a regular file, links to files followed: a pipe or
    device where a chunk belongs would block every reader (Zarr opens it), a dangling link or a link to a directory
    read as a missing chunk. One IntegrityError line naming the first such entry; nothing is opened."""
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise StoreError(f"cannot read {path} ({e.strerror or e}): check its permissions") from e
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                if entry.is_file():
                    continue
            except OSError:
                pass
            raise IntegrityError(f"damaged {what}: {entry.path} is not a file (a pipe, device or dangling link is "
                                 "where its arrays keep a chunk): `landscape verify` lists what is damaged; remove it "
                                 "and run the command that made it again")


def _exists(path: Path) -> bool:
    """Whether anything is at `path` (a file, or what damage left there: a directory, pipe, dangling link)."""
    return os.path.lexists(path)


class Store:
    """A directory of runs. Creating the object touches nothing on disk."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = store_root(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @classmethod
    def of(cls, store: Store | str | os.PathLike[str] | None) -> Store:
        """`store` itself, or the store at that path (None: the default store)."""
        return store if isinstance(store, Store) else cls(store)

    # -- layout --

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def run_file(self, run_id: str) -> Path:
        return self.run_dir(run_id) / RUN_FILE

    def file(self, run_id: str, relative: str) -> Path:
        """A file that run.json or grid.json records by its path relative to the run directory."""
        return self.run_dir(run_id) / relative

    def checkpoints_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / CHECKPOINTS_DIR

    def directions_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / DIRECTIONS_DIR

    def grids_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / GRIDS_DIR

    def grid_dir(self, run_id: str, grid_id: str) -> Path:
        return self.grids_dir(run_id) / grid_id

    def grid_file(self, run_id: str, grid_id: str) -> Path:
        return self.grid_dir(run_id, grid_id) / GRID_FILE

    def zarr_path(self, run_id: str, grid_id: str) -> Path:
        return self.grid_dir(run_id, grid_id) / ZARR_DIR

    def plots_dir(self, run_id: str, grid_id: str) -> Path:
        return self.grid_dir(run_id, grid_id) / PLOTS_DIR

    def locks_dir(self, run_id: str, grid_id: str) -> Path:
        return self.grid_dir(run_id, grid_id) / LOCKS_DIR

    def stats_file(self, run_id: str, grid_id: str) -> Path:
        return self.grid_dir(run_id, grid_id) / "stats.json"

    def hessians_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / HESSIANS_DIR

    def hessian_dir(self, run_id: str, hessian_id: str) -> Path:
        return self.hessians_dir(run_id) / hessian_id

    def hessian_file(self, run_id: str, hessian_id: str) -> Path:
        return self.hessian_dir(run_id, hessian_id) / HESSIAN_FILE

    def hessian_zarr(self, run_id: str, hessian_id: str) -> Path:
        return self.hessian_dir(run_id, hessian_id) / HESSIAN_ZARR

    def curves_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / CURVES_DIR

    def curve_dir(self, run_id: str, curve_id: str) -> Path:
        return self.curves_dir(run_id) / curve_id

    def curve_file(self, run_id: str, curve_id: str) -> Path:
        return self.curve_dir(run_id, curve_id) / CURVE_FILE

    def curve_path(self, run_id: str, curve_id: str, relative: str) -> Path:
        """A file curve.json records by its path relative to the curve's directory."""
        return self.curve_dir(run_id, curve_id) / relative

    # -- locks --

    def confined(self, path: Path) -> Path:
        """`path`, if the directory it is in lies inside the store's root once links are resolved (the root itself
        may be a link); else one IntegrityError line. Every lock file the store opens is checked this way, so a
        directory of the store replaced by a link to elsewhere never has a file written there."""
        root = self.root.resolve()
        probe = path.parent
        while not probe.exists() and probe != probe.parent:  # the directory may not exist yet
            probe = probe.parent
        real = probe.resolve()
        if real != root and root not in real.parents:
            raise IntegrityError(f"{probe} leads outside the store ({real}, a symbolic link where the store keeps a "
                                 f"directory): nothing is written there; remove the link")
        return path

    def run_lock(self, run_id: str) -> FileLock:
        """Held while a run trains (one `train` per run at a time)."""
        return FileLock(self.confined(self.run_dir(run_id) / LOCK_FILE), f"run {run_id}")

    def run_lock_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / LOCK_FILE

    def grid_lock(self, run_id: str, grid_id: str) -> FileLock:
        """Held briefly while a grid's arrays and metadata are created or grown."""
        return FileLock(self.confined(self.grid_dir(run_id, grid_id) / LOCK_FILE), f"grid {grid_id}")

    def hessian_lock(self, run_id: str, hessian_id: str) -> FileLock:
        """Held while curvature results of the run are computed (one process at a time)."""
        return FileLock(self.confined(self.hessian_dir(run_id, hessian_id) / LOCK_FILE), f"Hessian results {hessian_id}")

    def curve_lock(self, run_id: str, curve_id: str) -> FileLock:
        """Held while a curve trains (one `connect` per curve at a time)."""
        return FileLock(self.confined(self.curve_dir(run_id, curve_id) / LOCK_FILE), f"curve {curve_id}")

    def row_lock(self, run_id: str, grid_id: str, epoch: int, pair: int, row: int) -> FileLock:
        """Held while one row (work unit) of a grid is computed; a second process skips it."""
        name = f"e{epoch}-p{pair}-y{row}.lock"
        return FileLock(self.confined(self.locks_dir(run_id, grid_id) / name), "row")

    # -- writing --

    def ensure_writable(self) -> None:
        """Fail with one clear line, before any work, if the store cannot be written."""
        from landscape_cli._io import check_writable, mkdirs_durably

        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {self.root} is a file, not a directory: pass --store with a directory")
        try:
            mkdirs_durably(self.root)
        except OSError as e:
            raise StoreError(
                f"cannot create the store {self.root} ({e.strerror}): pass --store with a writable directory"
            ) from e
        check_writable(self.root)

    # -- runs --

    def has_run(self, run_id: str) -> bool:
        """Whether the run's run.json is there (readable or not: `read_run` says which)."""
        return _exists(self.run_file(run_id))

    def run_ids(self) -> list[str]:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the store {self.root} is a file, not a directory: give --store a directory (or set "
                             f"${STORE_ENV} to one)")
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _exists(p / RUN_FILE))

    def read_run(self, run_id: str) -> RunMeta:
        path = self.run_file(run_id)
        if not _exists(path):
            raise RunNotFoundError(f"no run {run_id} in store {self.root}; `landscape ls` lists the runs")
        meta = RunMeta.from_json(read_metadata(path), path)
        if meta.id != run_id:
            raise IntegrityError(f"{path} names run {meta.id!r}, not its directory's {run_id} (edited or damaged): run "
                                 "`landscape verify`")
        return meta

    def write_run(self, meta: RunMeta) -> None:
        from landscape_cli._io import now

        meta.updated = now()
        atomic_write_bytes(self.run_file(meta.id), meta.to_text().encode())

    # -- λmax tracked during training --

    def lambda_file(self, run_id: str) -> Path:
        return self.run_dir(run_id) / LAMBDA_FILE

    def has_lambda_track(self, run_id: str) -> bool:
        return self.lambda_file(run_id).is_file()

    def read_lambda_track(self, run_id: str) -> LambdaTrack | None:
        """The run's tracked λmax (`train --track-lambda-max`), None where it has none."""
        path = self.lambda_file(run_id)
        if not path.is_file():
            return None
        track = LambdaTrack.from_json(read_metadata(path), path)
        if track.run != run_id:
            raise IntegrityError(f"{path} belongs to run {track.run}, not {run_id} (edited or damaged)")
        return track

    def write_lambda_track(self, track: LambdaTrack) -> None:
        """Written atomically (renamed into place), before run.json records the epoch it covers."""
        write_json(self.lambda_file(track.run), track.to_json())

    def run_plot_path(self, run_id: str, filename: str) -> Path:
        """Where a figure of the run itself (plot --lambda-max) is saved unless told otherwise: its plots/."""
        return self.run_dir(run_id) / RUN_PLOTS_DIR / filename

    def runs(self) -> list[RunMeta | Damaged]:
        """Metadata of every run; a run whose run.json cannot be read is listed as damaged."""
        out: list[RunMeta | Damaged] = []
        for run_id in self.run_ids():
            try:
                out.append(self.read_run(run_id))
            except (IntegrityError, OSError) as e:
                out.append(Damaged(run_id, str(e)))
        return out

    def resolve(self, ref: str) -> str:
        """A run id from a run's name or a unique prefix of its id."""
        if not ref or not ref.strip():
            raise UsageError("empty run reference: give a run id (or prefix) or name; `landscape ls` lists them")
        runs = self.runs()
        by_name = [r.id for r in runs if isinstance(r, RunMeta) and r.name == ref]
        if by_name:
            return by_name[0]
        matches = [r.id for r in runs if r.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(_label(r) for r in runs[:10]) or "none yet: `landscape train` makes one"
            raise RunNotFoundError(f"no run {ref!r} in store {self.root} (runs: {known})")
        raise AmbiguousReferenceError(
            f"run reference {ref!r} matches {len(matches)} runs ({', '.join(matches)}): give more characters"
        )

    def check_name(self, name: str, run_id: str) -> None:
        """A run name must be unique in the store and not empty."""
        check_label(name, "run")
        for r in self.runs():
            if isinstance(r, RunMeta) and r.name == name and r.id != run_id:
                raise UsageError(f"the name {name!r} is taken by run {r.id}: choose another --name")

    # -- directions --

    def write_direction(self, run_id: str, direction_id: str, spec: dict[str, Any], write: Callable[[IO[bytes]], None],
                        what: str, *, pair: int = 0, replace: bool = False) -> DirectionRecord:
        """Store a direction file once (created exclusively, so concurrent grids never replace each other's) with
        its JSON sidecar (id, spec, sha256); its record. An existing file is checked against its sidecar's hash.
        `replace`: a file left by a killed computation of the same spec is written again."""
        name = direction_name(direction_id)
        path = self.file(run_id, name)
        sidecar = path.with_suffix(".json")
        if replace and path.exists():
            path.unlink()
        if not path.exists() and create_once(path, write):
            write_json(sidecar, {"id": direction_id, "spec": spec, "sha256": file_sha256(path)})
        if sidecar.exists():
            check_hash(path, self.direction_sidecar(sidecar).sha256, what)
        return DirectionRecord(pair, direction_id, name, file_sha256(path))

    def direction_sidecars(self, run_id: str) -> list[Path]:
        """The JSON sidecars of the run's direction files (what `verify` checks)."""
        directions = self.directions_dir(run_id)
        return sorted(directions.glob("*.json")) if directions.is_dir() else []

    @staticmethod
    def direction_sidecar(path: Path) -> DirectionSidecar:
        """A direction file's sidecar, typed (IntegrityError naming the file if it is damaged)."""
        return DirectionSidecar.from_json(read_metadata(path), path)

    @staticmethod
    def direction_of(sidecar: Path) -> Path:
        """The direction file a sidecar describes."""
        return sidecar.with_suffix(".pt")

    # -- curves --

    def curve_ids(self, run_id: str) -> list[str]:
        """The curves stored with the run (those from one of its checkpoints) that have a curve.json."""
        curves = self.curves_dir(run_id)
        if not curves.is_dir():
            return []
        return sorted(d.name for d in curves.iterdir() if d.is_dir() and _exists(d / CURVE_FILE))

    def has_curve(self, run_id: str, curve_id: str) -> bool:
        """Whether the curve's curve.json is there (readable or not: `read_curve` says which)."""
        return _exists(self.curve_file(run_id, curve_id))

    def read_curve(self, run_id: str, curve_id: str) -> CurveMeta:
        """curve.json, refused (IntegrityError) if it is damaged or no longer matches its id."""
        path = self.curve_file(run_id, curve_id)
        meta = CurveMeta.from_json(read_metadata(path), path)
        if meta.id != curve_id or meta.config.curve_id != curve_id or meta.config.run_a != run_id:
            raise IntegrityError(f"{path} does not match its curve id (it was edited or damaged): run `landscape "
                                 "verify`; the curve's own `landscape connect` command trains it again")
        return meta

    def write_curve(self, meta: CurveMeta) -> None:
        write_json(self.curve_file(meta.run, meta.id), meta.to_json())

    def curves(self, run_id: str) -> list[CurveMeta | Damaged]:
        """Every curve with the run as an endpoint: those stored with it, then those of other runs ending at it."""
        out: list[CurveMeta | Damaged] = []
        for other in [run_id, *[r for r in self.run_ids() if r != run_id]]:
            for curve_id in self.curve_ids(other):
                try:
                    meta = self.read_curve(other, curve_id)
                except (IntegrityError, OSError) as e:
                    if other == run_id:
                        out.append(Damaged(curve_id, str(e)))
                    continue
                if other == run_id or meta.config.run_b == run_id:
                    out.append(meta)
        return out

    def find_curve(self, ref: str, run_id: str | None = None) -> tuple[str, str]:
        """(run id, curve id) of a curve named by its name or a unique id prefix (of a run, or of any)."""
        if not ref or not ref.strip():
            raise UsageError("empty curve reference: give a curve id (or prefix) or name; `landscape ls` lists them")
        found, damaged = [], []
        for rid in ([run_id] if run_id else self.run_ids()):
            for cid in self.curve_ids(rid):
                if cid.startswith(ref):
                    found.append((rid, cid))
                    continue
                try:
                    if self.read_curve(rid, cid).name == ref:
                        found.append((rid, cid))
                except (IntegrityError, OSError) as e:
                    damaged.append((cid, str(e)))
                    continue
        if not found:
            where = f" of run {run_id}" if run_id else ""
            if damaged:  # its name cannot be read: it may be the one asked for
                cid, error = damaged[0]
                raise IntegrityError(f"no readable curve {ref!r}{where}: curve {cid}, whose name cannot be read, is "
                                     f"damaged ({error})")
            raise RunNotFoundError(f"no curve {ref!r}{where}: `landscape ls` lists the curves (`landscape connect` "
                                   "trains one)")
        if len(found) > 1:
            raise AmbiguousReferenceError(f"curve {ref!r} is ambiguous ({', '.join(c for _, c in found)}): give more "
                                          "of its id")
        return found[0]

    # -- grids --

    def grid_ids(self, run_id: str, with_metadata: bool = True) -> list[str]:
        """Every grid directory of the run that has a grid.json (or every one, `with_metadata=False`)."""
        grids = self.grids_dir(run_id)
        if not grids.is_dir():
            return []
        return sorted(d.name for d in grids.iterdir()
                      if d.is_dir() and (not with_metadata or _exists(d / GRID_FILE)))

    def grid_busy(self, run_id: str, grid_id: str) -> bool:
        """Whether another process holds a row of the grid right now."""
        locks = self.locks_dir(run_id, grid_id)
        return locks.is_dir() and any(is_locked(p) for p in locks.glob("*.lock"))

    def has_zarr(self, run_id: str, grid_id: str) -> bool:
        """Whether the grid's Zarr group was created (its own metadata file exists)."""
        return (self.zarr_path(run_id, grid_id) / "zarr.json").exists()

    def has_grid(self, run_id: str, grid_id: str) -> bool:
        """Whether the grid's grid.json is there (readable or not: `read_grid` says which)."""
        return _exists(self.grid_file(run_id, grid_id))

    def read_grid(self, run_id: str, grid_id: str) -> GridMeta:
        """grid.json, refused (IntegrityError) if it is damaged or no longer matches its id."""
        path = self.grid_file(run_id, grid_id)
        raw = read_metadata(path)
        if not isinstance(raw, dict) or short_hash(raw.get("config", {})) != raw.get("id") or raw.get("id") != grid_id:
            raise IntegrityError(
                f"{path} does not match its grid id (it was edited or damaged): run `landscape verify`; the grid's "
                "own `landscape grid` command with --resume rebuilds it"
            )
        meta = GridMeta.from_json(raw, path)
        if meta.config.identity() != raw["config"]:
            raise IntegrityError(f"{path}: its configuration does not read back as written (damaged): run `landscape verify`")
        return meta

    def write_grid(self, meta: GridMeta) -> None:
        write_json(self.grid_file(meta.run, meta.id), meta.to_json())

    def grids(self, run_id: str) -> list[GridMeta | Damaged]:
        """Every grid of a run; one whose grid.json cannot be read is listed as damaged."""
        out: list[GridMeta | Damaged] = []
        for grid_id in self.grid_ids(run_id):
            try:
                out.append(self.read_grid(run_id, grid_id))
            except (IntegrityError, OSError) as e:
                out.append(Damaged(grid_id, str(e)))
        return out

    def find_grid(self, ref: str, run_id: str | None = None) -> tuple[str, str]:
        """(run id, grid id) of a grid named by its name or a unique id prefix, in one run or all."""
        if not ref or not ref.strip():
            raise UsageError("empty grid reference: give a grid id (or prefix) or name; `landscape ls` lists them")
        run_ids = [run_id] if run_id else self.run_ids()
        grids = [(r, g) for r in run_ids for g in self.grids(r)]
        by_name = [(r, g.id) for r, g in grids if isinstance(g, GridMeta) and g.name == ref]
        if len(by_name) == 1:
            return by_name[0]
        matches = by_name or [(r, g.id) for r, g in grids if g.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        where = f"run {run_id}" if run_id else f"store {self.root}"
        damaged = [g for _r, g in grids if isinstance(g, Damaged)] if run_id else []
        if not matches and damaged:  # a name cannot be read from a damaged grid.json: it may be the one asked for
            raise IntegrityError(f"no readable grid {ref!r} in {where}: grid {damaged[0].id}, whose name cannot be "
                                 f"read, is damaged ({damaged[0].error})")
        if not matches:
            raise RunNotFoundError(
                f"no grid {ref!r} in {where}: `landscape ls` lists the grids, `landscape grid RUN` makes one"
            )
        raise AmbiguousReferenceError(
            f"grid reference {ref!r} matches {len(matches)} grids ({', '.join(g for _r, g in matches)}): "
            "give more characters"
        )

    def select_grid(self, ref: str, grid: str | None = None, purpose: str = "") -> tuple[str, str]:
        """(run id, grid id) of what a command names: RUN's grid `grid` (id, prefix or name), else RUN's newest
        grid; `ref` may also name a grid directly. The one place the newest-grid rule lives (plot, the page,
        the notebook, export and stats all choose this way); `purpose` ("to plot") completes the message."""
        try:
            run_id = self.resolve(ref)
        except RunNotFoundError:
            if grid is not None:
                raise
            return self.find_grid(ref)  # a grid named directly
        if grid is not None:
            return self.find_grid(grid, run_id)
        newest = self.newest_grid(run_id)
        if newest is None:
            what = f" {purpose}" if purpose else ""
            raise GridStateError(f"run {run_id} has no grid{what}: `landscape grid {run_id[:8]}` makes one")
        return run_id, newest

    def newest_grid(self, run_id: str) -> str | None:
        """The id of the run's most recently created or extended readable grid (None: no grid)."""
        metas = [m for m in self.grids(run_id) if isinstance(m, GridMeta)]
        if not metas:
            return None
        return max(metas, key=lambda m: (m.updated or m.created or "", m.id)).id

    # -- the stats cache of a grid --

    def stats_cache(self, run_id: str, grid_id: str, fmt: int) -> dict[str, Any]:
        """The entries of the grid's stats cache; a missing, damaged or foreign file reads as empty (it is rewritten)."""
        try:
            raw = read_metadata(self.stats_file(run_id, grid_id))
        except (OSError, IntegrityError):
            return {}
        if not isinstance(raw, dict) or raw.get("format") != fmt or raw.get("grid") != grid_id:
            return {}
        entries = raw.get("entries")
        return dict(entries) if isinstance(entries, dict) else {}

    def save_stats_cache(self, run_id: str, grid_id: str, fmt: int, new: dict[str, Any], keep: int) -> bool:
        """Merge `new` entries into the cache (re-read first: another process may have added some), keeping the
        newest `keep`. Best effort: a store that cannot be written (read-only, full) keeps its old cache; False then."""
        entries = self.stats_cache(run_id, grid_id, fmt)
        for slot, entry in new.items():
            entries.pop(slot, None)
            entries[slot] = entry
        while len(entries) > keep:
            entries.pop(next(iter(entries)))
        try:
            write_json(self.stats_file(run_id, grid_id), {"format": fmt, "grid": grid_id, "entries": entries})
        except (LandscapeError, OSError):
            return False
        return True

    # -- curvature results --

    def hessian_ids(self, run_id: str) -> list[str]:
        hessians = self.hessians_dir(run_id)
        if not hessians.is_dir():
            return []
        return sorted(d.name for d in hessians.iterdir() if d.is_dir() and _exists(d / HESSIAN_FILE))

    def has_hessian(self, run_id: str, hessian_id: str) -> bool:
        """Whether the results' hessian.json is there (readable or not: `read_hessian` says which)."""
        return _exists(self.hessian_file(run_id, hessian_id))

    def has_hessian_arrays(self, run_id: str, hessian_id: str) -> bool:
        """Whether the results' Zarr group was created (its own metadata file exists)."""
        return (self.hessian_zarr(run_id, hessian_id) / "zarr.json").exists()

    def read_hessian(self, run_id: str, hessian_id: str) -> HessianMeta:
        path = self.hessian_file(run_id, hessian_id)
        raw = read_metadata(path)
        meta = HessianMeta.from_json(raw, path)
        if meta.id != hessian_id or meta.config.hessian_id != hessian_id:
            raise IntegrityError(f"{path} does not match its id (edited or damaged): run `landscape verify`; the same "
                                 "`landscape hessian` command rebuilds it")
        return meta

    def write_hessian(self, meta: HessianMeta) -> None:
        write_json(self.hessian_file(meta.run, meta.id), meta.to_json())

    def hessians(self, run_id: str) -> list[HessianMeta | Damaged]:
        out: list[HessianMeta | Damaged] = []
        for hid in self.hessian_ids(run_id):
            try:
                out.append(self.read_hessian(run_id, hid))
            except (IntegrityError, OSError) as e:
                out.append(Damaged(hid, str(e)))
        return out

    def check_grid_name(self, run_id: str, grid_id: str, name: str) -> None:
        """A grid name must be unique among the run's grids."""
        check_label(name, "grid")
        for g in self.grids(run_id):
            if isinstance(g, GridMeta) and g.name == name and g.id != grid_id:
                raise UsageError(f"the name {name!r} is taken by grid {g.id} of run {run_id}: choose another --name")

    # -- where views and exports write --

    EXPORTS_DIR = "exports"  # in a grid's (or curvature results') directory, beside plots/

    def plot_path(self, run_id: str, grid_id: str, filename: str) -> Path:
        """Where a figure or page of a grid is saved unless told otherwise: `filename` in the grid's plots/."""
        return self.plots_dir(run_id, grid_id) / filename

    def hessian_plot_path(self, run_id: str, hessian_id: str, filename: str) -> Path:
        """Where a figure of curvature results is saved unless told otherwise: `filename` in the results' plots/."""
        return self.hessian_dir(run_id, hessian_id) / PLOTS_DIR / filename

    def export_path(self, run_id: str, grid_id: str, name: str) -> Path:
        """Where an export of a grid is written unless told otherwise: `name` in the grid's exports/."""
        return self.grid_dir(run_id, grid_id) / self.EXPORTS_DIR / name

    def hessian_export_path(self, run_id: str, hessian_id: str, name: str) -> Path:
        """Where an export of curvature results is written unless told otherwise: `name` in the results' exports/."""
        return self.hessian_dir(run_id, hessian_id) / self.EXPORTS_DIR / name

    def holds(self, path: str | os.PathLike[str]) -> bool:
        """Whether `path` (symbolic links followed) is the store's directory or anything inside it: where no
        view may write its own files (a TensorBoard log directory)."""
        return self._owns(path, self.root)

    @staticmethod
    def _owns(path: str | os.PathLike[str], group: Path, *files: Path) -> bool:
        resolved, group = Path(path).resolve(), group.resolve()
        return resolved == group or group in resolved.parents or resolved in {f.resolve() for f in files}


def check_label(name: str, what: str) -> None:
    """A --name must be non-empty and free of '/', '\\' and control characters (tabs, newlines, escapes, NUL)."""
    if not name.strip() or any(c in "/\\" or unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise UsageError(f"bad {what} name {name!r}: use a non-empty label without '/', '\\' or control characters "
                         "(tabs, newlines, escapes)")


def _label(run: RunMeta | Damaged) -> str:
    if isinstance(run, Damaged):
        return f"{run.id} (damaged: `landscape verify {run.id}`)"
    return f"{run.id} ({run.name})" if run.name else run.id
