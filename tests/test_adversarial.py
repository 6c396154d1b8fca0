"""Adversarial input for every command: each case is one clear line on stderr, a known exit code, no traceback,
and the store (and everything beside it) exactly as it was.

Every case runs in-process (the CLI's own error boundary: its exit code and error line) on a private copy of
one session-trained store: two runs, two grids, curvature results and a curve. Numbers out of range (negative,
zero, nan, inf, 1e400, counts past any limit) for each numeric option; references that match nothing or several
things; control characters and path separators in names; outputs to directories, devices and places that do not
exist; damaged files of every kind the store keeps (truncated, of the wrong JSON type, a directory, a pipe or a
link to a device where a file belongs); empty stores; options in conflict.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, Train, one_thread, set_field, tree
from typer.testing import CliRunner

from landscape_cli.cli import app
from landscape_cli.store import Store

SMALL = ("--pairs", "1", "--batches", "1", "-q")
STORE = (Train("mlp", epochs=1, name="m"), Train("mlp", epochs=1, seed=1, name="other"),
         Cli("grid", "m", "--width", "3", *SMALL, "--name", "g"),
         Cli("grid", "m", "--width", "3", "--span", "0.5", *SMALL, "--name", "h"),
         Cli("hessian", "m", "--top", "1", "--batches", "1", "--probes", "2", "--name", "hs", "-q"),
         Cli("connect", "m", "other", "--epochs", "1", "--name", "c", "-q"))
NO_STORE_OPTION = ("models", "datasets")


@dataclass(frozen=True)
class Ids:
    """The ids of the store's runs, grids, curvature results and curve (placeholders {m}, {g}... in a case)."""

    m: str
    other: str
    g: str
    h: str
    hs: str
    c: str

    @classmethod
    def of(cls, store: Path) -> Ids:
        st = Store(store)
        m, other = st.resolve("m"), st.resolve("other")
        _, g = st.find_grid("g", m)
        _, h = st.find_grid("h", m)
        [hs] = st.hessian_ids(m)
        _, c = st.find_curve("c", m)
        return cls(m, other, g, h, hs, c)


Setup = Callable[[Path, Path, Ids], None]  # (store, the directory beside it, ids): damages or prepares


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int  # the exit code: 2 for a usage error, 1 for the rest
    setup: Setup | None = None
    needle: str = ""  # a word the error line must contain (what was wrong)


def case(*args: str, code: int = 2, setup: Setup | None = None, needle: str = "", id: str) -> Any:
    return pytest.param(Case(args, code, setup, needle), id=id)


# --- damage, and what else a case prepares -------------------------------------------------------------------


def _json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def _set(path_of: Callable[[Path, Ids], Path], *keys: str | int, value: Any) -> Setup:
    """Set (or, with value KeyError, delete) one field of a metadata file."""

    return lambda store, beside, ids: _json(path_of(store, ids), lambda data: set_field(data, keys, value))


def _write(path_of: Callable[[Path, Ids], Path], text: str) -> Setup:
    return lambda store, beside, ids: path_of(store, ids).write_text(text)


def _replace(path_of: Callable[[Path, Ids], Path], what: str) -> Setup:
    """Put something else where a file belongs: a directory, a pipe, a link to a device, a truncated copy..."""

    def setup(store: Path, beside: Path, ids: Ids) -> None:
        path = path_of(store, ids)
        data = path.read_bytes()
        path.unlink()
        if what == "dir":
            path.mkdir()
        elif what == "fifo":
            os.mkfifo(path)
        elif what == "zero":
            path.symlink_to("/dev/zero")
        elif what == "dangling":
            path.symlink_to(beside / "nothing-here")
        elif what == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif what == "empty":
            path.write_bytes(b"")
        elif what == "binary":
            path.write_bytes(b"\xff\xfe\x00" + data[3:])
        else:
            raise AssertionError(what)

    return setup


def _run_json(store: Path, ids: Ids) -> Path:
    return Store(store).run_file(ids.m)


def _other_json(store: Path, ids: Ids) -> Path:
    return Store(store).run_file(ids.other)


def _grid_json(store: Path, ids: Ids) -> Path:
    return Store(store).grid_file(ids.m, ids.h)


def _hessian_json(store: Path, ids: Ids) -> Path:
    return Store(store).hessian_file(ids.m, ids.hs)


def _curve_json(store: Path, ids: Ids) -> Path:
    return Store(store).curve_file(ids.m, ids.c)


def _checkpoint(store: Path, ids: Ids) -> Path:
    return Store(store).run_dir(ids.m) / "checkpoints" / "epoch-0001.pt"


def _direction(store: Path, ids: Ids) -> Path:
    meta = Store(store).read_grid(ids.m, ids.h)
    return Store(store).file(ids.m, meta.directions[0].file)


def _zarr_json(name: str) -> Callable[[Path, Ids], Path]:
    return lambda store, ids: Store(store).zarr_path(ids.m, ids.h) / name / "zarr.json"


def _chunks(name: str) -> Setup:
    """Every chunk of one of grid h's arrays overwritten with garbage (its CRC32C no longer matches)."""

    def setup(store: Path, beside: Path, ids: Ids) -> None:
        for p in (Store(store).zarr_path(ids.m, ids.h) / name / "c").rglob("*"):
            if p.is_file():
                p.write_bytes(b"garbage")

    return setup


def _chunk_fifo(name: str, hessian: bool = False) -> Setup:
    """A pipe where one chunk of grid h's array `name` (or of the curvature results') belongs: any reader that opened
    it would wait forever for a writer."""

    def setup(store: Path, beside: Path, ids: Ids) -> None:
        st = Store(store)
        group = st.hessian_zarr(ids.m, ids.hs) if hessian else st.zarr_path(ids.m, ids.h)
        chunk = next(p for p in sorted((group / name / "c").rglob("*")) if p.is_file())
        chunk.unlink()
        os.mkfifo(chunk)

    return setup


def _listed_once(then: Setup) -> Setup:
    """`landscape ls` run first (it caches each complete grid's stats in the grid's stats.json), then `then`."""

    def setup(store: Path, beside: Path, ids: Ids) -> None:
        assert CliRunner().invoke(app, ["ls", "--store", str(store)]).exit_code == 0
        then(store, beside, ids)

    return setup


def _file(name: str, data: bytes) -> Setup:
    return lambda store, beside, ids: (beside / name).write_bytes(data)


def _fifo(name: str) -> Setup:
    return lambda store, beside, ids: os.mkfifo(beside / name)


def _empty_store(store: Path, beside: Path, ids: Ids) -> None:
    for p in list(store.iterdir()):
        shutil.rmtree(p)


def _ambiguous(store: Path, beside: Path, ids: Ids) -> None:
    """A second run directory whose id shares run m's first four characters."""
    twin = ids.m[:4] + "f" * 8
    shutil.copytree(Store(store).run_dir(ids.m), store / twin)
    _json(store / twin / "run.json", lambda d: {**d, "id": twin, "name": "twin"})


def _hessian_done_missing(store: Path, beside: Path, ids: Ids) -> None:
    shutil.rmtree(Store(store).hessian_zarr(ids.m, ids.hs) / "done")


R = ("--width", "3", *SMALL)  # a small grid, should a case get past its checks

CASES = [
    # --- train ---
    case("train", "mlp", "digits", "--epochs", "-1", id="train-epochs-negative"),
    case("train", "mlp", "digits", "--epochs", "99999999999999999999", id="train-epochs-huge"),
    case("train", "mlp", "digits", "--batch-size", "0", id="train-batch-size-zero"),
    case("train", "mlp", "digits", "--lr", "nan", id="train-lr-nan"),
    case("train", "mlp", "digits", "--lr", "1e400", id="train-lr-overflow"),
    case("train", "mlp", "digits", "--lr", "-0.1", id="train-lr-negative"),
    case("train", "mlp", "digits", "--weight-decay", "inf", id="train-weight-decay-inf"),
    case("train", "mlp", "digits", "--optimizer", "adam", "--momentum", "0.9", id="train-momentum-with-adam"),
    case("train", "mlp", "digits", "--checkpoint-every", "0", id="train-checkpoint-every-zero"),
    case("train", "mlp", "digits", "--keep", "every=0", id="train-keep-zero"),
    case("train", "mlp", "digits", "--keep", "sometimes", id="train-keep-unknown"),
    case("train", "mlp", "digits", "--track-lambda-max", "0", id="train-track-zero"),
    case("train", "mlp", "digits", "--activation", "gelu", id="train-activation-unknown"),
    case("train", "mlp", "digits", "--device", "tpu", id="train-device-unknown"),
    case("train", "mlp", "digits", "--name", "a/b", id="train-name-slash"),
    case("train", "mlp", "digits", "--name", "a\x1b[31mred", id="train-name-escape"),
    case("train", "mlp", "digits", "--name", "\x00", id="train-name-nul"),
    case("train", "mlp", "digits", "--seed", "7", "--name", "other", id="train-name-taken"),
    case("train", "ü-名前", "digits", id="train-model-unknown"),
    case("train", "mlp", "digits", "--track-lambda-max", "1", "--track-batch-size", "0", id="train-track-batch-size-zero"),
    case("train", "mlp", "digits", "--track-lambda-max", "1", "--track-batches", "100000",
         id="train-track-batches-past-the-data"),
    case("train", "mlp", "digits", "--block-size", "0", id="train-block-size-zero"),
    case("train", "mlp", "text:{beside}/missing.txt", id="train-text-missing"),
    case("train", "mlp", "digits", "--loss", "hinge", id="train-loss-unknown"),
    case("train", "mlp", "../digits", id="train-dataset-path"),
    # --- import ---
    case("import", "mlp", "digits", "{beside}/missing.pt", id="import-missing-file"),
    case("import", "mlp", "digits", "{beside}", id="import-directory"),
    case("import", "mlp", "digits", "{beside}/fifo.pt", setup=_fifo("fifo.pt"), needle="not a file", id="import-fifo"),
    case("import", "mlp", "digits", "/dev/zero", id="import-device"),
    case("import", "mlp", "digits", "{ckpt}", "--epochs", "-1", id="import-epoch-negative"),
    case("import", "mlp", "digits", "{ckpt}", "--epochs", "0,1", id="import-epochs-count"),
    case("import", "mlp", "digits", "{ckpt}", "{ckpt}", id="import-same-file-twice"),
    case("import", "mlp", "digits", "{ckpt}", "--epochs", "0", "--name", "a\tb", id="import-name-tab"),
    case("import", "mlp", "digits", "{beside}/e.pt", setup=_file("e.pt", b""), id="import-empty-file"),
    case("import", "mlp", "digits", "{beside}/t.pt", setup=_file("t.pt", b"not a checkpoint"), id="import-text-file"),
    # --- grid ---
    case("grid", "m", "--width", "1", id="grid-width-one"),
    case("grid", "m", "--width", "-3", id="grid-width-negative"),
    case("grid", "m", "--width", "99999999999999999999", id="grid-width-huge"),
    case("grid", "m", "--span", "0", *R, id="grid-span-zero"),
    case("grid", "m", "--span", "nan", *R, id="grid-span-nan"),
    case("grid", "m", "--span", "1e400", *R, id="grid-span-overflow"),
    case("grid", "m", "--range", "1,1", *R, id="grid-range-empty"),
    case("grid", "m", "--range", "2,-2", *R, id="grid-range-reversed"),
    case("grid", "m", "--range", "-inf,1", *R, id="grid-range-inf"),
    case("grid", "m", "--range", "1,2,3", *R, id="grid-range-three"),
    case("grid", "m", "--span", "1", "--range", "-1,1", *R, id="grid-span-and-range"),
    case("grid", "m", "--pairs", "0", "--width", "3", id="grid-pairs-zero"),
    case("grid", "m", "--pairs", "1001", "--width", "3", id="grid-pairs-huge"),
    case("grid", "m", "--batches", "0", "--width", "3", id="grid-batches-zero"),
    case("grid", "m", "--batches", "100000", "--width", "3", "--pairs", "1", id="grid-batches-past-the-data"),
    case("grid", "m", "--batch-size", "-1", *R, id="grid-batch-size-negative"),
    case("grid", "m", "--epochs", "99", *R, id="grid-epoch-missing"),
    case("grid", "m", "--epochs", "0-99999999999", *R, id="grid-epoch-range-huge"),
    case("grid", "m", "--epochs", "-1", *R, id="grid-epoch-negative"),
    case("grid", "m", "--at-steps", "5", *R, id="grid-steps-without-steps"),
    case("grid", "m", "--seed", "-1", *R, id="grid-seed-negative"),
    case("grid", "m", "--dims", "3", *R, id="grid-dims-three"),
    case("grid", "m", "--layer", "nope", *R, id="grid-layer-unknown"),
    case("grid", "m", "--single-kernel", *R, id="grid-single-kernel-alone"),
    case("grid", "m", "--directions", "spiral", *R, id="grid-directions-unknown"),
    case("grid", "m", "--directions", "interpolate", "--to-epoch", "99", *R, id="grid-interpolate-to-missing"),
    case("grid", "m", "--to-epoch", "1", *R, id="grid-to-epoch-on-random"),
    case("grid", "m", "--directions", "interpolate", "--to", "nope", *R, id="grid-interpolate-to-unknown"),
    case("grid", "m", "--directions", "interpolate", "--to", "other:99", *R, id="grid-interpolate-to-missing-epoch"),
    case("grid", "m", "--at-steps", "", *R, id="grid-steps-empty"),
    case("grid", "m", "--norm", "max", *R, id="grid-norm-unknown"),
    case("grid", "m", "--bn", "frozen", *R, id="grid-bn-unknown"),
    case("grid", "m", "--split", "test", *R, id="grid-split-unknown"),
    case("grid", "m", "--batches", "all", "--batch-size", "0", "--width", "3", "--pairs", "1", "-q",
         id="grid-batches-all-batch-size-zero"),
    case("grid", "m", "--dims", "1", "--yrange", "-1,1", *R, id="grid-yrange-on-a-line"),
    case("grid", "m", "--directions", "pca", "--epochs", "0", "--width", "3", "--batches", "1", "-q",
         id="grid-pca-one-checkpoint"),

    case("grid", "m", "--directions", "curve", "--along", "nope", "--width", "3", "--batches", "1", "-q",
         id="grid-curve-unknown"),
    case("grid", "m", "--points-per-pass", "0", *R, id="grid-points-per-pass-zero"),
    case("grid", "m", "--shard", "3/2", *R, id="grid-shard-past-the-end"),
    case("grid", "m", "--shard", "0/0", *R, id="grid-shard-of-none"),
    case("grid", "m", "--precision", "fp8", *R, id="grid-precision-unknown"),
    case("grid", "m", "--name", "x\ny", *R, id="grid-name-newline"),
    case("grid", "m", "--name", "g", "--span", "0.25", *R, id="grid-name-taken"),
    case("grid", "m", "--grid", "nope", id="grid-grid-unknown"),
    case("grid", "m", "--directions-from", "nope", *R, id="grid-directions-from-unknown"),
    case("grid", "", *R, id="grid-run-empty"),
    case("grid", "/", *R, id="grid-run-slash"),
    case("grid", "zzzz", *R, id="grid-run-unknown"),
    case("grid", "{m4}", *R, setup=_ambiguous, id="grid-run-ambiguous"),
    case("grid", "m", *R, setup=_empty_store, id="grid-empty-store"),
    case("grid", "m", "--epochs", "1", "--span", "0.3", *R, code=1, setup=_replace(_checkpoint, "truncated"),
         needle="checkpoint", id="grid-checkpoint-truncated"),
    case("grid", "m", "--epochs", "1", "--span", "0.3", *R, code=1, setup=_replace(_checkpoint, "fifo"),
         id="grid-checkpoint-fifo"),
    case("grid", "m", "--epochs", "1", "--span", "0.3", *R, code=1, setup=_replace(_checkpoint, "zero"),
         id="grid-checkpoint-device"),
    case("grid", "m", "--epochs", "1", "--span", "0.3", *R, code=1, setup=_replace(_checkpoint, "dir"),
         id="grid-checkpoint-directory"),
    case("grid", "m", "--directions-from", "h", "--span", "0.3", *R, code=1, setup=_replace(_direction, "fifo"),
         id="grid-direction-fifo"),
    case("grid", "m", "--directions-from", "h", "--span", "0.3", *R, code=1, setup=_replace(_direction, "zero"),
         id="grid-direction-device"),
    case("grid", "{m}", *R, code=1, setup=_write(_run_json, "[]"), id="grid-run-json-list"),
    case("grid", "{m}", *R, code=1, setup=_replace(_run_json, "dir"), id="grid-run-json-directory"),
    case("grid", "{m}", *R, code=1, setup=_replace(_run_json, "empty"), id="grid-run-json-empty"),
    case("grid", "m", "--epochs", "1", "--span", "0.3", *R, code=1, setup=_replace(_checkpoint, "dangling"),
         needle="missing", id="grid-checkpoint-dangling-link"),
    case("grid", "{m}", *R, code=1, setup=_set(_run_json, "epochs", 1, "epoch", value=1e300),
         id="grid-run-json-huge-epoch"),
    # --- hessian ---
    case("hessian", "m", "--top", "0", id="hessian-top-zero"),
    case("hessian", "m", "--top", "99999999999999999999", id="hessian-top-huge"),
    case("hessian", "m", "--tol", "nan", id="hessian-tol-nan"),
    case("hessian", "m", "--tol", "1", id="hessian-tol-one"),
    case("hessian", "m", "--probes", "1", id="hessian-probes-one"),
    case("hessian", "m", "--density", "--bins", "1", id="hessian-bins-one"),
    case("hessian", "m", "--density", "--steps", "0", id="hessian-steps-zero"),
    case("hessian", "m", "--epochs", "7", id="hessian-epoch-missing"),
    case("hessian", "m", "--bn", "recompute", id="hessian-bn-unknown"),
    case("hessian", "m", "--name", "a/b", id="hessian-name-slash"),
    case("hessian", "m", "--epochs", "1", "--top", "1", "--batches", "1", "--probes", "2", "--seed", "5", "-q", code=1,
         setup=_replace(_checkpoint, "fifo"), id="hessian-checkpoint-fifo"),
    case("hessian", "m", "--top", "1", "--batches", "1", "--probes", "2", "-q", code=1,
         setup=_set(_hessian_json, "epochs", value=["x"]), needle="hessian.json", id="hessian-json-damaged"),
    case("hessian", "m", "--top", "1", "--batches", "1", "--probes", "2", "-q", code=1, setup=_hessian_done_missing,
         id="hessian-done-missing"),
    # --- connect ---
    case("connect", "m", "nope", id="connect-run-unknown"),
    case("connect", "m", "other", "--name", "a/b", id="connect-name-slash"),
    case("connect", "m:99", "other", id="connect-epoch-missing"),
    case("connect", "m:x", "other", id="connect-epoch-not-a-number"),
    case("connect", "m", "other", "--bends", "0", id="connect-bends-zero"),
    case("connect", "m", "other", "--bends", "17", id="connect-bends-huge"),
    case("connect", "m", "other", "--shape", "spline", id="connect-shape-unknown"),
    case("connect", "m", "other", "--lr", "0", id="connect-lr-zero"),
    case("connect", "m", "other", "--optimizer", "sgd", "--momentum", "1", id="connect-momentum-one"),
    case("connect", "m", "other", "--epochs", "-1", id="connect-epochs-negative"),
    case("connect", "m", "other", "--batch-size", "0", id="connect-batch-size-zero"),
    case("connect", "m", "other", "--weight-decay", "-1", id="connect-weight-decay-negative"),
    case("connect", "m", "m", id="connect-same-checkpoint"),
    case("connect", "m", "other", "--epochs", "1", "-q", code=1, setup=_set(_curve_json, "epochs", value="x"),
         needle="curve.json", id="connect-curve-json-damaged"),
    case("connect", "m", "other", "--epochs", "1", "--seed", "3", "-q", code=1, setup=_replace(_checkpoint, "zero"),
         id="connect-checkpoint-device"),
    # --- plot ---
    case("plot", "m", "--out", "{beside}", id="plot-out-directory"),
    case("plot", "m", "--out", "/dev/null", id="plot-out-dev-null"),
    case("plot", "m", "--out", "/dev/full", id="plot-out-dev-full"),
    case("plot", "m", "--out", "{beside}/missing/x.png", id="plot-out-missing-directory"),
    case("plot", "m", "--out", "/proc/x.png", code=1, setup=_listed_once(lambda *_: None), id="plot-out-unwritable"),
    case("export", "m", "--format", "npz", "--out", "/proc/x.npz", code=1, id="export-out-unwritable"),
    case("train", "mlp", "digits", "--store", "/proc/landscape-store", code=1, id="train-store-unwritable"),
    case("plot", "m", "--out", "{beside}/a.txt", id="plot-out-suffix"),
    case("plot", "m", "--out", "{beside}/f.png/x.png", setup=_file("f.png", b"x"), id="plot-out-under-a-file"),
    case("plot", "m", "--epochs", "9", id="plot-epoch-missing"),
    case("plot", "m", "--pair", "5", id="plot-pair-missing"),
    case("plot", "m", "--batch", "-1", id="plot-batch-negative"),
    case("plot", "m", "--clip", "inf", id="plot-clip-inf"),
    case("plot", "m", "--clip", "0", id="plot-clip-zero"),
    case("plot", "m", "--metric", "f1", id="plot-metric-unknown"),
    case("plot", "m", "--epoch", "-1", id="plot-epoch-negative"),
    case("plot", "m", "--epoch", "99999999999999999999", id="plot-epoch-huge"),
    case("plot", "m", "--scale", "log", id="plot-scale-unknown"),
    case("plot", "m", "--reduce", "max", id="plot-reduce-unknown"),
    case("plot", "m", "--html", "--out", "{beside}/x.png", id="plot-html-png"),
    case("plot", "m", "--tensorboard", "{beside}/f", setup=_file("f", b"x"), id="plot-tensorboard-a-file"),
    case("plot", "m", "--contour", "--surface", id="plot-contour-and-surface"),
    case("plot", "m", "--animate", "--out", "{beside}/x.png", id="plot-animate-png"),
    case("plot", "m", "other", id="plot-run-without-grid", code=1),
    case("plot", "m", "--grid", "nope", id="plot-grid-unknown"),
    case("plot", "m", "--grid", "g", "--grid", "h", id="plot-more-grids-than-runs"),
    case("plot", "m", "other", "--grid", "g", id="plot-grid-of-one-run-only"),
    case("plot", "m", "--lambda-max", code=1, id="plot-lambda-max-untracked"),
    case("plot", "m", "--grid", "h", code=1, setup=_set(_grid_json, "ranges", value="abc"), needle="ranges",
         id="plot-grid-json-ranges"),
    case("plot", "m", "--grid", "h", code=1, setup=_set(_grid_json, "epochs", value=[10**30, 1]),
         id="plot-grid-json-epoch-huge"),
    case("plot", "m", "--grid", "h", code=1, setup=_set(_grid_json, "epochs", value=[]), id="plot-grid-no-epochs"),
    case("plot", "m", "--grid", "{h}", code=1, setup=_replace(_grid_json, "fifo"), id="plot-grid-json-fifo"),
    case("plot", "m", "--grid", "{h}", code=1, setup=_replace(_grid_json, "binary"), id="plot-grid-json-binary"),
    case("plot", "m", "--grid", "{h}", code=1, setup=_replace(_grid_json, "dangling"), id="plot-grid-json-dangling"),
    case("plot", "m", "--grid", "{h}", code=1, setup=_replace(_grid_json, "zero"), id="plot-grid-json-device"),
    case("plot", "m", "--grid", "h", code=1, setup=_chunks("loss"), needle="damaged chunk", id="plot-chunk-damaged"),
    case("plot", "m", "--grid", "h", code=1,
         setup=lambda store, beside, ids: _zarr_json("")(store, ids).unlink(), id="plot-zarr-json-missing"),
    case("plot", "m", "--hessian", code=1, setup=_hessian_done_missing, id="plot-hessian-damaged"),
    case("plot", "m", "--grid", "h", "--epochs", "0", code=1, setup=_chunk_fifo("loss"), needle="not a file",
         id="plot-chunk-fifo"),
    case("grid", "m", "--grid", "h", "--resume", "-q", code=1, setup=_chunk_fifo("done"), id="grid-resume-chunk-fifo"),
    case("grid", "m", "--width", "3", "--span", "0.5", *SMALL, code=1, setup=_chunk_fifo("epoch"),
         id="grid-again-chunk-fifo"),
    case("stats", "m", "--grid", "h", code=1, setup=_chunk_fifo("center_loss"), id="stats-chunk-fifo"),
    case("export", "m", "--grid", "h", "--format", "npz", code=1, setup=_chunk_fifo("x"), id="export-chunk-fifo"),
    case("verify", "m", code=1, setup=_chunk_fifo("accuracy"), id="verify-chunk-fifo"),
    case("ls", code=0, setup=_listed_once(_chunk_fifo("done")), id="ls-chunk-fifo"),
    case("plot", "m", "--hessian", code=1, setup=_chunk_fifo("eigenvalues", hessian=True), id="plot-hessian-chunk-fifo"),
    case("hessian", "m", "--top", "1", "--batches", "1", "--probes", "2", "-q", code=1,
         setup=_chunk_fifo("trace", hessian=True), id="hessian-chunk-fifo"),
    # --- stats ---
    case("stats", "m", "--radius", "0", id="stats-radius-zero"),
    case("stats", "m", "--radius", "nan", id="stats-radius-nan"),
    case("stats", "m", "--radius", "1e400", id="stats-radius-overflow"),
    case("stats", "m", "--radius", "100", id="stats-radius-outside"),
    case("stats", "m", "--delta", "-1", id="stats-delta-negative"),
    case("stats", "m", "--epochs", "5", id="stats-epoch-missing"),
    case("stats", "m", "--at-steps", "1", id="stats-steps-without-steps"),
    case("stats", "m", "--epochs", "", id="stats-epochs-empty"),
    case("stats", "m", "--grid", "h", code=1, setup=_set(_grid_json, "kind", value=[1]), id="stats-grid-json-kind"),
    case("stats", "m", "--grid", "h", code=1, setup=_chunks("x"), id="stats-coordinates-damaged"),
    # --- export ---
    case("export", "m", "--format", "xlsx", id="export-format-unknown"),
    case("export", "m", "--format", "csv", "--out", "/dev/full", id="export-out-dev-full"),
    case("export", "m", "--format", "npz", "--out", "/dev/null", id="export-out-dev-null"),
    case("export", "m", "--format", "npz", "--out", "{beside}/f/x.npz", setup=_file("f", b"x"),
         id="export-out-under-a-file"),
    case("export", "m", "--format", "vtk", "--zmax", "nan", id="export-zmax-nan"),
    case("export", "m", "--format", "vtk", "--height-scale", "0", id="export-height-scale-zero"),
    case("export", "m", "--format", "vtk", "--height-scale", "-inf", id="export-height-scale-inf"),
    case("export", "m", "--hessian", "--format", "vtk", id="export-hessian-vtk"),
    case("export", "m", "--hessian", "--format", "npz", "--grid", "nope", id="export-hessian-unknown"),
    case("export", "m", "--hessian", "--format", "npz", code=1, setup=_hessian_done_missing,
         id="export-hessian-damaged"),
    case("export", "m", "--format", "npz", "--grid", "h", code=1, setup=_set(_grid_json, "evaluator", value=5),
         id="export-grid-json-evaluator"),
    case("export", "m", "--format", "npz", "--grid", "h", code=1, setup=_chunks("done"), id="export-done-damaged"),
    # --- ls, verify, layers, models, datasets ---
    case("ls", "--store", "/dev/null", code=1, id="ls-store-device"),
    case("ls", "--store", "{beside}/no-store", code=0, id="ls-store-missing-is-not-made"),
    case("plot", "m", "--store", "{beside}/no-store", id="plot-store-missing-is-not-made"),
    case("ls", code=0, setup=_empty_store, id="ls-empty-store"),
    case("stats", "m", setup=_empty_store, id="stats-empty-store"),
    case("export", "m", "--format", "csv", setup=_empty_store, id="export-empty-store"),
    case("ls", "--store", "{beside}/f", setup=_file("f", b"x"), code=1, id="ls-store-file"),
    case("verify", "nope", id="verify-run-unknown"),
    case("verify", "", id="verify-run-empty"),
    case("verify", "{m}", code=1, setup=_write(_run_json, "{"), id="verify-run-json-truncated"),
    case("verify", "m", code=1, setup=_replace(_checkpoint, "fifo"), id="verify-checkpoint-fifo"),
    case("layers", "nope", id="layers-unknown"),
    case("layers", "m", "--layer", "nope.*", id="layers-pattern-matches-nothing"),
    case("layers", "m", "--layer", "", id="layers-pattern-empty"),
    case("layers", "mlp", "--dataset", "nope", id="layers-model-dataset-unknown"),
    case("hessian", "m", "--layer", "", id="hessian-layer-empty"),
    case("models", "--bogus", id="models-unknown-option"),
    case("datasets", "extra", id="datasets-extra-argument"),
]


def _snapshot(path: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Every file under `path`: conftest's (size, mtime) and its bytes' sha256 (pipes and devices left out)."""
    files = tree(path)
    return files, {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in files}


def _devices_intact() -> None:
    for device in ("/dev/null", "/dev/full"):
        assert stat.S_ISCHR(os.stat(device).st_mode), f"{device} is no longer a device"


@pytest.mark.parametrize("c", CASES)
def test_adversarial_input_is_one_line_and_changes_nothing(copy_store: Callable[..., Path], tmp_path: Path,
                                                            c: Case) -> None:
    store = copy_store(*STORE)
    beside = tmp_path / "beside"
    beside.mkdir()
    ids = Ids.of(store)
    if c.setup is not None:
        c.setup(store, beside, ids)
    values = {"beside": str(beside), "m": ids.m, "m4": ids.m[:4], "h": ids.h, "g": ids.g,
              "ckpt": str(_checkpoint(store, ids))}
    args = [a.format(**values) if "{" in a else a for a in c.args]
    if args[0] not in NO_STORE_OPTION and "--store" not in args:
        args += ["--store", str(store)]
    before = _snapshot(tmp_path)
    listing = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name != ".lock")
    with one_thread():
        result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if c.code == 0:  # a case that must succeed (and, as every case, change nothing)
        assert result.exit_code == 0 and not lines, result.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert result.exit_code == c.code, (result.exit_code, lines[0])
        assert c.needle in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "the command changed files"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name != ".lock") == listing, \
        "the command made or removed a file or directory"
    _devices_intact()
