"""Grid speed and memory against the bare forward pass and the original research loop, side by side in one run.

For `resnet` and `cnn` on 28x28 inputs (a synthetic 1x28x28 dataset registered here: no download),
3 batches of 256 images per grid point, each configuration runs in its own fresh process, one after
another (never two at once), with `--threads` torch threads (default: the cores) on `--device`:

  reference  the original research code's loop (`benchmarks/_reference.py`): per point, every
             perturbed parameter reassigned with `p.data = w + a*d1 + b*d2`, a fresh
             DataLoader(num_workers=4) iterator decoding each image with PIL -> ToTensor ->
             Normalize, the model in train mode under no_grad, one `.item()` per batch; plain
             PyTorch settings; ms per point averaged over a few points after one warm-up point;
  forward    the model's bare forward passes on the grid's batches (BatchNorm in training mode as
             in the grid), per point = one pass over the batches;
  grid       `landscape_cli.grid` on a checkpoint of the same model (one point per forward pass),
             per point = time spent computing and writing rows / points (set-up reported apart);
  eval k=K   the library's `Evaluator` over an `Affine` plane, in one process on the same batches,
             K grid points per forward pass (K = 1: the grid's loop without its Zarr I/O; K > 1: the
             batched evaluator, vmap), the fastest of a few alternating rounds;
  grid auto  (cuda) the grid with its default, sized from memory.

Ratios: grid / forward (goal: <= 1.10 on CPU, <= 1.2 on an H100) and reference / grid, the speed-up
(goal on an H100: >= 50x). On CPU the forward and grid pair is measured for three settings: plain
PyTorch defaults, + the glibc allocator settings, + channels_last (both are what the library uses by
default); the other rows use the library's defaults (the reference: plain PyTorch). Memory is the
peak resident set (on cuda: the peak of `torch.cuda.max_memory_allocated`) of the measured phase above
what the process held before it (after its imports; the checkpoint was made by another process): the
forward phase loads the checkpoint, model and batches and runs the passes; the grid phase runs `grid()`
(the same, plus the centre copy of the weights, the directions and Zarr I/O). Each (forward, grid)
pair is measured `--repeat` times, alternating, and the fastest of each is compared: on a shared VM
the per-process times drift by up to 30 % from one minute to the next, and noise only ever adds time.

Scaling (`--scaling P`, default: the cores; on cuda P = the GPUs, one process each, skipped with one
GPU): P processes with one thread each (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`) started
together, each evaluating the same number of points of the cnn, against one such process alone:
points per second of the P together / of the one (goal >= 0.8 P). Measured twice: `Evaluator` over an
`Affine` plane in each process (set-up done, then released together by the parent: the kernel alone),
and P `landscape grid --shard i/P --no-gradient` processes
on one grid against shard 0/P alone (wall-clock from start to exit: start-up, set-up and Zarr I/O in).

    python benchmarks/grid_speed.py            # ~20 minutes on 2 idle cores (estimated; 3 alternating repeats)
    python benchmarks/grid_speed.py --quick    # a smoke test (1 repeat, library settings): 3m45s on 2 cores
                                               # shared with others' tests (load 6), less on idle ones
    python benchmarks/grid_speed.py --device cuda --json > gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

BATCHES, BATCH_SIZE = 3, 256
LIBRARY = "+allocator +channels_last"  # the library's defaults
SETTINGS = {
    "defaults": {"LANDSCAPE_NO_MALLOPT": "1", "LANDSCAPE_NO_CHANNELS_LAST": "1"},
    "+allocator": {"LANDSCAPE_NO_CHANNELS_LAST": "1"},
    LIBRARY: {},
}
PLAIN = SETTINGS["defaults"]  # what the reference loop runs with
CPU_GRID_GOAL, GPU_GRID_GOAL, GPU_SPEEDUP_GOAL, SCALING_GOAL = 1.10, 1.2, 50.0, 0.8
GOALS = (f"goals: on CPU grid <= {CPU_GRID_GOAL:.2f}x forward; on an H100 reference/grid >= {GPU_SPEEDUP_GOAL:.0f}x "
         f"and grid <= {GPU_GRID_GOAL:.1f}x forward; P processes >= {SCALING_GOAL} P x one process's points/s")
Spec = dict[str, Any]


@contextlib.contextmanager
def forward_precision(precision: str, device: Any) -> Iterator[None]:
    """The bare forward passes in the arithmetic the library's `precision` names (fp32: TF32 off on CUDA)."""
    import torch

    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


# ----------------------------------------------------------------------------------------------------
# The measured processes
# ----------------------------------------------------------------------------------------------------

def register_bench_dataset() -> None:
    import torch

    from landscape_cli.data import DatasetInfo, register_dataset

    @register_dataset(DatasetInfo("bench-28", 1, 28, 10, (0.5,), (0.25,), "synthetic 28x28 benchmark data", True))
    def _load(root: Path):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(0)
        n = BATCHES * BATCH_SIZE
        x = torch.randint(0, 256, (n + 256, 1, 28, 28), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n + 256,), generator=g)
        return x[:n], y[:n], x[n:], y[n:]


def prepare(model_name: str) -> str:
    """A store holding a run of `model_name` on the benchmark data (epoch 0 only)."""
    from landscape_cli import train

    register_bench_dataset()
    store = Path(tempfile.mkdtemp(prefix="landscape-bench-"))
    train(model_name, "bench-28", epochs=0, store=store, progress=False, device="cpu")
    return str(store)


class Peak:
    """Peak memory of a phase above what the process held at its start: resident set, or CUDA allocations."""

    def __init__(self, device: Any) -> None:
        import torch

        gc.collect()
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base = reset_peak() / 1024

    def mb(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return status_kb("VmHWM") / 1024 - self.base


def load_library_model(store_path: str, device: Any) -> tuple[Any, list[Any]]:
    """The run's checkpoint as a model on `device` and the grid's batches, as the grid prepares them."""
    import torch

    from landscape_cli import Store
    from landscape_cli.data import load_dataset
    from landscape_cli.kernel import device as perf
    from landscape_cli.models import checkpoints

    perf.tune_allocator()
    store = Store(store_path)
    [run_id] = store.run_ids()
    model = checkpoints.build_model(checkpoints.load(store.run_dir(run_id) / "checkpoints/epoch-0000.pt")).to(device)
    data = load_dataset("bench-28")
    cl = perf.use_channels_last(model, device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    batches = [(data.prepare(data.train_x[i * BATCH_SIZE:(i + 1) * BATCH_SIZE], device, cl),
                data.train_y[i * BATCH_SIZE:(i + 1) * BATCH_SIZE].to(device)) for i in range(BATCHES)]
    return model, batches


def plane_directions(model: Any, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two seeded random directions, filter-normalized against the model's weights (biases, BatchNorm: fixed)."""
    import torch

    from landscape_cli.directions.normalize import normalize

    weights = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    d1, d2 = (normalize({n: torch.randn(w.shape, generator=g) for n, w in weights.items()}, weights, like=True)
              for _ in range(2))
    return d1, d2


def grid_points(n: int) -> list[tuple[float, float]]:
    """`n` points of the plane [-1, 1]², row by row of a ceil(sqrt(n))-wide grid."""
    w = max(1, math.ceil(math.sqrt(n)))
    axis = [-1.0 + 2.0 * i / max(1, w - 1) for i in range(w)]
    return [(a, b) for b in axis for a in axis][:n]


def chunks(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def child(spec: Spec) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    register_bench_dataset()
    device = torch.device(spec["device"])
    mode = spec["mode"]
    if mode == "reference":
        return child_reference(spec, device)
    if mode == "evaluator":
        return child_evaluator(spec, device)
    if mode == "scale":
        return child_scale(spec, device)
    return child_forward_or_grid(spec, device)


def child_forward_or_grid(spec: Spec, device: Any) -> dict[str, Any]:
    import torch

    from landscape_cli import Store
    from landscape_cli.engine.compute import grid

    mode, width = spec["mode"], spec["width"]
    store = Store(spec["store"])
    [run_id] = store.run_ids()
    params = sum(p.numel() for p in run_model_params(store.run_dir(run_id)))
    peak = Peak(device)
    extra: dict[str, Any] = {}
    if mode.startswith("grid"):
        from landscape_cli.kernel import evaluate

        rows_peak = []
        center = evaluate.Affine.center

        def center_after_rows(plane, *args, **kwargs):  # type: ignore[no-untyped-def]
            rows_peak.append(peak.mb())
            return center(plane, *args, **kwargs)

        evaluate.Affine.center = center_after_rows  # type: ignore[method-assign]
        # "grid": one point per pass; "grid-auto": the library's choice
        kwargs: dict[str, Any] = {"points_per_pass": None if mode == "grid-auto" else 1, "precision": spec["precision"]}
        t0 = time.perf_counter()
        result = grid(run_id, width=width, pairs=1, batches=BATCHES, batch_size=BATCH_SIZE, store=store,
                      progress=False, device=spec["device"], gradient=mode != "grid-no-gradient", **kwargs)
        total = time.perf_counter() - t0
        per_point = result.seconds_rows / (width * width)
        setup = total - result.seconds_rows
        extra["rows_peak_mb"] = max(rows_peak) if rows_peak else float("nan")
        evaluation = getattr(result, "evaluation", None)
        if evaluation is not None and hasattr(evaluation, "points_per_pass"):
            extra["points_per_pass"] = evaluation.points_per_pass
    else:
        model, batches = load_library_model(spec["store"], device)
        for m in model.modules():  # BatchNorm as the grid runs it: batch statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
        with torch.no_grad(), forward_precision(spec["precision"], device):
            for x, _ in batches:  # warm-up
                model(x)
            n = width * width
            t0 = time.perf_counter()
            for _ in range(n):
                for x, y in batches:
                    torch.nn.functional.cross_entropy(model(x).float(), y).item()
            per_point = (time.perf_counter() - t0) / n
        setup = 0.0
    return {
        **extra,
        "per_point_ms": per_point * 1000,
        "setup_s": setup,
        "peak_mb": peak.mb(),
        "directions_mb": 2 * params * 4 / 2**20,
        "parameters": params,
    }


def child_reference(spec: Spec, device: Any) -> dict[str, Any]:
    import warnings

    import _reference  # benchmarks/ is this script's directory: first on sys.path
    import torch

    from landscape_cli.data import load_dataset
    from landscape_cli.models import create_model

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on fewer cores
    data = load_dataset("bench-28")
    n = BATCHES * BATCH_SIZE
    dataset = _reference.ImageDataset(data.train_x[:n].numpy(), data.train_y[:n].numpy(), data.info.mean,
                                      data.info.std)
    torch.manual_seed(0)
    model = create_model(spec["model"], data.info.channels, data.info.num_classes, data.info.size)
    return _reference.measure(model, dataset, device, BATCHES, BATCH_SIZE, spec["points"])


def child_evaluator(spec: Spec, device: Any) -> dict[str, Any]:
    """ms per point of `Evaluator` at each points_per_pass, alternating rounds on the same batches, fastest kept."""
    from landscape_cli.kernel.evaluate import Evaluator

    model, batches = load_library_model(spec["store"], device)
    d1, d2 = plane_directions(model)
    points = grid_points(spec["points"])
    row = spec["row"]
    times: dict[int, list[float]] = {k: [] for k in spec["ks"]}
    evaluators = {k: Evaluator(model, batches, points_per_pass=k, precision=spec["precision"]) for k in spec["ks"]}
    for k, ev in evaluators.items():  # warm-up (a first call allocates; vmap's traces the model)
        with ev.plane(d1, d2) as plane:
            plane.evaluate(points[:min(k, 2)])
    for _ in range(spec["rounds"]):
        for k, ev in evaluators.items():
            with ev.plane(d1, d2) as plane:
                t0 = time.perf_counter()
                for part in chunks(points, max(row, k)):  # rows of the grid; a row of k points at least
                    plane.evaluate(part)
                times[k].append((time.perf_counter() - t0) / len(points) * 1000)
    return {"per_point_ms": {str(k): min(v) for k, v in times.items()},
            "rounds_ms": {str(k): v for k, v in times.items()}, "points": len(points)}


def child_scale(spec: Spec, device: Any) -> dict[str, Any]:
    """Set up, say "ready", wait for "go" on stdin, then evaluate `points` points: the start and end times."""
    from landscape_cli.kernel.evaluate import Evaluator

    model, batches = load_library_model(spec["store"], device)
    d1, d2 = plane_directions(model)
    points = grid_points(spec["points"])
    with Evaluator(model, batches).plane(d1, d2) as plane:
        plane.evaluate(points[:1])  # warm-up
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        for part in chunks(points, spec["row"]):
            plane.evaluate(part)
        t1 = time.monotonic()
    return {"start": t0, "end": t1, "points": len(points)}


def cli_child(store_path: str, argv: list[str]) -> None:
    """`landscape ARGV` with the benchmark dataset registered ("RUN" in ARGV: the store's one run)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    register_bench_dataset()
    from landscape_cli import Store
    from landscape_cli.cli import main as landscape

    [run_id] = Store(store_path).run_ids()
    sys.argv = ["landscape", *[run_id if a == "RUN" else a for a in argv]]
    landscape()


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak resident set (Linux: clear_refs 5) and return the current one, in kB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")


def run_model_params(run_path: Path):  # type: ignore[no-untyped-def]
    from landscape_cli.models import checkpoints

    model = checkpoints.build_model(checkpoints.load(run_path / "checkpoints/epoch-0000.pt"))
    return list(model.parameters())


# ----------------------------------------------------------------------------------------------------
# The parent: starts the measured processes, one at a time (the scaling ones together)
# ----------------------------------------------------------------------------------------------------

def child_env(env_extra: dict[str, str], threads: int, gpu: int | None = None) -> dict[str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LANDSCAPE_NO_")}, **env_extra,
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


@contextlib.contextmanager
def store_copy(prepared: str) -> Iterator[str]:
    store = tempfile.mkdtemp(prefix="landscape-bench-")
    shutil.copytree(prepared, store, dirs_exist_ok=True)
    try:
        yield store
    finally:
        shutil.rmtree(store, ignore_errors=True)


def measure(prepared: str, spec: Spec, env_extra: dict[str, str]) -> dict[str, Any]:
    """One measurement in a fresh process, on a fresh copy of the prepared store."""
    with store_copy(prepared) as store:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "store": store})],
                             env=child_env(env_extra, spec["threads"]), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{spec['mode']} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def scaling_evaluator(prepared: str, processes: int, points: int, row: int, device: str) -> dict[str, Any]:
    """Points per second of `processes` one-thread Evaluator processes released together (set-up done)."""
    with contextlib.ExitStack() as stack:
        procs = []
        for i in range(processes):
            store = stack.enter_context(store_copy(prepared))
            err = stack.enter_context(tempfile.TemporaryFile("w+"))
            spec = {"mode": "scale", "store": store, "device": device, "threads": 1, "points": points, "row": row}
            env = child_env({}, 1, i if device == "cuda" else None)
            procs.append((subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env, text=True,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err), err))
        for p, err in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                p.wait()
                err.seek(0)
                sys.exit(f"scaling process failed:\n{err.read()}")
        for p, _ in procs:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p, err in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                err.seek(0)
                sys.exit(f"scaling process failed:\n{err.read()}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["points"] for r in results)
    return {"processes": processes, "points": total, "seconds": span, "points_per_s": total / span}


def scaling_shards(prepared: str, processes: int, width: int, device: str, shards: list[int]) -> dict[str, Any]:
    """Points per second of `landscape grid --shard i/P` processes for the `shards` i, started together on one
    grid of width x width points (wall-clock from the first start to the last exit)."""
    with store_copy(prepared) as store, contextlib.ExitStack() as stack:
        procs = []
        t0 = time.monotonic()
        for i in shards:
            err = stack.enter_context(tempfile.TemporaryFile("w+"))
            argv = ["grid", "RUN", "--width", str(width), "--pairs", "1", "--batches", str(BATCHES), "--batch-size",
                    str(BATCH_SIZE), "--device", device, "--shard", f"{i}/{processes}", "--no-gradient", "--quiet",
                    "--store", store]
            env = child_env({}, 1, i if device == "cuda" else None)
            procs.append((subprocess.Popen([sys.executable, __file__, "--cli", store, *argv], env=env,
                                           stdout=subprocess.DEVNULL, stderr=err), err))
        ends = []
        for p, err in procs:
            if p.wait() != 0:
                err.seek(0)
                sys.exit(f"landscape grid --shard failed:\n{err.read()}")
            ends.append(time.monotonic() - t0)
        span = max(ends)
    rows = [sum(1 for y in range(width) if y % processes == i) for i in shards]  # one pair, one epoch: row y
    points = sum(rows) * width
    return {"processes": len(shards), "points": points, "seconds": span, "points_per_s": points / span,
            "process_seconds": ends}


def _fastest(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated measurements (noise on a shared VM only ever adds time); its other figures
    (memory) are the median."""
    out = {k: statistics.median(m[k] for m in measurements) for k in measurements[0]
           if isinstance(measurements[0][k], int | float)}
    out["per_point_ms"] = min(m["per_point_ms"] for m in measurements)
    out["runs"] = len(measurements)
    return out


def _fmt(v: float | None, spec: str = "9.1f") -> str:
    return f"{v:{spec}}" if v is not None and not math.isnan(v) else f"{'-':>{len(format(0.0, spec))}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: few points, one repeat, the library's settings only")
    parser.add_argument("--models", default="resnet,cnn")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each measured process (default: the cores)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measure forward and grid this many times, alternating, and compare the fastest "
                             "runs (this VM's timings drift by up to 30%% between minutes) [default: 3; 1 with --quick]")
    parser.add_argument("--settings", default=None,
                        help=f"comma-separated among {', '.join(repr(s) for s in SETTINGS)} (CPU; {LIBRARY!r} is "
                             f"always measured) [default: all; {LIBRARY!r} only with --quick or on cuda]")
    parser.add_argument("--points-per-pass", default="4,16",
                        help="the eval rows' points per pass besides 1 (where Evaluator has points_per_pass)")
    parser.add_argument("--precision", default="fp32", help="fp32, tf32 or bf16 (where the library has precision)")
    parser.add_argument("--scaling", type=int, default=None, metavar="P",
                        help="processes of the scaling measurement (default: the cores; on cuda: the GPUs); 0: skip")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (the tables on stderr)")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(prepare(args.prepare))
        return
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.cli:
        cli_child(args.cli[0], args.cli[1:])
        return
    run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> None:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or cores
    torch.set_num_threads(threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is false here (no CUDA GPU or no CUDA build of torch); "
                 "use --device cpu")
    out: TextIO = sys.stderr if args.json else sys.stdout

    def say(*parts: Any) -> None:
        print(*parts, file=out, flush=True)

    started = time.perf_counter()
    quick, device = args.quick, args.device
    repeat = args.repeat if args.repeat is not None else (1 if quick else 3)
    if args.settings:
        settings = [s.strip() for s in args.settings.split(",")]
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            sys.exit(f"unknown --settings {unknown[0]!r}: choose among {', '.join(repr(s) for s in SETTINGS)}")
        if LIBRARY not in settings:  # the main table's rows are measured with the library's settings
            settings.append(LIBRARY)
    else:
        settings = [LIBRARY] if quick or device == "cuda" else list(SETTINGS)
    if device == "cuda":
        settings = [LIBRARY]  # channels_last and the allocator are CPU settings
    extra_ks = [int(k) for k in args.points_per_pass.split(",") if k.strip()]
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    scaling = gpus if device == "cuda" else (args.scaling if args.scaling is not None else cores)
    shard_cli = scaling > 1

    widths = {"resnet": 2 if quick else 9, "cnn": 3 if quick else 15}  # grid and forward: width² points
    ref_points = {"resnet": 1 if quick else 4, "cnn": 2 if quick else 8}  # after one warm-up point
    ev_points = {"resnet": 4 if quick else 16, "cnn": 16 if quick else 64}
    ev_rounds = 1 if quick else 2
    gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else None
    report: dict[str, Any] = {
        "torch": torch.__version__, "device": device, "gpu": gpu_name, "gpus": gpus, "threads": threads,
        "cores": cores, "batches": BATCHES, "batch_size": BATCH_SIZE, "image": [1, 28, 28], "quick": quick,
        "repeat": repeat, "precision": args.precision,
        "goals": {"cpu_grid_over_forward_max": CPU_GRID_GOAL, "h100_grid_over_forward_max": GPU_GRID_GOAL,
                  "h100_reference_over_grid_min": GPU_SPEEDUP_GOAL, "scaling_min_fraction_of_P": SCALING_GOAL},
        "models": {}, "settings": [], "scaling": {}, "load_average_start": os.getloadavg()[0],
    }
    say(f"torch {torch.__version__}, device {device}{f' ({gpu_name}, {gpus} GPUs)' if gpu_name else ''}, "
        f"{threads} threads, {cores} cores; {BATCHES} batches of {BATCH_SIZE} 1x28x28 images per point; "
        f"precision {args.precision}; "
        f"load average {os.getloadavg()[0]:.1f}")
    if os.getloadavg()[0] > 0.5 * cores:
        say(f"warning: the machine is busy (load average {os.getloadavg()[0]:.1f} on {cores} cores): "
            "threaded timings and the scaling figures will be off")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    base = {"device": device, "threads": threads, "precision": args.precision}
    for model_name in models:
        prepared = subprocess.run([sys.executable, __file__, "--prepare", model_name], capture_output=True, text=True,
                                  check=True, env=child_env({}, threads)).stdout.strip().splitlines()[-1]
        width = widths.get(model_name, 7)
        entry: dict[str, Any] = {}
        try:
            for setting in settings:
                env_extra = SETTINGS[setting]
                library = setting == LIBRARY
                firsts = ["forward", "grid"]
                if library:
                    firsts += ["grid-no-gradient", "reference"]
                    if device == "cuda":
                        firsts.append("grid-auto")
                runs: dict[str, list[dict[str, Any]]] = {}
                ratios = []
                for i in range(max(1, repeat)):  # alternate, so that a slow minute hits both
                    for mode in firsts if i == 0 else ["forward", "grid"]:
                        spec = {**base, "mode": mode, "width": width, "model": model_name,
                                "points": ref_points.get(model_name, 4)}
                        runs.setdefault(mode, []).append(
                            measure(prepared, spec, PLAIN if mode == "reference" else env_extra))
                    ratios.append(runs["grid"][-1]["per_point_ms"] / runs["forward"][-1]["per_point_ms"])
                res = {mode: _fastest(values) for mode, values in runs.items()}
                f, g = res["forward"], res["grid"]
                report["settings"].append({"model": model_name, "setting": setting, "forward": f, "grid": g,
                                           "grid_over_forward": g["per_point_ms"] / f["per_point_ms"],
                                           "paired_ratios": ratios})
                say(f"{model_name:7s} {setting:27s} forward {f['per_point_ms']:8.1f} ms/point   grid "
                    f"{g['per_point_ms']:8.1f} ms/point   ratio {g['per_point_ms'] / f['per_point_ms']:.3f}   (paired "
                    f"ratios {', '.join(f'{r:.2f}' for r in ratios)}; grid set-up {g['setup_s']:.1f} s)")
                if library:
                    entry.update(res)
            ks = [1] + [k for k in extra_ks if k <= ev_points.get(model_name, 16)]
            spec = {**base, "mode": "evaluator", "points": ev_points.get(model_name, 16), "row": width, "ks": ks,
                    "rounds": ev_rounds}
            entry["evaluator"] = measure(prepared, spec, {})
            ev = entry["evaluator"]["per_point_ms"]
            say(f"{model_name:7s} reference {entry['reference']['per_point_ms']:8.1f} ms/point;  Evaluator in-process: "
                + ", ".join(f"k={k} {v:.1f}" for k, v in ev.items()) + " ms/point")
            if model_name == "cnn" and scaling > 1:
                points = 12 if quick else 48
                alone = scaling_evaluator(prepared, 1, points, width, device)
                together = scaling_evaluator(prepared, scaling, points, width, device)
                report["scaling"]["evaluator"] = {"alone": alone, "together": together,
                                                  "speedup": together["points_per_s"] / alone["points_per_s"]}
                if shard_cli:
                    w = (2 if quick else 8) * scaling  # rows: a multiple of P; each shard width²/P points
                    alone = scaling_shards(prepared, scaling, w, device, [0])
                    together = scaling_shards(prepared, scaling, w, device, list(range(scaling)))
                    report["scaling"]["shards"] = {"alone": alone, "together": together, "width": w,
                                                   "speedup": together["points_per_s"] / alone["points_per_s"]}
        finally:
            shutil.rmtree(prepared, ignore_errors=True)
        f, g, r = entry["forward"]["per_point_ms"], entry["grid"]["per_point_ms"], entry["reference"]["per_point_ms"]
        entry["ratios"] = {"grid_over_forward": g / f, "reference_over_grid": r / g}
        if "grid-auto" in entry:
            entry["ratios"]["reference_over_grid_auto"] = r / entry["grid-auto"]["per_point_ms"]
            entry["ratios"]["grid_auto_over_forward"] = entry["grid-auto"]["per_point_ms"] / f
        report["models"][model_name] = entry
    if scaling <= 1:
        report["scaling"]["note"] = ("skipped: one GPU" if device == "cuda" else "skipped: --scaling 0 or 1")
    report["seconds"] = time.perf_counter() - started
    report["load_average_end"] = os.getloadavg()[0]

    print_tables(report, models, say)
    if args.json:
        print(json.dumps(report, indent=1))


def print_tables(report: dict[str, Any], models: list[str], say: Any) -> None:
    device = report["device"]
    ks = sorted({int(k) for m in models for k in report["models"][m]["evaluator"]["per_point_ms"]})
    auto = any("grid-auto" in report["models"][m] for m in models)
    say(f"\nms per grid point on {device}{' (' + report['gpu'] + ')' if report['gpu'] else ''}, {BATCHES} batches of "
        f"{BATCH_SIZE} 1x28x28 images, {report['threads']} threads, precision {report['precision']}; forward and grid: "
        f"fastest of {report['repeat']}, library settings; reference: plain PyTorch.\n{GOALS}.")
    head = (f"{'model':7s} {'reference':>9s} {'forward':>9s} {'grid':>9s} {'grid/fwd':>9s} {'ref/grid':>9s}"
            + (f" {'grid auto':>9s} {'ref/auto':>9s}" if auto else "")
            + "".join(f" {f'eval k={k}':>10s}" for k in ks))
    say(head)
    for m in models:
        e = report["models"][m]
        line = (f"{m:7s} {_fmt(e['reference']['per_point_ms'])} {_fmt(e['forward']['per_point_ms'])} "
                f"{_fmt(e['grid']['per_point_ms'])} {_fmt(e['ratios']['grid_over_forward'], '8.3f')}x "
                f"{_fmt(e['ratios']['reference_over_grid'], '8.1f')}x")
        if auto:
            ga = e.get("grid-auto", {}).get("per_point_ms")
            line += f" {_fmt(ga)} {_fmt(e['ratios'].get('reference_over_grid_auto'), '8.1f')}x"
        line += "".join(f" {_fmt(e['evaluator']['per_point_ms'].get(str(k)), '10.1f')}" for k in ks)
        say(line)
    if auto:
        say("grid auto: the points per pass `grid` chose: " + ", ".join(
            f"{m} k={report['models'][m]['grid-auto'].get('points_per_pass', '?')}" for m in models
            if "grid-auto" in report["models"][m]))
    if device == "cpu":
        verdicts = [f"{m} {'meets' if report['models'][m]['ratios']['grid_over_forward'] <= CPU_GRID_GOAL else 'MISSES'}"
                    for m in models]
        say(f"CPU goal grid <= {CPU_GRID_GOAL:.2f}x forward: {', '.join(verdicts)}")
    else:
        for m in models:
            r = report["models"][m]["ratios"]
            say(f"{m}: grid/forward {r['grid_over_forward']:.3f} (goal <= {GPU_GRID_GOAL}), reference/grid "
                f"{r['reference_over_grid']:.1f}x (goal >= {GPU_SPEEDUP_GOAL:.0f}x; the goals are for an H100)")

    rows = [s for s in report["settings"] if s["setting"] == LIBRARY]
    if rows:
        say("\npeak memory of the measured phase (library defaults" + (", CUDA allocations" if device == "cuda" else "")
            + "):")
    for s in rows:
        f, g = s["forward"], s["grid"]
        lean = report["models"][s["model"]]["grid-no-gradient"]
        bound = f["peak_mb"] + f["directions_mb"]
        say(f"{s['model']:7s} forward {f['peak_mb']:6.1f} MB + directions {f['directions_mb']:5.1f} MB = {bound:6.1f} MB;"
            f"  grid --no-gradient {lean['peak_mb']:6.1f} MB (ratio {lean['peak_mb'] / bound:.2f}, goal <= 1.5);"
            f"  grid {g['peak_mb']:6.1f} MB (ratio {g['peak_mb'] / bound:.2f}: rows {g['rows_peak_mb']:.1f} MB, then"
            f" the centre gradient's backward pass)")
    measured = {s["setting"] for s in report["settings"]}
    if set(SETTINGS) <= measured:
        say("\nspeed-ups of the library defaults over plain PyTorch (same model, same measure):")
        for m in models:
            by = {s["setting"]: s for s in report["settings"] if s["model"] == m}
            for mode in ("forward", "grid"):
                plain = by["defaults"][mode]["per_point_ms"]
                say(f"{m:7s} {mode:7s} allocator x{plain / by['+allocator'][mode]['per_point_ms']:.2f}   "
                    f"allocator+channels_last x{plain / by[LIBRARY][mode]['per_point_ms']:.2f}")

    sc = report["scaling"]
    if "note" in sc:
        say(f"\nscaling: {sc['note']}")
    for name, label in (("evaluator", "Evaluator processes released together"),
                        ("shards", "landscape grid --shard i/P processes on one grid")):
        if name not in sc:
            continue
        a, t = sc[name]["alone"], sc[name]["together"]
        p = t["processes"]
        say(f"\nscaling, cnn, {label} ({'1 GPU' if device == 'cuda' else '1 thread'} each): one alone "
            f"{a['points_per_s']:.2f} points/s ({a['points']} points in {a['seconds']:.1f} s); {p} together "
            f"{t['points_per_s']:.2f} points/s ({t['points']} points in {t['seconds']:.1f} s): x{sc[name]['speedup']:.2f}"
            f" (goal >= {SCALING_GOAL * p:.1f}: {'met' if sc[name]['speedup'] >= SCALING_GOAL * p else 'MISSED'})")
    if "shards" not in sc and "evaluator" in sc:
        say("(no `landscape grid --shard` in this version: the Evaluator processes only)")
    say(f"\ntotal {report['seconds']:.0f} s; load average {report['load_average_start']:.1f} at the start, "
        f"{report['load_average_end']:.1f} at the end")


if __name__ == "__main__":
    main()
