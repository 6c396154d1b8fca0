"""A GPT-2-sized language model's plane on CPU: time per point and peak memory against their bounds.

A 124 M-parameter decoder (GPT-2 small's shape: 12 layers, 12 heads, 768 dimensions, a 50 257-token
vocabulary, the head tied to the token embedding; the library's `gpt` architecture, random
initialization) is stored as a run (its untrained epoch 0, made by `landscape_cli.train` with
`epochs=0`), then `landscape_cli.grid` computes a 3 x 3 plane on one batch of 8 sequences x 256
tokens (no centre gradient: values only), once over every weight and once over one block
(`--layer 'transformer.h.5.*'`). Each measurement runs in its own fresh process, one after another:

  forward  the model loaded from the checkpoint, one forward pass and loss on the batch: its peak
           above the process's start is the model plus the activations (logits [8, 256, 50257] are
           412 MB of them); forward s = the fastest of 2 passes;
  grid     the grid (full / one block): s/point = the rows' time / 9, peak above the start.

Bounds (goal: peak <= bound): the full plane <= model + (base copy + two directions) of the perturbed
weights + activations + 15 %; one block <= model + 3 x the block + activations + 15 %. "model" is
the parameters' bytes, "activations" the forward phase's peak minus the model.

    python benchmarks/lm_scale.py             # ~4 minutes on 2 idle cores
    python benchmarks/lm_scale.py --small     # a smoke test on a 2-layer, 128-dimension model
    python benchmarks/lm_scale.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grid_speed import reset_peak, status_kb

HERE = Path(__file__).resolve()
SEQUENCES, TOKENS = 8, 256
GPT2 = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab": 50257}
SMALL = {"n_layer": 2, "n_head": 2, "n_embd": 128, "vocab": 1000}
BLOCK = "transformer.h.{}.*"
SLACK = 1.15


def shape() -> dict[str, int]:
    return json.loads(os.environ["LM_SCALE_SHAPE"])


def make_model(input_shape: tuple[int, ...], num_outputs: int) -> Any:
    """The model factory the run records: the library's GPT at the benchmark's shape."""
    from landscape_cli.models.gpt import GPT

    s = shape()
    return GPT(vocab_size=num_outputs, block_size=int(input_shape[0]), n_layer=s["n_layer"], n_head=s["n_head"],
               n_embd=s["n_embd"])


def make_data() -> dict[str, Any]:
    """Random token sequences: inputs [N, 256] and their next tokens [N, 256] (a causal LM's targets)."""
    import torch

    s = shape()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, s["vocab"], (2 * SEQUENCES, TOKENS + 1), generator=g)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    return {"train": (x[:SEQUENCES], y[:SEQUENCES]), "val": (x[SEQUENCES:], y[SEQUENCES:]),
            "task": "classification", "num_outputs": s["vocab"]}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from landscape_cli import Store
    from landscape_cli.store import checkpoint_name

    torch.set_num_threads(spec["threads"])
    store = Store(spec["store"])
    if spec["phase"] == "prepare":
        from landscape_cli import train

        result = train(f"{HERE}:make_model", f"{HERE}:make_data", epochs=0, batch_size=SEQUENCES, store=store,
                       progress=False)
        return {"run": result.run_id}
    if spec["phase"] == "forward":
        from landscape_cli.models import checkpoints

        base = reset_peak()
        [run_id] = store.run_ids()
        model = checkpoints.build_model(checkpoints.load(store.run_dir(run_id) / checkpoint_name(0)))
        model.train()
        params = {n: p.numel() for n, p in model.named_parameters()}
        x, y = make_data()["train"]
        times = []
        with torch.no_grad():
            for _ in range(2):
                t0 = time.perf_counter()
                out = model(x)
                torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()).item()
                del out
                times.append(time.perf_counter() - t0)
        peak = status_kb("VmHWM") - base
        return {"forward_s": min(times), "peak_mb": peak / 1024, "parameters": params}
    from landscape_cli import grid

    base = reset_peak()
    kwargs: dict[str, Any] = {"layer": spec["layer"]} if spec["layer"] else {}
    result = grid(spec["run"], width=3, pairs=1, batches=1, batch_size=SEQUENCES, split="train", store=store,
                  progress=False, gradient=False, name=spec["name"], **kwargs)
    peak = status_kb("VmHWM") - base
    return {"s_per_point": result.seconds_rows / 9, "peak_mb": peak / 1024}


def measure(spec: dict[str, Any], model_shape: dict[str, int]) -> dict[str, Any]:
    env = {**os.environ, "LM_SCALE_SHAPE": json.dumps(model_shape), "OMP_NUM_THREADS": str(spec["threads"])}
    done = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec)], env=env, text=True,
                          capture_output=True)
    if done.returncode:
        sys.exit(f"the {spec['phase']} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a 2-layer, 128-dimension model (a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    model_shape = SMALL if args.small else GPT2
    threads = args.threads or len(os.sched_getaffinity(0))
    block = BLOCK.format(model_shape["n_layer"] // 2 - (0 if args.small else 1))
    out = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix="landscape-lm-") as tmp:
        spec = {"store": tmp, "threads": threads, "layer": None, "name": None}
        run = measure({**spec, "phase": "prepare"}, model_shape)["run"]
        forward = measure({**spec, "phase": "forward"}, model_shape)
        full = measure({**spec, "phase": "grid", "run": run, "name": "full"}, model_shape)
        one = measure({**spec, "phase": "grid", "run": run, "name": "block", "layer": [block]}, model_shape)
    params: dict[str, int] = forward["parameters"]
    mb = 4 / 2**20
    total = sum(params.values())
    moved = sum(n for name, n in params.items() if not _one_dimensional(name))
    block_params = sum(n for name, n in params.items() if _matches(name, block) and not _one_dimensional(name))
    model_mb = total * mb
    activations = max(forward["peak_mb"] - model_mb, 0.0)
    bounds = {"full": SLACK * (model_mb + 3 * moved * mb + activations),
              "block": SLACK * (model_mb + 3 * block_params * mb + activations)}
    rows = [("full plane", total, moved, full, bounds["full"]), (f"--layer '{block}'", total, block_params, one,
                                                                bounds["block"])]
    print(f"GPT {model_shape['n_layer']} layers x {model_shape['n_embd']} dims, vocabulary {model_shape['vocab']}: "
          f"{total / 1e6:.1f} M parameters ({model_mb:.0f} MB); a 3 x 3 plane on {SEQUENCES} sequences x {TOKENS} "
          f"tokens, {threads} threads", file=out)
    print(f"forward: {forward['forward_s']:.2f} s, peak {forward['peak_mb']:.0f} MB (model + activations: "
          f"activations {activations:.0f} MB)", file=out)
    print(f"{'grid':<34}{'moved':>10}{'s/point':>9}{'s/point/fwd':>12}{'peak MB':>9}{'bound MB':>10}{'peak/bound':>11}",
          file=out)
    report: dict[str, Any] = {"shape": model_shape, "threads": threads, "parameters": total, "model_mb": model_mb,
                              "forward_s": forward["forward_s"], "forward_peak_mb": forward["peak_mb"],
                              "activations_mb": activations, "grids": []}
    for label, _, n, result, bound in rows:
        ratio = result["peak_mb"] / bound
        print(f"{label:<34}{n / 1e6:>9.1f}M{result['s_per_point']:>9.2f}"
              f"{result['s_per_point'] / forward['forward_s']:>12.2f}{result['peak_mb']:>9.0f}{bound:>10.0f}"
              f"{ratio:>11.2f}", file=out)
        report["grids"].append({"grid": label, "moved": n, **result, "bound_mb": bound, "peak_over_bound": ratio})
    print("goal: peak/bound <= 1.00 (the bound includes its 15 % slack)", file=out)
    if args.json:
        print(json.dumps(report, indent=2))


def _one_dimensional(name: str) -> bool:
    """Biases and LayerNorm parameters (a grid leaves them put without --perturb-biasbn)."""
    return name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.ln_f")


def _matches(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


if __name__ == "__main__":
    main()
