"""Shared fixtures: every test gets its own store and data directory, and no colour."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDSCAPE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("LANDSCAPE_DEBUG", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cli() -> Callable[..., object]:
    """Run the `landscape` app in-process: cli("train", "cnn", "digits") -> Result."""
    from landscape_cli.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> object:
        return runner.invoke(app, list(args))

    return invoke


def run_cli(*args: str, threads: int = 1, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `python -m landscape_cli ARGS` in a fresh interpreter (one torch thread: never oversubscribe)."""
    return subprocess.run(
        [sys.executable, "-m", "landscape_cli", *args], capture_output=True, text=True,
        env=subprocess_env(threads), cwd=REPO, **kwargs,  # type: ignore[call-overload]
    )


def subprocess_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def private_copy(store: Path, tmp_path: Path) -> Path:
    """A copy of a module's shared store that one test may change or damage."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """A snapshot of every file under `path` (size, mtime) to prove a command changed nothing."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"
    }
