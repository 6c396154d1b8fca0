"""Grids along a trained curve between two minima (the `curve` and `curve-plane` kinds; Garipov et al. 2018).

`landscape connect RUN_A RUN_B` trains the bends θ_1..θ_n of a curve φ(t) = Σ_k c_k(t)·P_k between the
checkpoints P_0 = w_A and P_{n+1} = w_B (`kernel.curves`: a Bézier curve or a polygonal chain); it is stored with
RUN_A. `landscape grid RUN_A --directions curve --along CURVE` evaluates the loss along it:

- `curve`: a line of `--width` values of t in [0, 1] (`--range` may reach beyond, containing 0 and 1; t = 0 and
  t = 1 are grid points, exactly w_A and w_B). The grid's one epoch is the curve's start checkpoint (A), and the
  bends are those of the curve's last trained epoch when the grid is made: the curve's id, that epoch and the
  bends' sha256 are part of the grid's identity, so more training makes another grid. When it is made the grid
  also stores, at the same t, the straight line (1 − t)·w_A + t·w_B (`line_loss`, `line_accuracy`), and
  Garipov's fast-ensembling numbers: the accuracy of the ensemble of the two endpoints (the mean of their
  softmax outputs; `endpoint_ensemble_accuracy`, per batch) and at each t that of φ(t) with its two endpoints
  (`ensemble_accuracy`), all in the grid's BatchNorm mode and on its batches.
- `curve-plane`: the plane through w_A, w_B and the bend (the mean of the bends when there are several; the
  bend itself for Garipov's one), centred at w_A with the orthonormal basis u = (w_B − w_A)/‖w_B − w_A‖ and v
  the part of (θ − w_A) orthogonal to u, normalized (in float64 over every parameter): w_A is at (0, 0), w_B at
  (‖w_B − w_A‖, 0), the bend at ((θ − w_A)·u, (θ − w_A)·v). The default ranges cover the control points and the
  curve with a margin. The grid stores the control points' coordinates (`control_x`, `control_y` along
  `control_point`: 0 = w_A, 1..n the bends, n + 1 = w_B) and the curve projected onto the plane at
  `curve_t` (`curve_x`, `curve_y`, `curve_residual`: its distance from the plane).

Every parameter moves (BatchNorm's weights included). A curve holds parameters only: the BatchNorm statistics of
its inner points are unknown, so `--bn recompute` (re-estimated on the grid's batches at each point, as Garipov
does) is these kinds' default, `--bn train` (batch statistics) is allowed and `--bn eval` is refused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from landscape_cli.config import Axis, CurveRef, GridConfig, GridRequest
from landscape_cli.directions._registry import (
    CheckpointLoss,
    DirectionKind,
    EpochModel,
    GridContext,
    Prepared,
    points_with_ends,
    register_kind,
)
from landscape_cli.errors import IntegrityError, RunNotFoundError, UsageError
from landscape_cli.kernel import curves
from landscape_cli.kernel.evaluate import Slice, ensemble_accuracy, outputs
from landscape_cli.models import checkpoints
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import ExtraArray
from landscape_cli.store.meta import CurveEpoch, CurveMeta, GridMeta, RunMeta

MARGIN = 0.15  # of the control points' extent, on each side of a curve plane's default ranges
PATH_POINTS = 101  # values of t the curve is projected at onto a curve plane


class _Models(Protocol):
    """What the engine passes a kind's `prepare` (`engine.execute.CheckpointValues`): a checkpoint's model too."""

    def model(self, epoch: int) -> EpochModel: ...


def _find(st: Store, run: RunMeta, ref: str, option: str) -> CurveMeta:
    """The curve `ref` of `run` (stored with it: it starts at one of its checkpoints); one line otherwise."""
    try:
        _, curve_id = st.find_curve(ref, run.id)
    except RunNotFoundError:
        try:
            other, curve_id = st.find_curve(ref)
        except (RunNotFoundError, UsageError):
            raise UsageError(f"{option} {ref}: run {run.id} has no curve {ref!r} (`landscape ls` lists the curves, "
                             "`landscape connect` trains one)") from None
        raise UsageError(f"{option} {ref}: curve {curve_id} starts at run {other}, not {run.id}: grid it from its "
                         f"first run (`landscape grid {other[:8]} --directions curve --along {curve_id}`)") from None
    return st.read_curve(run.id, curve_id)


def _epoch_record(meta: CurveMeta, epoch: int) -> CurveEpoch:
    for rec in meta.epochs:
        if rec.epoch == epoch:
            return rec
    raise IntegrityError(f"curve {meta.id} no longer records its epoch {epoch} that this grid evaluates")


class _CurveKind(DirectionKind):
    """What `curve` and `curve-plane` share: the curve, its endpoints and bends, the BatchNorm rules."""

    default_bn = "recompute"
    made = "once per grid (from the curve's bends)"

    def configure(self, st: Store, run: RunMeta, opts: GridRequest) -> dict[str, Any]:
        if opts.along is None:
            raise UsageError(f"--directions {self.name} needs --along CURVE (a curve `landscape connect` trained "
                             "from one of this run's checkpoints)")
        if opts.bn == "eval":
            raise UsageError(f"--bn eval: the inner points of a curve have no running statistics; --directions "
                             f"{self.name} takes --bn recompute (the default) or train")
        for option, value in (("--epochs", opts.epochs), ("--at-steps", opts.at_steps), ("--to", opts.to),
                              ("--to-epoch", opts.to_epoch), ("--layer", opts.layer),
                              ("--perturb-biasbn", opts.perturb_biasbn or None),
                              ("--single-kernel", opts.single_kernel or None), ("--span", opts.span)):
            if value is not None:
                raise UsageError(f"{option} does not apply to --directions {self.name} (the curve names its "
                                 "checkpoints; every parameter moves)")
        meta = _find(st, run, opts.along, "--along")
        cfg = meta.config
        if not meta.epochs:
            raise UsageError(f"--along {opts.along}: curve {meta.id} has no trained epoch yet (`landscape connect` "
                             "trains it)")
        start = run.record(cfg.epoch_a)
        if start is None or start.weights_sha256 != cfg.weights_a:
            raise IntegrityError(f"curve {meta.id} starts at {run.label(cfg.epoch_a)} of run {run.id}, which no "
                                 "longer holds those weights")
        end_run = st.read_run(cfg.run_b) if cfg.run_b != run.id else run
        end = end_run.record(cfg.epoch_b)
        if end is None or end.weights_sha256 != cfg.weights_b:
            raise IntegrityError(f"curve {meta.id} ends at {end_run.label(cfg.epoch_b)} of run {end_run.id}, which no "
                                 "longer holds those weights")
        last = meta.epochs[-1]
        ref = CurveRef(meta.id, last.epoch, last.weights_sha256, cfg.epoch_a)
        return {"curve": ref, "target_run": cfg.run_b, "target_epoch": cfg.epoch_b}

    def example(self, run: RunMeta) -> dict[str, Any]:
        """Batch statistics (its centre is then the checkpoint's training-mode loss); --along must name a curve of
        the run (`landscape connect` makes one)."""
        return {"bn": "train"}

    def grid_epochs(self, cfg: GridConfig, epochs: list[int], given: bool) -> list[int]:
        assert cfg.curve is not None
        return [cfg.curve.start]  # the curve's first checkpoint: w_A, the model its points are written into

    def names(self, weights: Mapping[str, Tensor], cfg: GridConfig) -> list[str]:
        return list(weights)

    def check(self, cfg: GridConfig, run: RunMeta) -> None:
        super().check(cfg, run)
        if cfg.bn == "eval":
            raise UsageError(f"--bn eval: the inner points of a curve have no running statistics; --directions "
                             f"{self.name} takes --bn recompute (the default) or train")

    def _curve(self, ctx: GridContext) -> tuple[CurveMeta, CurveEpoch]:
        ref = ctx.config.curve
        assert ref is not None
        meta = ctx.store.read_curve(ctx.run.id, ref.id)
        rec = _epoch_record(meta, ref.epoch)
        if rec.weights_sha256 != ref.bends_sha256:
            raise IntegrityError(f"the bends of curve {ref.id} at its epoch {ref.epoch} are not the ones this grid "
                                 f"was made with (sha256 {rec.weights_sha256[:12]}, recorded {ref.bends_sha256[:12]}): "
                                 "compute a new grid")
        return meta, rec

    def _points(self, ctx: GridContext, names: Sequence[str]) -> tuple[CurveMeta, list[dict[str, Tensor]]]:
        """The curve and its control points after P_0: the bends, then w_B (each {name: tensor} over `names`)."""
        meta, rec = self._curve(ctx)
        path = ctx.store.curve_path(ctx.run.id, meta.id, rec.file)
        bends = checkpoints.load_bends(path, rec.sha256, f"bends of curve {meta.id} (epoch {rec.epoch})")
        cfg = meta.config
        end_run = ctx.run if cfg.run_b == ctx.run.id else ctx.store.read_run(cfg.run_b)
        record = end_run.record(cfg.epoch_b)
        if record is None or record.weights_sha256 != cfg.weights_b:
            raise IntegrityError(f"run {end_run.id} no longer holds the checkpoint curve {meta.id} ends at")
        end = checkpoints.load_epoch(ctx.store, end_run.id, record)["state_dict"]
        missing = [n for n in names if any(n not in b for b in bends)]
        if missing:
            raise IntegrityError(f"the bends of curve {meta.id} lack parameters of the model ({', '.join(missing[:3])})")
        return meta, [*[{n: b[n] for n in names} for b in bends], {n: end[n] for n in names}]

    def _facts(self, meta: CurveMeta, rec_epoch: int, ctx: GridContext) -> dict[str, Any]:
        cfg = meta.config
        rec = _epoch_record(meta, rec_epoch)
        end_run = ctx.run if cfg.run_b == ctx.run.id else ctx.store.read_run(cfg.run_b)
        return {"id": meta.id, "name": meta.name, "epoch": rec.epoch, "bends_sha256": rec.weights_sha256,
                "file_sha256": rec.sha256, "shape": cfg.shape, "bends": cfg.bends, "start": cfg.epoch_a,
                "end": {"run": cfg.run_b, "epoch": cfg.epoch_b, "label": end_run.name or end_run.id}}

    def _target(self, meta: CurveMeta, ctx: GridContext) -> dict[str, Any]:
        """The checkpoint the curve ends at (t = 1), as an interpolation's grid.json names its target."""
        cfg = meta.config
        end_run = ctx.run if cfg.run_b == ctx.run.id else ctx.store.read_run(cfg.run_b)
        record = end_run.record(cfg.epoch_b)
        return {"run": end_run.id, "epoch": cfg.epoch_b, "sha256": record.sha256 if record else None,
                "label": end_run.name or end_run.id}

    def coefficients(self, meta: CurveMeta) -> Any:
        shape, bends = meta.config.shape, meta.config.bends
        return lambda point: curves.coefficients(shape, bends, float(point[0]))


@register_kind
class CurveKind(_CurveKind):
    name = "curve"
    description = "the loss along a trained curve between two minima, with the straight line's (Garipov et al.)"
    dims = (1,)
    default_range = (0.0, 1.0)
    gradient = False
    order = 4

    def check(self, cfg: GridConfig, run: RunMeta) -> None:
        super().check(cfg, run)
        for lo, hi in ((a.lo, a.hi) for a in cfg.axes):
            if lo is not None and hi is not None and not (lo <= 0.0 and hi >= 1.0):
                raise UsageError(f"--range {lo:g},{hi:g} must contain 0 and 1 (the curve's two ends)")
        if cfg.width < 3:
            raise UsageError(f"--width {cfg.width}: a curve needs at least 3 points (its two ends and one inside)")

    def coordinates(self, axis: Axis, lo: float, hi: float) -> np.ndarray:
        """t from lo to hi, with t = 0 and t = 1 exactly among the points (`points_with_ends`)."""
        return points_with_ends(lo, hi, axis.count)

    def formula(self, cfg: GridConfig) -> str:
        return "φ(x), the curve's point at t = x: Σ_k c_k(x)·P_k (P_0 = w_A, the bends, w_B)"

    def prepare(self, ctx: GridContext, checkpoint_loss: CheckpointLoss) -> Prepared:
        cfg = ctx.config
        (axis,) = cfg.axes
        assert axis.lo is not None and axis.hi is not None and cfg.curve is not None
        ts = [float(t) for t in self.coordinates(axis, axis.lo, axis.hi)]
        if not callable(getattr(checkpoint_loss, "model", None)):
            raise UsageError("--directions curve is prepared by the grid engine (it evaluates the straight line and "
                             "the ensembles when the grid is made)")
        em = cast(_Models, checkpoint_loss).model(cfg.curve.start)
        params = dict(em.model.named_parameters())
        meta, points = self._points(ctx, ctx.names)
        tensors: list[Tensor] = [params[n] for n in ctx.names]
        controls = [[p[n] for n in ctx.names] for p in points]
        with torch.no_grad():
            with em.evaluator.combination(tensors, controls, self.coefficients(meta)) as s:
                out_a, out_b = outputs(s, (0.0,)), outputs(s, (1.0,))
                endpoints = ensemble_accuracy(s, [out_a, out_b])
                ensemble = np.stack([ensemble_accuracy(s, [outputs(s, (t,)), out_a, out_b]) for t in ts], axis=1)
            with em.evaluator.segment(tensors, controls[-1]) as line:
                line_loss, line_acc = line.evaluate([(t,) for t in ts])  # [W, B]
        info = {
            "curve": self._facts(meta, cfg.curve.epoch, ctx),
            "target": self._target(meta, ctx),
            "line": {"loss": _nested(line_loss.T), "accuracy": _nested(line_acc.T)},
            "ensemble": {"endpoints": [float(v) for v in endpoints], "curve": _nested(ensemble)},
        }
        return Prepared([], [(axis.lo, axis.hi)], info)

    def extras(self, info: dict[str, Any]) -> tuple[dict[str, ExtraArray], dict[str, tuple[np.ndarray, str]]]:
        line, ensemble = info["line"], info["ensemble"]
        arrays = {
            "line_loss": ExtraArray(["batch", "x"], np.asarray(line["loss"], np.float32),
                                    "loss on the straight line (1 − x)·w_A + x·w_B, at the curve's t"),
            "line_accuracy": ExtraArray(["batch", "x"], np.asarray(line["accuracy"], np.float32),
                                        "accuracy on the straight line (1 − x)·w_A + x·w_B, at the curve's t"),
            "ensemble_accuracy": ExtraArray(["batch", "x"], np.asarray(ensemble["curve"], np.float32),
                                            "accuracy of the ensemble of φ(x) and the curve's two ends (mean of the "
                                            "softmax outputs)"),
            "endpoint_ensemble_accuracy": ExtraArray(["batch"], np.asarray(ensemble["endpoints"], np.float32),
                                                     "accuracy of the ensemble of the curve's two ends (mean of "
                                                     "their softmax outputs)"),
        }
        return arrays, {}

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        curve, points = self._points(ctx, ctx.names)
        params = dict(em.model.named_parameters())
        tensors: list[Tensor] = [params[n] for n in ctx.names]
        with torch.no_grad():
            return em.evaluator.combination(tensors, [[p[n] for n in ctx.names] for p in points],
                                            self.coefficients(curve))


@register_kind
class CurvePlaneKind(_CurveKind):
    name = "curve-plane"
    description = "the plane through two minima and the bend of the curve between them (Garipov et al.)"
    dims = (2,)
    default_range = None
    order = 5

    def formula(self, cfg: GridConfig) -> str:
        return "w_A + x·u + y·v (u along w_B − w_A, v towards the bend, orthonormal)"

    def _basis(self, ctx: GridContext, start: Mapping[str, Tensor]) -> tuple[CurveMeta, list[dict[str, Tensor]],
                                                                                list[dict[str, Tensor]], float]:
        """(curve, [u, v] float64, the control points minus w_A after P_0 (float64), ‖w_B − w_A‖)."""
        meta, points = self._points(ctx, ctx.names)
        a = {n: start[n].detach().to("cpu", torch.float64) for n in ctx.names}
        diffs = [{n: p[n].to("cpu", torch.float64) - a[n] for n in ctx.names} for p in points]
        ab = diffs[-1]
        norm_ab = _norm(ab)
        if norm_ab == 0.0:
            raise UsageError(f"curve {meta.id} joins two identical checkpoints: there is no plane")
        u = {n: t / norm_ab for n, t in ab.items()}
        bend = {n: sum(d[n] for d in diffs[:-1]) / (len(diffs) - 1) for n in ctx.names}
        along = float(sum((bend[n] * u[n]).sum() for n in ctx.names))
        rest = {n: bend[n] - along * u[n] for n in ctx.names}
        norm_rest = _norm(rest)
        if norm_rest <= 1e-12 * norm_ab:
            raise UsageError(f"the bends of curve {meta.id} lie on the straight line between its ends: there is no "
                             "plane (train the curve: `landscape connect`)")
        v = {n: t / norm_rest for n, t in rest.items()}
        return meta, [u, v], diffs, norm_ab

    def prepare(self, ctx: GridContext, checkpoint_loss: CheckpointLoss) -> Prepared:
        cfg = ctx.config
        assert cfg.curve is not None
        record = ctx.run.record(cfg.curve.start)
        assert record is not None
        start = checkpoints.load_epoch(ctx.store, ctx.run.id, record)["state_dict"]
        meta, (u, v), diffs, _ = self._basis(ctx, start)
        names = ctx.names
        coords = np.array([[float(sum((d[n] * e[n]).sum() for n in names)) for e in (u, v)] for d in diffs])  # [m, 2]
        gram = np.array([[float(sum((a[n] * b[n]).sum() for n in names)) for b in diffs] for a in diffs])
        coords[-1] = (float(np.sqrt(gram[-1, -1])), 0.0)  # w_B: on the x axis by construction (exactly)
        control = np.vstack([np.zeros((1, 2)), coords])  # w_A, the bends, w_B
        shape, bends = meta.config.shape, meta.config.bends
        ts = np.linspace(0.0, 1.0, PATH_POINTS)
        c = np.array([curves.coefficients(shape, bends, float(t))[1:] for t in ts])  # [T, m]
        path = c @ coords
        squared = np.einsum("tk,kl,tl->t", c, gram, c)
        residual = np.sqrt(np.maximum(squared - (path ** 2).sum(axis=1), 0.0))
        ranges = []
        every = np.vstack([control, path])
        for j, axis in enumerate(cfg.axes):
            if axis.lo is not None and axis.hi is not None:
                ranges.append((axis.lo, axis.hi))
                continue
            lo, hi = float(every[:, j].min()), float(every[:, j].max())
            margin = MARGIN * max(hi - lo, float(np.ptp(every[:, 0])), 1e-12)
            ranges.append((lo - margin, hi + margin))
        info = {
            "curve": self._facts(meta, cfg.curve.epoch, ctx),
            "target": self._target(meta, ctx),
            "basis": "mean of the bends" if bends > 1 else "the bend",
            "control": {"x": control[:, 0].tolist(), "y": control[:, 1].tolist()},
            "path": {"t": ts.tolist(), "x": path[:, 0].tolist(), "y": path[:, 1].tolist(),
                     "residual": residual.tolist()},
        }
        return Prepared([], ranges, info)

    def extras(self, info: dict[str, Any]) -> tuple[dict[str, ExtraArray], dict[str, tuple[np.ndarray, str]]]:
        control, path = info["control"], info["path"]
        arrays = {
            "control_x": ExtraArray(["control_point"], np.asarray(control["x"], np.float64),
                                    "x of the curve's control points (w_A, the bends, w_B) on the plane"),
            "control_y": ExtraArray(["control_point"], np.asarray(control["y"], np.float64),
                                    "y of the curve's control points (w_A, the bends, w_B) on the plane"),
            "curve_x": ExtraArray(["curve_t"], np.asarray(path["x"], np.float64), "x of the curve projected onto the plane"),
            "curve_y": ExtraArray(["curve_t"], np.asarray(path["y"], np.float64), "y of the curve projected onto the plane"),
            "curve_residual": ExtraArray(["curve_t"], np.asarray(path["residual"], np.float64),
                                         "distance of the curve from the plane"),
        }
        coords = {"control_point": (np.arange(len(control["x"]), dtype=np.int64),
                                    "control point of the curve: 0 w_A, 1..n the bends, n + 1 w_B"),
                  "curve_t": (np.asarray(path["t"], np.float64), "t along the curve")}
        return arrays, coords

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        params = dict(em.model.named_parameters())
        _, (u, v), _, _ = self._basis(ctx, params)
        return em.evaluator.affine([{n: u[n].to(params[n].dtype) for n in ctx.names},
                                    {n: v[n].to(params[n].dtype) for n in ctx.names}])


def _norm(vector: Mapping[str, Tensor]) -> float:
    return math.sqrt(sum(float((t * t).sum()) for t in vector.values()))


def _nested(values: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(values)]
