"""What recording a training loop costs: the same plain loop with and without `landscape_cli.Recorder`.

A plain PyTorch loop (SGD, momentum 0.9, mini-batches of 64 of the digits' 1437 training images, the data
order drawn from a seeded generator) trains the same model from the same weights for `--steps` optimizer
steps (default 1012: 44 epochs), in three variants, each in its own fresh process, alternating, `--repeat`
times, the fastest kept (noise on a shared machine only adds time):

  plain        the loop alone
  record       the loop with a Recorder: a checkpoint every 50 steps (with --epoch-ends, also at each epoch's
               end: an epoch of the digits is 23 steps, so that is 2.2 times as many checkpoints)
  record+λmax  the same, also estimating λmax every 100 steps (one probe batch of 64, warm-started Lanczos
               stopped at residual 1e-2)

It prints the seconds of each and the overhead of each recorded variant over the plain loop (goal: <= 10 %),
with the checkpoints written, the λmax estimates made and the store's size, and, for the recorded runs, what
the recorder's own calls took (measured inside the process), and from those what one checkpoint and one λmax
estimate cost the loop in its own training steps. The recorder writes the checkpoint files in a thread: where a
core is free that work overlaps training, and the wall times show what it costs where none is. Models: `cnn`
(small, fast steps: the recorder's fixed costs weigh most) and `resnet` (the reference model).

    python benchmarks/recorder_overhead.py                 # ~6 minutes on 2 cores
    python benchmarks/recorder_overhead.py --quick         # 1 repeat, 300 steps, cnn only
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

VARIANTS = ("plain", "record", "record+λmax")
EVERY, LAMBDA_EVERY, BATCH = 50, 100, 64


def child(model_name: str, variant: str, steps: int, store: str, epoch_ends: bool) -> dict[str, float]:
    """One timed loop in this process (a fresh one per measurement)."""
    import torch

    from landscape_cli.data import load_dataset
    from landscape_cli.models import create_model

    torch.manual_seed(0)
    data = load_dataset("digits")
    net = create_model(model_name, in_channels=1, num_classes=10, image_size=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    x_all = (data.train_x.float() / 255.0 - mean) / std
    y_all = data.train_y
    rec = None
    if variant != "plain":
        from landscape_cli import Recorder

        rec = Recorder(net, opt, model_factory=model_name, data="digits", every_steps=EVERY, store=store,
                       track_lambda_max=LAMBDA_EVERY if variant == "record+λmax" else None, track_batch_size=BATCH,
                       verbose=False)
    in_recorder = 0.0
    net.train()
    n = len(y_all)
    per_epoch = (n + BATCH - 1) // BATCH
    done = 0
    t0 = time.perf_counter()
    epoch = 0
    while done < steps:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for b in range(per_epoch):
            idx = order[b * BATCH:(b + 1) * BATCH]
            loss = torch.nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if rec is not None:
                t = time.perf_counter()
                rec.step(loss=loss.detach())
                in_recorder += time.perf_counter() - t
            if done >= steps:
                break
        epoch += 1
        if rec is not None and epoch_ends and done % per_epoch == 0:
            t = time.perf_counter()
            rec.epoch_end()
            in_recorder += time.perf_counter() - t
    if rec is not None:
        t = time.perf_counter()
        rec.close()
        in_recorder += time.perf_counter() - t
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "in_recorder": in_recorder}
    if rec is not None:
        meta = rec.meta
        out["checkpoints"] = len(meta.epochs)
        out["lambda"] = len(rec.store.read_lambda_track(rec.run_id).values) if variant == "record+λmax" else 0
        out["mb"] = sum(p.stat().st_size for p in Path(store).rglob("*") if p.is_file()) / 2**20
    return out


def measure(model_name: str, variant: str, steps: int, threads: int, epoch_ends: bool) -> dict[str, float]:
    store = tempfile.mkdtemp(prefix="recorder-bench-")
    try:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, __file__, "--child", model_name, variant, str(steps), store,
                              str(int(epoch_ends))],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,resnet")
    parser.add_argument("--steps", type=int, default=1012)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epoch-ends", action="store_true", help="also a checkpoint at each epoch's end")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_name, variant, steps, store, ends = args.child
        print(json.dumps(child(model_name, variant, int(steps), store, ends == "1")))
        return
    models = ["cnn"] if args.quick else args.models.split(",")
    steps = 300 if args.quick else args.steps
    repeat = 1 if args.quick else args.repeat
    ends = " and each epoch's end" if args.epoch_ends else ""
    print(f"{steps} optimizer steps of batch {BATCH}; checkpoints every {EVERY} steps{ends}, λmax every "
          f"{LAMBDA_EVERY} steps; {args.threads} threads; fastest of {repeat}")
    print(f"{'model':<8} {'variant':<12} {'seconds':>8} {'overhead':>9} {'in recorder':>12} {'checkpoints':>12} "
          f"{'λmax':>5} {'store MB':>9}")
    for model_name in models:
        best: dict[str, dict[str, float]] = {}
        for _ in range(repeat):
            for variant in VARIANTS:
                r = measure(model_name, variant, steps, args.threads, args.epoch_ends)
                if variant not in best or r["seconds"] < best[variant]["seconds"]:
                    best[variant] = r
        base = best["plain"]["seconds"]
        for variant in VARIANTS:
            r = best[variant]
            over = "" if variant == "plain" else f"{100 * (r['seconds'] / base - 1):+.1f} %"
            extra = "" if variant == "plain" else (f"{r['in_recorder']:>11.2f}s {int(r['checkpoints']):>12d} "
                                                   f"{int(r['lambda']):>5d} {r['mb']:>9.1f}")
            print(f"{model_name:<8} {variant:<12} {r['seconds']:>8.2f} {over:>9} {extra}")
        # what each costs in training steps of the plain loop (the time measured inside the recorder)
        step = base / steps
        record, tracked = best["record"], best["record+λmax"]
        estimates = max(int(tracked["lambda"]) - 1, 1)  # step 0's estimate is made before the loop's clock starts
        per_checkpoint = record["in_recorder"] / step / max(record["checkpoints"] - 1, 1)  # step 0: before the clock
        per_estimate = (tracked["in_recorder"] - record["in_recorder"]) / step / estimates
        print(f"{model_name:<8} one step {1e3 * step:.1f} ms; a checkpoint costs {per_checkpoint:.1f} steps, "
              f"a λmax estimate {per_estimate:.1f} steps")


if __name__ == "__main__":
    main()
