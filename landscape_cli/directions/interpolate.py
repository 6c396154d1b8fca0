"""Interpolation between checkpoints (the `interpolate` kind; Goodfellow et al. 2015).

The line w(t) = (1 − t)·w_A + t·w_B from each grid epoch A to a target checkpoint B (another epoch
of the run, or an epoch of another run of the same model: mode connectivity's linear path). In this
form t = 0 and t = 1 give each checkpoint's weights exactly in float32, and the coordinates always
contain t = 0 and t = 1 exactly. Every parameter moves, BatchNorm's included; with `--bn eval` the
BatchNorm running statistics are interpolated too, with `--bn recompute` they are re-estimated on
the grid's batches at each point. Nothing is stored: the end points are checkpoints, recorded in
grid.json with their hashes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape_cli.config import Axis, GridConfig, GridRequest
from landscape_cli.directions._registry import (
    DirectionKind,
    EpochModel,
    GridContext,
    Prepared,
    other_run,
    points_with_ends,
    register_kind,
)
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.kernel.evaluate import Slice
from landscape_cli.models import checkpoints
from landscape_cli.store import Store
from landscape_cli.store.meta import GridMeta, RunMeta


@register_kind
class InterpolateKind(DirectionKind):
    name = "interpolate"
    description = "the line (1 − t)·w_A + t·w_B between two checkpoints (Goodfellow et al.)"
    made = "per epoch (from the checkpoints)"
    dims = (1,)
    default_range = (-0.5, 1.5)
    gradient = False
    order = 1

    def configure(self, st: Store, run: RunMeta, opts: GridRequest) -> dict[str, Any]:
        target_run, target_epoch = run, opts.to_epoch
        if opts.to is not None:
            target_run, epoch = other_run(st, run, "--to", opts.to, "RUN or RUN:EPOCH",
                                          "interpolation needs two runs of the same model")
            if epoch is not None:
                if opts.to_epoch is not None and opts.to_epoch != epoch:
                    raise UsageError(f"--to {opts.to} and --to-epoch {opts.to_epoch} name different epochs")
                target_epoch = epoch
            elif target_epoch is None:
                if not target_run.epochs:
                    raise UsageError(f"--to {opts.to}: run {target_run.id} has no checkpoint yet")
                target_epoch = target_run.epochs[-1].key
        if target_epoch is None:
            raise UsageError("--directions interpolate needs --to-epoch B (the checkpoint the line ends at) "
                             "or --to RUN2[:EPOCH]")
        if target_run.has_steps and (opts.to_epoch is not None or (opts.to and ":" in opts.to)):
            target_epoch = target_run.select([target_epoch])[0]  # epoch B: its checkpoint at the end of epoch B
        elif target_run.record(target_epoch) is None:
            raise UsageError(f"run {target_run.id} has no checkpoint for epoch {target_epoch} (it has "
                             f"{target_run.kept_text()})")
        if opts.epochs is None and opts.at_steps is None:
            raise UsageError("--directions interpolate needs --epochs A (the checkpoint each line starts at)")
        if target_run.id == run.id and target_epoch in run.select(opts.epochs, opts.at_steps):
            raise UsageError(f"--to-epoch {target_epoch} is also in --epochs: a line needs two different checkpoints")
        for option, value in (("--layer", opts.layer), ("--perturb-biasbn", opts.perturb_biasbn or None),
                              ("--single-kernel", opts.single_kernel or None), ("--span", opts.span)):
            if value is not None:
                raise UsageError(f"{option} does not apply to --directions interpolate (every parameter moves; the "
                                 "range is --range LO,HI in t)")
        return {"target_run": target_run.id, "target_epoch": target_epoch}

    def example(self, run: RunMeta) -> dict[str, Any]:
        return {"epochs": [run.epochs[0].epoch], "to_epoch": run.epochs[-1].epoch}  # epoch ends

    def check(self, cfg: GridConfig, run: RunMeta) -> None:
        super().check(cfg, run)
        for lo, hi in ((a.lo, a.hi) for a in cfg.axes):
            if lo is not None and hi is not None and not (lo <= 0.0 and hi >= 1.0):
                raise UsageError(f"--range {lo:g},{hi:g} must contain 0 and 1 (the two checkpoints)")
        if cfg.width < 3:
            raise UsageError(f"--width {cfg.width}: an interpolation line needs at least 3 points (t = 0, t = 1 "
                             "and the range's ends)")

    def names(self, weights: Mapping[str, Tensor], cfg: GridConfig) -> list[str]:
        return list(weights)

    def coordinates(self, axis: Axis, lo: float, hi: float) -> np.ndarray:
        """t from lo to hi, with t = 0 and t = 1 exactly among the points (`points_with_ends`)."""
        return points_with_ends(lo, hi, axis.count)

    def formula(self, cfg: GridConfig) -> str:
        return "(1 − x)·w_A + x·w_B (A: the epoch, B: the target checkpoint)"

    def _target(self, ctx: GridContext) -> tuple[RunMeta, Any]:
        cfg = ctx.config
        assert cfg.target_run is not None and cfg.target_epoch is not None
        run = ctx.run if cfg.target_run == ctx.run.id else ctx.store.read_run(cfg.target_run)
        record = run.record(cfg.target_epoch)
        if record is None:
            raise IntegrityError(f"run {run.id} no longer has the checkpoint of epoch {cfg.target_epoch} this grid ends at")
        return run, record

    def prepare(self, ctx: GridContext, checkpoint_loss: Any) -> Prepared:
        run, record = self._target(ctx)
        (lo, hi), = [(a.lo, a.hi) for a in ctx.config.axes]
        assert lo is not None and hi is not None
        target = {"run": run.id, "epoch": record.key, "sha256": record.sha256, "label": run.name or run.id}
        return Prepared([], [(lo, hi)], {"target": target})

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        run, record = self._target(ctx)
        recorded = meta.kind.get("target", {}).get("sha256")
        if recorded is not None and record.sha256 != recorded:
            raise IntegrityError(
                f"the checkpoint of epoch {record.epoch} of run {run.id} is not the one this grid was made with "
                f"(sha256 {record.sha256[:12]}, recorded {recorded[:12]}): compute a new grid"
            )
        end_state = checkpoints.load_epoch(ctx.store, run.id, record)["state_dict"]
        params = dict(em.model.named_parameters())
        tensors: list[Tensor] = [params[n] for n in ctx.names]
        end = [end_state[n] for n in ctx.names]
        if ctx.config.bn == "eval":  # interpolate the running statistics too
            for name, buffer in em.model.named_buffers():
                if buffer.is_floating_point():
                    tensors.append(buffer)
                    end.append(end_state[name])
        with torch.no_grad():
            return em.evaluator.segment(tensors, end)
