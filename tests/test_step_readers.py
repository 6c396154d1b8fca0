"""Every reader, view and export of a run with step checkpoints (`train --checkpoint-every`): grids, Hessian
results and stats selected with --at-steps, the `checkpoint` dimension with its `step` and `epoch`
coordinates kept by every export format, and figures labelled by step.

One small step run (cnn on digits, 2 epochs of 23 steps, a checkpoint every 10 steps: steps 0, 10, 20, 23,
30, 40, 46; λmax tracked) and one epoch-only run trained identically (1 epoch) are trained once per module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_thread, run_in_process

TRAIN: dict[str, Any] = {"batch_size": 64, "optimizer": "sgd", "lr": 0.05, "track_lambda_max": 10,
                         "track_batch_size": 64, "progress": False}
GRID = ("--width", "5", "--pairs", "1", "--batches", "1", "--quiet")
STEPS, EPOCHS = [10, 20, 23], [0, 0, 1]  # the step grid's checkpoints, and the epochs completed at each


@dataclass
class Runs:
    store: Path
    stepped: str  # the run with step checkpoints
    plain: str  # the same training, one checkpoint per epoch
    grid: dict[str, Any]  # `grid STEPPED --at-steps 10,20,23 --json`
    plain_grid: str

    def cli(self, *args: str) -> Any:
        """`landscape ARGS --store STORE` in-process; it must succeed."""
        result = run_in_process(*args, "--store", str(self.store))
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def error(self, *args: str) -> str:
        """The one error line of a command that must fail."""
        result = run_in_process(*args, "--store", str(self.store))
        assert result.returncode != 0, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        return lines[0]

    @property
    def zarr(self) -> Path:
        return self.store / self.stepped / "grids" / self.grid["id"] / "landscape.zarr"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from landscape_cli import train

    store = tmp_path_factory.mktemp("steps") / "store"
    with one_thread():
        stepped = train("cnn", "digits", epochs=2, checkpoint_every=10, store=store, **TRAIN).run_id
        plain = train("cnn", "digits", epochs=1, store=store, **TRAIN).run_id
    r = Runs(store, stepped, plain, {}, "")
    r.grid = r.json("grid", stepped, "--at-steps", "10,20,23", *GRID)
    r.plain_grid = r.json("grid", plain, "--epochs", "1", *GRID)["id"]
    return r


def test_grid_at_steps_names_its_checkpoints_by_step(runs: Runs) -> None:
    """`grid --at-steps 10,20,23`: named by step in its JSON and text (with the epochs completed at each; --epochs 1
    is step 23, the end of epoch 1); a step the run has no checkpoint at, or --at-steps on an epoch-only run, is
    one error line."""
    g = runs.grid
    assert (g["steps"], g["epochs"]) == (STEPS, EPOCHS)
    assert g["rows_done"] == g["rows_total"] == 3 * 5
    text = runs.cli("grid", runs.stepped, "--grid", g["id"]).stdout
    assert "steps 10,20,23" in text and "complete" in text
    again = runs.json("grid", runs.stepped, "--epochs", "1", *GRID)  # the same grid: nothing to compute
    assert again["id"] == g["id"] and again["rows_computed"] == 0
    assert "no checkpoint at step 5" in runs.error("grid", runs.stepped, "--at-steps", "5", *GRID)
    assert "--at-steps" in runs.error("grid", runs.plain, "--at-steps", "10", *GRID)
    assert "bad --at-steps" in runs.error("grid", runs.stepped, "--at-steps", "ten", *GRID)


def test_xarray_reads_the_checkpoint_dimension_with_step_and_epoch(runs: Runs) -> None:
    """xarray (`open_zarr`, and the notebook's `landscape_cli.open`) reads the grid as [checkpoint, pair, batch, y,
    x] with the `step` and `epoch` coordinates along `checkpoint`; `ls --json` says so."""
    import xarray as xr

    import landscape_cli

    for ds in (xr.open_zarr(runs.zarr), landscape_cli.open(runs.stepped, store=runs.store)):
        assert ds["loss"].dims == ("checkpoint", "pair", "batch", "y", "x")
        assert {"step", "epoch"} <= set(ds.coords)
        assert ds["step"].values.tolist() == STEPS and ds["epoch"].values.tolist() == EPOCHS
        assert ds["loss"].sel(checkpoint=ds["step"] == 20).shape == (1, 1, 1, 5, 5)
    [run] = [r for r in runs.json("ls")["runs"] if r["id"] == runs.stepped]
    [grid] = run["grids"]
    assert grid["steps"] is True and grid["dimensions"][0] == "checkpoint" and grid["epochs"] == STEPS


def test_the_epoch_end_checkpoint_has_the_epoch_only_runs_grid_bit_for_bit(runs: Runs) -> None:
    """Checkpointing every 10 steps changes no weight: step 23 (the end of epoch 1) is the epoch-only run's epoch
    1, and the same grid there holds bitwise the same values."""
    import xarray as xr

    from landscape_cli.store import Store

    st = Store(runs.store)
    stepped, plain = st.read_run(runs.stepped), st.read_run(runs.plain)
    assert stepped.select([1]) == [23]
    assert stepped.record(23).weights_sha256 == plain.record(1).weights_sha256  # type: ignore[union-attr]
    a = xr.open_zarr(runs.zarr)
    b = xr.open_zarr(runs.store / runs.plain / "grids" / runs.plain_grid / "landscape.zarr")
    assert b["loss"].dims[0] == "epoch" and "step" not in b  # an epoch-only run's grid as it always was
    for name in ("loss", "accuracy", "center_loss", "grad_a", "grad_b"):
        mine = a[name].values[STEPS.index(23)]
        theirs = b[name].sel(epoch=1).values
        assert mine.tobytes() == theirs.tobytes(), name
    assert a["loss"].values[0].tobytes() != a["loss"].values[2].tobytes()  # steps 10 and 23 differ


def test_every_export_format_keeps_step_and_epoch(runs: Runs, tmp_path: Path) -> None:
    """NetCDF (netCDF4 and xarray), CSV (pandas), npz and VTK (vtk's readers) of the step grid carry each
    checkpoint's step and epoch beside the values as stored."""
    import netCDF4
    import pandas as pd
    import xarray as xr

    from landscape_cli.exchange.export import FORMATS, NPZ_ATTRS, open_netcdf

    stored = xr.open_zarr(runs.zarr)
    loss = stored["loss"].values
    outputs = {}
    for fmt in FORMATS:
        out = tmp_path / {"netcdf": "grid.nc", "csv": "grid.csv", "npz": "grid.npz", "vtk": "vtk"}[fmt]
        result = runs.json("export", runs.stepped, "--format", fmt, "--out", str(out))
        assert (result["steps"], result["epochs"]) == (STEPS, EPOCHS), fmt
        outputs[fmt] = out

    with netCDF4.Dataset(outputs["netcdf"]) as nc:
        assert nc.variables["step"][:].tolist() == STEPS and nc.variables["epoch"][:].tolist() == EPOCHS
        assert nc.variables["step"].dimensions == ("checkpoint",)
        assert nc.variables["loss"].dimensions == ("checkpoint", "pair", "batch", "y", "x")
        assert set(nc.variables["loss"].coordinates.split()) == {"step", "epoch"}
        assert np.ma.getdata(nc.variables["loss"][:]).tobytes() == loss.tobytes()
    ds = open_netcdf(outputs["netcdf"])
    assert ds["step"].values.tolist() == STEPS and ds["epoch"].dims == ("checkpoint",)
    assert "step" in ds["loss"].coords

    table = pd.read_csv(outputs["csv"])
    assert list(table.columns[:6]) == ["run", "grid", "epoch", "step", "pair", "batch"]
    pairs = table[["epoch", "step"]].drop_duplicates().values.tolist()
    assert pairs == [[e, s] for e, s in zip(EPOCHS, STEPS, strict=True)]
    at20 = table[table.step == 20].sort_values(["y", "x"])["loss"].to_numpy(np.float32)
    assert at20.tobytes() == loss[1, 0, 0].ravel().tobytes()

    with np.load(outputs["npz"]) as npz:
        assert npz["step"].tolist() == STEPS and npz["epoch"].tolist() == EPOCHS
        meta = json.loads(str(npz[NPZ_ATTRS]))
        assert meta["arrays"]["step"]["dims"] == ["checkpoint"] and meta["arrays"]["loss"]["dims"][0] == "checkpoint"

    vtk_dir = outputs["vtk"]
    means = sorted(p.name for p in vtk_dir.glob("*_mean.vts"))
    assert means == [f"step-{s:09d}_mean.vts" for s in STEPS]
    assert (vtk_dir / "steps_mean.pvd").read_text().count('timestep="') == 3
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLStructuredGridReader

    reader = vtkXMLStructuredGridReader()
    reader.SetFileName(str(vtk_dir / "step-000000020_pair-0_batch-0.vts"))
    reader.Update()
    fields = reader.GetOutput().GetFieldData()
    assert vtk_to_numpy(fields.GetArray("step")).tolist() == [20]
    assert vtk_to_numpy(fields.GetArray("epoch")).tolist() == [0]
    assert vtk_to_numpy(fields.GetArray("TimeValue")).tolist() == [20.0]
    manifest = json.loads((vtk_dir / "landscape-export.json").read_text())
    assert (manifest["steps"], manifest["epochs"]) == (STEPS, EPOCHS)


def test_plot_at_steps_titles_and_orders_panels_by_step(runs: Runs, tmp_path: Path) -> None:
    """`plot --at-steps 20,10`: panels titled "step 10", "step 20" in step order, their JSON with step and
    epoch; --epochs 1 draws step 23; the interactive page's slider says step."""
    from landscape_cli.views.figures import plot

    out = tmp_path / "steps.png"
    shown = runs.json("plot", runs.stepped, "--at-steps", "20,10", "--out", str(out))
    assert out.is_file() and shown["path"] == str(out)
    assert [p["title"].split(" · ")[0] for p in shown["panels"]] == ["step 10", "step 20"]
    assert [(p["step"], p["epoch"]) for p in shown["panels"]] == [(10, 0), (20, 0)]
    result = plot([runs.stepped], at_steps=[20, 10], store=runs.store, save=False)
    assert [ax.get_title().split(" · ")[0] for ax in result.panel_axes] == ["step 10", "step 20"]
    assert "steps 10,20" in result.figure.get_suptitle()
    end = plot([runs.stepped], epochs=[1], store=runs.store, save=False)
    assert [p.epoch for p in end.panels] == [23]
    assert "step 23 (end of epoch 1)" in end.figure.get_suptitle() and "val loss" in end.figure.get_suptitle()
    within = plot([runs.stepped], at_steps=[10], store=runs.store, save=False).figure.get_suptitle()
    assert "step 10 (in epoch 1)" in within and "running mean over epoch 1 so far" in within
    assert "is not in grid" in runs.error("plot", runs.stepped, "--at-steps", "30")
    page = runs.json("plot", runs.stepped, "--html", "--out", str(tmp_path / "page.html"))
    assert (page["steps"], page["epochs"]) == (STEPS, EPOCHS)
    html = Path(page["path"]).read_text()
    assert '"unit":"step"' in html and "end of epoch 1" in html and "function unit(s)" in html


def test_hessian_at_steps_is_named_by_step_in_results_figure_and_exports(runs: Runs, tmp_path: Path) -> None:
    """`hessian --at-steps 10`: its JSON rows, `plot --hessian` (x axis "step") and every export name the
    checkpoint by step, with its epoch."""
    import xarray as xr

    from landscape_cli.views.hessian_figure import plot_hessian

    result = runs.json("hessian", runs.stepped, "--at-steps", "10", "--top", "1", "--batches", "1", "--probes", "2",
                       "--quiet")
    [row] = result["epochs"]
    assert (row["step"], row["epoch"]) == (10, 0) and len(row["eigenvalues"]) == 1
    table = runs.cli("hessian", runs.stepped, "--at-steps", "10", "--top", "1", "--batches", "1", "--probes", "2",
                     "--quiet")
    assert "already hold steps 10" in table.stderr and "┃ step ┃" in table.stdout
    drawn = runs.json("plot", runs.stepped, "--hessian", "--out", str(tmp_path / "h.png"))
    assert (drawn["steps"], drawn["epochs"]) == ([10], [0])
    figure = plot_hessian(runs.stepped, out=tmp_path / "h2.png", store=runs.store)
    assert [ax.get_xlabel() for ax in figure.figure.axes[:2]] == ["step", "step"]
    csv = tmp_path / "h.csv"
    runs.cli("export", runs.stepped, "--hessian", "--format", "csv", "--out", str(csv))
    header, first = csv.read_text().splitlines()[:2]
    assert header.startswith("epoch,step,k,") and first.startswith("0,10,0,")
    nc = tmp_path / "h.nc"
    exported = runs.json("export", runs.stepped, "--hessian", "--format", "netcdf", "--out", str(nc))
    assert (exported["steps"], exported["epochs"]) == ([10], [0])
    ds = xr.load_dataset(nc, engine="h5netcdf")
    assert ds["eigenvalues"].dims == ("checkpoint", "k") and ds["step"].values.tolist() == [10]
    runs.cli("export", runs.stepped, "--hessian", "--format", "npz", "--out", str(tmp_path / "h.npz"))
    with np.load(tmp_path / "h.npz") as npz:
        assert npz["step"].tolist() == [10] and npz["epoch"].tolist() == [0]


def test_stats_at_steps(runs: Runs) -> None:
    """`stats --at-steps`: its JSON names each checkpoint by step with its epoch, its table by step; --epochs 1 is
    step 23; TensorBoard logs the stats at the step."""
    from landscape_cli.views.figures import plot
    from landscape_cli.views.tensorboard import log_plot

    out = runs.json("stats", runs.stepped, "--at-steps", "20,10")
    assert [(e["step"], e["epoch"]) for e in out["epochs"]] == [(10, 0), (20, 0)]
    assert all(np.isfinite(e["mean"]["center_loss"]) for e in out["epochs"])
    assert [e["step"] for e in runs.json("stats", runs.stepped, "--epochs", "1")["epochs"]] == [23]
    text = runs.cli("stats", runs.stepped, "--at-steps", "20").stdout
    assert "┃ step ┃" in text
    assert "step 46 is not in grid" in runs.error("stats", runs.stepped, "--at-steps", "46")
    assert "--at-steps" in runs.error("stats", runs.plain, "--at-steps", "10")

    class Writer:
        def __init__(self) -> None:
            self.steps: dict[str, list[int]] = {}

        def add_scalar(self, tag: str, value: float, global_step: int) -> None:
            self.steps.setdefault(tag, []).append(global_step)

        def add_image(self, tag: str, image: Any, global_step: int, dataformats: str) -> None:
            self.steps.setdefault(tag, []).append(global_step)

    writer = Writer()
    logged = log_plot(writer, plot([runs.stepped], at_steps=[10, 20], store=runs.store, save=False))
    assert set(logged.images.values()) == {20}
    assert all(steps == STEPS for tag, steps in logged.scalars.items()), logged.scalars


def test_plot_lambda_max_of_a_step_run(runs: Runs, tmp_path: Path) -> None:
    """`plot --lambda-max` on a step run draws every value tracked up to its last checkpoint; of a run whose
    run.json records checkpoints up to step 23 only (training in flight), the values up to step 23."""
    import shutil

    from landscape_cli.views.sharpness_figure import read_track

    out = tmp_path / "lambda.png"
    drawn = runs.json("plot", runs.stepped, "--lambda-max", "--out", str(out))
    assert out.is_file() and [(v["step"], v["epoch"]) for v in drawn["values"]] == [(0, 0), (10, 1), (20, 1), (30, 2),
                                                                                      (40, 2)]
    assert drawn["note"] is None  # plain SGD: 2/η is its threshold
    store = tmp_path / "store"
    shutil.copytree(runs.store / runs.stepped, store / runs.stepped)
    meta = json.loads((store / runs.stepped / "run.json").read_text())
    meta["epochs"] = [r for r in meta["epochs"] if r["step"] <= 23]
    (store / runs.stepped / "run.json").write_text(json.dumps(meta))
    _, track = read_track(runs.stepped, store)
    assert [p.step for p in track.values] == [0, 10, 20]
