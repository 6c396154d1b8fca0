"""Shared fixtures: every test gets its own store and data directory, and no colour."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent

# The suite runs without fsync (LANDSCAPE_FSYNC=0, inherited by the subprocesses): what they make durable is a power
# cut's concern, and its thousands of tiny commits paid for them (the whole suite: 11 min 11 s -> 10 min 52 s).
# tests/test_durability.py turns them back on where it checks their order.
os.environ["LANDSCAPE_FSYNC"] = "0"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one torch thread per worker (two workers never oversubscribe the cores)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    # numpy is loaded before this file (by a plugin), its BLAS pool already sized to the cores: two workers'
    # pools spinning on 2 cores made each np.linalg call many times slower. One thread, as the env asks.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(1)


def _one_click_command_per_app() -> None:
    """typer's CliRunner.invoke builds the click command of the whole app anew on every call (~50 ms, and the
    suite invokes the app in-process thousands of times): build it once per app. It is the command `landscape`
    builds once per process; click commands keep no state between invocations."""
    import typer.testing

    build = getattr(typer.testing, "_get_command", None)
    if build is None:
        return
    built: dict[int, tuple[Any, Any]] = {}

    def get_command(app: Any) -> Any:
        if id(app) not in built:
            built[id(app)] = (app, build(app))  # the app kept: its id is never reused
        return built[id(app)][1]

    typer.testing._get_command = get_command  # type: ignore[attr-defined]


_one_click_command_per_app()


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


def run_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`landscape ARGS` in-process with one torch thread (as run_cli's processes), as run_cli's result: where a
    fresh interpreter proves nothing more (the exit code and error line come from the same app)."""
    from landscape_cli.cli import app

    with one_thread():
        result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def set_field(data: Any, keys: tuple[str | int, ...], value: Any) -> Any:
    """`data` (parsed JSON) with the field at `keys` set to `value` (deleted where `value` is KeyError)."""
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


def kill_after(args: list[str], store: Path, ready: str | Callable[[Path], bool], delay: tuple[float, float],
               seed: int = 0, timeout: float = 120.0) -> None:
    """`landscape ARGS --store STORE` in a fresh interpreter, SIGKILLed a random `delay` (seconds, drawn from `seed`)
    after a file matching the glob `ready` appears in the store (or the predicate `ready(store)` holds)."""
    import random
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "landscape_cli", *args, "--store", str(store)],
                            env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    def is_ready() -> bool:
        return ready(store) if callable(ready) else bool(list(store.glob(ready)))

    while time.time() < deadline and not is_ready() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(*delay))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def killed_and_resumed_training(args: list[str], store: Path) -> list[str]:
    """`landscape ARGS --store STORE` (a training) SIGKILLed somewhere inside its second epoch or later, then
    rerun in-process to the end: the weights hash of every checkpoint, each checked against its file."""

    kill_after(args, store, "*/checkpoints/epoch-0001.pt", (0.05, 0.3))  # somewhere inside a later epoch
    from landscape_cli.store import Store
    from landscape_cli.store.meta import RunMeta

    [run] = Store(store).runs()
    assert isinstance(run, RunMeta) and 2 <= len(run.epochs) < 5, "the kill should land mid-training"
    resumed = run_in_process(*args, "--store", str(store))
    assert resumed.returncode == 0, resumed.stderr
    assert not list(store.rglob("*.partial"))
    return checkpoint_hashes(store)


def checkpoint_hashes(store: Path) -> list[str]:
    """The weights hash of every checkpoint of the store's one run, each recomputed from its file."""
    import torch

    from landscape_cli.models.checkpoints import state_hash
    from landscape_cli.store import Store
    from landscape_cli.store.meta import RunMeta

    [run] = Store(store).runs()
    assert isinstance(run, RunMeta)
    out = []
    for e in run.epochs:
        ckpt = torch.load(Store(store).file(run.id, e.checkpoint), weights_only=True)
        assert state_hash(ckpt["state_dict"]) == e.weights_sha256
        out.append(e.weights_sha256)
    return out


def filter_normalized(raw: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """Li et al.'s filter normalization, written out independently of the library for the tests that
    recompute a grid by hand: each filter (row) of a direction rescaled to the norm of the weight's;
    1-D parameters (biases, norms) left out, as a default grid leaves them put."""
    out = {}
    for name, w in weights.items():
        if w.dim() <= 1:
            continue
        d = raw[name].clone()
        for i in range(w.shape[0]):
            d[i] = d[i] * (w[i].norm() / d[i].norm())
        out[name] = d
    return out


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


# --- trained stores, built once per session ------------------------------------------------------------
#
# Training and grids are deterministic (same configuration: same run id, bitwise the same weights and
# values), so a store that several tests (or modules) need is built once per session from its recipe, kept
# read-only as a master, and handed out as copies. `trained_store("cnn", epochs=2, name="tiny")` is a
# master with that one run; `trained_store.build(Train(...), Grid(...), Cli(...))` one made by several
# commands in order. Every distinct training configuration is trained once: a recipe's runs are copied
# from one-run masters, then named by `train` itself (which trains nothing more). Nothing may write
# into a master: a test that changes its store takes `copy_store(...)` (or `private_copy`), and the
# session ends with an error if any master changed.


@dataclass(frozen=True)
class Step:
    """One command of a store's recipe: `train` or `grid` through the Python API, or a CLI line."""

    kind: str  # "train", "grid" or "cli"
    args: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()
    syspath: str | None = None  # prepended to sys.path while the step runs (your own factories)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def Train(model: str, dataset: str = "digits", *, syspath: Path | None = None, **options: Any) -> Step:
    """`landscape_cli.train(model, dataset, **options)` (progress off)."""
    return Step("train", (model, dataset), tuple(sorted(options.items())), str(syspath) if syspath else None)


def Grid(run: str, *, syspath: Path | None = None, **options: Any) -> Step:
    """`landscape_cli.grid(run, **options)` (progress off)."""
    return Step("grid", (run,), tuple(sorted(options.items())), str(syspath) if syspath else None)


def Cli(*args: str) -> Step:
    """`landscape ARGS --store MASTER`, in-process; it must succeed."""
    return Step("cli", tuple(args))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses run: never oversubscribe, and the same values
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class StoreFactory:
    """Masters built on first use, by recipe (see above); the same recipe gives the same directory.

    Under pytest-xdist the workers share one root: each master is built by the first worker that needs
    it, under a file lock, and the others wait for it and read the same directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.snapshots: dict[Path, dict[str, tuple[int, int]]] = {}
        self.made = 0  # directories this process made (a build that failed leaves its own behind)

    def __call__(self, model: str, dataset: str = "digits", **options: Any) -> Path:
        """A master holding the one run `train(model, dataset, **options)` makes."""
        return self.build(Train(model, dataset, **options))

    def build(self, *steps: Step) -> Path:
        return self._once("store", repr(steps), lambda store: self._build(steps, store))

    def _build(self, steps: tuple[Step, ...], store: Path) -> None:
        store.mkdir(parents=True)
        with self._environment(store):
            for step in steps:
                self._apply(step, store)

    def copy(self, *steps: Step, to: Path) -> Path:
        """A private copy (at `to`, which must not exist) of the master `steps` build."""
        shutil.copytree(self.build(*steps), to)
        return to

    def _once(self, kind: str, key: str, make: Callable[[Path], None]) -> Path:
        """The directory `make` fills for `key`, made once across every worker of the session."""
        import fcntl
        import hashlib

        name = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        store, done = self.root / name / "store", self.root / name / "done"
        if not done.exists():
            with open(self.root / f"{name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not done.exists():
                    shutil.rmtree(store.parent, ignore_errors=True)  # a build that failed in another worker
                    self.made += 1
                    make(store)
                    done.write_text(key)
        if store not in self.snapshots:
            self.snapshots[store] = tree(store)
        return store

    def changed(self) -> list[str]:
        """The masters that differ from what was built (a test wrote into one)."""
        return [str(store) for store, before in self.snapshots.items() if tree(store) != before]

    @contextlib.contextmanager
    def _environment(self, store: Path) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as mp, one_thread():
            mp.setenv("LANDSCAPE_STORE", str(store))
            mp.setenv("LANDSCAPE_DATA", str(self.root / "data"))
            mp.setenv("NO_COLOR", "1")
            mp.setenv("COLUMNS", "200")
            mp.delenv("LANDSCAPE_DEBUG", raising=False)
            yield

    def _apply(self, step: Step, store: Path) -> None:
        from landscape_cli import grid, train

        with pytest.MonkeyPatch.context() as mp:
            if step.syspath:
                mp.syspath_prepend(step.syspath)
            if step.kind == "train":
                model, dataset = step.args
                run_store, run_id = self._run(step)
                if not (store / run_id).exists():
                    shutil.copytree(run_store / run_id, store / run_id)
                # names the copied run (or continues it): what this command does in a store that has the run
                train(model, dataset, store=store, **{"progress": False, **step.kwargs})
            elif step.kind == "grid":
                grid(*step.args, store=store, **{"progress": False, **step.kwargs})
            else:
                from landscape_cli.cli import app

                result = CliRunner().invoke(app, [*step.args, "--store", str(store)])
                assert result.exit_code == 0, f"{step.args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"

    def _run(self, step: Step) -> tuple[Path, str]:
        """The one-run master of a training step's configuration (its name aside), trained on first use."""
        from landscape_cli import train

        options = {k: v for k, v in step.options if k not in ("name", "progress")}
        key = repr((step.args, sorted(options.items()), step.syspath))

        def make(store: Path) -> None:
            with one_thread():
                result = train(*step.args, store=store, **options, progress=False)
            (store.parent / "run_id").write_text(result.run_id)

        store = self._once("run", key, make)
        return store, (store.parent / "run_id").read_text()


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreFactory]:
    """The session's read-only master stores (see StoreFactory); copy one before changing it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent / "masters" if worker else tmp_path_factory.mktemp("masters")
    factory = StoreFactory(root)
    yield factory
    changed = factory.changed()
    assert not changed, f"a test wrote into a shared master store (copy it first): {changed}"


@pytest.fixture
def copy_store(trained_store: StoreFactory, tmp_path: Path) -> Callable[..., Path]:
    """copy_store(*steps) -> this test's own copy of that master at tmp_path/"store" (its $LANDSCAPE_STORE)."""

    def make(*steps: Step) -> Path:
        return trained_store.copy(*steps, to=tmp_path / "store")

    return make


# --- the page tests' browser ---

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium through Playwright, launched once for every page test."""
    ci = os.environ.get("CI") == "true"
    if not CHROMIUM.exists():
        if ci:
            pytest.fail(f"{CHROMIUM} is missing: the HTML page tests need Debian's Chromium in CI "
                        "(`apt-get install -y chromium`)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ci:
            pytest.fail("Python Playwright is missing: the HTML page tests need it in CI (pip install playwright)")
        pytest.skip("Python Playwright is missing (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# --- order: under pytest-xdist (README's `-n 2 --dist loadfile`) each worker takes the next file as it
# finishes one, so the longest files go first and the short ones fill the gaps at the end (measured seconds
# per file under `-n 2`, longest first; the files not named follow in their own order) ---

LONGEST_FIRST = ("test_reliability.py", "test_examples.py", "test_gpt.py", "test_figure_layout.py",
                 "test_distributed.py", "test_grids.py", "test_adversarial.py", "test_plotting.py", "test_training.py",
                 "test_page_bundle.py", "test_html.py", "test_bad_input.py", "test_lambda_track.py", "test_cli.py",
                 "test_batch_progress.py", "test_api.py", "test_connect.py", "test_notebook_kernel.py",
                 "test_directions.py", "test_batched.py", "test_export.py", "test_stats.py", "test_step_checkpoints.py",
                 "test_recorder.py", "test_hessian.py", "test_export_formats.py", "test_hessian_attention.py",
                 "test_interrupts.py", "test_step_readers.py", "test_compat.py")


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist hands out the files of `--dist loadfile` by their number of tests, most first, unless told not
    # to (--no-loadscope-reorder): that put the 90-second file of four tests last. The order above is kept instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the page tests in Chromium are marked slow here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
