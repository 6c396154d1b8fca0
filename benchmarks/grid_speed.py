"""Grid speed and memory against the bare forward pass, measured side by side in one run.

For `resnet` and `cnn` on 28x28 inputs (a synthetic 1x28x28 dataset registered here: no download),
each configuration runs in its own fresh process, one after another (never two at once):

  forward  the model's bare forward passes on the grid's batches (3 x 256 images, BatchNorm in
           training mode as in the grid), per point = one pass over the batches;
  grid     `landscape_cli.grid` on a checkpoint of the same model, per point = time spent computing
           and writing rows / points (set-up reported apart).

and for three settings: plain PyTorch defaults, + the glibc allocator settings, + channels_last
(both are what the library uses by default). Memory is the peak resident set of the measured
phase above what the process held before it (after its imports; the checkpoint was made by another
process): the forward phase loads the checkpoint, model and batches and runs the passes; the grid
phase runs `grid()` (the same, plus the centre copy of the weights, the directions and Zarr I/O).
Each (forward, grid) pair is measured `--repeat` times, alternating, and the fastest of each is
compared: on a shared VM the per-process times drift by up to 30 % from one minute to the next,
and noise only ever adds time.

    python benchmarks/grid_speed.py            # ~15 minutes on 2 cores (3 alternating repeats)
    python benchmarks/grid_speed.py --quick    # fewer points, for a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCHES, BATCH_SIZE = 3, 256
SETTINGS = {
    "defaults": {"LANDSCAPE_NO_MALLOPT": "1", "LANDSCAPE_NO_CHANNELS_LAST": "1"},
    "+allocator": {"LANDSCAPE_NO_CHANNELS_LAST": "1"},
    "+allocator +channels_last": {},
}


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


def child(store_path: str, mode: str, width: int) -> dict[str, float]:
    import torch

    from landscape_cli import Store
    from landscape_cli.grids import grid

    register_bench_dataset()
    store = Store(store_path)
    [run_id] = store.run_ids()
    run = type("Run", (), {"run_id": run_id, "path": store.run_dir(run_id)})
    params = sum(p.numel() for p in run_model_params(run.path))
    gc.collect()
    start_rss = reset_peak()
    if mode in ("grid", "grid-no-gradient"):
        from landscape_cli import evaluate

        rows_peak = []
        center = evaluate.Affine.center

        def center_after_rows(plane, *args):  # type: ignore[no-untyped-def]
            rows_peak.append((status_kb("VmHWM") - start_rss) / 1024)
            return center(plane, *args)

        evaluate.Affine.center = center_after_rows  # type: ignore[method-assign]
        t0 = time.perf_counter()
        result = grid(run.run_id, width=width, pairs=1, batches=BATCHES, batch_size=BATCH_SIZE, store=store,
                      progress=False, device="cpu", gradient=mode == "grid")
        total = time.perf_counter() - t0
        points = width * width
        per_point = result.seconds_rows / points
        setup = total - result.seconds_rows
        extra = {"rows_peak_mb": max(rows_peak)}
    else:
        from landscape_cli import _perf, checkpoints
        from landscape_cli.data import load_dataset

        _perf.tune_allocator()
        ckpt = checkpoints.load(run.path / "checkpoints/epoch-0000.pt")
        model = checkpoints.build_model(ckpt)
        for m in model.modules():  # BatchNorm as the grid runs it: batch statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
        data = load_dataset("bench-28")
        cl = _perf.use_channels_last(model, torch.device("cpu"))
        if cl:
            model = model.to(memory_format=torch.channels_last)
        batches = []
        for i in range(BATCHES):
            batches.append((data.prepare(data.train_x[i * BATCH_SIZE:(i + 1) * BATCH_SIZE], torch.device("cpu"), cl),
                            data.train_y[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]))
        with torch.no_grad():
            for x, _ in batches:  # warm-up
                model(x)
            n = width * width
            t0 = time.perf_counter()
            for _ in range(n):
                for x, y in batches:
                    torch.nn.functional.cross_entropy(model(x), y).item()
            per_point = (time.perf_counter() - t0) / n
        setup = 0.0
        extra = {}
    return {
        **extra,
        "per_point_ms": per_point * 1000,
        "setup_s": setup,
        "peak_mb": (status_kb("VmHWM") - start_rss) / 1024,
        "directions_mb": 2 * params * 4 / 2**20,
        "parameters": params,
    }


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
    from landscape_cli import checkpoints

    model = checkpoints.build_model(checkpoints.load(run_path / "checkpoints/epoch-0000.pt"))
    return list(model.parameters())


def measure(prepared: str, mode: str, width: int, env_extra: dict[str, str]) -> dict[str, float]:
    """One measurement in a fresh process, on a fresh copy of the prepared store."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LANDSCAPE_NO_")}, **env_extra}
    store = tempfile.mkdtemp(prefix="landscape-bench-")
    shutil.copytree(prepared, store, dirs_exist_ok=True)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", store, mode, str(width)], env=env,
                             capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _fastest(measurements: list[dict[str, float]]) -> dict[str, float]:
    """The fastest of repeated measurements (noise on a shared VM only ever adds time); its other figures
    (memory) are the median."""
    out = {k: statistics.median(m[k] for m in measurements) for k in measurements[0]}
    out["per_point_ms"] = min(m["per_point_ms"] for m in measurements)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer points (smoke test)")
    parser.add_argument("--models", default="resnet,cnn")
    parser.add_argument("--repeat", type=int, default=3,
                        help="measure forward and grid this many times, alternating, and compare the fastest "
                             "runs (this VM's timings drift by up to 30%% between minutes)")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "MODE", "WIDTH"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(prepare(args.prepare))
        return
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    widths = {"resnet": 4 if args.quick else 9, "cnn": 5 if args.quick else 15}
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{BATCHES} batches of {BATCH_SIZE} 1x28x28 images per point")
    rows = []
    for model_name in args.models.split(","):
        prepared = subprocess.run([sys.executable, __file__, "--prepare", model_name], capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[-1]
        for setting, env_extra in SETTINGS.items():
            modes = ["forward", "grid"] + (["grid-no-gradient"] if not env_extra else [])
            runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
            ratios = []
            for i in range(max(1, args.repeat)):  # alternate, so that a slow minute hits both
                for mode in modes if i == 0 else ["forward", "grid"]:
                    runs[mode].append(measure(prepared, mode, widths.get(model_name, 7), env_extra))
                ratios.append(runs["grid"][-1]["per_point_ms"] / runs["forward"][-1]["per_point_ms"])
            res = {mode: _fastest(values) for mode, values in runs.items()}
            rows.append((model_name, setting, res))
            f, g = res["forward"], res["grid"]
            print(f"{model_name:7s} {setting:27s} forward {f['per_point_ms']:8.1f} ms/point   grid {g['per_point_ms']:8.1f} "
                  f"ms/point   ratio {g['per_point_ms'] / f['per_point_ms']:.3f}   (paired ratios "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; grid set-up {g['setup_s']:.1f} s)", flush=True)
        shutil.rmtree(prepared, ignore_errors=True)
    print("\npeak memory of the measured phase (library defaults):")
    for model_name, setting, res in rows:
        if setting != "+allocator +channels_last":
            continue
        f, g, lean = res["forward"], res["grid"], res["grid-no-gradient"]
        bound = f["peak_mb"] + f["directions_mb"]
        print(f"{model_name:7s} forward {f['peak_mb']:6.1f} MB + directions {f['directions_mb']:5.1f} MB = {bound:6.1f} MB;"
              f"  grid --no-gradient {lean['peak_mb']:6.1f} MB (ratio {lean['peak_mb'] / bound:.2f}, goal <= 1.5);"
              f"  grid {g['peak_mb']:6.1f} MB (ratio {g['peak_mb'] / bound:.2f}: rows {g['rows_peak_mb']:.1f} MB, then"
              f" the centre gradient's backward pass)")
    print("\nspeed-ups of the library defaults over plain PyTorch (same model, same measure):")
    for model_name in args.models.split(","):
        by = {s: r for m, s, r in rows if m == model_name}
        for mode in ("forward", "grid"):
            base = by["defaults"][mode]["per_point_ms"]
            print(f"{model_name:7s} {mode:7s} allocator x{base / by['+allocator'][mode]['per_point_ms']:.2f}   "
                  f"allocator+channels_last x{base / by['+allocator +channels_last'][mode]['per_point_ms']:.2f}")


if __name__ == "__main__":
    main()
