"""The library's `grid()`: a request -> configuration -> prepared store -> plan -> execution.

`grid()` computes the loss landscape of a run around the checkpoints of the requested epochs, along
the axes its direction kind makes (random planes and lines, interpolation between checkpoints, the
PCA plane of the training trajectory, Hessian eigenvectors). The configuration is built once
(`plan.resolve`), curvature results the kind needs are computed first (`curvature.hessian`), the
grid is created or grown under its lock (`prepare.prepare_grid`: directions, Zarr arrays, grid.json
last), and the missing rows are computed by `execute` (resumable, shareable between processes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from landscape_cli._io import leave_no_trace, make_dirs
from landscape_cli.config import GridConfig, GridRequest, Runtime, layer_selection, split_options
from landscape_cli.curvature.hessian import compute_results
from landscape_cli.data import load_dataset
from landscape_cli.directions import GridContext, get_kind
from landscape_cli.engine import distributed
from landscape_cli.engine.distributed import Share
from landscape_cli.engine.execute import (
    CheckpointValues,
    deterministic_kernels,
    execute,
    load_epoch_model,
    try_metrics,
)
from landscape_cli.engine.plan import Plan, resolve, status
from landscape_cli.engine.prepare import grid_lock, prepare_grid, read_meta, recorded_evaluator, with_threads, writer
from landscape_cli.errors import GridStateError, IntegrityError, LandscapeError, RunNotFoundError, UsageError
from landscape_cli.kernel.batches import Batches
from landscape_cli.kernel.device import select_device, tune_allocator
from landscape_cli.models import checkpoints
from landscape_cli.store import Store, check_tree
from landscape_cli.store.grid_arrays import Rows, open_group
from landscape_cli.store.meta import EvaluatorRecord, GridMeta, RunMeta, epoch_record


@dataclass
class GridResult:
    grid_id: str
    run_id: str
    path: Path
    zarr_path: Path
    meta: GridMeta
    computed_rows: int = 0
    rows_done: int = 0
    rows_total: int = 0
    diverged: int = 0
    repaired: list[str] = field(default_factory=list)
    seconds_rows: float = 0.0  # time spent evaluating and writing rows (excludes set-up)
    share: Share = field(default_factory=Share)  # which processes computed it (one, shards, ranks)
    evaluation: EvaluatorRecord | None = None  # None when nothing was computed

    @property
    def complete(self) -> bool:
        return self.rows_total > 0 and self.rows_done == self.rows_total

    def open(self) -> Any:
        """The grid's Zarr group, read-only."""
        return open_group(self.zarr_path, "r")

    def to_xarray(self) -> Any:
        """The grid as an xarray Dataset (needs xarray installed)."""
        import xarray as xr

        return xr.open_zarr(self.zarr_path)


def grid(run: str, request: GridRequest | None = None, runtime: Runtime | None = None, **options: Any) -> GridResult:
    """Compute the loss landscape of `run` around the checkpoints of the requested epochs (default: all).

    What to compute is a `GridRequest` (or its fields as keywords: `grid("quickstart", width=21, epochs=[0, 5])`);
    how to run it a `Runtime` (or its fields: `device`, `data_dir`, `progress`, `shard`, `store`, `report`).

    By default the grid covers a, b in [-1, 1] (`width` points each, `span` or `range`/`yrange` to
    change it) along `pairs` seeded random direction pairs, normalized against each epoch's weights
    (`norm`), for the `split`'s first `batches` mini-batches (or "all": the whole split, the loss
    averaged over samples); `dims=1` makes lines along each pair's first direction.
    `directions="interpolate"` gives the line (1 − t)·w_A + t·w_B from each epoch A to `to_epoch`
    (or to `to`, another run "RUN[:EPOCH]"); `directions="pca"` the plane of the top two principal
    components of the trajectory of `epochs`, centred at its last checkpoint; `directions="hessian"`
    the plane of the top two Hessian eigenvectors at each epoch. The same call again computes
    nothing; with `resume=True` it computes what an interrupted call left. `gradient=False` skips the
    projected gradient at the centre (one backward pass per batch and pair, drawn as arrows by
    `plot`); a later call with gradients adds them. `from_grid` names a grid of the run whose
    configuration (and, unless `epochs` is given, epochs) to use instead. `precision` ("fp32",
    "tf32", "bf16") is part of the grid's identity; `points_per_pass` (default: 1 on CPU, from free
    memory on a GPU) is fixed when the grid is created. `shard` "I/N" computes only this process's
    share of the rows (a job array); under torchrun the ranks share the grid. Returns where the grid
    is and how far it got (on torchrun ranks other than 0: of their share).
    """
    request, runtime = split_options(request, runtime, options)
    with distributed.session(runtime.shard) as sess:
        try:
            request = request.checked()
            dev = select_device(runtime.device)
            st = Store.of(runtime.store)
            run_meta = st.read_run(st.resolve(run))
            cfg, wanted = resolve(st, run_meta, request)
        except LandscapeError as e:
            sess.agree(e)
            raise
        sess.agree(None)
        return compute(st, run_meta, cfg, wanted, request, runtime, dev, sess)


def compute(st: Store, run_meta: RunMeta, cfg: GridConfig, wanted: list[int], request: GridRequest, runtime: Runtime,
            device: torch.device, session: distributed.Session | None = None) -> GridResult:
    """Create (or grow) the grid `cfg` of the run, then compute what is missing for the epochs `wanted`
    (with a partial `session`: this process's share of it)."""
    sess = session or distributed.Session(distributed.Share())
    share = sess.share
    kind = get_kind(cfg.kind)
    name, resume, points_per_pass = request.name, request.resume, request.points_per_pass
    dev = sess.device(device)
    deterministic_kernels(dev)
    model = checkpoints.build_model(checkpoints.load_epoch(st, run_meta.id, epoch_record(run_meta, wanted[0])))
    weights = {k: v.detach() for k, v in model.named_parameters()}
    batchnorm = has_batchnorm(model)  # recorded in grid.json: plots name the --bn mode only of such a model
    del model
    names = kind.names(weights, cfg)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    del weights  # only their names and shapes are needed from here on
    ctx = GridContext(st, run_meta, cfg, shapes, names)
    run_id, grid_id = run_meta.id, cfg.grid_id
    gradient = request.gradient and kind.gradient
    progress = runtime.progress
    batches: Batches | None = None

    def prepare() -> tuple[GridMeta | GridResult, EvaluatorRecord | None]:
        """Checks, then the grid created or grown: (its metadata, evaluator), or (the result, None) when
        there is nothing to do."""
        nonlocal batches
        if name is not None:
            st.check_grid_name(run_id, grid_id, name)
        try:
            existing = read_meta(st, run_id, cfg)
            check_tree(st.zarr_path(run_id, grid_id), f"grid {grid_id}")  # a pipe where a chunk belongs would block
            state = status(Rows(st.zarr_path(run_id, grid_id), "r"), cfg, wanted, gradient) if existing else None
        except IntegrityError:
            if not resume:
                raise
            existing, state = None, None  # --resume rebuilds the damaged metadata below
        recorded = recorded_evaluator(existing, points_per_pass, dev, grid_id)
        if existing is not None and state is not None:
            if state.complete and not resume and (name is None or existing.name == name):
                return _result(st, existing), None  # (--resume goes on to check every chunk)
            if state.partial and not resume and not share.partial:
                hint = " (another process is computing it: --resume joins in)" if st.grid_busy(run_id, grid_id) else ""
                raise GridStateError(
                    f"grid {grid_id} of run {run_id} is {state.percent:.0f}% done "
                    f"({state.rows_done} of {state.rows_total} rows){hint}: pass --resume to continue it"
                )

        st.ensure_writable()
        data = load_dataset(run_meta.dataset["name"], runtime.data_dir, recorded=run_meta.dataset)  # before any write
        needed = kind.curvature(st, run_meta, cfg, wanted, existing.kind if existing is not None else None)
        if needed is not None:  # outside the grid's lock: minutes
            compute_results(st, run_meta, needed, wanted, device=runtime.device, data_dir=runtime.data_dir,
                            progress=progress)
            ctx.curvature = needed.hessian_id
        batches = Batches.of(data, cfg)
        evaluation = recorded or _new_evaluator(ctx, wanted[0], batches, dev, points_per_pass)
        evaluation = with_threads(evaluation, writer(share), torch.get_num_threads(), grid_id, runtime.note)
        if cfg.metrics and existing is None:
            try_metrics(ctx, batches, dev, wanted[0])  # the user's metrics, once, before anything is written
        grid_dir = st.grid_dir(run_id, grid_id)
        new_dirs = [d for d in (grid_dir.parent, grid_dir) if not d.exists()]
        with leave_no_trace(new_dirs, st.grid_file(run_id, grid_id)):
            make_dirs(st.locks_dir(run_id, grid_id))
            with grid_lock(st, run_id, grid_id):
                loss_of = CheckpointValues(ctx, batches, dev)
                meta = prepare_grid(ctx, wanted, name, loss_of, evaluation, runtime.note, batchnorm)
        return meta, evaluation

    prepared, evaluation = sess.lead(prepare)
    if isinstance(prepared, GridResult):
        return prepared
    meta = prepared
    assert evaluation is not None
    if batches is None:  # a rank other than 0: rank 0 prepared the grid
        batches = Batches.of(load_dataset(run_meta.dataset["name"], runtime.data_dir, recorded=run_meta.dataset), cfg)
    tune_allocator()
    rows = Rows(st.zarr_path(run_id, grid_id))
    outcome = execute(ctx, meta, rows, Plan.of(rows, cfg, wanted), batches, dev, progress and sess.leader, gradient,
                      share, evaluation, runtime.note)
    everyone = sess.gather((outcome.computed_rows, outcome.seconds_rows, outcome.repaired))
    done_rows, total_rows, diverged = rows.progress()
    return GridResult(grid_id, run_id, st.grid_dir(run_id, grid_id), st.zarr_path(run_id, grid_id), meta,
                      sum(c for c, _, _ in everyone), done_rows, total_rows, diverged,
                      [r for _, _, rs in everyone for r in rs], max(s for _, s, _ in everyone), share=share,
                      evaluation=evaluation)


def _new_evaluator(ctx: GridContext, epoch: int, batches: Batches, dev: torch.device,
                   points_per_pass: int | None) -> EvaluatorRecord:
    """A new grid's evaluator: the points per pass given, else 1 on CPU and what fits in free memory on a GPU."""
    if points_per_pass is None:
        if dev.type == "cuda":
            from landscape_cli.kernel.batched import choose_points_per_pass

            em = load_epoch_model(ctx, epoch, batches, dev)
            points_per_pass = choose_points_per_pass(em.model, em.evaluator.batches, dev)
            del em
        else:
            points_per_pass = 1
    return EvaluatorRecord(points_per_pass, ctx.config.precision, dev.type)


def has_batchnorm(model: torch.nn.Module) -> bool:
    """Whether `model` has BatchNorm layers: the modules whose mode --bn sets (as the evaluator finds them)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _parameters(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's trainable parameters (not buffers), in the model's order."""
    model = checkpoints.build_model(checkpoint)
    return {k: v.detach() for k, v in model.named_parameters()}


def _result(st: Store, meta: GridMeta) -> GridResult:
    zarr_path = st.zarr_path(meta.run, meta.id)
    done, total, diverged = Rows(zarr_path, "r").progress()
    return GridResult(meta.id, meta.run, st.grid_dir(meta.run, meta.id), zarr_path, meta, 0, done, total, diverged)


def model_weights(ref: str, store: Store | str | os.PathLike[str] | None = None,
                  dataset: str = "digits") -> tuple[str, dict[str, torch.Tensor]]:
    """(what it is, its parameters) of a run's model (its last checkpoint) or, when `ref` names no run, of the
    registered model `ref` as built for the registered dataset `dataset` (its input and output layers follow it)."""
    from landscape_cli.data import dataset_info
    from landscape_cli.models import create_model, list_models

    st = Store.of(store)
    try:
        run_id = st.resolve(ref)
    except RunNotFoundError as e:
        if ref not in list_models():
            raise RunNotFoundError(f"{e.message}; nor is {ref!r} a model (`landscape models` lists them)") from None
        info = dataset_info(dataset)
        try:
            model = create_model(ref, info.channels, info.num_classes, info.size)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UsageError(f"model {ref!r} cannot be built for dataset {dataset!r} ({e}): train a run of it and "
                             "list that run's layers") from None
        return f"model {ref} for {dataset}", {k: v.detach() for k, v in model.named_parameters()}
    meta = st.read_run(run_id)
    meta.require_checkpoints()
    weights = _parameters(checkpoints.load_epoch(st, run_id, meta.epochs[-1]))
    return f"run {run_id}", weights


def _layer_row(name: str, w: torch.Tensor) -> dict[str, Any]:
    from landscape_cli.directions import is_bias_or_bn

    return {"name": name, "shape": list(w.shape), "parameters": w.numel(),
            "kind": "bias/batchnorm" if is_bias_or_bn(w) else ("conv" if w.dim() == 4 else "weight"),
            "perturbed_by_default": not is_bias_or_bn(w)}


def list_layers(run: str, store: Store | str | os.PathLike[str] | None = None,
                dataset: str = "digits") -> list[dict[str, Any]]:
    """The parameter tensors of a run's model (or of a registered model built for `dataset`): what `--layer`
    accepts."""
    _, weights = model_weights(run, store, dataset)
    return [_layer_row(n, w) for n, w in weights.items()]


def layer_report(run: str, layer: str | Sequence[str], store: Store | str | os.PathLike[str] | None = None, *,
                  perturb_biasbn: bool = False, dataset: str = "digits") -> dict[str, Any]:
    """What `--layer` (one name, or glob patterns) selects of a run's model (or of a registered model): the
    tensors each pattern matches, which of them a grid (or `hessian`) moves, and how many parameters that is.
    A pattern that matches nothing is refused as a grid refuses it."""
    from landscape_cli.directions import layer_matches, perturbed_names

    exact, patterns = layer_selection(layer)
    if exact is None and patterns is None:
        raise UsageError("give --layer NAME or --layer PATTERN (repeatable)")
    what, weights = model_weights(run, store, dataset)
    selected = set(perturbed_names(weights, perturb_biasbn=perturb_biasbn, layer=exact, layers=patterns))
    asked = list(patterns) if patterns is not None else [str(exact)]
    matches = layer_matches(weights, asked)
    rows = []
    for n, w in weights.items():
        by = [p for p in asked if n in matches[p]]
        if by:
            rows.append({**_layer_row(n, w), "matched_by": by, "selected": n in selected})
    chosen = sum(r["parameters"] for r in rows if r["selected"])
    total = sum(w.numel() for w in weights.values())
    return {"of": what, "layer": asked, "perturb_biasbn": perturb_biasbn,
            "patterns": [{"pattern": p, "tensors": len(matches[p]),
                          "selected": sum(1 for n in matches[p] if n in selected),
                          "parameters": sum(weights[n].numel() for n in matches[p] if n in selected)} for p in asked],
            "tensors": len(selected), "parameters": chosen, "model_parameters": total,
            "fraction": chosen / total if total else 0.0, "layers": rows}
