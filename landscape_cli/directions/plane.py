"""The plane through three checkpoints (the `plane` kind: loss-landscapes' planar interpolation, Garipov et al.'s
plane of three models).

`landscape grid RUN --directions plane --epochs A --through B --through C` evaluates the plane through the
checkpoint A of RUN and two more checkpoints B and C (each an epoch of RUN, or RUN2[:EPOCH] of another run of the
same model). It is centred at w_A with the orthonormal basis (float64 over every parameter)

    u = (w_B − w_A) / ‖w_B − w_A‖,   v = the part of (w_C − w_A) orthogonal to u, normalized,

so w_A is at (0, 0), w_B at (‖w_B − w_A‖, 0) and w_C at ((w_C − w_A)·u, (w_C − w_A)·v): the stored point at
(x, y) is w_A + x·u + y·v, and the plane holds the three checkpoints exactly (up to the float32 rounding of the
weights written). The default ranges cover the three points with a margin. The grid stores their coordinates
(`through_x`, `through_y` along `through`: 0 = A, 1 = B, 2 = C) and the figures mark them.

Every parameter moves (BatchNorm's weights included). The BatchNorm statistics of the plane's inner points are
unknown, so `--bn recompute` (re-estimated on the grid's batches at each point) is this kind's default, `--bn
train` (batch statistics) is allowed and `--bn eval` is refused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape_cli.config import GridConfig, GridRequest, PlaneRef
from landscape_cli.directions._registry import (
    CheckpointLoss,
    DirectionKind,
    EpochModel,
    GridContext,
    Prepared,
    other_run,
    register_kind,
)
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.kernel.evaluate import Slice
from landscape_cli.models import checkpoints
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import ExtraArray
from landscape_cli.store.meta import EpochRecord, GridMeta, RunMeta

MARGIN = 0.15  # of the three points' extent, on each side of the default ranges
LETTERS = ("A", "B", "C")


def _point(st: Store, run: RunMeta, text: str) -> tuple[RunMeta, int]:
    """`--through EPOCH` (of `run`) or `--through RUN2[:EPOCH]` (its last checkpoint without an epoch)."""
    if ":" not in text and text.strip().lstrip("-").isdigit():
        other, number = run, int(text)
    else:
        other, epoch = other_run(st, run, "--through", text, "EPOCH, RUN or RUN:EPOCH",
                                 "the plane needs three checkpoints of the same model")
        if epoch is None:
            if not other.epochs:
                raise UsageError(f"--through {text}: run {other.id} has no checkpoint yet")
            return other, other.epochs[-1].key
        number = epoch
    if other.has_steps:
        return other, other.select((number,))[0]  # epoch N: its checkpoint at the end of epoch N
    if other.record(number) is None:
        raise UsageError(f"--through {text}: run {other.id} has no checkpoint for epoch {number} (it has "
                         f"{other.kept_text()})")
    return other, number


def _record(st: Store, run: RunMeta, ref_run: str, key: int) -> tuple[RunMeta, EpochRecord]:
    other = run if ref_run == run.id else st.read_run(ref_run)
    record = other.record(key)
    if record is None:
        raise IntegrityError(f"run {other.id} no longer has the checkpoint {other.label(key)} this plane goes through")
    return other, record


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(sum(float((a[n] * b[n]).sum()) for n in a))


def basis(a: Mapping[str, Tensor], b: Mapping[str, Tensor], c: Mapping[str, Tensor],
          names: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor], np.ndarray]:
    """(u, v, the coordinates [3, 2] of A, B, C) of the plane through three weight sets, in float64."""
    wa = {n: a[n].detach().to("cpu", torch.float64) for n in names}
    ab = {n: b[n].detach().to("cpu", torch.float64) - wa[n] for n in names}
    ac = {n: c[n].detach().to("cpu", torch.float64) - wa[n] for n in names}
    norm_ab = math.sqrt(_dot(ab, ab))
    if norm_ab == 0.0:
        raise UsageError("checkpoints A and B of --directions plane hold the same weights: there is no plane")
    u = {n: t / norm_ab for n, t in ab.items()}
    along = _dot(ac, u)
    rest = {n: ac[n] - along * u[n] for n in names}
    norm_rest = math.sqrt(_dot(rest, rest))
    if norm_rest <= 1e-12 * max(norm_ab, math.sqrt(_dot(ac, ac))):
        raise UsageError("the three checkpoints of --directions plane lie on one line: there is no plane (choose "
                         "another --through)")
    v = {n: t / norm_rest for n, t in rest.items()}
    coords = np.array([[0.0, 0.0], [norm_ab, 0.0], [along, _dot(ac, v)]])
    return u, v, coords


@register_kind
class PlaneKind(DirectionKind):
    name = "plane"
    description = "the plane through three checkpoints (--epochs A --through B --through C)"
    made = "once per grid (from the checkpoints)"
    dims = (2,)
    default_range = None
    default_bn = "recompute"
    order = 2

    def configure(self, st: Store, run: RunMeta, opts: GridRequest) -> dict[str, Any]:
        through = tuple(opts.through or ())
        if len(through) != 2:
            raise UsageError(f"--directions plane needs two --through points (the plane goes through --epochs A and "
                             f"them), got {len(through)}")
        if opts.bn == "eval":
            raise UsageError("--bn eval: the inner points of a plane have no running statistics; --directions plane "
                             "takes --bn recompute (the default) or train")
        for option, value in (("--to", opts.to), ("--to-epoch", opts.to_epoch), ("--along", opts.along),
                              ("--layer", opts.layer), ("--perturb-biasbn", opts.perturb_biasbn or None),
                              ("--single-kernel", opts.single_kernel or None), ("--span", opts.span),
                              ("--directions-from", opts.directions_from)):
            if value is not None:
                raise UsageError(f"{option} does not apply to --directions plane (the three checkpoints span it; "
                                 "every parameter moves)")
        if opts.epochs is None and opts.at_steps is None:
            if not run.epochs:
                raise UsageError(f"run {run.id} has no checkpoint yet")
            centre = run.epochs[-1].key
        else:
            keys = run.select(opts.epochs, opts.at_steps)
            if len(keys) != 1:
                raise UsageError(f"--directions plane is centred at one checkpoint A: give one --epochs (or "
                                 f"--at-steps), not {len(keys)}")
            centre = keys[0]
        points = [_point(st, run, text) for text in through]
        keys_seen = [(run.id, centre)] + [(r.id, k) for r, k in points]
        if len(set(keys_seen)) != 3:
            raise UsageError("--directions plane needs three different checkpoints (--epochs A and two --through)")
        return {"plane": PlaneRef(centre, tuple((r.id, k) for r, k in points))}

    def example(self, run: RunMeta) -> dict[str, Any]:
        """Batch statistics (its centre is then the checkpoint's training-mode loss)."""
        keys = [r.key for r in run.epochs if not r.removed]
        return {"epochs": [keys[-1]], "through": (str(keys[0]), str(keys[len(keys) // 2])), "bn": "train"}

    def grid_epochs(self, cfg: GridConfig, epochs: list[int], given: bool) -> list[int]:
        assert cfg.plane is not None
        return [cfg.plane.centre]

    def names(self, weights: Mapping[str, Tensor], cfg: GridConfig) -> list[str]:
        return list(weights)

    def formula(self, cfg: GridConfig) -> str:
        return "w_A + x·u + y·v (u along w_B − w_A, v towards w_C, orthonormal)"

    def _states(self, ctx: GridContext) -> tuple[list[dict[str, Tensor]], list[dict[str, Any]]]:
        """The state dicts of A, B, C and what grid.json records of each (run, key, sha256, label)."""
        cfg = ctx.config
        assert cfg.plane is not None
        refs = [(ctx.run.id, cfg.plane.centre), *cfg.plane.points]
        states, facts = [], []
        for letter, (run_id, key) in zip(LETTERS, refs, strict=True):
            run, record = _record(ctx.store, ctx.run, run_id, key)
            states.append(checkpoints.load_epoch(ctx.store, run.id, record)["state_dict"])
            label = f"{letter}: {run.label(key)}" + ("" if run.id == ctx.run.id else f" of {run.name or run.id}")
            facts.append({"run": run.id, "epoch": record.key, "sha256": record.sha256, "label": label})
        return states, facts

    def prepare(self, ctx: GridContext, checkpoint_loss: CheckpointLoss) -> Prepared:
        states, facts = self._states(ctx)
        _, _, coords = basis(states[0], states[1], states[2], ctx.names)
        ranges = []
        for j, axis in enumerate(ctx.config.axes):
            if axis.lo is not None and axis.hi is not None:
                ranges.append((axis.lo, axis.hi))
                continue
            lo, hi = float(coords[:, j].min()), float(coords[:, j].max())
            margin = MARGIN * max(hi - lo, float(np.ptp(coords[:, 0])), 1e-12)
            ranges.append((lo - margin, hi + margin))
        info = {"through": facts, "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist()}
        return Prepared([], ranges, info)

    def extras(self, info: dict[str, Any]) -> tuple[dict[str, ExtraArray], dict[str, tuple[np.ndarray, str]]]:
        arrays = {
            "through_x": ExtraArray(["through"], np.asarray(info["x"], np.float64),
                                    "x of the three checkpoints the plane goes through (A, B, C)"),
            "through_y": ExtraArray(["through"], np.asarray(info["y"], np.float64),
                                    "y of the three checkpoints the plane goes through (A, B, C)"),
        }
        coords = {"through": (np.arange(3, dtype=np.int64), "the checkpoint: 0 A (the centre), 1 B, 2 C")}
        return arrays, coords

    def attributes(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"through_labels": [f["label"] for f in info["through"]]}

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        states, facts = self._states(ctx)
        for fact, recorded in zip(facts, meta.kind.get("through", []), strict=False):
            if fact["sha256"] != recorded.get("sha256"):
                raise IntegrityError(f"checkpoint {fact['label']} is not the one this grid was made with (sha256 "
                                     f"{fact['sha256'][:12]}, recorded {str(recorded.get('sha256'))[:12]}): compute a "
                                     "new grid")
        params = dict(em.model.named_parameters())
        u, v, _ = basis(states[0], states[1], states[2], ctx.names)
        return em.evaluator.affine([{n: u[n].to(params[n].dtype) for n in ctx.names},
                                    {n: v[n].to(params[n].dtype) for n in ctx.names}])
