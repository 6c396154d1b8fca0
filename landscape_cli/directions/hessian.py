"""Hessian eigenvector directions (the `hessian` kind): the plane of the top two eigenvectors at each epoch.

The eigenvectors differ per epoch: they come from the run's curvature results (`landscape hessian`
with --top 2 and the grid's --batches/--batch-size/--bn/--perturb-biasbn/--layer, names or patterns; the
grid engine computes them before the grid is prepared if missing, and this kind only reads them from the store).
Each unit eigenvector is scaled by one scalar only, the norm of the perturbed weights of its epoch,
never filter-normalized, so the axes stay orthogonal eigenvectors and a coordinate of 1 moves the
weights by their own norm. A `--dims 1` line follows the top eigenvector: the sharpest direction.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from landscape_cli._io import check_hash
from landscape_cli.config import GridConfig, GridRequest, HessianConfig
from landscape_cli.directions._registry import DirectionKind, EpochModel, GridContext, Prepared, register_kind
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.kernel.evaluate import Slice
from landscape_cli.models.checkpoints import safe_load
from landscape_cli.store import Store
from landscape_cli.store.hessian_arrays import read_results
from landscape_cli.store.meta import GridMeta, HessianMeta, RunMeta

TOP = 2  # the grids' curvature results always hold the top two eigenpairs, so lines and planes share them


def hessian_config(cfg: GridConfig) -> HessianConfig:
    """The curvature results a Hessian grid uses: --top 2 with the grid's batches, BatchNorm mode and parameters."""
    return HessianConfig(cfg.run, top=TOP, batches=cfg.batches, batch_size=cfg.batch_size, bn=cfg.bn,
                         perturb_biasbn=cfg.perturb_biasbn, layer=cfg.layer, split=cfg.split, whole=cfg.whole,
                         layers=cfg.layers)


def holds_top_two(results: HessianConfig, want: HessianConfig) -> bool:
    """Whether results hold the two eigenvectors a grid wanting `want` needs: the same loss, top >= 2."""
    same = ("batches", "batch_size", "bn", "perturb_biasbn", "layer", "layers", "split", "whole")
    return results.top >= TOP and all(getattr(results, k) == getattr(want, k) for k in same)


@register_kind
class HessianKind(DirectionKind):
    name = "hessian"
    description = "the top Hessian eigenvectors at each epoch, scaled by the norm of the weights"
    made = "per epoch (from `landscape hessian`)"
    order = 3

    def configure(self, st: Store, run: RunMeta, opts: GridRequest) -> dict[str, Any]:
        if opts.bn == "recompute":
            raise UsageError("--directions hessian needs --bn train or eval (the Hessian of the grid's own loss)")
        return {}

    def curvature(self, st: Store, run: RunMeta, cfg: GridConfig, epochs: list[int],
                  recorded: dict[str, Any] | None) -> HessianConfig | None:
        """The curvature results the grid reads its eigenvectors from (the engine computes the epochs they lack).

        A grid keeps the results it was made with. A new grid reuses the run's results for the same loss
        (batches, BatchNorm mode, parameters) with at least two eigenpairs, as `landscape hessian` made them:
        those holding most of the epochs asked for, then the grid's own default, then the most eigenpairs.
        With none, the default: --top 2 on the grid's batches.
        """
        if recorded and recorded.get("hessian"):
            return st.read_hessian(run.id, str(recorded["hessian"])).config
        default = hessian_config(cfg)
        best: tuple[Any, ...] | None = None
        chosen = default
        for meta in st.hessians(run.id):
            if not isinstance(meta, HessianMeta) or not holds_top_two(meta.config, default):
                continue
            done = {r["epoch"] for r in read_results(st.hessian_zarr(run.id, meta.id), meta.epochs)}
            rank = (len(done & set(epochs)), meta.id == default.hessian_id, meta.config.top, meta.id)
            if best is None or rank > best:
                best, chosen = rank, meta.config
        return chosen

    def prepare(self, ctx: GridContext, checkpoint_loss: Any) -> Prepared:
        ranges = [(float(a.lo), float(a.hi)) for a in ctx.config.axes if a.lo is not None and a.hi is not None]
        results = ctx.curvature or hessian_config(ctx.config).hessian_id
        return Prepared([], ranges, {"hessian": results, "epochs": {}})

    def epoch_facts(self, ctx: GridContext, meta: GridMeta, epochs: list[int]) -> dict[str, Any]:
        """For each new epoch: its top eigenvalues and the direction file holding its eigenvectors."""
        hid = str(meta.kind.get("hessian") or hessian_config(ctx.config).hessian_id)
        if not ctx.store.has_hessian(ctx.run.id, hid):
            raise IntegrityError(f"the curvature results {hid} this grid uses are missing: run the same "
                                 "`landscape grid` command again")
        results = ctx.store.read_hessian(ctx.run.id, hid)
        numbers = {r["epoch"]: r for r in read_results(ctx.store.hessian_zarr(ctx.run.id, hid), results.epochs)}
        out = {}
        for e in epochs:
            if e not in numbers or e not in results.eigenvectors:
                raise IntegrityError(f"the curvature results {hid} lack epoch {e}: run the same "
                                     "`landscape grid` command again")
            record = results.eigenvectors[e]
            out[str(e)] = {"eigenvalues": numbers[e]["eigenvalues"][:TOP], "residual": numbers[e]["residual"][:TOP],
                           "file": record.file, "sha256": record.sha256}
        return out

    def formula(self, cfg: GridConfig) -> str:
        return "w + ‖w‖·(x·v1 + y·v2) (v1, v2: top Hessian eigenvectors)" if cfg.dims == 2 else "w + ‖w‖·x·v1"

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        facts = meta.kind.get("epochs", {}).get(str(em.epoch))
        if facts is None:
            raise IntegrityError(f"grid {meta.id} has no eigenvectors recorded for epoch {em.epoch}: run the same "
                                 "`landscape grid` command with --resume")
        path = ctx.store.file(ctx.run.id, facts["file"])
        check_hash(path, facts["sha256"], f"Hessian eigenvectors of epoch {em.epoch}")
        vectors = safe_load(path, "direction file", mmap=True)
        params = dict(em.model.named_parameters())
        scale = float(torch.stack([(params[n].detach().double() ** 2).sum() for n in ctx.names]).sum().sqrt())  # ‖w‖
        directions = [{n: torch.empty_like(params[n]).copy_(vectors[f"v{j + 1}"][n] * scale) for n in ctx.names}
                      for j in range(ctx.config.dims)]
        return em.evaluator.affine(directions)
