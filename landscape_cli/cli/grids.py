"""Commands about grids: grid computes one, plot draws it, export writes it for other tools.

Plain functions: `landscape_cli.cli.application` registers them as commands. Heavy libraries (torch, zarr,
matplotlib) are imported inside the commands so that `landscape --help` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from landscape_cli.cli._common import (
    AtStepsOpt,
    BatchSizeOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    NameOpt,
    QuietOpt,
    StoreOpt,
    ThreadsOpt,
    err,
    name_suffix,
    note,
    print_json,
    set_threads,
    stdout,
)
from landscape_cli.config import GridRequest
from landscape_cli.errors import Interrupted, UsageError


def _tuple(epochs: list[int] | None) -> tuple[int, ...] | None:
    return tuple(epochs) if epochs is not None else None


def _run_meta(store: Path | None, run_id: str) -> Any:
    from landscape_cli.store import Store

    return Store.of(store).read_run(run_id)


def _keys_json(run: Any, keys: list[int]) -> dict[str, list[int]]:
    from landscape_cli.views.readers import keys_json

    return keys_json(run, keys)


def _unit(run: Any) -> str:
    from landscape_cli.views.readers import unit

    return unit(run)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}{'es' if what.endswith('ch') else 's'}"


def grid(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name.", show_default=False)],
    epochs: Annotated[
        str | None, typer.Option(help="Checkpoints to use, e.g. 0,1,9 or 0-9 (default: all of the run's). With "
                                 "--directions interpolate: where each line starts; with pca: the trajectory; with "
                                 "plane: its centre A (default: the last).",
                                 show_default=False)
    ] = None,
    at_steps: AtStepsOpt = None,
    directions: Annotated[
        str, typer.Option(help="random (Li et al.'s filter-normalized planes), interpolate (the line between two "
                          "checkpoints, Goodfellow et al.), pca (the plane of the training trajectory), hessian, "
                          "curve (along a trained curve between two minima, --along; Garipov et al.), curve-plane "
                          "(the plane of its ends and bend) or plane (through three checkpoints: --epochs A "
                          "--through B --through C).")
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
        list[str] | None, typer.Option(help="Perturb only this parameter tensor, or the tensors glob patterns select, "
                                       "e.g. 'blocks.3.attn.*' (repeatable; `landscape layers RUN --layer PATTERN` "
                                       "shows the selection).", show_default=False)
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
    along: Annotated[
        str | None, typer.Option(help="--directions curve or curve-plane: the curve (`landscape connect`) of RUN, by "
                                 "id, prefix or name.", show_default=False)
    ] = None,
    metric_refs: Annotated[
        list[str] | None, typer.Option("--metric", help="A metric beside loss and accuracy: module:function or "
                                       "./file.py:function of (outputs, targets) -> one number per batch (NAME=REF "
                                       "names its array); repeat for more.", show_default=False)
    ] = None,
    through: Annotated[
        list[str] | None, typer.Option(help="--directions plane: a checkpoint the plane goes through, EPOCH (of RUN), "
                                       "RUN2 (its last) or RUN2:EPOCH; give it twice (B and C; A is --epochs).",
                                       show_default=False)
    ] = None,
    bn: Annotated[
        str | None, typer.Option(help="BatchNorm mode [default: train; recompute for curve, curve-plane and plane]: train "
                                 "(batch statistics, as in a training step), eval (running statistics; interpolated "
                                 "along interpolation lines) or recompute (running statistics re-estimated on the "
                                 "grid's batches at every point, then eval: twice the forward passes; as PyTorch's "
                                 "momentum=None, each batch weighs the same: the mean of the batches' means and of "
                                 "their unbiased variances, so with --batches all a short last piece (from half a "
                                 "batch; a smaller one is merged into the piece before it) counts as much as a full "
                                 "one).", show_default=False)
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
    threads: ThreadsOpt = None,
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
    --width 51 --shard $SLURM_ARRAY_TASK_ID/4`; three checkpoints' plane: `landscape grid quickstart --directions
    plane --epochs 5 --through 0 --through 1`; your metric: `landscape grid quickstart --metric ./my_metrics.py:margin
    --threads 2`
    """
    set_threads(threads)
    from landscape_cli.config import Runtime, parse_epochs, parse_range, parse_steps
    from landscape_cli.engine.compute import grid as compute_grid
    from landscape_cli.engine.distributed import torchrun_ranks
    from landscape_cli.views.listing import describe_grid

    ranks = torchrun_ranks()
    follower = ranks is not None and ranks.rank != 0  # torchrun's other ranks print nothing but errors
    request = GridRequest(
        epochs=_tuple(parse_epochs(epochs)), at_steps=_tuple(parse_steps(at_steps)), directions=directions, dims=dims,
        width=width, span=span,
        range=parse_range(range_, "--range"), yrange=parse_range(yrange, "--yrange"), pairs=pairs, batches=batches,
        batch_size=batch_size, split=split, seed=seed, norm=norm, perturb_biasbn=perturb_biasbn,
        layer=tuple(layer) if layer else None, single_kernel=single_kernel, bn=bn, directions_from=directions_from,
        to_epoch=to_epoch, to=to, along=along, through=tuple(through) if through else None,
        metrics=tuple(metric_refs) if metric_refs else None,
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
    run_meta = _run_meta(store, result.run_id)
    summary = {
        "id": result.grid_id, "run": result.run_id, "path": result.path, "zarr": result.zarr_path,
        "name": meta.name, "kind": cfg.kind, "dims": cfg.dims, **_keys_json(run_meta, meta.epochs),
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
        f"grid [bold]{result.grid_id}[/bold]{name_suffix(meta.name)} of run {result.run_id}: {describe_grid(meta)}, "
        f"{_unit(run_meta)}s {','.join(map(str, meta.epochs))}, {_count(cfg.pairs, 'pair')} x "
        f"{'all of the ' + cfg.split + ' split' if cfg.whole else _count(cfg.batches, 'batch')}, {state}"
        + (f", {result.diverged} points diverged (NaN/Inf)" if result.diverged else "")
    )
    if result.share.partial:
        stdout().print(f"  {result.share.describe()}: computed {_count(result.computed_rows, 'row')}"
                       + ("" if result.share.how == "rank" else " (its share)"))
    stdout().print(f"  {result.zarr_path}")


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
    at_steps: AtStepsOpt = None,
    pair: Annotated[int | None, typer.Option(help="Only this direction pair.", show_default=False)] = None,
    batch: Annotated[int | None, typer.Option(help="Only this batch.", show_default=False)] = None,
    metric: Annotated[str, typer.Option(help="loss or accuracy.")] = "loss",
    contour: Annotated[bool, typer.Option(help="Labelled contour lines instead of a heatmap (2-D grids; a PCA "
                                          "plane always).")] = False,
    surface: Annotated[bool, typer.Option(help="3-D surfaces (2-D grids).")] = False,
    log: Annotated[bool, typer.Option(help="Logarithmic colour (or height, or y) scale.")] = False,
    clip: Annotated[float | None, typer.Option(help="Cap values above this (e.g. high losses).", show_default=False)] = None,
    reduce: Annotated[str | None, typer.Option(help="none, mean (over pairs and batches), batches or pairs. A line's "
                                               "curves are means over pairs and batches unless batches (one per "
                                               "pair) or pairs (one per batch). With --html: the selection the page "
                                               "opens on [default: none; with --html: mean].",
                                               show_default=False)] = None,
    scale: Annotated[str, typer.Option(help="Colour scale of a 2-D grid's panels: shared (one for every panel and "
                                       "GIF frame, to compare them) or panel (each its own colour bar: an "
                                       "epoch-0 or zoomed panel is not one flat colour).")] = "shared",
    animate: Annotated[bool, typer.Option(help="A GIF over the epochs (2-D grids).")] = False,
    out: Annotated[str | None, typer.Option(help="Output file (.png, .pdf, .svg; .gif with --animate).",  # text: see export
                                            show_default=False)] = None,
    show: Annotated[bool, typer.Option(help="Also open a window.")] = False,
    html: Annotated[
        bool, typer.Option("--html", help="One self-contained HTML page instead (no network needed to view it): the "
                           "3-D surface to rotate and the contour map, a slider over every epoch, pair and batch "
                           "selectors, opened on the mean over pairs and batches (--reduce picks another); --log "
                           "and --clip as for figures; large grids decimated. --out PAGE.html [default: the grid's "
                           "plots/].")
    ] = False,
    hessian: Annotated[
        bool, typer.Option("--hessian", help="Draw the run's curvature results instead (`landscape hessian`): "
                           "eigenvalues, λmin and trace against epoch, the density per epoch; --grid picks results by "
                           "id or name [default: the newest].")
    ] = False,
    lambda_max: Annotated[
        bool, typer.Option("--lambda-max", help="Draw the λmax tracked during training instead (`landscape train "
                           "--track-lambda-max K`) against the step, with 2/η (gradient descent's stability "
                           "threshold; η the run's --lr); --json prints the values [default --out: the run's "
                           "plots/lambda_max.png].")
    ] = False,
    tensorboard: Annotated[
        Path | None, typer.Option("--tensorboard", metavar="LOGDIR", help="Also log into this TensorBoard log "
                                  "directory (made if missing; not inside the store): the figure as an image and "
                                  "the grid's `landscape stats` (its mean landscape) as scalars, the epoch as the "
                                  "step; with --hessian the results' eigenvalues, λmin and trace. Needs pip install "
                                  "'landscape-cli[tensorboard]'.", show_default=False)
    ] = None,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Draw the loss landscape of a run's grid, or compare several epochs or runs side by side.

    A 2-D grid, one epoch: the reference figure, a panel per (direction pair, batch), heatmaps of the
    loss minus its centre value on one colour scale (--scale panel: one per panel), and a red arrow for
    the negative gradient at the centre. Several epochs or runs are laid out side by side on one scale
    (rows: runs, columns: epochs; their grids need the same --width and --span, or --range and
    --yrange). A PCA plane is drawn as contours with the training
    path on it (axes: each component's share of the variance).

    A 1-D grid (--dims 1, interpolate, pca --dims 1) is drawn as curves against its coordinate: one
    per epoch (and run), the mean over pairs and batches with a min–max band. An interpolation marks
    its checkpoints at t = 0 and t = 1; a PCA line shows each checkpoint at its own loss.

    Diverged points (NaN/Inf) are magenta; rows not computed yet are hatched (curves: left out).

    --tensorboard LOGDIR also writes an event file there: the figure as an image (tag
    landscape/RUN/GRID, at the newest epoch shown) and the stats of each grid's mean landscape at
    every epoch as scalars (landscape/RUN/GRID/sharpness, ...; the epoch as the step).

    Example: `landscape plot quickstart --epochs 0,5 --reduce mean`; `landscape plot quickstart --html`;
    `landscape plot quickstart --tensorboard tb/`
    """
    from landscape_cli.config import parse_epochs, parse_steps
    from landscape_cli.views.figures import plot as draw_plot

    steps = parse_steps(at_steps)
    if out is not None and not out.strip():
        raise UsageError("empty --out: give a file (the figure's format from its suffix), or leave it out")

    logdir = None
    if tensorboard is not None:
        from landscape_cli.views.tensorboard import check_logdir

        refused = [flag for flag, on in (("--html", html), ("--animate", animate)) if on]
        if refused:
            raise UsageError(f"--tensorboard logs a still figure: drop {' and '.join(refused)}")
        logdir = check_logdir(tensorboard, store)  # before anything is drawn or written
    if html:
        from landscape_cli.views.page import write_html

        given = [flag for flag, on in (("--contour", contour), ("--surface", surface), ("--animate", animate),
                                       ("--epochs", epochs is not None), ("--epoch", epoch is not None),
                                       ("--at-steps", steps is not None), ("--hessian", hessian), ("--show", show),
                                       ("--scale", scale != "shared"),
                                       ("--pair", pair is not None), ("--batch", batch is not None)) if on]
        if given:
            raise UsageError(f"--html makes a page with every epoch, pair and batch and its own controls: drop "
                             f"{', '.join(given)}")
        page = write_html(runs, grids=grid or (), metric=metric, out=out, store=store, log=log, clip=clip,
                          reduce=reduce or "mean")
        if json_output:
            print_json(page.to_json())
        else:
            if page.decimated:
                shown = " x ".join(map(str, page.shape))
                err().print(f"the page shows {shown} of the grid's points (every {page.step}th along each axis) "
                            "to stay a few MB")
            stdout().print(str(page.path))
        return

    if lambda_max:
        from landscape_cli.views.sharpness_figure import plot_lambda_max

        given = [flag for flag, on in (("--hessian", hessian), ("--grid", bool(grid)), ("--animate", animate),
                                       ("--tensorboard", logdir is not None), ("--epochs", epochs is not None),
                                       ("--epoch", epoch is not None), ("--at-steps", steps is not None)) if on]
        if given or len(runs) != 1:
            raise UsageError("--lambda-max draws one run's tracked λmax: give one run" +
                             (f" and drop {', '.join(given)}" if given else ""))
        sharp = plot_lambda_max(runs[0], out=out, store=store)
        if json_output:
            print_json(sharp.to_json())
        else:
            if sharp.note:
                err().print(sharp.note)
            stdout().print(str(sharp.path))
        return
    if hessian:
        from landscape_cli.views.hessian_figure import plot_hessian

        if len(runs) != 1 or (grid and len(grid) != 1):
            raise UsageError("--hessian draws one run's curvature results: give one run (and at most one --grid)")
        figure = plot_hessian(runs[0], hessian=grid[0] if grid else None, out=out, store=store)
        logged = None
        if logdir is not None:
            from landscape_cli.views.tensorboard import write_hessian

            logged = write_hessian(logdir, figure, store)
        if json_output:
            print_json({"path": figure.path, "hessian": figure.meta.id, **figure.keys_json(),
                        "eigenvalues": figure.eigenvalues.tolist(), "lambda_min": figure.lambda_min.tolist(),
                        "trace": figure.trace.tolist(), "trace_stderr": figure.trace_stderr.tolist(),
                        **({"tensorboard": logged.to_json()} if logged else {})})
        else:
            stdout().print(str(figure.path))
            if logged:
                stdout().print(str(logged.logdir))
        return
    if epoch is not None and epochs is not None:
        raise UsageError("give --epoch or --epochs, not both")
    chosen = [epoch] if epoch is not None else parse_epochs(epochs)
    result = draw_plot(
        runs, grids=grid or (), epochs=chosen, at_steps=steps, pair=pair, batch=batch, metric=metric, contour=contour,
        surface=surface, log=log, clip=clip, reduce=reduce or "none", scale=scale, animate=animate, out=out, show=show,
        store=store,
    )
    logged = None
    if logdir is not None:
        from landscape_cli.views.tensorboard import write_plot

        logged = write_plot(logdir, result, store)
    from landscape_cli.views.readers import key_fields, keys_json

    panels = [
        {"title": p.title, "run": p.source.run_id, "grid": p.source.grid_id, **key_fields(p.source.run, p.epoch),
         "pair": p.pair, "batch": p.batch, "diverged": p.diverged, "computed": bool(p.computed.all())}
        for p in result.panels
    ]
    curves = [
        {"label": c.label, "run": c.source.run_id, "grid": c.source.grid_id, **key_fields(c.source.run, c.epoch),
         "pair": c.pair, "batch": c.batch, "diverged": c.diverged, "computed": c.computed}
        for c in result.curves
    ]
    complete = all(p["computed"] for p in panels) and all(c["computed"] for c in curves)
    if json_output:
        grids = [{"run": s.run_id, "grid": s.grid_id, "kind": s.kind, "dims": s.dims} for s in result.sources]
        paths = [{"run": t.source.run_id, "grid": t.source.grid_id, **keys_json(t.source.run, t.epochs),
                  "off_plane": t.off_plane}
                 for t in {id(t.source): t for t in result.paths}.values()]
        print_json({"path": result.path, "grids": grids, "rows": result.shape[0], "columns": result.shape[1],
                    "diverged_points": result.diverged, "arrow_scale": result.arrow_scale, "panels": panels,
                    "curves": curves, "paths": paths, "notes": result.notes,
                    **({"tensorboard": logged.to_json()} if logged else {})})
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
    if logged:
        stdout().print(str(logged.logdir))


def export(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name (or a grid).", show_default=False)],
    format_: Annotated[str, typer.Option("--format", help="netcdf, csv, vtk or npz.", show_default=False)],
    grid: Annotated[
        str | None, typer.Option("--grid", help="Which grid (id, prefix or name) [default: the run's newest, as plot "
                                 "chooses].", show_default=False)
    ] = None,
    out: Annotated[  # text, not a Path: Typer would turn an empty --out '' into '.', the working directory
        str | None, typer.Option(help="Output file (vtk: a directory) outside the store [default: the grid's "
                                 "exports/].", show_default=False)
    ] = None,
    zmax: Annotated[
        float | None, typer.Option(help="vtk: clip heights above this loss (Li et al.'s h52vtp --zmax).",
                                   show_default=False)
    ] = None,
    log: Annotated[bool, typer.Option(help="vtk: log(loss + 0.1) as height and field (h52vtp's --log).")] = False,
    height_scale: Annotated[
        float | None, typer.Option("--height-scale", help="vtk: z = height × this [default: 1, 2 or 5 × 10^k making "
                                   "the heights' range about the grid's width; recorded in each file's field data].",
                                   show_default=False)
    ] = None,
    flat: Annotated[
        bool, typer.Option("--flat", help="vtk: z = 0, the height only as the point scalar `height` (for ParaView's "
                           "Warp By Scalar, scale factor the recorded height_scale).")
    ] = False,
    hessian: Annotated[
        bool, typer.Option("--hessian", help="Export the run's curvature results (`landscape hessian`) instead, as "
                           "netcdf, csv or npz; --grid picks results by id or name [default: the newest].")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out file (or another grid's VTK export) that no "
                           "earlier export of this grid wrote. Without it such a file is refused.")
    ] = False,
    store: StoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Export a grid for other tools: NetCDF-4 (xarray), long-format CSV, VTK for ParaView, or NumPy .npz.

    Every export holds every value with the `done` mask beside it, so points not computed yet (done 0)
    are never confused with diverged ones (NaN/Inf, done 1); an unfinished grid exports what is done and
    says how many points are missing. NetCDF and npz hold every array, coordinate and attribute (nested
    attributes as JSON strings; NetCDF with the CF-1.8 attributes: units, flags, title, history); CSV has
    one row per epoch, pair, batch and point, after the run and grid ids; VTK writes one
    structured grid per epoch, pair and batch plus the mean, the loss as height and as a point field,
    NaN points hidden, and a PCA grid's path as a polyline (needs `pip install 'landscape-cli[vtk]'`);
    the height is scaled to the grid's width (--height-scale), or 0 with --flat for Warp By Scalar.

    An existing --out file is replaced only if an earlier export of the same grid wrote it (its own metadata
    names the grid), or with --force.

    Example: `landscape export quickstart --format vtk --zmax 10 --log`
    """
    from landscape_cli.exchange.export import export as write_export
    from landscape_cli.exchange.export import export_hessian

    try:
        if hessian:
            if zmax is not None or log or height_scale is not None or flat:
                raise UsageError("--zmax, --log, --height-scale and --flat shape a VTK surface: curvature results have "
                                 "none")
            result = export_hessian(run, hessian=grid, format=format_, out=out, store=store, force=force)
        else:
            result = write_export(run, grid=grid, format=format_, out=out, zmax=zmax, log=log,
                                  height_scale=height_scale, flat=flat, store=store, force=force)
    except KeyboardInterrupt:  # every file is written under a temporary name (removed) and renamed when complete
        where = str(out) if out is not None else "the exports/ directory"
        raise Interrupted(f"export interrupted: nothing half-written was left at {where} (a file appears only once "
                          "complete; temporary files removed); run the same command again") from None
    if json_output:
        print_json(result.to_json())
        return
    for line in result.notes:  # points not computed yet, diverged points
        err().print(line)
    files = f" ({_count(len(result.files), 'file')})" if len(result.files) > 1 else ""
    if result.height_scale is not None:
        z = "z = 0, warp by height" if flat else "z = height"
        files = f"{files[:-1] if files else ' ('}, {z} × {result.height_scale:g})"
    what = "curvature results" if hessian else "grid"
    stdout().print(f"{result.format} export of {what} {result.grid_id}{files}: {result.path}")
