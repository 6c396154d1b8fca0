"""What durable commits cost: a grid and a training with fsync on and off, side by side in one run.

Every file of the store is committed in a durable order (its data fsynced, then renamed, then its
directory fsynced; Zarr chunks through `landscape_cli.store.durable.DurableStore`). This measures the
price of those fsyncs on the two commands that commit most often:

  grid   the cnn grid of `grid_speed.py` (its synthetic 1x28x28 dataset and its epoch-0 run: no
         download), `--width` points a side, one pair, 3 batches of 256 images: a row per `width`
         points, each row three chunks (loss, accuracy, its done-mark) committed in order; timed from
         the call to `grid()` to its return (set-up, rows and metadata), and the rows alone;
  train  `train("cnn", "digits", epochs=E)` (`landscape train cnn digits --epochs E`) in a fresh store:
         a checkpoint, the optimizer state and run.json committed per epoch; timed around the call.

Each configuration runs in its own fresh process on a fresh copy of the store, fsync on and off
alternating (`landscape_cli._io.FSYNC`, an internal switch that only this benchmark turns off), `--repeat`
times; the fastest of each is compared (on a shared VM noise only ever adds time). Goal: on / off <= 1.03.
`fsyncs` is how many fsync calls a run made with fsync on, and `in fsync` the time during which at
least one of them was running (they run in parallel threads) over the fastest run with fsync off: the
wait they add, without the noise of the computation.

    python benchmarks/durability.py            # ~5 minutes on 2 idle cores (5 alternating repeats)
    python benchmarks/durability.py --quick    # a smoke test: a 5-wide grid, one epoch, 2 repeats (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grid_speed import BATCH_SIZE, BATCHES, child_env, register_bench_dataset, store_copy

GOAL = 1.03


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: the grid or the training, fsync on or off."""
    import torch

    from landscape_cli import _io

    torch.set_num_threads(spec["threads"])
    _io.FSYNC = spec["fsync"]
    spans: list[tuple[float, float]] = []
    fsync = os.fsync

    def counted(fd: int) -> None:
        t = time.perf_counter()
        fsync(fd)
        spans.append((t, time.perf_counter()))

    os.fsync = counted
    out: dict[str, Any] = {}
    if spec["what"] == "grid":
        from landscape_cli import Store
        from landscape_cli.engine.compute import grid

        register_bench_dataset()
        store = Store(spec["store"])
        [run_id] = store.run_ids()
        t0 = time.perf_counter()
        result = grid(run_id, width=spec["width"], pairs=1, batches=BATCHES, batch_size=BATCH_SIZE, store=store,
                      progress=False, device="cpu")
        out["seconds"] = time.perf_counter() - t0
        out["rows_seconds"] = result.seconds_rows
        out["rows"] = result.rows_done
    else:
        from landscape_cli import train

        t0 = time.perf_counter()
        train("cnn", "digits", epochs=spec["epochs"], store=spec["store"], data_dir=spec["data"], progress=False,
              device="cpu")
        out["seconds"] = time.perf_counter() - t0
    out["fsyncs"], out["fsync_seconds"] = len(spans), covered(spans)
    return out


def covered(spans: list[tuple[float, float]]) -> float:
    """The time during which at least one fsync was running (fsyncs run in parallel threads: their union)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def measure(spec: dict[str, Any], prepared: str | None) -> dict[str, Any]:
    """`child(spec)` in a fresh process, on a fresh copy of the prepared store (or a new empty one)."""
    if prepared is not None:
        with store_copy(prepared) as store:
            return _run({**spec, "store": store})
    store = tempfile.mkdtemp(prefix="landscape-bench-")
    try:
        return _run({**spec, "store": store})
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False, env=child_env({}, spec["threads"]))
    if out.returncode != 0:
        sys.exit(f"{spec['what']} (fsync {'on' if spec['fsync'] else 'off'}) failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: a 5-wide grid, one epoch, 2 repeats")
    parser.add_argument("--width", type=int, default=None, help="points a side of the grid [default: 15; 5 with --quick]")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the training [default: 3; 1 with --quick]")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measurements of each configuration, alternating on and off [default: 5; 2 with --quick]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: the cores)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (the table on stderr)")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or cores
    width = args.width or (5 if args.quick else 15)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 3)
    repeat = args.repeat or (2 if args.quick else 5)
    out = sys.stderr if args.json else sys.stdout

    def say(*parts: Any) -> None:
        print(*parts, file=out, flush=True)

    say(f"{threads} threads, {cores} cores, load average {os.getloadavg()[0]:.1f}; grid cnn {width}x{width}, "
        f"{BATCHES} batches of {BATCH_SIZE}; train cnn digits --epochs {epochs}; best of {repeat}, alternating")
    prepared = subprocess.run([sys.executable, str(Path(__file__).with_name("grid_speed.py")), "--prepare", "cnn"],
                              capture_output=True, text=True, check=True,
                              env=child_env({}, threads)).stdout.strip().splitlines()[-1]
    data = tempfile.mkdtemp(prefix="landscape-bench-data-")
    report: dict[str, Any] = {"threads": threads, "cores": cores, "width": width, "epochs": epochs, "repeat": repeat,
                              "goal": GOAL, "load_average_start": os.getloadavg()[0], "results": {}}
    try:
        base = {"threads": threads, "width": width, "epochs": epochs, "data": data}
        measure({**base, "what": "train", "fsync": False, "epochs": 0}, None)  # the dataset cached before timing
        runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for i in range(repeat):
            for what in ("grid", "train"):
                for on in ((True, False) if i % 2 == 0 else (False, True)):  # alternate which goes first
                    spec = {**base, "what": what, "fsync": on}
                    runs.setdefault((what, on), []).append(measure(spec, prepared if what == "grid" else None))
    finally:
        shutil.rmtree(prepared, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    say(f"{'':18s} {'fsync on':>10s} {'fsync off':>10s} {'on / off':>9s}   {'fsyncs':>6s} {'in fsync':>9s}   "
        "paired ratios")
    keys = [("grid", "seconds", "grid (whole)"), ("grid", "rows_seconds", "grid (rows)"), ("train", "seconds", "train")]
    for what, key, label in keys:
        on = min(r[key] for r in runs[(what, True)])
        off = min(r[key] for r in runs[(what, False)])
        paired = [a[key] / b[key] for a, b in zip(runs[(what, True)], runs[(what, False)], strict=True)]
        entry: dict[str, Any] = {"on_s": on, "off_s": off, "ratio": on / off, "paired": paired}
        fsyncs = share = ""
        if key == "seconds":  # (the fsyncs of the whole command: not comparable with the rows alone)
            fastest = min(runs[(what, True)], key=lambda r: r[key])
            entry.update(fsyncs=fastest["fsyncs"], fsync_s=fastest["fsync_seconds"],
                         fsync_share=fastest["fsync_seconds"] / off)
            fsyncs, share = str(fastest["fsyncs"]), f"{100 * entry['fsync_share']:.1f}%"
        report["results"][label] = entry
        say(f"{label:18s} {on:9.3f}s {off:9.3f}s {on / off:9.3f}   {fsyncs:>6s} {share:>9s}   "
            f"{', '.join(f'{p:.3f}' for p in paired)}")
    worst = max(r["ratio"] for r in report["results"].values())
    say(f"goal: on / off <= {GOAL:.2f}: {'met' if worst <= GOAL else 'NOT met'} (worst {worst:.3f}); "
        f"load average {os.getloadavg()[0]:.1f} at the end")
    report["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
