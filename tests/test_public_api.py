"""Every import path README shows keeps working after the package was regrouped into sub-packages.

`landscape_cli.grid` must stay the function even once every sub-package is imported (a sub-package
named like an API function would replace it on the package the moment it is imported), and the old
module paths README's recipes use (`landscape_cli.evaluate`, `landscape_cli.directions`) still import.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO

import landscape_cli


def _import_everything() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(landscape_cli.__path__, "landscape_cli."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def test_api_names_stay_what_they_are_after_every_sub_package_is_imported() -> None:
    first = {name: getattr(landscape_cli, name) for name in landscape_cli.__all__}
    modules = _import_everything()
    assert {"landscape_cli.engine.compute", "landscape_cli.views.figures", "landscape_cli.store.meta"} <= set(modules)
    for _ in range(2):
        for name in landscape_cli.__all__:
            value = getattr(landscape_cli, name)
            assert not isinstance(value, types.ModuleType), f"landscape_cli.{name} became a module"
            assert value is first[name], name
    for name in ("train", "grid", "plot", "open", "export", "evaluate_plane", "create_model", "load_dataset"):
        assert inspect.isfunction(getattr(landscape_cli, name)), name
    # the registries' listings, called twice, agree with each other
    assert landscape_cli.list_models() == landscape_cli.list_models() and "cnn" in landscape_cli.list_models()
    assert landscape_cli.list_datasets() == landscape_cli.list_datasets() and "digits" in landscape_cli.list_datasets()


def test_readme_import_paths() -> None:
    from landscape_cli.directions import draw_random, normalize
    from landscape_cli.evaluate import evaluate_plane
    from landscape_cli.kernel.evaluate import evaluate_plane as kernel_evaluate_plane

    assert evaluate_plane is kernel_evaluate_plane is landscape_cli.evaluate_plane
    assert callable(draw_random) and callable(normalize)
    from landscape_cli.cli import app, main

    assert callable(main) and app.registered_commands


def test_grid_takes_a_request_or_its_fields() -> None:
    from landscape_cli.config import GridRequest, Runtime, split_options

    request, runtime = split_options(GridRequest(width=7), None, {"epochs": [0, 2], "device": "cpu", "progress": False})
    assert request == GridRequest(width=7, epochs=(0, 2)) and runtime == Runtime(device="cpu", progress=False)
    try:
        split_options(None, None, {"widht": 3})
    except TypeError as e:
        assert "widht" in str(e)
    else:
        raise AssertionError("a misspelt option must be refused")


def test_readme_request_recipe_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's GridRequest/Runtime recipe, run as written after its `ls.train` line, gives the same grid as the
    keyword call it stands for."""
    import landscape_cli as ls

    monkeypatch.chdir(tmp_path)  # the recipe's store="runs"
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- recipe: request -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    run = ls.train("mlp", "digits", epochs=5, store="runs", progress=False)
    namespace: dict[str, Any] = {"ls": ls, "run": run}
    exec(compile(block, "README.md", "exec"), namespace)
    g = namespace["g"]
    same = ls.grid(run.run_id, epochs=[5], width=21, span=0.01, batches=1, store="runs", device="cpu", progress=False)
    assert g.grid_id == same.grid_id and g.complete and same.computed_rows == 0
    loss = g.to_xarray().loss.sel(epoch=5).values
    assert loss.shape == (3, 1, 21, 21) and np.isfinite(loss).all()


def test_benchmarks_and_examples_import_only_what_exists() -> None:
    """Every `landscape_cli` import in benchmarks/ and examples/ (inside functions too) names a module or attribute
    that exists: the benchmarks run rarely, so a moved module must not break them unnoticed."""
    import ast

    missing = []
    for path in sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "examples").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "landscape_cli":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ModuleNotFoundError:
                        if not hasattr(module, alias.name):
                            missing.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "landscape_cli":
                        importlib.import_module(alias.name)
    assert not missing, missing


def test_the_api_on_models_in_memory_is_registered_lazily() -> None:
    """`landscape_cli.plane(model, batches)` and its siblings are functions of `landscape_cli.api`, imported only when
    first used (a bare `import landscape_cli` imports neither it nor torch)."""
    import subprocess
    import sys

    for name in ("plane", "line", "hessian", "eigenvectors", "stats", "save_to"):
        value = getattr(landscape_cli, name)
        assert name in landscape_cli.__all__ and inspect.isfunction(value) and value.__module__ == "landscape_cli.api"
    code = "import sys, landscape_cli; print('landscape_cli.api' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.split() == ["False", "False"], done.stdout + done.stderr
