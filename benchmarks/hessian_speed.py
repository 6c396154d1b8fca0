"""Hessian-vector product speed and memory against a forward + backward pass, side by side in one run.

For `resnet` and `cnn` on 28x28 inputs (the synthetic dataset of grid_speed.py: no download), on
the grid's batches (3 x 256 images, BatchNorm in training mode), each measurement in its own fresh
process, alternating, `--repeat` times, the fastest compared (noise on a shared VM only adds time):

  backward  the loss of each batch, forward and backward (what one training step costs), per set of batches,
            in the contiguous layout the Hessian uses and in channels_last (how the library trains);
  hvp       one Hessian-vector product over the same batches (double backward: Pearlmutter's trick),
            as `landscape hessian` computes them, over the parameters a grid perturbs.

Memory is the peak resident set of the measured phase above what the process held after loading.

    python benchmarks/hessian_speed.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from grid_speed import BATCH_SIZE, BATCHES, register_bench_dataset, reset_peak, status_kb


def child(store_path: str, mode: str, n: int) -> dict[str, float]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from landscape_cli import Store
    from landscape_cli.data import load_dataset
    from landscape_cli.directions import perturbed_names
    from landscape_cli.kernel import device as perf
    from landscape_cli.kernel.hvp import operator
    from landscape_cli.models import checkpoints

    register_bench_dataset()
    perf.tune_allocator()
    store = Store(store_path)
    [run_id] = store.run_ids()
    model = checkpoints.build_model(checkpoints.load(store.run_dir(run_id) / "checkpoints/epoch-0000.pt"))
    # the library trains in channels_last (convolutional models on CPU) but computes Hessians without it
    cl = mode == "backward-channels-last" and perf.use_channels_last(model, torch.device("cpu"))
    if cl:
        model = model.to(memory_format=torch.channels_last)
    data = load_dataset("bench-28")
    batches = [(data.prepare(data.train_x[i * BATCH_SIZE:(i + 1) * BATCH_SIZE], torch.device("cpu"), cl),
                data.train_y[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]) for i in range(BATCHES)]
    weights = dict(model.named_parameters())
    names = perturbed_names(weights)
    start = reset_peak()
    if mode.startswith("backward"):
        model.train()

        def step() -> None:
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()

        step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        seconds = (time.perf_counter() - t0) / n
    else:
        with operator(model, batches, names, "train") as op:
            v = np.random.default_rng(0).standard_normal(op.size)
            op(v)  # warm-up
            t0 = time.perf_counter()
            for _ in range(n):
                op(v)
            seconds = (time.perf_counter() - t0) / n
    return {"ms": seconds * 1000, "peak_mb": (status_kb("VmHWM") - start) / 1024,
            "parameters": sum(weights[k].numel() for k in names)}


def measure(store: str, mode: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", store, mode, str(n)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet,cnn")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("STORE", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{BATCHES} batches of {BATCH_SIZE} 1x28x28 images per product")
    for model_name in args.models.split(","):
        store = subprocess.run([sys.executable, str(Path(__file__).with_name("grid_speed.py")), "--prepare", model_name],
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        n = {"resnet": 3, "cnn": 10}.get(model_name, 5)
        runs: dict[str, list[dict[str, float]]] = {"backward": [], "backward-channels-last": [], "hvp": []}
        for _ in range(max(1, args.repeat)):
            for mode in runs:
                runs[mode].append(measure(store, mode, n))
        b = min(r["ms"] for r in runs["backward"])
        bcl = min(r["ms"] for r in runs["backward-channels-last"])
        h = min(r["ms"] for r in runs["hvp"])
        mem_b = statistics.median(r["peak_mb"] for r in runs["backward"])
        mem_h = statistics.median(r["peak_mb"] for r in runs["hvp"])
        print(f"{model_name:7s} {int(runs['hvp'][0]['parameters']):>9,} parameters   forward+backward {b:7.1f} ms "
              f"(channels_last {bcl:7.1f} ms)   Hessian-vector product {h:7.1f} ms   ratio {h / b:.2f} (goal <= 5; "
              f"{h / bcl:.2f} against channels_last)   peak memory {mem_b:6.1f} MB vs {mem_h:6.1f} MB "
              f"(ratio {mem_h / max(mem_b, 1e-9):.2f})", flush=True)
        import shutil

        shutil.rmtree(Path(store), ignore_errors=True)


if __name__ == "__main__":
    main()
