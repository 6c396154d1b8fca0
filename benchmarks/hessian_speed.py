"""Hessian-vector product speed and memory against a forward + backward pass, side by side in one run.

For `resnet` and `cnn` on 28x28 inputs (the synthetic dataset of grid_speed.py: no download), and
for a small Transformer encoder (`attention`: the 28 rows of an image as 28 tokens, one
`nn.TransformerEncoderLayer`) and a GRU (`gru`, over the same 28 rows), all factories of this file
trained for 0 epochs, on the grid's batches (3 x 256 images, BatchNorm in training mode), each
measurement in its own fresh process, alternating, `--repeat` times, the fastest compared (noise
on a shared VM only adds time):

  backward  the loss of each batch, forward and backward (what one training step costs, with the
            default kernels: fused attention, cuDNN), per set of batches, in the contiguous layout
            the Hessian uses (and, for convolutional models, in channels_last: how the library trains);
  db        one Hessian-vector product over the same batches by double backward (Pearlmutter's
            trick), as `landscape hessian` computes them, over the parameters a grid perturbs: each
            batch's gradient graph is kept from one product to the next (where it fits in memory),
            so a product after the first is one backward pass through it ("1st": the first product,
            which makes the graphs, after a warm-up product, as a ratio too);
  db-fresh  the same, every product making its gradient graph again (forward, backward, backward);
  fr        the same product by forward-over-reverse (torch.func.jvp of torch.func.grad).

The products run under the kernels `landscape hessian` forces (math attention, cuDNN off for
RNNs). Each ratio is product / forward+backward (goal: <= 2.5); "agree" is the largest difference
of the double-backward and forward-over-reverse products of one vector, relative to its largest
entry. Memory is the peak resident set of the measured phase above what the process held after
loading; "fastest" is the quickest product.

    python benchmarks/hessian_speed.py            # ~4 minutes on 2 cores
    python benchmarks/hessian_speed.py --quick    # one round, fewer products: ~1.5 minutes on 2 cores
    python benchmarks/hessian_speed.py --models attention,gru
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grid_speed import BATCH_SIZE, BATCHES, register_bench_dataset, reset_peak, status_kb

GOAL = 2.5
BUILTIN = ("resnet", "cnn")
# measured products: (method, bytes of gradient graphs kept between products: None the library's default, 0 none)
PRODUCTS: dict[str, tuple[str, int | None]] = {"db": ("double-backward", None), "db-fresh": ("double-backward", 0),
                                               "fr": ("forward-over-reverse", None)}


# --- the factories of the models that are not built in (`./hessian_speed.py:attention`) ---

def attention(input_shape: tuple[int, ...], num_outputs: int) -> Any:
    """The rows of an image as tokens: a linear embedding, one Transformer encoder layer, a mean, a linear head."""
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(input_shape[-1], 64)
            self.encoder = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.head = nn.Linear(64, num_outputs)

        def forward(self, x: Any) -> Any:
            tokens = self.embed(x.reshape(x.shape[0], input_shape[-2], input_shape[-1]))
            return self.head(self.encoder(tokens).mean(1))

    return Encoder()


def gru(input_shape: tuple[int, ...], num_outputs: int) -> Any:
    """The rows of an image as a sequence: a GRU, its last state, a linear head."""
    from torch import nn

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(input_shape[-1], 64, batch_first=True)
            self.head = nn.Linear(64, num_outputs)

        def forward(self, x: Any) -> Any:
            out, _ = self.rnn(x.reshape(x.shape[0], input_shape[-2], input_shape[-1]))
            return self.head(out[:, -1])

    return Recurrent()


def reference(model_name: str) -> str:
    """What `train` is given for `model_name`: a built-in's name or this file's factory."""
    return model_name if model_name in BUILTIN else f"{Path(__file__).resolve()}:{model_name}"


# --- the measured processes ---

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
    method, first, kept = "", 0.0, 0
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
        method, keep = PRODUCTS[mode]
        v = np.random.default_rng(0).standard_normal(sum(weights[k].numel() for k in names))
        with operator(model, batches, names, "train", method=method, keep_bytes=0) as op:
            op(v)  # warm-up (the process's first passes allocate and choose kernels)
        with operator(model, batches, names, "train", method=method, keep_bytes=keep) as op:
            t0 = time.perf_counter()
            op(v)  # the first product makes the gradient graphs (kept if they fit)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(n):
                op(v)
            seconds = (time.perf_counter() - t0) / n
            method, kept = op.method, op.kept_bytes
    return {"ms": seconds * 1000, "first_ms": first * 1000, "peak_mb": (status_kb("VmHWM") - start) / 1024,
            "parameters": sum(weights[k].numel() for k in names), "method": method,  # type: ignore[dict-item]
            "kept_mb": kept / 2**20, "channels_last": cl}


def measure(store: str, mode: str, n: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", store, mode, str(n)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def agree(store: str) -> float:
    """The largest difference of the two products of one vector, relative to the largest entry."""
    out = subprocess.run([sys.executable, __file__, "--agree", store], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"comparing the products failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def child_agree(store_path: str) -> float:
    import numpy as np
    import torch

    from landscape_cli import Store
    from landscape_cli.data import load_dataset
    from landscape_cli.directions import perturbed_names
    from landscape_cli.kernel.hvp import operator
    from landscape_cli.models import checkpoints

    register_bench_dataset()
    store = Store(store_path)
    [run_id] = store.run_ids()
    model = checkpoints.build_model(checkpoints.load(store.run_dir(run_id) / "checkpoints/epoch-0000.pt"))
    data = load_dataset("bench-28")
    batches = [(data.prepare(data.train_x[:64], torch.device("cpu"), False), data.train_y[:64])]
    names = perturbed_names(dict(model.named_parameters()))
    products = []
    for method in ("double-backward", "forward-over-reverse"):
        with operator(model, batches, names, "train", method=method) as op:
            products.append(op(np.random.default_rng(0).standard_normal(op.size)))
    return float(np.abs(products[0] - products[1]).max() / np.abs(products[0]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet,cnn,attention,gru")
    parser.add_argument("--repeat", type=int, default=None, help="rounds of measurements (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="one round of fewer products: a smoke test")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--agree", metavar="STORE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    if args.agree:
        print(child_agree(args.agree))
        return
    import torch

    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {BATCHES} batches of {BATCH_SIZE} 1x28x28 images per product; fastest of "
          f"{repeat}; ratio = product / forward+backward (goal <= {GOAL})", flush=True)
    print(f"{'model':9s} {'parameters':>10s} {'fwd+bwd':>9s} {'ch.last':>9s} | {'double backward':>16s} {'ratio':>5s} "
          f"{'1st':>5s} | {'db, no graphs kept':>18s} {'ratio':>5s} | {'fwd-over-rev':>12s} {'ratio':>5s} | "
          f"{'agree':>7s} | {'peak MB: fwd+bwd / db / db fresh / fr':>37s} | fastest", flush=True)
    for model_name in args.models.split(","):
        store = subprocess.run([sys.executable, str(Path(__file__).with_name("grid_speed.py")), "--prepare",
                                reference(model_name)], capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
        try:
            n = {"resnet": 2, "cnn": 6}.get(model_name, 4) if args.quick else {"resnet": 3, "cnn": 10}.get(model_name, 6)
            modes = ["backward", *PRODUCTS] + (["backward-channels-last"] if model_name in BUILTIN else [])
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
            for _ in range(max(1, repeat)):
                for mode in runs:
                    runs[mode].append(measure(store, mode, n))
            ms = {mode: min(r["ms"] for r in rs) for mode, rs in runs.items()}
            mb = {mode: statistics.median(r["peak_mb"] for r in rs) for mode, rs in runs.items()}
            b = ms["backward"]
            cl = f"{ms['backward-channels-last']:7.1f}ms" if "backward-channels-last" in ms else f"{'-':>9s}"
            first = min(r["first_ms"] for r in runs["db"])
            used = runs["fr"][0]["method"]  # what forward-over-reverse ran (a model without forward AD falls back)
            fr = f"{ms['fr']:10.1f}ms {ms['fr'] / b:5.2f}" if used == "forward-over-reverse" else \
                f"{'(fell back)':>12s} {'-':>5s}"
            fastest = min(("db", "db-fresh", "fr") if used == "forward-over-reverse" else ("db", "db-fresh"),
                          key=lambda m: ms[m])
            print(f"{model_name:9s} {int(runs['db'][0]['parameters']):>10,} {b:7.1f}ms {cl} | {ms['db']:14.1f}ms "
                  f"{ms['db'] / b:5.2f} {first / b:5.2f} | {ms['db-fresh']:16.1f}ms {ms['db-fresh'] / b:5.2f} | {fr} | "
                  f"{agree(store):7.1e} | {mb['backward']:8.1f} / {mb['db']:6.1f} / {mb['db-fresh']:6.1f} / "
                  f"{mb['fr']:6.1f}  (graphs kept {runs['db'][0]['kept_mb']:.0f} MB) | {fastest}", flush=True)
        finally:
            shutil.rmtree(Path(store), ignore_errors=True)


if __name__ == "__main__":
    main()
