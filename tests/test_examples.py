"""The examples run as README says (the quick start end to end; the reference script parses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, StoreFactory, Train, subprocess_env


def run_example(script: str, tmp_path: Path, *args: str, timeout: int = 900,
                **env_extra: str) -> subprocess.CompletedProcess[str]:
    """examples/SCRIPT as README runs it: the venv's `landscape` on PATH, a store in tmp_path/runs."""
    # both cores, unless pytest-xdist runs another worker beside this one
    env = subprocess_env(threads=1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LANDSCAPE_STORE"] = str(tmp_path / "runs")
    env.update(env_extra)
    done = subprocess.run([str(REPO / "examples" / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_quickstart_script(tmp_path: Path, trained_store: StoreFactory) -> None:
    """README's first command: the script end to end, on the coarsest grid its WIDTH offers (the full 13 x 13
    grid is the same code over more points). Its run is the session's resnet master (the configuration the
    script trains: the same id), so its `train` finds the 5 epochs done; training from scratch to 90 % is
    tests/test_training.py's."""
    trained_store.copy(Train("resnet", epochs=5, name="quickstart"), to=tmp_path / "runs")
    done = run_example("quickstart.sh", tmp_path, WIDTH="3")
    plots = sorted(p.name for p in (tmp_path / "runs").glob("*/grids/*/plots/*.png"))
    assert plots == ["loss_heatmap_epoch-5.png", "loss_heatmap_epochs-0-1-5_mean.png"]
    assert "quickstart" in done.stdout and "100.0% done" in done.stdout
    # the trained model passes the foundation's bar
    import json

    [run] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert run["epochs"][-1]["val_accuracy"] >= 0.9


@pytest.mark.slow
def test_analyses_script(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's pictures of the new grid kinds come from this script: lines, interpolation, PCA plane."""
    out = tmp_path / "figures"
    out.mkdir()
    run_example("analyses.sh", tmp_path, str(out), timeout=1200)
    assert sorted(p.name for p in out.iterdir()) == ["interpolation.png", "lines.png", "pca.png"]
    import json

    monkeypatch.setenv("LANDSCAPE_STORE", str(tmp_path / "runs"))  # the script's store, listed in-process
    listing = cli("ls", "--json")
    assert listing.exit_code == 0, listing.stderr
    [run] = json.loads(listing.stdout)["runs"]
    kinds = {g["name"]: (g["kind"], g["dims"], g["status"]) for g in run["grids"]}
    assert kinds == {"lines": ("random", 1, "complete"), "interpolation": ("interpolate", 1, "complete"),
                     "pca": ("pca", 2, "complete")}


@pytest.mark.slow
def test_custom_model_script(tmp_path: Path) -> None:
    """README's own-model example: factories from examples/custom_model.py trained, gridded and plotted."""
    run_example("custom_model.sh", tmp_path)
    plots = sorted(p.name for p in (tmp_path / "runs").glob("*/grids/*/plots/*.png"))
    assert plots == ["loss_curve_epochs-0-5.png", "loss_heatmap_epochs-0-5-20_mean.png"]
    import json

    [run] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert run["model"]["source"]["kind"] == "file" and run["epochs"][-1]["val_accuracy"] >= 0.9


def test_reference_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "examples" / "reference_experiments.sh")], check=True)
