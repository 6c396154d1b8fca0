"""Damaged metadata of one grid, Hessian result, curve or run never breaks its siblings.

The damaged one is reported in one line naming its file and the field (`ls` marks it, a command on it says
what is damaged and what to do); `ls` lists everything else, commands on its siblings give the numbers they
gave before, and the Python API raises the tool's own errors (IntegrityError...), never zarr's, json's, a
KeyError or a TypeError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import run_in_process, set_field
from test_adversarial import STORE

import landscape_cli
from landscape_cli.curvature.stats import stats as grid_stats
from landscape_cli.errors import IntegrityError
from landscape_cli.store import Store
from landscape_cli.store.meta import CurveMeta, GridMeta, HessianMeta, RunMeta


@pytest.fixture
def store(copy_store: Callable[..., Path]) -> Path:
    return copy_store(*STORE)


def _ids(store: Path) -> dict[str, str]:
    st = Store(store)
    m = st.resolve("m")
    return {"m": m, "other": st.resolve("other"), "g": st.find_grid("g", m)[1], "h": st.find_grid("h", m)[1],
            "hs": st.hessian_ids(m)[0], "c": st.find_curve("c", m)[1]}


def _edit(path: Path, keys: tuple[str | int, ...], value: Any) -> None:
    path.write_text(json.dumps(set_field(json.loads(path.read_text()), keys, value)))


def _one_error_line(result: Any) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def _ls(store: Path) -> dict[str, Any]:
    done = run_in_process("ls", "--json", "--store", str(store))
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    return {r["id"]: r for r in json.loads(done.stdout)["runs"]}


# --- what each metadata file's reader refuses: one IntegrityError naming the file and the field ---------------

GRID_DAMAGE = [  # (keys in grid.json, the value, the field the message names)
    (("ranges",), "abc", "ranges"),
    (("ranges",), [[-0.5, "x"], [-0.5, 0.5]], "ranges"),
    (("ranges",), [[-0.5, 1e400], [-0.5, 0.5]], "ranges"),
    (("epochs",), [1e400], "epochs"),
    (("epochs",), None, "epochs"),
    (("epochs",), [0, 0], "epochs"),
    (("directions",), KeyError, "directions"),
    (("directions", 0, "pair"), -1, "pair"),
    (("directions", 0, "file"), "../../../../etc/passwd", "file"),
    (("evaluator",), {"threads": 5}, "evaluator.threads"),
    (("evaluator", "points_per_pass"), 0, "evaluator.points_per_pass"),
    (("name",), ["h"], "name"),
    (("kind",), {"target": "x"}, "kind.target"),
    (("kind",), {"epochs": {"1": {"eigenvalues": ["big"]}}}, "kind.epochs.eigenvalues"),
    (("versions",), "x", "versions"),
    (("updated",), 12, "updated"),
    (("run",), "someone-else", "run"),
    (("batchnorm",), "yes", "batchnorm"),
]


@pytest.mark.parametrize(("keys", "value", "field"), GRID_DAMAGE, ids=[f"{'.'.join(map(str, k))}={v!r}"[:40]
                                                                         for k, v, _ in GRID_DAMAGE])
def test_grid_json_of_the_wrong_type_is_one_integrity_error(trained_store: Any, keys: tuple[str | int, ...],
                                                             value: Any, field: str) -> None:
    master = trained_store.build(*STORE)
    ids = _ids(master)
    path = Store(master).grid_file(ids["m"], ids["h"])
    raw = json.loads(path.read_text())
    assert GridMeta.from_json(raw, path).id == ids["h"]  # intact, it reads
    set_field(raw, keys, value)
    with pytest.raises(IntegrityError) as e:
        GridMeta.from_json(json.loads(json.dumps(raw)), path)  # as json reads it back (1e400: inf)
    assert str(path) in str(e.value) and repr(field) in str(e.value) and "\n" not in str(e.value)


OTHER_DAMAGE = [  # (file, keys, value, the field named)
    ("run", ("config", "lr"), "fast", "config.lr"),
    ("run", ("config", "seed"), [1], "config.seed"),
    ("run", ("config", "imported"), [1, 2], "config.imported"),
    ("run", ("name",), 5, "name"),
    ("run", ("epochs_requested",), -3, "epochs_requested"),
    ("run", ("epochs", 1, "checkpoint"), "/etc/passwd", "checkpoint"),
    ("run", ("epochs", 1, "epoch"), 0, "epochs"),
    ("run", ("resume", "epoch"), "one", "epoch"),
    ("run", ("retention",), "all", "retention"),
    ("run", ("dataset", "val_size"), -1, "dataset.val_size"),
    ("hessian", ("epochs",), ["x"], "epochs"),
    ("hessian", ("eigenvectors",), {"zero": {}}, "eigenvectors"),
    ("hessian", ("versions",), [1], "versions"),
    ("curve", ("config", "run_b"), 5, "config.run_b"),
    ("curve", ("config", "epoch_a"), "1", "config.epoch_a"),
    ("curve", ("epochs_requested",), -1, "epochs_requested"),
    ("curve", ("epochs", 0, "file"), "../x.pt", "file"),
]


@pytest.mark.parametrize(("which", "keys", "value", "field"), OTHER_DAMAGE,
                         ids=[f"{w}:{'.'.join(map(str, k))}" for w, k, _, _ in OTHER_DAMAGE])
def test_run_hessian_and_curve_json_of_the_wrong_type(trained_store: Any, which: str, keys: tuple[str | int, ...],
                                                      value: Any, field: str) -> None:
    master = trained_store.build(*STORE)
    ids, st = _ids(master), Store(master)
    cls, path = {"run": (RunMeta, st.run_file(ids["m"])),
                 "hessian": (HessianMeta, st.hessian_file(ids["m"], ids["hs"])),
                 "curve": (CurveMeta, st.curve_file(ids["m"], ids["c"]))}[which]
    raw = json.loads(path.read_text())
    cls.from_json(raw, path)  # type: ignore[attr-defined]  # intact, it reads
    node = raw
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    with pytest.raises(IntegrityError) as e:
        cls.from_json(raw, path)  # type: ignore[attr-defined]
    assert str(path) in str(e.value) and repr(field) in str(e.value) and "\n" not in str(e.value)


# --- one damaged grid, its sibling untouched ------------------------------------------------------------------

SIBLING_DAMAGE = [  # what is done to grid h's grid.json (its sibling g is left alone)
    pytest.param(("ranges",), "abc", "ranges", id="ranges-a-string"),
    pytest.param(("ranges",), [[-0.5, [1]], [-0.5, 0.5]], "ranges", id="a-list-where-a-number-belongs"),
    pytest.param(("epochs",), KeyError, "epochs", id="a-missing-key"),
    pytest.param(("directions",), None, "directions", id="null"),
    pytest.param(("epochs",), [10**30], "epochs", id="a-huge-number"),
]


@pytest.mark.parametrize(("keys", "value", "field"), SIBLING_DAMAGE)
def test_one_damaged_grid_json_leaves_its_siblings_usable(store: Path, tmp_path: Path, keys: tuple[str, ...],
                                                           value: Any, field: str) -> None:
    ids, st = _ids(store), Store(store)
    g_zarr = st.zarr_path(ids["m"], ids["g"])
    _edit(st.grid_file(ids["m"], ids["h"]), keys, value)

    runs = _ls(store)  # ls: everything listed; h marked damaged, with its file and field
    grids = {g["id"]: g for g in runs[ids["m"]]["grids"]}
    assert grids[ids["g"]]["status"] == "complete" and grids[ids["g"]]["rows_done"] == grids[ids["g"]]["rows_total"]
    assert grids[ids["h"]]["status"] == "damaged"
    assert "grid.json" in grids[ids["h"]]["error"] and field in grids[ids["h"]]["error"]
    assert [h["status"] for h in runs[ids["m"]]["hessians"]] == ["complete"]
    assert [c["status"] for c in runs[ids["m"]]["curves"]] == ["complete"]
    assert runs[ids["other"]]["status"] == "complete"

    # the sibling: stats and export give what its arrays hold (read here with zarr itself)
    loss = np.asarray(zarr.open_array(g_zarr / "loss", mode="r")[...], np.float64)
    center = np.asarray(zarr.open_array(g_zarr / "center_loss", mode="r")[...], np.float64)
    done = run_in_process("stats", "m", "--grid", "g", "--json", "--store", str(store))
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert [e["mean"]["center_loss"] for e in stats["epochs"]] == pytest.approx(center.mean(axis=1).tolist(), rel=1e-6)
    out = tmp_path / "g.npz"
    done = run_in_process("export", "m", "--grid", "g", "--format", "npz", "--out", str(out), "--store", str(store))
    assert done.returncode == 0, done.stderr
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["loss"], loss.astype(np.float32))
    assert landscape_cli.open("m", grid="g", store=store)["loss"].values.tolist() == loss.astype(np.float32).tolist()

    # the damaged grid itself: one line (CLI), the tool's own error (API)
    before = _files(store)
    for args in (["plot", "m", "--grid", ids["h"]], ["stats", "m", "--grid", ids["h"]],
                 ["export", "m", "--grid", ids["h"], "--format", "csv"]):
        line = _one_error_line(run_in_process(*args, "--store", str(store)))
        assert ids["h"] in line and ("landscape verify" in line or "delete" in line), line
    with pytest.raises(IntegrityError):
        landscape_cli.open("m", grid=ids["h"], store=store)
    with pytest.raises(IntegrityError):
        grid_stats("m", grid=ids["h"], store=store)
    with pytest.raises(IntegrityError):
        landscape_cli.export("m", grid=ids["h"], format="npz", out=tmp_path / "h.npz", store=store)
    assert _files(store) == before


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_a_pipe_where_grid_json_belongs_is_listed_as_damaged_and_never_opened(store: Path) -> None:
    ids, st = _ids(store), Store(store)
    path = st.grid_file(ids["m"], ids["h"])
    path.unlink()
    os.mkfifo(path)  # opening it to read would block forever
    grids = {g["id"]: g for g in _ls(store)[ids["m"]]["grids"]}
    assert grids[ids["h"]]["status"] == "damaged" and "not a file" in grids[ids["h"]]["error"]
    assert grids[ids["g"]]["status"] == "complete"
    line = _one_error_line(run_in_process("plot", "m", "--grid", ids["h"], "--store", str(store)))
    assert "grid.json" in line


def test_a_pipe_where_a_chunk_belongs_is_reported_and_never_opened(store: Path) -> None:
    """Zarr would open it to read the chunk and wait forever for a writer: `ls`, the API and the sibling go on."""
    ids, st = _ids(store), Store(store)
    chunk = next(p for p in sorted((st.zarr_path(ids["m"], ids["h"]) / "done" / "c").rglob("*")) if p.is_file())
    chunk.unlink()
    os.mkfifo(chunk)
    grids = {g["id"]: g for g in _ls(store)[ids["m"]]["grids"]}
    assert grids[ids["h"]]["status"] == "damaged" and str(chunk) in grids[ids["h"]]["error"]
    assert grids[ids["g"]]["status"] == "complete"
    with pytest.raises(IntegrityError, match="not a file"):
        landscape_cli.open("m", grid="h", store=store)
    with pytest.raises(IntegrityError, match="not a file"):
        grid_stats("m", grid="h", store=store)
    assert grid_stats("m", grid="g", store=store).epochs


def test_damaged_arrays_of_one_grid_are_the_tools_own_error(store: Path) -> None:
    """A missing zarr.json and a chunk whose checksum fails: IntegrityError from the API, `ls` marks the grid."""
    ids, st = _ids(store), Store(store)
    (st.zarr_path(ids["m"], ids["h"]) / "zarr.json").unlink()
    for p in (st.zarr_path(ids["m"], ids["g"]) / "loss" / "c").rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[:-1] + b"!")  # its CRC32C no longer matches
            break
    with pytest.raises(IntegrityError, match="Zarr metadata"):
        landscape_cli.open("m", grid="h", store=store)
    with pytest.raises(IntegrityError, match=r"damaged chunk \(loss"):
        landscape_cli.open("m", grid="g", store=store)
    grids = {g["id"]: g for g in _ls(store)[ids["m"]]["grids"]}
    assert grids[ids["h"]]["status"] == "damaged" and "landscape.zarr" in grids[ids["h"]]["error"]


def test_damaged_curvature_results_and_curve_leave_the_grids_usable(store: Path) -> None:
    ids, st = _ids(store), Store(store)
    _edit(st.hessian_file(ids["m"], ids["hs"]), ("epochs",), {"0": 1})
    _edit(st.curve_file(ids["m"], ids["c"]), ("config", "run_b"), None)
    run = _ls(store)[ids["m"]]
    assert [(h["id"], h["status"]) for h in run["hessians"]] == [(ids["hs"], "damaged")]
    assert "hessian.json" in run["hessians"][0]["error"] and "'epochs'" in run["hessians"][0]["error"]
    assert [(c["id"], c["status"]) for c in run["curves"]] == [(ids["c"], "damaged")]
    assert {g["status"] for g in run["grids"]} == {"complete"}
    line = _one_error_line(run_in_process("plot", "m", "--hessian", "--store", str(store)))
    assert ids["hs"] in line and "hessian.json" in line
    line = _one_error_line(run_in_process("grid", "m", "--directions", "curve", "--along", "c", "--width", "3",
                                          "--batches", "1", "-q", "--store", str(store)))
    assert ids["c"] in line and "curve.json" in line  # its name cannot be read: the damaged curve is named
    assert run_in_process("stats", "m", "--grid", "g", "--store", str(store)).returncode == 0


def test_damaged_run_json_of_one_run_leaves_the_others_usable(store: Path) -> None:
    ids, st = _ids(store), Store(store)
    _edit(st.run_file(ids["other"]), ("config", "model"), 5)
    runs = _ls(store)
    assert runs[ids["other"]]["status"] == "damaged" and "'config.model'" in runs[ids["other"]]["error"]
    assert runs[ids["m"]]["status"] == "complete" and len(runs[ids["m"]]["grids"]) == 2
    line = _one_error_line(run_in_process("layers", ids["other"][:6], "--store", str(store)))
    assert "run.json" in line and "landscape verify" in line
    line = _one_error_line(run_in_process("grid", "other", "--width", "3", "--store", str(store)))
    assert f"{ids['other']} (damaged" in line  # its name cannot be read: the damaged run is named among the runs
    assert run_in_process("layers", "m", "--store", str(store)).returncode == 0
    with pytest.raises(IntegrityError):
        Store(store).read_run(ids["other"])
    assert isinstance(Store(store).read_run(ids["m"]), RunMeta)
