"""Commands about curves between checkpoints: connect (train a low-loss curve between two minima).

A plain function: `landscape_cli.cli.application` registers it as a command. Torch is imported inside the
command so that `landscape --help` starts fast.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from landscape_cli.cli._common import (
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    NameOpt,
    QuietOpt,
    StoreOpt,
    ThreadsOpt,
    err,
    name_suffix,
    num,
    print_json,
    set_threads,
    stdout,
)
from landscape_cli.config import CURVE_SHAPES, CurveConfig
from landscape_cli.errors import Interrupted


def connect(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A[:EPOCH]", help="The curve's start: a run (id, id prefix or "
                                         "name) and its epoch [default: its last checkpoint].", show_default=False)],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B[:EPOCH]", help="The curve's end, of the same architecture, "
                                         "dataset and loss.", show_default=False)],
    shape: Annotated[str, typer.Option(help=f"{' or '.join(CURVE_SHAPES)}: a Bézier curve through the control points, "
                                       "or the polygonal chain joining them.")] = CurveConfig.shape,
    bends: Annotated[int, typer.Option(help="Free control points between the endpoints (1: Garipov's quadratic "
                                       "Bézier curve, or a chain of two segments).")] = CurveConfig.bends,
    epochs: Annotated[int, typer.Option(help="Epochs to train the bends (epoch 0, the straight line, is always "
                                        "kept); more later continue the same curve.")] = 10,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd [default: RUN_A's].", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: RUN_A's; an imported run has none: "
                                             "give it].", show_default=False)] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum [default: RUN_A's with its optimizer, else 0.9 "
                                                   "for sgd].", show_default=False)] = None,
    weight_decay: Annotated[float | None, typer.Option(help="L2 weight decay of the bends [default: RUN_A's].",
                                                       show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size [default: RUN_A's].",
                                                   show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the t sampled per mini-batch and of the data order.")]
    = CurveConfig.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a low-loss curve between two checkpoints (mode connectivity, Garipov et al. 2018).

    The curve runs from RUN_A's weights (t = 0) to RUN_B's (t = 1) through --bends free control points,
    which start on the straight line and are trained on RUN_A's dataset: each mini-batch samples one t
    in [0, 1] and takes an optimizer step on the loss at the curve's point φ(t) (BatchNorm in train mode,
    with the batch's statistics). Endpoints stay fixed. The curve is stored with RUN_A (`landscape ls`
    lists it under both runs); its id hashes both endpoints' weights and the training settings, so the
    same command again trains nothing, resumes a stopped training from its last complete epoch (bitwise
    on CPU), or continues it when --epochs grows.

    Example: `landscape connect seed0 seed1 --shape bezier --bends 1 --epochs 10`
    """
    set_threads(threads)
    from landscape_cli.connecting import connect as train_curve

    def report(record: Any) -> None:
        if not quiet:
            what = "mean loss along the line (untrained)" if record.epoch == 0 else "mean loss along the curve"
            err().print(f"epoch {record.epoch:>3}  {what} {num(record.train_loss)}  ({record.seconds:.1f} s)")

    try:
        result = train_curve(run_a, run_b, shape=shape, bends=bends, epochs=epochs, optimizer=optimizer, lr=lr,
                             momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, seed=seed, name=name,
                             store=store, device=device, data_dir=data_dir, progress=not quiet, on_epoch=report)
    except KeyboardInterrupt:
        raise Interrupted("connect interrupted: run the same command again to resume from the last complete epoch"
                          ) from None
    meta = result.meta
    if json_output:
        print_json({"id": result.curve_id, "run": meta.run, "path": result.path, "name": meta.name,
                    "trained": result.trained, "epochs_done": meta.epochs_done, "config": meta.config.to_json(),
                    "epochs": [{"epoch": e.epoch, "train_loss": e.train_loss, "seconds": e.seconds, "file": e.file,
                                "weights_sha256": e.weights_sha256} for e in meta.epochs]})
        return
    if result.existed:
        err().print(f"curve {result.curve_id} already has epochs 0-{meta.epochs_done}: nothing to train")
    cfg = meta.config
    plural = "s" if cfg.bends > 1 else ""
    table = Table(title=f"{cfg.shape} curve, {cfg.bends} bend{plural}: {cfg.run_a}:{cfg.epoch_a} -> "
                        f"{cfg.run_b}:{cfg.epoch_b}  ({cfg.optimizer}, lr {cfg.lr})")
    for col in ("epoch", "mean train loss along the curve", "seconds"):
        table.add_column(col, justify="right")
    for e in meta.epochs:
        table.add_row(str(e.epoch), num(e.train_loss) + (" (line)" if e.epoch == 0 else ""), f"{e.seconds:.1f}")
    stdout().print(table)
    stdout().print(f"curve [bold]{result.curve_id}[/bold]{name_suffix(meta.name)} in {result.path}")
