"""Progress in batch jobs (issue 17): with stderr not a terminal (a SLURM job, nohup, a pipe) `grid` and
`train` print plain lines (landscape_cli/_progress.py): the planned size at the start, then done/total,
rate and ETA (the first as soon as a rate is known, then at most every LANDSCAPE_PROGRESS_INTERVAL
seconds, 30 by default; 0 here, so every row prints one), then the total time; no escape codes, nothing
on stdout (--json stays one JSON document), nothing with --quiet. On a terminal the rich bar is kept.

Each test runs `python -m landscape_cli` in a fresh interpreter with stderr to a pipe (or a pty), on a
copy of the frozen store of tests/data/legacy-0.2.0 (a grid of its trained MLP: no training needed).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.slow  # each test is a real process whose stderr is a pipe or a terminal

LEGACY = Path(__file__).parent / "data" / "legacy-0.2.0" / "store"  # frozen: copied, never written
GRID = ["grid", "legacy2", "--epochs", "3", "--width", "5", "--pairs", "2", "--batches", "1"]  # 10 rows of 5 points
PROGRESS = re.compile(r"^grid (\w+): (\d+)/(\d+) points \((\d+)%\), [\d,.]+ points/s, elapsed \d+:\d\d:\d\d, "
                      r"ETA (\d+:\d\d:\d\d)$")


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    store = tmp_path / "legacy"
    shutil.copytree(LEGACY, store)
    return store


def _run(args: list[str], store: Path, interval: str | None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env.pop("LANDSCAPE_PROGRESS_INTERVAL", None)
    if interval is not None:
        env["LANDSCAPE_PROGRESS_INTERVAL"] = interval
    done = subprocess.run([sys.executable, "-m", "landscape_cli", *args, "--store", str(store)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_a_grid_with_stderr_to_a_pipe_prints_its_size_progress_and_eta(legacy: Path) -> None:
    done = _run([*GRID, "--json"], legacy, "0")
    result = json.loads(done.stdout)  # stdout: the JSON document alone
    assert "points planned" not in done.stdout and "ETA" not in done.stdout
    assert "\x1b" not in done.stderr and "\r" not in done.stderr  # plain lines: no escape codes, no redrawn line
    lines = done.stderr.splitlines()
    planned = lines.index(f"grid {result['id']}: 50 points planned")
    progress = [m for m in map(PROGRESS.match, lines[planned + 1:]) if m]
    assert len(progress) >= 2
    counts = [int(m.group(2)) for m in progress]
    assert counts == sorted(set(counts)) and all(int(m.group(3)) == 50 for m in progress)
    assert counts[-1] == 50 and progress[-1].group(5) == "0:00:00"  # an ETA on every line; none left at the end
    assert re.match(rf"grid {result['id']}: 50/50 points \(100%\) in \d+:\d\d:\d\d, [\d,.]+ points/s$", lines[-1])


def test_lines_come_at_most_every_interval_and_never_with_quiet(legacy: Path) -> None:
    done = _run(GRID, legacy, "3600")  # an hour: only the first rate (after a second) may come before the end
    progress = [line for line in done.stderr.splitlines() if PROGRESS.match(line)]
    assert len(progress) <= 1
    assert "points planned" in done.stderr and "50/50 points (100%) in" in done.stderr
    quiet = _run([*GRID[:3], "2", *GRID[4:], "--quiet"], legacy, "0")  # another epoch: something to compute
    assert "points" not in quiet.stderr and "ETA" not in quiet.stderr


def test_training_in_a_batch_job_prints_plain_lines(tmp_path: Path) -> None:
    done = _run(["train", "mlp", "digits", "--epochs", "1", "--json"], tmp_path / "store", "0")
    assert json.loads(done.stdout)["trained"] == [0, 1] and "\x1b" not in done.stderr
    lines = done.stderr.splitlines()
    assert "epoch 1: 6 batches planned" in lines
    assert any(re.match(r"epoch 1: 3/6 batches \(50%\), .* ETA \d+:\d\d:\d\d$", line) for line in lines)
    assert any(re.match(r"epoch 1: 6/6 batches \(100%\) in \d+:\d\d:\d\d", line) for line in lines)


def test_a_terminal_keeps_the_rich_bar(legacy: Path) -> None:
    master, slave = pty.openpty()
    env = subprocess_env()
    env.pop("NO_COLOR", None)
    env["LANDSCAPE_PROGRESS_INTERVAL"] = "0"
    with subprocess.Popen([sys.executable, "-m", "landscape_cli", *GRID, "--store", str(legacy)], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave) as proc:
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], 300)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=300) == 0
    os.close(master)
    text = out.decode("utf-8", "replace")
    assert "\x1b[" in text and "━" in text and "50/50" in text  # rich's live bar (redrawn with escape codes)
    assert "points planned" not in text and not re.search(r"points/s, elapsed", text)
