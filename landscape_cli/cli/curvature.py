"""Commands about curvature: hessian (eigenvalues, trace, density at the checkpoints) and stats (a grid's
metrics around its centre).

Plain functions: `landscape_cli.cli.application` registers them as commands. Heavy libraries (torch, zarr)
are imported inside the commands so that `landscape --help` starts fast.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table

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
    num,
    pct,
    print_json,
    set_threads,
    stdout,
)
from landscape_cli.config import HessianConfig
from landscape_cli.errors import Interrupted


def hessian(
    run: Annotated[str, typer.Argument(help="Run id, id prefix or name.", show_default=False)],
    epochs: Annotated[
        str | None, typer.Option(help="Checkpoints, e.g. 0,1,9 or 0-9 (default: all of the run's).", show_default=False)
    ] = None,
    at_steps: AtStepsOpt = None,
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
        list[str] | None, typer.Option(help="Only this parameter tensor, or the tensors glob patterns select "
                                       "(repeatable; `landscape layers RUN --layer PATTERN`).", show_default=False)
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
    threads: ThreadsOpt = None,
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
    set_threads(threads)
    from landscape_cli.config import parse_epochs, parse_steps
    from landscape_cli.curvature.hessian import hessian as compute_hessian
    from landscape_cli.store import Store
    from landscape_cli.views.readers import key_fields, unit

    steps_given = parse_steps(at_steps)
    try:
        result = compute_hessian(
            run, epochs=parse_epochs(epochs), at_steps=steps_given, top=top, batches=batches, batch_size=batch_size,
            split=split, bn=bn,
            perturb_biasbn=perturb_biasbn, layer=layer, tol=tol, probes=probes, density=density,
            density_probes=density_probes, steps=steps, bins=bins, seed=seed, device=device, name=name, store=store,
            data_dir=data_dir, progress=not quiet,
        )
    except KeyboardInterrupt:
        raise Interrupted("hessian interrupted: finished epochs are kept; run the same command to continue") from None
    run_meta = Store.of(store).read_run(result.run_id)
    named = unit(run_meta)  # "step" for a run with step checkpoints: its results are named by step
    rows = result.summary()
    if run_meta.has_steps:  # each checkpoint's step, and the epochs completed at it
        rows = [{**key_fields(run_meta, int(r["epoch"])), **{k: v for k, v in r.items() if k != "epoch"}}
                for r in rows]
    if json_output:
        print_json({"id": result.hessian_id, "run": result.run_id, "path": result.path, "zarr": result.zarr_path,
                    "name": result.meta.name, "config": result.meta.config.identity(), "computed": result.computed,
                    "epochs": rows})
        return
    if not result.computed:
        err().print(f"Hessian results {result.hessian_id} already hold {named}s "
                    f"{','.join(map(str, result.meta.epochs))}: nothing to compute")
    h = result.meta.config
    data = f"all of the {h.split} split" if h.whole else f"{h.batches} {h.split} batches of {h.batch_size}"
    table = Table(title=f"Hessian of run {result.run_id} ({data}, BatchNorm {h.bn})")
    for col in (named, "top eigenvalues", "λmin", "|λmin/λmax|", "trace (± s.e.)", "not converged"):
        table.add_column(col, justify="right")
    for r in rows:
        bad = [f"λ{j + 1}" for j, ok in enumerate(r["converged"]) if not ok]
        if r["lambda_min_residual"] > result.meta.config.tol:
            bad.append("λmin")
        table.add_row(str(r[named]), ", ".join(num(v) for v in r["eigenvalues"]), num(r["lambda_min"]),
                      num(r["convexity"]), f"{num(r['trace'])} ± {num(r['trace_stderr'], 2)}", ", ".join(bad) or "-")
    stdout().print(table)
    stdout().print(f"Hessian results [bold]{result.hessian_id}[/bold]{name_suffix(result.meta.name)} in {result.zarr_path}")


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
    at_steps: AtStepsOpt = None,
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
    - fit: the fit's residual (RMS, relative to the spread of L over the window) and how far the
      eigenvalues of the same fit to the 3x3 window differ; "poor" above 10% or 25%: the landscape
      is not quadratic there and λ describes the window, not the centre
    - stored λ (a Hessian-eigenvector grid): the eigenvalues grid.json recorded, per unit of weight;
      along the axes ‖w‖·v the curvature is λ·‖w‖², so fit/λ (‖w‖²) should agree for both axes
    - ε-sharpness (Keskar et al. 2017): max(L − L0) over the points with |u|∞ <= ε, the centre
      included; relative: that / (1 + L0)
    - flat radius: |u|∞ (box norm) of the nearest point with L > L0 + δ; when none, the grid's
      half-width max |u|∞, a lower bound (shown ≥); when that point is on the grid's first ring,
      an upper bound (shown ≤: the radius is within one grid spacing)
    - below: the share of the points with L <= L0 + δ
    - centre is min: L0 <= the smallest stored L (within 1e-7 relative)

    Only computed rows count (the missing points are reported); diverged points (NaN/Inf) count as
    above every threshold. Results are cached per epoch in the grid's stats.json.

    Example: `landscape stats quickstart --radius 0.5 --delta 0.05`
    """
    from landscape_cli.config import parse_epochs, parse_steps
    from landscape_cli.curvature.stats import radius_mark
    from landscape_cli.curvature.stats import stats as grid_stats
    from landscape_cli.views.listing import describe_grid

    result = grid_stats(run, grid=grid, epochs=parse_epochs(epochs), radius=radius, delta=delta, store=store,
                        at_steps=parse_steps(at_steps))
    meta = result.meta
    if json_output:
        print_json({"run": result.run_id, "grid": result.grid_id, "name": meta.name, "kind": meta.config.kind,
                    "dims": meta.config.dims, "description": describe_grid(meta), "radius": radius, "delta": delta,
                    "cached": result.cached, "cache_written": result.saved, "epochs": result.epochs})
        return
    def at(e: dict[str, Any]) -> str:  # "epoch 3", or "step 150" in a grid of a run with step checkpoints
        return f"step {e['step']}" if "step" in e else f"epoch {e['epoch']}"

    for e in result.epochs:
        if not e["center_written"]:
            err().print(f"{at(e)}: the centre values are not computed yet, so the metrics are NaN")
        if e["missing"]:
            err().print(f"{at(e)}: {e['missing']} of {e['points']} grid points (over the pairs) are not "
                        f"computed yet; the metrics cover the computed ones (`landscape grid {result.run_id[:8]} "
                        f"--grid {result.grid_id} --resume` computes the rest)")
        if e["diverged"]:
            err().print(f"{at(e)}: {e['diverged']} diverged values (NaN/Inf) count as above every threshold")
        landscapes = [*e["panels"], e["mean"]] if len(e["panels"]) > 1 else e["panels"]
        poor = [m for m in landscapes if m.get("fit_poor")]
        if poor:
            worst = max(poor, key=lambda m: (_finite(m["fit_residual_relative"]), _finite(m["fit_disagreement"])))
            err().print(f"{at(e)}: the quadratic fits {len(poor)} of {len(landscapes)} landscapes poorly "
                        f"(up to {pct(worst['fit_residual_relative'])} of the spread over the 5x5 window left "
                        f"unexplained, the 3x3 window's curvature {pct(worst['fit_disagreement'])} apart): their "
                        "curvature is the window's average, not the centre's (a finer grid, e.g. a smaller --span, "
                        "tells)")
    if not result.saved:
        err().print("the results could not be cached (the store is not writable)")
    eps = "whole grid" if radius is None else f"{radius:g}"
    table = Table(title=f"grid {result.grid_id}{name_suffix(meta.name)} of run {result.run_id}: {describe_grid(meta)}; "
                        f"ε {eps}, δ {delta:g}")
    hessian_kind = meta.config.kind == "hessian"
    steps = any("step" in e for e in result.epochs)
    columns = ["step" if steps else "epoch", "pair/batch", "L0", "curvature λ", *(["stored λ (fit/λ)"] if hessian_kind else []),
               "fit (resid, 3x3 Δ)", "condition", "ε-sharpness (rel)", "flat radius", "below L0+δ", "centre is min"]
    for col in columns:
        table.add_column(col, justify="left" if col == "pair/batch" else "right")
    for e in result.epochs:
        rows = e["panels"] if len(e["panels"]) > 1 else []
        for m in [*rows, e["mean"]]:
            label = "mean" if m["pair"] is None and rows else \
                f"pair {m['pair'] or 0}, batch {m['batch'] or 0}"
            flat = radius_mark(m) + num(m["flat_radius"], 3)
            is_min = "-" if m["center_is_min"] is None else "yes" if m["center_is_min"] else "no"
            fit = f"{pct(m['fit_residual_relative'])}, {pct(m['fit_disagreement'])}" + (" poor" if m["fit_poor"] else "")
            stored = [_stored_text(e.get("stored_eigenvalues"), m["eigenvalues"]) if m["pair"] is None else ""] \
                if hessian_kind else []
            table.add_row(str(e["step" if steps else "epoch"]), label, num(m["center_loss"]),
                          ", ".join(num(v, 3) for v in m["eigenvalues"]),
                          *stored, fit, num(m["condition"], 3),
                          f"{num(m['sharpness'], 3)} ({num(m['sharpness_relative'], 3)})", flat,
                          pct(m["share_below"]), is_min)
    stdout().print(table)
    for e in result.epochs:
        barriers = e.get("barriers")
        if barriers:  # a curve grid: how high each path rises above its higher end
            stdout().print(f"{at(e)}: barrier along the curve {num(barriers.get('curve'))}, along the straight line "
                           f"{num(barriers.get('line'))} (max over t of L(t) − max(L(0), L(1)), the batches' mean)")
    stdout().print("curvature: eigenvalues of the in-plane Hessian of a quadratic fitted to the points nearest the "
                   "centre; fit: its residual relative to the spread of L, and how far the 3x3 window's fit is from "
                   "it (poor above 10% or 25%); flat radius in the box norm |u|∞ (≥: no point exceeds L0 + δ, a "
                   "lower bound; ≤: the nearest point above L0 + δ is on the first ring, an upper bound)"
                   + ("; stored λ: the Hessian's eigenvalues as grid.json records them, per unit of weight (along "
                      "the axes ‖w‖·v the curvature is λ·‖w‖², so fit/λ estimates ‖w‖²)" if hessian_kind else ""))


def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else -1.0


def _stored_text(stored: list[float] | None, fitted: list[float]) -> str:
    """A Hessian grid's stored eigenvalues and, beside each, the fitted curvature over it: "3.23, 3.01 (fit/λ 49.7, 49)"."""
    if not stored:
        return "-"
    ratios = [f / v if v else math.nan for f, v in zip(fitted, stored, strict=False)]
    return f"{', '.join(num(v, 4) for v in stored)} (fit/λ {', '.join(num(r, 3) for r in ratios)})"
