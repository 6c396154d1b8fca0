"""The `landscape` command: thin Typer commands over the library.

Each command parses its options, calls one library function and renders the result with rich (or
as JSON with --json). Heavy libraries (torch, zarr, matplotlib) are imported inside the commands so
that `landscape --help` and `landscape ls` start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from landscape_cli._version import __version__
from landscape_cli.cli._common import (
    BatchSizeOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    LandscapeGroup,
    NameOpt,
    QuietOpt,
    StoreOpt,
    err,
    human_size,
    note,
    num,
    pct,
    print_json,
    stdout,
)
from landscape_cli.config import GridRequest, HessianConfig, TrainConfig
from landscape_cli.errors import IntegrityError, Interrupted, UsageError
from landscape_cli.store import Store

app = typer.Typer(
    cls=LandscapeGroup,
    name="landscape",
    help="Loss landscapes of neural networks around training checkpoints.\n\n"
    "Quick start: landscape train resnet digits --epochs 5, then landscape ls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"landscape {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Loss landscapes of neural networks around training checkpoints."""


# --- train -------------------------------------------------------------------------------------


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Model name (`landscape models` lists them), pkg.module:factory or "
                                          "./file.py:factory.", show_default=False)],
    dataset: Annotated[str, typer.Argument(help="Dataset name (`landscape datasets` lists them), pkg.module:factory "
                                            "or ./file.py:factory.", show_default=False)],
    epochs: Annotated[int, typer.Option(help="Epochs to train (epoch 0, the untrained model, is always kept).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = TrainConfig.batch_size,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = TrainConfig.optimizer,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = TrainConfig.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = TrainConfig.momentum,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = TrainConfig.weight_decay,
    activation: Annotated[
        str, typer.Option(help="relu, sigmoid or tanh: replaces every activation of a built-in model (a factory's "
                          "model is never rewritten).")
    ] = TrainConfig.activation,
    loss: Annotated[
        str | None, typer.Option(help="cross-entropy or mse [default: from the dataset's task].", show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and of the data order.")] = TrainConfig.seed,
    device: DeviceOpt = "auto",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where datasets are cached (else $LANDSCAPE_DATA, else ~/.cache/landscape/data).",
                     show_default=False),
    ] = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train MODEL on DATASET and checkpoint every epoch into a run.

    The run's id is a hash of the training configuration: the same command again trains nothing,
    resumes a stopped run from its last complete epoch, or continues it when --epochs grows. Your own
    model or dataset: pkg.module:factory or ./file.py:factory (README: "Your own model and data");
    the id then covers the factory file's sha256 and the data's, so edits make a new run.

    Example: `landscape train resnet digits --epochs 5 --name quickstart`
    """
    from landscape_cli.training import train as train_run

    def report(record: Any) -> None:
        if not quiet:
            err().print(
                f"epoch {record.epoch:>3}  train loss {num(record.train_loss)} acc {pct(record.train_accuracy)}"
                f"  val loss {num(record.val_loss)} acc {pct(record.val_accuracy)}  ({record.seconds:.1f} s)"
            )

    try:
        result = train_run(
            model, dataset, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            momentum=momentum, weight_decay=weight_decay, activation=activation, seed=seed, loss=loss, device=device,
            data_dir=data_dir, store=store, name=name, progress=not quiet, on_epoch=report,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "training interrupted: run the same command again to resume from the last complete epoch"
        ) from None
    meta = result.meta
    if json_output:
        print_json({"id": result.run_id, "path": result.path, "trained": result.trained, **meta.to_json()})
        return
    if result.existed:
        err().print(f"run {result.run_id} already has epochs 0-{len(meta.epochs) - 1}: nothing to train")
    stdout().print(_epochs_table(meta))
    stdout().print(f"run [bold]{result.run_id}[/bold]{_name(meta.name)} in {result.path}")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}{'es' if what.endswith('ch') else 's'}"


def _name(name: str | None) -> str:
    return f" ({name})" if name else ""


def _epochs_table(meta: Any) -> Table:
    cfg = meta.config
    how = "imported" if cfg.imported is not None else f"{cfg.optimizer}, lr {cfg.lr}"
    table = Table(title=f"{cfg.model} / {cfg.dataset} / {cfg.activation}  ({how})")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "seconds"):
        table.add_column(col, justify="right")
    for r in meta.epochs:
        table.add_row(str(r.epoch), num(r.train_loss), pct(r.train_accuracy), num(r.val_loss), pct(r.val_accuracy),
                      f"{r.seconds:.1f}")
    return table


@app.command("import")
def import_(
    model: Annotated[str, typer.Argument(help="The model the weights are of: a built-in name, pkg.module:factory or "
                                          "./file.py:factory.", show_default=False)],
    dataset: Annotated[str, typer.Argument(help="The dataset to score them on (as for train).", show_default=False)],
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoint files (.pt, .pth, .ckpt, .bin, .safetensors) "
                                                       "or folders of them.", show_default=False)],
    epochs: Annotated[
        str | None, typer.Option(help="Each file's epoch, in the order given (e.g. 0,5,9) [default: the single number "
                                 "in each file name].", show_default=False)
    ] = None,
    activation: Annotated[str, typer.Option(help="A built-in model's activation, as it was trained.")] = "relu",
    loss: Annotated[
        str | None, typer.Option(help="cross-entropy or mse [default: from the dataset's task].", show_default=False)
    ] = None,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make a run from weights trained elsewhere: then grid, hessian, plot, ls and verify work on it.

    Each file holds a plain state_dict, a dict with one under "state_dict" or "model" (Lightning and
    most training scripts; a common key prefix such as "model." or "module." is stripped), or is a
    .safetensors file. Files are read without running any code they hold: objects other than
    tensors (Lightning's hyper-parameters...) are replaced by inert placeholders. The run's id is a
    hash of the weights: importing the same files again changes nothing.

    Example: `landscape import resnet digits ckpts/epoch=*.ckpt --epochs 0,1,5 --name theirs`
    """
    from landscape_cli.config import parse_epochs
    from landscape_cli.exchange.importer import import_run

    result = import_run(model, dataset, list(checkpoints), epochs=parse_epochs(epochs), activation=activation,
                        loss=loss, device=device, name=name, store=store, data_dir=data_dir, progress=not quiet)
    meta = result.meta
    if json_output:
        print_json({"id": result.run_id, "path": result.path, "imported": result.imported,
                    "files": meta.model.get("imported", []), **meta.to_json()})
        return
    if result.existed:
        err().print(f"run {result.run_id} already holds these weights: nothing to import")
    stdout().print(_epochs_table(meta))
    stdout().print(f"run [bold]{result.run_id}[/bold]{_name(meta.name)} in {result.path}")


# --- export ------------------------------------------------------------------------------------


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name (or a grid).", show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="netcdf, csv, vtk or npz.", show_default=False)],
    grid: Annotated[
        str | None, typer.Option("--grid", help="Which grid (id, prefix or name) [default: the run's newest, as plot "
                                 "chooses].", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output file (vtk: a directory) [default: the grid's exports/].",
                                  show_default=False)
    ] = None,
    zmax: Annotated[
        float | None, typer.Option(help="vtk: clip heights above this loss (Li et al.'s h52vtp --zmax).",
                                   show_default=False)
    ] = None,
    log: Annotated[bool, typer.Option(help="vtk: log(loss + 0.1) as height and field (h52vtp's --log).")] = False,
    hessian: Annotated[
        bool, typer.Option("--hessian", help="Export the run's curvature results (`landscape hessian`) instead, as "
                           "netcdf, csv or npz; --grid picks results by id or name [default: the newest].")
    ] = False,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Export a grid for other tools: NetCDF-4 (xarray), long-format CSV, VTK for ParaView, or NumPy .npz.

    Every export holds every value with the `done` mask beside it, so points not computed yet (done 0)
    are never confused with diverged ones (NaN/Inf, done 1); an unfinished grid exports what is done and
    says how many points are missing. NetCDF and npz hold every array, coordinate and attribute (nested
    attributes as JSON strings); CSV has one row per epoch, pair, batch and point; VTK writes one
    structured grid per epoch, pair and batch plus the mean, the loss as height and as a point field,
    NaN points hidden, and a PCA grid's path as a polyline (needs `pip install 'landscape-cli[vtk]'`).

    Example: `landscape export quickstart --format vtk --zmax 10 --log`
    """
    from landscape_cli.exchange.export import export as write_export
    from landscape_cli.exchange.export import export_hessian

    if hessian:
        if zmax is not None or log:
            raise UsageError("--zmax and --log shape a VTK surface: curvature results have none")
        result = export_hessian(run, hessian=grid, format=format_, out=out, store=store)
    else:
        result = write_export(run, grid=grid, format=format_, out=out, zmax=zmax, log=log, store=store)
    if json_output:
        print_json(result.to_json())
        return
    for line in result.notes:  # points not computed yet, diverged points
        err().print(line)
    files = f" ({_count(len(result.files), 'file')})" if len(result.files) > 1 else ""
    what = "curvature results" if hessian else "grid"
    stdout().print(f"{result.format} export of {what} {result.grid_id}{files}: {result.path}")


# --- ls ----------------------------------------------------------------------------------------


@app.command("ls")
def ls(store: StoreOpt = None, json_output: JsonOpt = False) -> None:
    """List every run in the store, with its grids and their progress.

    Example: `landscape ls --store runs`
    """
    from landscape_cli.views.listing import list_runs

    st = Store(store)
    runs = list_runs(st)
    if json_output:
        print_json({"store": str(st.root), "runs": runs})
        return
    if not runs:
        stdout().print(f"no runs in {st.root}: `landscape train MODEL DATASET` makes one")
        return
    table = Table(title=f"runs in {st.root}")
    for col in ("id", "name", "model", "dataset", "activation", "epochs", "status", "val acc", "size"):
        table.add_column(col, justify="right" if col in ("epochs", "val acc", "size") else "left")
    for r in runs:
        if r["status"] == "damaged":
            table.add_row(r["id"], "", "", "", "", "", "[red]damaged[/red]", "", "")
            continue
        done = "-" if r["epochs_done"] is None else str(r["epochs_done"])
        table.add_row(r["id"], r["name"] or "", r["model"], r["dataset"], r["activation"],
                      f"{done}/{r['epochs_requested']}", r["status"], pct(r["val_accuracy"]),
                      human_size(r["size_bytes"]))
        for g in r["grids"]:
            table.add_row(f"  └ {g['id']}", g.get("name") or "", *_grid_cells(g))
    stdout().print(table)


def _grid_cells(g: dict[str, Any]) -> list[str]:
    if g.get("status") == "damaged":
        return ["grid", "", "", "", "[red]damaged[/red]", "", ""]
    epochs = ",".join(str(e) for e in g["epochs"])
    diverged = f", {g['diverged']} diverged" if g.get("diverged") else ""
    return [f"grid {g['description']}", g["norm"] if g["kind"] != "interpolate" else "", f"bn {g['bn']}",
            f"ep {epochs}", f"{pct(g['done'])} done{diverged}", "", ""]


# --- grid --------------------------------------------------------------------------------------


def _tuple(epochs: list[int] | None) -> tuple[int, ...] | None:
    return tuple(epochs) if epochs is not None else None


@app.command()
def grid(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name.", show_default=False)],
    epochs: Annotated[
        str | None, typer.Option(help="Checkpoints to use, e.g. 0,1,9 or 0-9 (default: all of the run's). With "
                                 "--directions interpolate: where each line starts; with pca: the trajectory.",
                                 show_default=False)
    ] = None,
    directions: Annotated[
        str, typer.Option(help="random (Li et al.'s filter-normalized planes), interpolate (the line between two "
                          "checkpoints, Goodfellow et al.) or pca (the plane of the training trajectory).")
    ] = GridRequest.directions,
    dims: Annotated[
        int | None, typer.Option(help="1 (a line along the first direction) or 2 (a plane) [default: 2; 1 for "
                                 "interpolate].", show_default=False)
    ] = None,
    width: Annotated[int, typer.Option(help="Points per axis.")] = GridRequest.width,
    span: Annotated[
        float | None, typer.Option(help="Random grids cover a, b in [-span, span] (0.01: the 100x zoom) [default: 1].",
                                   show_default=False)
    ] = None,
    range_: Annotated[
        str | None, typer.Option("--range", help="LO,HI of the first axis (interpolate: t, default -0.5,1.5; pca: "
                                 "default covers the path).", show_default=False)
    ] = None,
    yrange: Annotated[
        str | None, typer.Option(help="LO,HI of the second axis [default: --range, or the path for pca].",
                                 show_default=False)
    ] = None,
    pairs: Annotated[
        int | None, typer.Option(help="Random direction pairs [default: 3; 1 for other directions].", show_default=False)
    ] = None,
    batches: Annotated[
        str, typer.Option(help="The split's first N mini-batches (unshuffled), one value each; or all: the whole split "
                          "at every point, streamed in --batch-size pieces, the loss averaged over samples.")
    ] = str(GridRequest.batches),
    split: Annotated[str, typer.Option(help="The data the points see: train or val.")] = GridRequest.split,
    batch_size: BatchSizeOpt = GridRequest.batch_size,
    seed: Annotated[int | None, typer.Option(help="Seed of the random directions [default: 0].", show_default=False)] = None,
    norm: Annotated[
        str | None, typer.Option(help="filter (Li et al.), filter-std, layer or none [default: filter for random, none "
                                 "for pca].", show_default=False)
    ] = None,
    perturb_biasbn: Annotated[bool, typer.Option(help="Also perturb biases and BatchNorm weights.")] = GridRequest.perturb_biasbn,
    layer: Annotated[
        str | None, typer.Option(help="Perturb only this parameter tensor (`landscape layers RUN` lists them).",
                                 show_default=False)
    ] = None,
    single_kernel: Annotated[bool, typer.Option(help="With --layer: perturb only its first kernel.")] = GridRequest.single_kernel,
    directions_from: Annotated[
        str | None, typer.Option(help="Reuse the random directions (seed, normalization) of this grid.",
                                 show_default=False)
    ] = None,
    to_epoch: Annotated[
        int | None, typer.Option(help="--directions interpolate: the epoch the line ends at (t = 1).", show_default=False)
    ] = None,
    to: Annotated[
        str | None, typer.Option(help="--directions interpolate: end at RUN2[:EPOCH], a run of the same model "
                                 "[default epoch: its last].", show_default=False)
    ] = None,
    bn: Annotated[
        str, typer.Option(help="BatchNorm mode: train (batch statistics, as in a training step), eval (running "
                          "statistics; interpolated along interpolation lines) or recompute (running statistics "
                          "re-estimated on the grid's batches at every point: twice the forward passes).")
    ] = GridRequest.bn,
    grid_ref: Annotated[
        str | None,
        typer.Option("--grid", help="Continue or extend this grid of RUN (id, prefix or name), with its own options "
                     "(the grid options above are then ignored).", show_default=False),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted grid (or join a running one).")] = GridRequest.resume,
    gradient: Annotated[
        bool, typer.Option(help="Project the loss gradient at the centre on each plane (plot's arrows): one "
                           "backward pass per batch and pair, the memory of a training step.")
    ] = GridRequest.gradient,
    precision: Annotated[
        str, typer.Option(help="fp32 (on CUDA with TF32 off), tf32 (TF32 matmuls and convolutions on CUDA) or bf16 "
                          "(bfloat16 autocast): part of the grid's identity.")
    ] = GridRequest.precision,
    points_per_pass: Annotated[
        int | None, typer.Option(help="Grid points per forward pass (torch.func.vmap over stacked weights), fixed "
                                 "when the grid is created [default: 1 on CPU, the in-place loop; on a GPU as many "
                                 "as half the free memory holds].", show_default=False)
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="I/N: compute only shard I of N of the grid's rows (job arrays: SLURM --array, "
                                 "Kubernetes indexed jobs); a later --resume without --shard fills what failed "
                                 "shards left.", show_default=False)
    ] = None,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute the loss landscape around RUN's checkpoints, along random, interpolation or PCA directions.

    Random (default): L(w + a·d1 + b·d2) on a width x width grid along seeded random directions,
    normalized against each epoch's weights (so grids compare across epochs); --dims 1 gives the
    line along d1. Interpolate: L((1 − t)·w_A + t·w_B) from each --epochs A to --to-epoch B (or
    --to another run). PCA: the plane of the trajectory's top two principal components, centred at
    its last checkpoint, with the path projected onto it. BatchNorm and bias parameters stay put
    unless --perturb-biasbn (interpolation moves every parameter). The result is a Zarr array
    [epoch, pair, batch, y, x] (a line: [epoch, pair, batch, x]) in the run's grids/ directory. Kill
    it at any moment and continue with --resume; run it twice at once with --resume and the two
    share the work. Many processes: `--shard I/N` in each of N jobs, or under torchrun
    (`torchrun --nproc-per-node P -m landscape_cli grid RUN ...`: rank 0 prepares and reports).

    Example: `landscape grid quickstart --epochs 0,5 --width 21`; a job array of 4: `landscape grid quickstart
    --width 51 --shard $SLURM_ARRAY_TASK_ID/4`
    """
    from landscape_cli.config import Runtime, parse_epochs, parse_range
    from landscape_cli.engine.compute import grid as compute_grid
    from landscape_cli.engine.distributed import torchrun_ranks
    from landscape_cli.views.listing import describe_grid

    ranks = torchrun_ranks()
    follower = ranks is not None and ranks.rank != 0  # torchrun's other ranks print nothing but errors
    request = GridRequest(
        epochs=_tuple(parse_epochs(epochs)), directions=directions, dims=dims, width=width, span=span,
        range=parse_range(range_, "--range"), yrange=parse_range(yrange, "--yrange"), pairs=pairs, batches=batches,
        batch_size=batch_size, split=split, seed=seed, norm=norm, perturb_biasbn=perturb_biasbn, layer=layer,
        single_kernel=single_kernel, bn=bn, directions_from=directions_from, to_epoch=to_epoch, to=to,
        from_grid=grid_ref, precision=precision, gradient=gradient, points_per_pass=points_per_pass, name=name,
        resume=resume,
    )
    runtime = Runtime(device=device, data_dir=data_dir, progress=not quiet and not follower, shard=shard, store=store,
                      report=note)
    try:
        result = compute_grid(run, request, runtime)
    except KeyboardInterrupt:
        raise Interrupted(
            "grid interrupted: finished rows are kept; run the same command with --resume to continue"
        ) from None
    if follower:
        return
    meta = result.meta
    cfg = meta.config
    summary = {
        "id": result.grid_id, "run": result.run_id, "path": result.path, "zarr": result.zarr_path,
        "name": meta.name, "kind": cfg.kind, "dims": cfg.dims, "epochs": meta.epochs,
        "ranges": [list(r) for r in meta.ranges], "config": cfg.identity(), "facts": meta.kind,
        "rows_done": result.rows_done, "rows_total": result.rows_total, "rows_computed": result.computed_rows,
        "diverged_points": result.diverged, "repaired": result.repaired,
        "evaluator": meta.evaluator.to_json() if meta.evaluator else {},
        "processes": {"how": result.share.how, "index": result.share.index, "count": result.share.count},
    }
    if json_output:
        print_json(summary)
        return
    state = "complete" if result.complete else f"{100 * result.rows_done / max(result.rows_total, 1):.0f}% done"
    if result.computed_rows == 0 and result.complete:
        err().print(f"grid {result.grid_id} is already complete: nothing to compute")
    stdout().print(
        f"grid [bold]{result.grid_id}[/bold]{_name(meta.name)} of run {result.run_id}: {describe_grid(meta)}, "
        f"epochs {','.join(map(str, meta.epochs))}, {_count(cfg.pairs, 'pair')} x "
        f"{'all of the ' + cfg.split + ' split' if cfg.whole else _count(cfg.batches, 'batch')}, {state}"
        + (f", {result.diverged} points diverged (NaN/Inf)" if result.diverged else "")
    )
    if result.share.partial:
        stdout().print(f"  {result.share.describe()}: computed {_count(result.computed_rows, 'row')}"
                       + ("" if result.share.how == "rank" else " (its share)"))
    stdout().print(f"  {result.zarr_path}")


@app.command()
def hessian(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name.", show_default=False)],
    epochs: Annotated[
        str | None, typer.Option(help="Checkpoints, e.g. 0,1,9 or 0-9 (default: all of the run's).", show_default=False)
    ] = None,
    top: Annotated[int, typer.Option(help="Eigenpairs with the largest eigenvalues (K).")] = HessianConfig.top,
    batches: Annotated[
        str, typer.Option(help="The split's first N mini-batches, or all (the whole split, the loss averaged over "
                          "samples), as for grids.")
    ] = str(HessianConfig.batches),
    split: Annotated[str, typer.Option(help="train or val, as for grids.")] = HessianConfig.split,
    batch_size: BatchSizeOpt = HessianConfig.batch_size,
    bn: Annotated[str, typer.Option(help="BatchNorm mode: train (batch statistics) or eval.")] = HessianConfig.bn,
    perturb_biasbn: Annotated[
        bool, typer.Option(help="Include biases and BatchNorm weights (as grids do).")
    ] = HessianConfig.perturb_biasbn,
    layer: Annotated[
        str | None, typer.Option(help="Only this parameter tensor (`landscape layers RUN`).", show_default=False)
    ] = None,
    tol: Annotated[
        float, typer.Option(help="Eigenpairs with ‖Hv − λv‖/|λ| above this are marked not converged.")
    ] = HessianConfig.tol,
    probes: Annotated[int, typer.Option(help="Hutchinson probes for the trace.")] = HessianConfig.probes,
    density: Annotated[
        bool, typer.Option(help="Also the spectral density (stochastic Lanczos quadrature).")
    ] = HessianConfig.density,
    density_probes: Annotated[int, typer.Option(help="With --density: random probes.")] = HessianConfig.density_probes,
    steps: Annotated[int, typer.Option(help="With --density: Lanczos steps per probe.")] = HessianConfig.density_steps,
    bins: Annotated[int, typer.Option(help="With --density: histogram bins.")] = HessianConfig.bins,
    seed: Annotated[int, typer.Option(help="Seed of the start vectors and probes.")] = HessianConfig.seed,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    store: StoreOpt = None,
    name: NameOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Curvature of RUN's loss at its checkpoints: top eigenvalues, λmin, |λmin/λmax|, trace, spectral density.

    The Hessian of the mean loss over the grid's batches (the same --batches/--batch-size/--bn as
    grids) over the parameters a grid perturbs, from Hessian-vector products by double backward:
    eigenpairs by Lanczos (scipy's eigsh) with each pair's residual ‖Hv − λv‖/|λ| (above --tol:
    marked not converged), the trace by Hutchinson's estimator with its standard error, and with
    --density the spectral density by stochastic Lanczos quadrature. Results are kept per epoch in
    the run (a killed computation keeps its finished epochs); the eigenvectors are what
    `grid --directions hessian` uses.

    Example: `landscape hessian quickstart --epochs 0,5 --top 3`
    """
    from landscape_cli.config import parse_epochs
    from landscape_cli.curvature.hessian import hessian as compute_hessian

    try:
        result = compute_hessian(
            run, epochs=parse_epochs(epochs), top=top, batches=batches, batch_size=batch_size,
            split=split, bn=bn,
            perturb_biasbn=perturb_biasbn, layer=layer, tol=tol, probes=probes, density=density,
            density_probes=density_probes, steps=steps, bins=bins, seed=seed, device=device, name=name, store=store,
            data_dir=data_dir, progress=not quiet,
        )
    except KeyboardInterrupt:
        raise Interrupted("hessian interrupted: finished epochs are kept; run the same command to continue") from None
    rows = result.summary()
    if json_output:
        print_json({"id": result.hessian_id, "run": result.run_id, "path": result.path, "zarr": result.zarr_path,
                    "name": result.meta.name, "config": result.meta.config.identity(), "computed": result.computed,
                    "epochs": rows})
        return
    if not result.computed:
        err().print(f"Hessian results {result.hessian_id} already hold epochs {','.join(map(str, result.meta.epochs))}:"
                    " nothing to compute")
    h = result.meta.config
    data = f"all of the {h.split} split" if h.whole else f"{h.batches} {h.split} batches of {h.batch_size}"
    table = Table(title=f"Hessian of run {result.run_id} ({data}, BatchNorm {h.bn})")
    for col in ("epoch", "top eigenvalues", "λmin", "|λmin/λmax|", "trace (± s.e.)", "not converged"):
        table.add_column(col, justify="right")
    for r in rows:
        bad = [f"λ{j + 1}" for j, ok in enumerate(r["converged"]) if not ok]
        if r["lambda_min_residual"] > result.meta.config.tol:
            bad.append("λmin")
        table.add_row(str(r["epoch"]), ", ".join(num(v) for v in r["eigenvalues"]), num(r["lambda_min"]),
                      num(r["convexity"]), f"{num(r['trace'])} ± {num(r['trace_stderr'], 2)}", ", ".join(bad) or "-")
    stdout().print(table)
    stdout().print(f"Hessian results [bold]{result.hessian_id}[/bold]{_name(result.meta.name)} in {result.zarr_path}")


@app.command()
def layers(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name.", show_default=False)],
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List the parameter tensors of RUN's model (the names `grid --layer` accepts).

    Example: `landscape layers quickstart`
    """
    from landscape_cli.engine.compute import list_layers

    rows = list_layers(run, store)
    if json_output:
        print_json(rows)
        return
    table = Table(title="parameters")
    for col in ("name", "shape", "parameters", "kind", "perturbed by default"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for r in rows:
        table.add_row(r["name"], "x".join(map(str, r["shape"])), f"{r['parameters']:,}", r["kind"],
                      "yes" if r["perturbed_by_default"] else "no (--perturb-biasbn)")
    stdout().print(table)


# --- plot --------------------------------------------------------------------------------------


@app.command()
def plot(
    runs: Annotated[list[str], typer.Argument(help="One or more runs (id, prefix or name) or grids.", show_default=False)],
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="Which grid (id, prefix or name): once for all runs or once per run "
                     "[default: each run's newest].", show_default=False),
    ] = None,
    epochs: Annotated[
        str | None, typer.Option(help="Epochs side by side (curves of a line), e.g. 0,1,9 [default: the grid's last; "
                                 "all of a line's].",
                                 show_default=False)
    ] = None,
    epoch: Annotated[int | None, typer.Option(help="One epoch (same as --epochs E).", show_default=False)] = None,
    pair: Annotated[int | None, typer.Option(help="Only this direction pair.", show_default=False)] = None,
    batch: Annotated[int | None, typer.Option(help="Only this batch.", show_default=False)] = None,
    metric: Annotated[str, typer.Option(help="loss or accuracy.")] = "loss",
    contour: Annotated[bool, typer.Option(help="Labelled contour lines instead of a heatmap (2-D grids; a PCA "
                                          "plane always).")] = False,
    surface: Annotated[bool, typer.Option(help="3-D surfaces (2-D grids).")] = False,
    log: Annotated[bool, typer.Option(help="Logarithmic colour (or height, or y) scale.")] = False,
    clip: Annotated[float | None, typer.Option(help="Cap values above this (e.g. high losses).", show_default=False)] = None,
    reduce: Annotated[str, typer.Option(help="none, mean (over pairs and batches), batches or pairs. A line's curves "
                                        "are means over pairs and batches unless batches (one per pair) or pairs "
                                        "(one per batch).")] = "none",
    animate: Annotated[bool, typer.Option(help="A GIF over the epochs (2-D grids).")] = False,
    out: Annotated[Path | None, typer.Option(help="Output file (.png, .pdf, .svg; .gif with --animate).",
                                             show_default=False)] = None,
    show: Annotated[bool, typer.Option(help="Also open a window.")] = False,
    html: Annotated[
        bool, typer.Option("--html", help="One self-contained HTML page instead (no network needed to view it): the "
                           "3-D surface to rotate and the contour map, a slider over every epoch, pair and batch "
                           "selectors; large grids decimated. --out PAGE.html [default: the grid's plots/].")
    ] = False,
    hessian: Annotated[
        bool, typer.Option("--hessian", help="Draw the run's curvature results instead (`landscape hessian`): "
                           "eigenvalues, λmin and trace against epoch, the density per epoch; --grid picks results by "
                           "id or name [default: the newest].")
    ] = False,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Draw the loss landscape of a run's grid, or compare several epochs or runs side by side.

    A 2-D grid, one epoch: the reference figure, a panel per (direction pair, batch), heatmaps of the
    loss minus its centre value on one colour scale, and a red arrow for the negative gradient at the
    centre. Several epochs or runs are laid out side by side on one scale (their grids need the same
    --width and --span, or --range and --yrange). A PCA plane is drawn as contours with the training
    path on it (axes: each component's share of the variance).

    A 1-D grid (--dims 1, interpolate, pca --dims 1) is drawn as curves against its coordinate: one
    per epoch (and run), the mean over pairs and batches with a min–max band. An interpolation marks
    its checkpoints at t = 0 and t = 1; a PCA line shows each checkpoint at its own loss.

    Diverged points (NaN/Inf) are magenta; rows not computed yet are hatched (curves: left out).

    Example: `landscape plot quickstart --epochs 0,5 --reduce mean`; `landscape plot quickstart --html`
    """
    from landscape_cli.config import parse_epochs
    from landscape_cli.views.figures import plot as draw_plot

    if html:
        from landscape_cli.views.page import write_html

        given = [flag for flag, on in (("--contour", contour), ("--surface", surface), ("--animate", animate),
                                       ("--epochs", epochs is not None), ("--epoch", epoch is not None),
                                       ("--hessian", hessian), ("--show", show), ("--log", log),
                                       ("--clip", clip is not None), ("--reduce", reduce != "none"),
                                       ("--pair", pair is not None), ("--batch", batch is not None)) if on]
        if given:
            raise UsageError(f"--html makes a page with every epoch, pair and batch and its own controls: drop "
                             f"{', '.join(given)}")
        page = write_html(runs, grids=grid or (), metric=metric, out=out, store=store)
        if json_output:
            print_json(page.to_json())
        else:
            if page.decimated:
                shown = " x ".join(map(str, page.shape))
                err().print(f"the page shows {shown} of the grid's points (every {page.step}th along each axis) "
                            "to stay a few MB")
            stdout().print(str(page.path))
        return

    if hessian:
        from landscape_cli.views.hessian_figure import plot_hessian

        if len(runs) != 1 or (grid and len(grid) != 1):
            raise UsageError("--hessian draws one run's curvature results: give one run (and at most one --grid)")
        figure = plot_hessian(runs[0], hessian=grid[0] if grid else None, out=out, store=store)
        if json_output:
            print_json({"path": figure.path, "hessian": figure.meta.id, "epochs": figure.epochs,
                        "eigenvalues": figure.eigenvalues.tolist(), "lambda_min": figure.lambda_min.tolist(),
                        "trace": figure.trace.tolist(), "trace_stderr": figure.trace_stderr.tolist()})
        else:
            stdout().print(str(figure.path))
        return
    if epoch is not None and epochs is not None:
        raise UsageError("give --epoch or --epochs, not both")
    chosen = [epoch] if epoch is not None else parse_epochs(epochs)
    result = draw_plot(
        runs, grids=grid or (), epochs=chosen, pair=pair, batch=batch, metric=metric, contour=contour,
        surface=surface, log=log, clip=clip, reduce=reduce, animate=animate, out=out, show=show, store=store,
    )
    panels = [
        {"title": p.title, "run": p.source.run_id, "grid": p.source.grid_id, "epoch": p.epoch, "pair": p.pair,
         "batch": p.batch, "diverged": p.diverged, "computed": bool(p.computed.all())}
        for p in result.panels
    ]
    curves = [
        {"label": c.label, "run": c.source.run_id, "grid": c.source.grid_id, "epoch": c.epoch, "pair": c.pair,
         "batch": c.batch, "diverged": c.diverged, "computed": c.computed}
        for c in result.curves
    ]
    complete = all(p["computed"] for p in panels) and all(c["computed"] for c in curves)
    if json_output:
        grids = [{"run": s.run_id, "grid": s.grid_id, "kind": s.kind, "dims": s.dims} for s in result.sources]
        paths = [{"run": t.source.run_id, "grid": t.source.grid_id, "epochs": t.epochs, "off_plane": t.off_plane}
                 for t in {id(t.source): t for t in result.paths}.values()]
        print_json({"path": result.path, "grids": grids, "rows": result.shape[0], "columns": result.shape[1],
                    "diverged_points": result.diverged, "arrow_scale": result.arrow_scale, "panels": panels,
                    "curves": curves, "paths": paths, "notes": result.notes})
        return
    if result.diverged:
        err().print(f"{result.diverged} diverged points (NaN/Inf) are drawn in magenta")
    if not complete:
        hidden = "curves not computed yet are left out" if curves else "rows not computed yet are hatched"
        err().print(f"the grid is not complete: {hidden} (`landscape grid ... --resume`)")
    for t in {id(t.source): t for t in result.paths}.values():
        if t.far:
            err().print(f"the training path lies far from the PCA {'plane' if t.y is not None else 'line'} "
                        f"(up to {100 * t.off_plane:.0f}% of a checkpoint's distance is off it)")
    stdout().print(str(result.path))


@app.command()
def stats(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name.", show_default=False)],
    grid: Annotated[
        str | None, typer.Option("--grid", help="Which grid of RUN (id, prefix or name) [default: the run's newest].",
                                 show_default=False)
    ] = None,
    epochs: Annotated[
        str | None, typer.Option(help="Epochs of the grid, e.g. 0,1,9 or 0-9 [default: all of the grid's].",
                                 show_default=False)
    ] = None,
    radius: Annotated[
        float | None, typer.Option(help="ε: the ε-sharpness box is |u|∞ <= ε (box norm, in the grid's coordinates) "
                                   "[default: the whole grid].", show_default=False)
    ] = None,
    delta: Annotated[float, typer.Option(help="δ: the loss rise over L0 that the flat radius and the share below "
                                         "allow.")] = 0.1,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Metrics of a grid's loss around its centre: curvature, ε-sharpness, flat radius.

    Computed from the stored values only (no model is evaluated), per epoch, direction pair and
    batch, and for the mean landscape over pairs and batches (what `plot --reduce mean` draws). u
    is a point's coordinates along the grid's directions, L its loss, L0 the stored centre loss:

    - curvature: H of L ≈ c + gᵀu + ½ uᵀHu fitted by least squares to the 5x5 points nearest the
      centre (a line: 5 points, H = L''), its eigenvalues λ and condition max(abs λ) / min(abs λ)
      (inf when min is 0)
    - ε-sharpness (Keskar et al. 2017): max(L − L0) over the points with |u|∞ <= ε, the centre
      included; relative: that / (1 + L0)
    - flat radius: |u|∞ (box norm) of the nearest point with L > L0 + δ; when none, the grid's
      half-width max |u|∞, a lower bound (shown ≥)
    - below: the share of the points with L <= L0 + δ
    - centre is min: L0 <= the smallest stored L (within 1e-7 relative)

    Only computed rows count (the missing points are reported); diverged points (NaN/Inf) count as
    above every threshold. Results are cached per epoch in the grid's stats.json.

    Example: `landscape stats quickstart --radius 0.5 --delta 0.05`
    """
    from landscape_cli.config import parse_epochs
    from landscape_cli.curvature.stats import stats as grid_stats
    from landscape_cli.views.listing import describe_grid

    result = grid_stats(run, grid=grid, epochs=parse_epochs(epochs), radius=radius, delta=delta, store=store)
    meta = result.meta
    if json_output:
        print_json({"run": result.run_id, "grid": result.grid_id, "name": meta.name, "kind": meta.config.kind,
                    "dims": meta.config.dims, "description": describe_grid(meta), "radius": radius, "delta": delta,
                    "cached": result.cached, "cache_written": result.saved, "epochs": result.epochs})
        return
    for e in result.epochs:
        if not e["center_written"]:
            err().print(f"epoch {e['epoch']}: the centre values are not computed yet, so the metrics are NaN")
        if e["missing"]:
            err().print(f"epoch {e['epoch']}: {e['missing']} of {e['points']} grid points (over the pairs) are not "
                        f"computed yet; the metrics cover the computed ones (`landscape grid {result.run_id[:8]} "
                        f"--grid {result.grid_id} --resume` computes the rest)")
        if e["diverged"]:
            err().print(f"epoch {e['epoch']}: {e['diverged']} diverged values (NaN/Inf) count as above every threshold")
    if not result.saved:
        err().print("the results could not be cached (the store is not writable)")
    eps = "whole grid" if radius is None else f"{radius:g}"
    table = Table(title=f"grid {result.grid_id}{_name(meta.name)} of run {result.run_id}: {describe_grid(meta)}; "
                        f"ε {eps}, δ {delta:g}")
    for col in ("epoch", "pair/batch", "L0", "curvature λ", "condition", "ε-sharpness (rel)", "flat radius",
                "below L0+δ", "centre is min"):
        table.add_column(col, justify="left" if col == "pair/batch" else "right")
    for e in result.epochs:
        rows = e["panels"] if len(e["panels"]) > 1 else []
        for m in [*rows, e["mean"]]:
            label = "mean" if m["pair"] is None and rows else \
                f"pair {m['pair'] or 0}, batch {m['batch'] or 0}"
            flat = ("≥" if m["flat_radius_lower_bound"] else "") + num(m["flat_radius"], 3)
            is_min = "-" if m["center_is_min"] is None else "yes" if m["center_is_min"] else "no"
            table.add_row(str(e["epoch"]), label, num(m["center_loss"]), ", ".join(num(v, 3) for v in m["eigenvalues"]),
                          num(m["condition"], 3), f"{num(m['sharpness'], 3)} ({num(m['sharpness_relative'], 3)})", flat,
                          pct(m["share_below"]), is_min)
    stdout().print(table)
    stdout().print("curvature: eigenvalues of the in-plane Hessian of a quadratic fitted to the points nearest the "
                   "centre; flat radius in the box norm |u|∞ (≥: no point exceeds L0 + δ)")


# --- verify ------------------------------------------------------------------------------------


@app.command()
def verify(
    run: Annotated[str | None, typer.Argument(help="Only this run [default: every run].", show_default=False)] = None,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Re-hash checkpoints, optimizer states, directions and grid metadata, and decode every grid chunk.

    Reports each file that no longer matches what was recorded when it was written, with what to do;
    exits with 1 if anything is damaged. Changes nothing.

    Example: `landscape verify quickstart`
    """
    from landscape_cli.store.verify import verify as verify_store

    report = verify_store(store, run)
    problems = [vars(p) for p in report.problems]
    if json_output:
        print_json({"ok": report.ok, "checked": report.checked, "problems": problems,
                    "leftover_temporary_files": report.leftovers, "unfinished_grids": report.unfinished})
    else:
        checked = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.checked.items())
        if problems:
            table = Table(title="damaged")
            for col in ("run", "file", "problem", "what to do"):
                table.add_column(col, overflow="fold")
            for p in problems:
                table.add_row(p["run"], p["path"], p["problem"], p["fix"])
            stdout().print(table)
        stdout().print(f"checked {checked}")
        if report.leftovers:
            stdout().print(f"{len(report.leftovers)} temporary files left by killed writers (never read; safe to delete)")
        if report.unfinished:
            stdout().print(f"{len(report.unfinished)} grids whose creation was stopped before any row (no grid.json; "
                           "the same `landscape grid` command creates them again, or delete them)")
    if not report.ok:
        raise IntegrityError(f"{len(problems)} damaged or missing files in the store (listed above)")
    if not json_output:
        stdout().print("no damage found")


# --- models and datasets -------------------------------------------------------------------------


@app.command()
def models(json_output: JsonOpt = False) -> None:
    """List the models: built-in ones with their parameter counts (1x28x28 and 3x32x32 inputs), and those
    packages register as entry points (group landscape.models), with where they come from.

    Any `pkg.module:factory` or `./file.py:factory` works too: a factory is called with
    input_shape (a sample's shape) and num_outputs and returns a torch.nn.Module.

    Example: `landscape models`
    """
    from landscape_cli.models import count_parameters, create_model, list_models, model_entry
    from landscape_cli.plugins import entry_points

    rows: list[dict[str, Any]] = []
    for name in list_models():
        rows.append({
            "name": name,
            "origin": "built-in",
            "description": model_entry(name).description,
            "parameters_1x28x28": count_parameters(create_model(name, 1, 10, 28)),
            "parameters_3x32x32": count_parameters(create_model(name, 3, 10, 32)),
        })
    for name, origin in entry_points("model"):
        rows.append({"name": name, "origin": origin, "description": "", "parameters_1x28x28": None,
                     "parameters_3x32x32": None})
    if json_output:
        print_json(rows)
        return
    table = Table(title="models")
    for col in ("name", "parameters (1x28x28)", "parameters (3x32x32)", "from", "description"):
        table.add_column(col, justify="right" if col.startswith("param") else "left")
    for r in rows:
        sizes = [f"{v:,}" if v is not None else "-" for v in (r["parameters_1x28x28"], r["parameters_3x32x32"])]
        table.add_row(r["name"], *sizes, r["origin"], r["description"])
    stdout().print(table)


@app.command()
def datasets(json_output: JsonOpt = False) -> None:
    """List the datasets: built-in ones, and those packages register as entry points (group
    landscape.datasets), with where they come from.

    Any `pkg.module:factory` or `./file.py:factory` works too: a factory takes no arguments and
    returns {"train": (x, y), "val": (x, y), "task": "classification" | "regression"}.

    Example: `landscape datasets`
    """
    from landscape_cli.data import dataset_info, list_datasets
    from landscape_cli.plugins import entry_points

    rows: list[dict[str, Any]] = []
    for name in list_datasets():
        info = dataset_info(name)
        rows.append({"name": name, "origin": "built-in", "channels": info.channels, "size": info.size,
                     "classes": info.num_classes, "offline": info.offline, "description": info.description})
    for name, origin in entry_points("dataset"):
        rows.append({"name": name, "origin": origin, "channels": None, "size": None, "classes": None, "offline": None,
                     "description": ""})
    if json_output:
        print_json(rows)
        return
    table = Table(title="datasets")
    for col in ("name", "shape", "classes", "needs download", "from", "description"):
        table.add_column(col)
    for r in rows:
        builtin = r["origin"] == "built-in"
        table.add_row(r["name"], f"{r['channels']}x{r['size']}x{r['size']}" if builtin else "-",
                      str(r["classes"]) if builtin else "-", ("no" if r["offline"] else "once") if builtin else "-",
                      r["origin"], r["description"])
    stdout().print(table)


def main() -> None:
    """Console-script entry point."""
    app()
