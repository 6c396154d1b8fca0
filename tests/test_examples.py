"""The examples run as README says (the quick start end to end; the reference script parses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env


@pytest.mark.slow
def test_quickstart_script(tmp_path: Path) -> None:
    env = subprocess_env(threads=2)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LANDSCAPE_STORE"] = str(tmp_path / "runs")
    done = subprocess.run([str(REPO / "examples" / "quickstart.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    plots = sorted(p.name for p in (tmp_path / "runs").glob("*/grids/*/plots/*.png"))
    assert plots == ["loss_heatmap_epoch-5.png", "loss_heatmap_epochs-0-1-5_mean.png"]
    assert "quickstart" in done.stdout and "100.0% done" in done.stdout
    # the trained model passes the foundation's bar
    import json

    [run] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert run["epochs"][-1]["val_accuracy"] >= 0.9


@pytest.mark.slow
def test_analyses_script(tmp_path: Path) -> None:
    """README's pictures of the new grid kinds come from this script: lines, interpolation, PCA plane."""
    env = subprocess_env(threads=2)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LANDSCAPE_STORE"] = str(tmp_path / "runs")
    out = tmp_path / "figures"
    out.mkdir()
    done = subprocess.run([str(REPO / "examples" / "analyses.sh"), str(out)], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["interpolation.png", "lines.png", "pca.png"]
    import json

    listing = subprocess.run([sys.executable, "-m", "landscape_cli", "ls", "--json"], env=env, capture_output=True,
                             text=True, check=True)
    [run] = json.loads(listing.stdout)["runs"]
    kinds = {g["name"]: (g["kind"], g["dims"], g["status"]) for g in run["grids"]}
    assert kinds == {"lines": ("random", 1, "complete"), "interpolation": ("interpolate", 1, "complete"),
                     "pca": ("pca", 2, "complete")}


@pytest.mark.slow
def test_custom_model_script(tmp_path: Path) -> None:
    """README's own-model example: factories from examples/custom_model.py trained, gridded and plotted."""
    env = subprocess_env(threads=2)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LANDSCAPE_STORE"] = str(tmp_path / "runs")
    done = subprocess.run([str(REPO / "examples" / "custom_model.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    plots = sorted(p.name for p in (tmp_path / "runs").glob("*/grids/*/plots/*.png"))
    assert plots == ["loss_curve_epochs-0-5.png", "loss_heatmap_epochs-0-5-20_mean.png"]
    import json

    [run] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert run["model"]["source"]["kind"] == "file" and run["epochs"][-1]["val_accuracy"] >= 0.9


def test_reference_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "examples" / "reference_experiments.sh")], check=True)
