"""Commands on a copy of the frozen second-release store (`data/legacy-0.2.0`): fast, no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())


def test_ls_lists_each_runs_hessian_results_in_its_table(cli: Any, store: Path) -> None:
    shutil.copytree(LEGACY2 / "store", store)
    done = cli("ls")
    assert done.exit_code == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if IDS["hessian_id"] in line]
    assert len(rows) == 1, done.stdout
    row = rows[0]
    assert "curvature" in row and "hessian top 2" in row and "batches 1x64" in row and "ep 3" in row
    assert "complete" in row
    # the same results as `ls --json` reports them
    [run] = [r for r in json.loads(cli("ls", "--json").stdout)["runs"] if r["id"] == IDS["run_id"]]
    [h] = [h for h in run["hessians"] if h["id"] == IDS["hessian_id"]]
    assert h["name"] == "curvature" and h["epochs_done"] == [3] and h["batches"] == 1


def test_ls_shows_partial_hessian_results_with_their_progress(cli: Any, store: Path) -> None:
    import zarr

    shutil.copytree(LEGACY2 / "store", store)
    [results] = store.glob(f"*/hessians/{IDS['hessian_id']}/hessian.zarr")
    zarr.open_array(results / "done", mode="r+")[0] = 0  # as a kill before the epoch's done-mark leaves it
    row = next(line for line in cli("ls").stdout.splitlines() if IDS["hessian_id"] in line)
    assert "0/1 epochs done" in row and "complete" not in row


def test_verify_tells_an_imported_run_to_import_its_files_again(cli: Any, store: Path) -> None:
    shutil.copytree(LEGACY2 / "store", store)
    [ckpt] = store.glob(f"{IDS['imported_id']}/checkpoints/epoch-0003.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:-10] + b"0123456789")
    done = cli("verify", IDS["imported_id"], "--json")
    assert done.exit_code != 0
    [problem] = json.loads(done.stdout)["problems"]
    assert problem["problem"] == "checkpoint of epoch 3 does not match its recorded sha256"
    assert "the same `landscape import` command" in problem["fix"] and "landscape train" not in problem["fix"]
    # a trained run's damaged checkpoint is still made again by its training command
    [trained] = store.glob(f"{IDS['run_id']}/checkpoints/epoch-0001.pt")
    trained.write_bytes(trained.read_bytes()[:-10] + b"0123456789")
    [problem] = json.loads(cli("verify", IDS["run_id"], "--json").stdout)["problems"]
    assert "`landscape train` command again" in problem["fix"]


def test_importing_a_folder_of_this_tools_checkpoints_skips_optimizer_states(cli: Any, store: Path,
                                                                               tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    shutil.copytree(LEGACY2 / "store" / IDS["run_id"] / "checkpoints", folder)
    assert (folder / "epoch-0003.optim.pt").is_file()
    done = cli("import", "mlp", "digits", str(folder), "--name", "again", "--json")
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["imported"] == [0, 1, 2, 3] and [f["epoch"] for f in out["files"]] == [0, 1, 2, 3]
    assert not any(f["file"].endswith(".optim.pt") for f in out["files"])


def test_asking_for_a_grid_under_another_name_says_it_renames_it(cli: Any, store: Path) -> None:
    shutil.copytree(LEGACY2 / "store", store)
    done = cli("grid", "legacy2", "--grid", "line", "--name", "line2")
    assert done.exit_code == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert f"grid {IDS['grids']['line']} is now named 'line2' (was 'line')" in said
    assert cli("grid", "legacy2", "--grid", "line2", "--name", "line2").stderr.count("now named") == 0


def test_readme_checkpoint_recipe_loads_a_store_checkpoint(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """README's recipe, run as written on a store checkpoint (its RUN replaced by the run's id), rebuilds the model
    with the checkpoint's weights."""
    import torch

    shutil.copytree(LEGACY2 / "store", store / "runs")
    monkeypatch.chdir(store)
    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = text.split("<!-- recipe: checkpoint -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(block.replace("RUN", IDS["run_id"]), "README.md", "exec"), namespace)
    ckpt, model = namespace["ckpt"], namespace["model"]
    assert capsys.readouterr().out.startswith("3 mlp ")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name
    with pytest.raises(RuntimeError, match="Unexpected key"):  # what README warns of
        model.load_state_dict(ckpt)


def test_a_hessian_grid_reuses_the_users_curvature_results(cli: Any, store: Path) -> None:
    """With `landscape hessian --top 2` results for the grid's batches on hand, `grid --directions hessian` computes
    no results of its own: its eigenvectors are those results' (and its values those of the second release's
    Hessian grid, made from results with the same eigenvectors, at the points both grids hold)."""
    import xarray as xr

    shutil.copytree(LEGACY2 / "store", store)
    run_dir = store / IDS["run_id"]
    [old_grid] = run_dir.glob(f"grids/{IDS['grids']['hessian']}")
    own = json.loads((old_grid / "grid.json").read_text())["kind"]["hessian"]
    assert own != IDS["hessian_id"]
    shutil.rmtree(run_dir / "hessians" / own)  # only the user's results (`landscape hessian ... --probes 8`) are left
    before = sorted(p.name for p in (run_dir / "hessians").iterdir())
    done = cli("grid", "legacy2", "--directions", "hessian", "--epochs", "3", "--width", "3", "--span", "0.05",
               "--batches", "1", "--batch-size", "64", "--name", "reuse", "--json")
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert sorted(p.name for p in (run_dir / "hessians").iterdir()) == before  # nothing computed
    assert out["facts"]["hessian"] == IDS["hessian_id"]
    results = json.loads((run_dir / "hessians" / IDS["hessian_id"] / "hessian.json").read_text())
    recorded = out["facts"]["epochs"]["3"]
    assert recorded["file"] == results["eigenvectors"]["3"]["file"]
    assert recorded["sha256"] == results["eigenvectors"]["3"]["sha256"]
    new = xr.open_zarr(out["zarr"]).loss.sel(epoch=3).values  # [pair, batch, y, x]
    old = xr.open_zarr(old_grid / "landscape.zarr").loss.sel(epoch=3).values[:, :, ::2, ::2]
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)


def test_plot_hessian_draws_the_most_complete_results(cli: Any, store: Path, tmp_path: Path) -> None:
    shutil.copytree(LEGACY2 / "store", store)
    fuller = cli("hessian", "legacy2", "--epochs", "2,3", "--top", "3", "--probes", "4", "--batches", "1",
                 "--batch-size", "64", "--json")
    assert fuller.exit_code == 0, fuller.stderr
    fuller_id = json.loads(fuller.stdout)["id"]
    # results made later but holding fewer epochs do not replace it as the default
    later = cli("hessian", "legacy2", "--epochs", "3", "--top", "2", "--probes", "6", "--batches", "1",
                "--batch-size", "64", "--json")
    assert later.exit_code == 0, later.stderr
    drawn = cli("plot", "legacy2", "--hessian", "--out", str(tmp_path / "h.png"), "--json")
    assert drawn.exit_code == 0, drawn.stderr
    assert json.loads(drawn.stdout)["hessian"] == fuller_id


def test_ls_shows_the_epochs_an_imported_run_holds(cli: Any, store: Path) -> None:
    shutil.copytree(LEGACY2 / "store", store)
    row = next(line for line in cli("ls").stdout.splitlines() if IDS["imported_id"] in line)
    cells = [c.strip() for c in row.split("│")]
    assert "1,3" in cells and "1/1" not in row  # it holds epochs 1 and 3 as imported, not "1 of 1 trained"
    trained = next(line for line in cli("ls").stdout.splitlines() if f"│ {IDS['run_id']}" in line)
    assert "3/3" in trained


def test_the_hessian_figure_names_no_batchnorm_mode_for_a_model_without_batchnorm(store: Path, tmp_path: Path) -> None:
    from landscape_cli.views.hessian_figure import plot_hessian

    shutil.copytree(LEGACY2 / "store", store)
    drawn = plot_hessian("legacy2", out=tmp_path / "h.png", store=store)  # an mlp: no BatchNorm layers
    title = drawn.figure._suptitle.get_text()
    assert title.startswith(f"Hessian of run {IDS['run_id']} (1 batches of 64)") and "BatchNorm" not in title
