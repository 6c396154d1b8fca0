"""Metrics of a stored grid around its centre: curvature, ε-sharpness, flat radius (`landscape stats`).

Everything is computed from the values the grid stores (no model is evaluated, torch is never
imported), per epoch, direction pair and batch, and for the mean landscape over pairs and batches
(the mean of the stored loss at each point, what `plot --reduce mean` draws; its L0 is the mean
centre loss over the batches). u is a point's coordinates (its coefficients along the grid's
directions: (x, y) for a plane, x for a line), L its loss, L0 the stored centre loss (u = 0),
|u|∞ = max_k |u_k| the box norm:

- centre: L0 and the centre accuracy, as stored (`center_loss`, `center_accuracy`; the accuracy NaN
  where L0 is not finite, as every reader reads it);
- curvature: H of the quadratic L ≈ c + gᵀu + ½ uᵀHu fitted by least squares to the 5x5 grid points
  nearest the centre (a line: the 5 nearest; fewer where an axis has fewer), in the grid's
  coordinate units; its eigenvalues λ (descending) and condition max|λ| / min|λ| (inf when
  min|λ| = 0; a line has the one curvature L'' and no condition);
- fit quality: the fit's RMS residual, and relative to the RMS spread of L over the fitted points
  (sqrt(1 − R²)); the eigenvalues of the same fit to the 3x3 window, and their disagreement
  max|λ5x5 − λ3x3| / max|λ|; the fit is poor when the relative residual exceeds 0.1 or the
  disagreement 0.25 (a landscape that is not quadratic over the window: a quartic, a kink);
- a Hessian-eigenvector grid's stored eigenvalues (grid.json, per unit of weight: along its axes
  ‖w‖·v the curvature is λ·‖w‖², so fitted/stored estimates ‖w‖², the same for both axes when both agree);
- ε-sharpness (Keskar et al. 2017): max(L − L0) over the points with |u|∞ <= ε, the centre (L0)
  included so it is >= 0 (ε: `radius`, default the whole grid); relative: that / (1 + L0);
- flat radius: the box radius min |u|∞ of the nearest point with L > L0 + δ (δ: `delta`, default
  0.1), i.e. every point with |u|∞ below it is within δ of L0; when no point exceeds L0 + δ, the
  grid's half-width max |u|∞, flagged as a lower bound (≥); when that point is on the first ring
  (no computed point lies between it and the centre), flagged as an upper bound (≤: the radius is
  somewhere within one grid spacing). Radii are rounded to 12 significant digits (0.1, not
  0.09999999999999998);
- share below: the share of the computed points with L <= L0 + δ;
- centre is min: L0 <= the smallest stored L (within 1e-7 relative);
- a curve grid's (`--directions curve`) barriers: max over t in [0, 1] of L(t) − max(L(0), L(1)) along the
  curve and along the straight line the grid stores beside it, of the mean over the batches and per batch
  (`barriers`: "curve", "line", "curve_per_batch", "line_per_batch"; null until the curve's row is computed).

Only computed rows (done-marked) count: an incomplete grid is measured over what is done and the
missing points are counted. Diverged points (NaN/Inf) are results: they count as above every
threshold (sharpness inf, never flat, never below L0 + δ) and are left out of the fit and the
minimum. The grid's half-width is the largest |u|∞ of its points; a `radius` beyond it, <= 0 or not
finite is refused.

Results are cached per grid epoch in the grid's stats.json (`Store.stats_file`), each entry keyed
by a hash of that epoch's done-marks, whether its centre values are written, and the options, and
checked against a hash of its own content: a stale, damaged or edited entry is recomputed and
rewritten, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landscape_cli.config import finite
from landscape_cli.errors import GridStateError, IntegrityError, LandscapeError, UsageError
from landscape_cli.store import Store, check_tree
from landscape_cli.store.grid_arrays import DECODE_ERRORS, Rows, accuracy_where_finite
from landscape_cli.store.meta import GridMeta, RunMeta

DEFAULT_DELTA = 0.1
FIT_WIDTH = 5  # grid points per axis of the window the quadratic is fitted to
CHECK_WIDTH = 3  # ... and of the smaller window whose fit it is compared with
POOR_RESIDUAL = 0.1  # a fit leaving more than this share of the window's spread (RMS) unexplained is poor
POOR_DISAGREEMENT = 0.25  # ... and one whose eigenvalues move by more than this (relative) in the 3x3 window
MIN_RELATIVE = 1e-7  # "the centre is the minimum" within this relative tolerance
RADIUS_DIGITS = 12  # radii are coordinates: rounded to this many significant digits (0.1, not 0.09999999999999998)
STATS_FORMAT = 2  # of stats.json and of the cache keys: bump when a metric's definition changes
MAX_ENTRIES = 256  # cache entries kept per grid (the oldest go first)
METRICS = ("center_loss", "center_accuracy", "hessian", "eigenvalues", "condition", "fit_points", "fit_residual",
           "fit_residual_relative", "eigenvalues_3x3", "fit_disagreement", "fit_poor", "sharpness",
           "sharpness_relative", "flat_radius", "flat_radius_lower_bound", "flat_radius_upper_bound", "share_below",
           "center_is_min", "points", "computed", "diverged")


# --- the metrics of one landscape ------------------------------------------------------------------


def _window(c: np.ndarray, width: int = FIT_WIDTH) -> np.ndarray:
    """Indices of the `width` coordinates nearest 0 (a contiguous block, shifted inside the axis)."""
    n = len(c)
    width = min(width, n)
    start = int(np.clip(int(np.argmin(np.abs(c))) - width // 2, 0, n - width))
    return np.arange(start, start + width)


def quadratic_hessian(u: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """H of L ≈ c + gᵀu + ½ uᵀHu fitted by least squares to points u [n, d] (d = 1 or 2); NaN if underdetermined."""
    return quadratic_fit(u, loss)[0]


def quadratic_fit(u: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(H, RMS residual, relative residual) of L ≈ c + gᵀu + ½ uᵀHu fitted by least squares to points u [n, d].

    The relative residual is the RMS residual over the RMS deviation of L from its mean over the points
    (sqrt(1 − R²)): 0 for a quadratic, near 1 when the quadratic explains nothing (0 when L is constant).
    All NaN when the fit is underdetermined."""
    d = u.shape[1]
    nan = np.full((d, d), np.nan)
    if len(u) == 0:
        return nan, math.nan, math.nan
    scale = np.max(np.abs(u), axis=0)
    scale[scale == 0] = 1.0
    s = u / scale  # columns of similar size: the solution is the same, the arithmetic better conditioned
    if d == 1:
        a = np.stack([np.ones(len(s)), s[:, 0], s[:, 0] ** 2 / 2], axis=1)
    else:
        a = np.stack([np.ones(len(s)), s[:, 0], s[:, 1], s[:, 0] ** 2 / 2, s[:, 0] * s[:, 1], s[:, 1] ** 2 / 2],
                     axis=1)
    if np.linalg.matrix_rank(a) < a.shape[1]:
        return nan, math.nan, math.nan
    coef = np.linalg.lstsq(a, loss, rcond=None)[0]
    h = np.array([[coef[2]]]) if d == 1 else np.array([[coef[3], coef[4]], [coef[4], coef[5]]])
    residual = float(np.sqrt(np.mean((a @ coef - loss) ** 2)))
    spread = float(np.sqrt(np.mean((loss - loss.mean()) ** 2)))
    relative = residual / spread if spread > 0 else (0.0 if residual == 0 else math.inf)
    return h / np.outer(scale, scale), residual, relative


def _eigenvalues(hessian: np.ndarray) -> np.ndarray:
    d = len(hessian)
    return np.sort(np.linalg.eigvalsh(hessian))[::-1] if np.all(np.isfinite(hessian)) else np.full(d, np.nan)


def _disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| over the largest magnitude of either: how far two fits' eigenvalues are apart (0: the same)."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    top = float(max(np.max(np.abs(a)), np.max(np.abs(b))))
    return float(np.max(np.abs(a - b))) / top if top > 0 else 0.0


def clean_radius(r: float) -> float:
    """A radius (a coordinate, or a box norm of one) without float noise: 0.1, not 0.09999999999999998."""
    return float(f"{r:.{RADIUS_DIGITS}g}") if math.isfinite(r) else float(r)


def _condition(eigenvalues: np.ndarray) -> float:
    a = np.abs(eigenvalues)
    if not np.all(np.isfinite(a)):
        return math.nan
    return math.inf if a.min() == 0 else float(a.max() / a.min())


def half_width(coords: Sequence[np.ndarray]) -> float:
    """The grid's half-width in the box norm: the largest |u|∞ of its points."""
    return clean_radius(float(max(np.max(np.abs(c)) for c in coords)))


def landscape_metrics(values: np.ndarray, known: np.ndarray, coords: Sequence[np.ndarray], center_loss: float,
                      center_accuracy: float, radius: float, delta: float) -> dict[str, Any]:
    """The metrics of one landscape: `values` [H, W] (a line: [1, W]) of the loss, `known` [H] the computed
    rows, `coords` [x] or [x, y], the centre values, the half-width ε of the sharpness box and δ."""
    dims = len(coords)
    x = np.asarray(coords[0], np.float64)
    if dims == 2:
        y = np.asarray(coords[1], np.float64)
        gx, gy = np.meshgrid(x, y)  # [H, W], as the values
        u = np.stack([gx.ravel(), gy.ravel()], axis=1)
    else:
        u = x[:, None]
    loss = np.asarray(values, np.float64).reshape(-1)
    computed = np.repeat(np.asarray(known, bool).reshape(-1, 1), len(x), axis=1).reshape(-1)
    finite_ = computed & np.isfinite(loss)
    box = np.max(np.abs(u), axis=1)  # |u|∞ of every point
    l0 = float(center_loss)

    # curvature: a quadratic through the finite computed points of the window around the centre, and
    # the same through the 3x3 window inside it (a quadratic landscape gives both the same curvature)
    def window(width: int) -> np.ndarray:
        w = np.zeros((len(x),) if dims == 1 else (len(coords[1]), len(x)), bool)
        if dims == 2:
            w[np.ix_(_window(np.asarray(coords[1]), width), _window(x, width))] = True
        else:
            w[_window(x, width)] = True
        return w.reshape(-1) & finite_

    nan_fit = (np.full((dims, dims), np.nan), math.nan, math.nan)
    fits = len(x) >= 3 and (dims == 1 or len(coords[1]) >= 3)
    fit, check = window(FIT_WIDTH), window(CHECK_WIDTH)
    hessian, residual, relative = quadratic_fit(u[fit], loss[fit]) if fits else nan_fit
    eigenvalues = _eigenvalues(hessian)
    eigenvalues_3x3 = _eigenvalues(quadratic_fit(u[check], loss[check])[0] if fits else nan_fit[0])
    disagreement = _disagreement(eigenvalues, eigenvalues_3x3)

    # diverged points are above every threshold
    above = np.where(finite_, loss, np.inf)
    if math.isfinite(l0) and computed.any():
        inside = computed & (box <= radius * (1 + 1e-9))
        sharpness = max(0.0, float(np.max(above[inside] - l0))) if inside.any() else 0.0
        violating = computed & (above > l0 + delta)
        lower_bound = not violating.any()
        flat = half_width(coords) if lower_bound else clean_radius(float(np.min(box[violating])))
        # no computed point between the centre and the nearest one above L0 + δ (it is on the first ring
        # of the grid: the spacing): the flat radius is somewhere in (0, flat], an upper bound
        upper_bound = not lower_bound and not bool((computed & (box > 0) & (box < np.min(box[violating]))).any())
        below = computed & (above <= l0 + delta)
        share = float(below.sum() / computed.sum())
        if finite_.any():
            smallest = float(np.min(loss[finite_]))
            center_is_min: bool | None = l0 <= smallest + MIN_RELATIVE * max(abs(smallest), abs(l0))
        else:
            center_is_min = None
    else:  # no centre value (not computed yet, or the checkpoint itself diverged), or no point computed yet
        sharpness, flat, lower_bound, share, center_is_min = math.nan, math.nan, False, math.nan, None
        upper_bound = False
    return {
        "center_loss": l0,
        "center_accuracy": float(center_accuracy),
        "hessian": [[float(v) for v in row] for row in hessian],
        "eigenvalues": [float(v) for v in eigenvalues],
        "condition": _condition(eigenvalues) if dims == 2 else None,
        "fit_points": int(fit.sum()),
        "fit_residual": residual,
        "fit_residual_relative": relative,
        "eigenvalues_3x3": [float(v) for v in eigenvalues_3x3],
        "fit_disagreement": disagreement,
        "fit_poor": bool(relative > POOR_RESIDUAL or disagreement > POOR_DISAGREEMENT),
        "sharpness": float(sharpness),
        "sharpness_relative": float(sharpness / (1 + l0)) if math.isfinite(l0) else math.nan,
        "flat_radius": float(flat),
        "flat_radius_lower_bound": bool(lower_bound),
        "flat_radius_upper_bound": bool(upper_bound),
        "share_below": share,
        "center_is_min": None if center_is_min is None else bool(center_is_min),
        "points": len(loss),
        "computed": int(computed.sum()),
        "diverged": int((computed & ~np.isfinite(loss)).sum()),
    }


# --- one epoch of a stored grid ----------------------------------------------------------------------


@dataclass
class _State:
    """What a grid's cache entries depend on, for every epoch: its done-marks and whether its centre is written."""

    done: np.ndarray  # bool [E, P, H]
    center: np.ndarray  # bool [E]: centre values written


def _read_all(array: Any, shape: tuple[int, ...], fill: int) -> np.ndarray:
    """A small array read at once, or element by element when a chunk is damaged (those read as `fill`)."""
    try:
        return np.asarray(array[...]).reshape(shape)
    except DECODE_ERRORS:
        out = np.full(shape, fill, np.int64)
        for idx in np.ndindex(*shape):
            with contextlib.suppress(*DECODE_ERRORS):
                out[idx] = int(array[idx])
        return out


def _state(rows: Rows) -> _State:
    n_epochs, pairs, height = len(rows.epochs), rows.pairs, rows.height
    shape = (n_epochs, pairs, height)
    done = _read_all(rows["done"], shape, 0) > 0
    center = np.asarray((_read_all(rows["center_done"], (n_epochs, pairs), 0) > 0).any(axis=1), bool)
    return _State(done, center)


def cache_key(epoch: int, state: _State, ei: int, radius: float | None, delta: float) -> str:
    """The key of an epoch's cache entry: its done-marks, centre state and the options.

    Rows are written values first, done-mark last, and a recomputed row has the same values, so the
    done-marks say when an epoch's values changed (reading the diverged counts too would slow `ls`)."""
    digest = hashlib.sha256()
    head = {"format": STATS_FORMAT, "epoch": epoch, "radius": radius, "delta": delta, "center": bool(state.center[ei])}
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(state.done[ei], np.uint8).tobytes())
    return digest.hexdigest()[:32]


def _damaged(run_id: str, grid_id: str, what: str, epoch: int) -> IntegrityError:
    return IntegrityError(
        f"grid {grid_id} has a damaged chunk ({what}, epoch {epoch}): `landscape grid {run_id} --grid {grid_id} "
        "--resume` recomputes it (`landscape verify` lists everything that is damaged)"
    )


def compute_epoch(rows: Rows, meta: GridMeta, epoch: int, state: _State, radius: float | None,
                  delta: float) -> dict[str, Any]:
    """The metrics of one epoch of a grid: every (pair, batch) and the mean landscape over pairs and batches."""
    ei = rows.epochs.index(epoch)
    dims = rows.dims
    try:
        coords = [np.asarray(rows[name][:], np.float64) for name in ("x", "y")[:dims]]
    except DECODE_ERRORS as e:
        raise _damaged(meta.run, meta.id, "coordinates", epoch) from e
    pairs, height, width = rows.pairs, rows.height, len(coords[0])
    batches = int(rows["loss"].shape[2])
    known = state.done[ei]  # [P, H]
    loss = np.full((pairs, batches, height, width), np.nan)
    for p in range(pairs):
        for y in range(height):
            if known[p, y]:
                try:
                    loss[p, :, y, :] = rows.read_row("loss", ei, p, y)
                except DECODE_ERRORS as e:
                    raise _damaged(meta.run, meta.id, f"loss of pair {p}, row {y}", epoch) from e
    if state.center[ei]:
        try:
            center_loss = np.asarray(rows["center_loss"][ei, :], np.float64)
            center_accuracy = accuracy_where_finite(np.asarray(rows["center_accuracy"][ei, :], np.float64),
                                                    center_loss)
        except DECODE_ERRORS as e:
            raise _damaged(meta.run, meta.id, "centre values", epoch) from e
    else:
        center_loss = center_accuracy = np.full(batches, np.nan)
    reach = half_width(coords)
    eps = reach if radius is None else clean_radius(radius)
    panels = []
    for p in range(pairs):
        for b in range(batches):
            m = landscape_metrics(loss[p, b], known[p], coords, center_loss[b], center_accuracy[b], eps, delta)
            panels.append({"pair": p, "batch": b, **m})
    with np.errstate(invalid="ignore"):
        mean_loss = loss.mean(axis=(0, 1))
    mean = landscape_metrics(mean_loss, known.all(axis=0), coords, float(center_loss.mean()),
                             float(center_accuracy.mean()), eps, delta)
    missing = int((~known).sum()) * width
    extra: dict[str, Any] = {}
    if meta.config.kind == "curve":
        extra["barriers"] = curve_barriers(rows, known, coords, loss)
    return {
        "epoch": epoch,
        "radius": eps,
        "radius_is_grid": radius is None,
        "half_width": reach,
        "delta": delta,
        "complete": bool(known.all() and state.center[ei]),
        "center_written": bool(state.center[ei]),
        "points": pairs * height * width,  # per batch: the pairs' grid points
        "missing": missing,
        "diverged": sum(p["diverged"] for p in panels),
        "mean": {"pair": None, "batch": None, **mean},
        "panels": panels,
        "stored_eigenvalues": stored_eigenvalues(meta, epoch),
        **extra,
    }


def barrier(t: np.ndarray, values: np.ndarray) -> float:
    """The loss barrier of a path from t = 0 to t = 1 (Garipov et al.): max over t in [0, 1] of L(t) minus
    max(L(0), L(1)); NaN when L(0) or L(1) is unknown, inf when a point in between diverged."""
    t = np.asarray(t, np.float64)
    values = np.asarray(values, np.float64)
    inside = (t >= 0.0) & (t <= 1.0)
    ends = values[t == 0.0].tolist() + values[t == 1.0].tolist()
    if len(ends) != 2 or not np.all(np.isfinite(ends)):
        return math.nan
    inner = values[inside]
    peak = math.inf if not np.all(np.isfinite(inner)) else float(inner.max())
    return peak - max(ends)


def curve_barriers(rows: Rows, known: np.ndarray, coords: Sequence[np.ndarray],
                   loss: np.ndarray) -> dict[str, Any] | None:
    """A curve grid's barriers (`barrier`) along its curve and along the straight line it stores (`line_loss`):
    of the mean over the batches ("curve", "line") and of each batch; None until its row is computed."""
    if not known.all():
        return None
    try:
        line = np.asarray(rows.root["line_loss"][...], np.float64)  # type: ignore[index]
    except (*DECODE_ERRORS, KeyError):
        return None
    t = coords[0]
    curve = loss[0, :, 0, :]  # [batch, x]: one pair, one row
    with np.errstate(invalid="ignore"):
        return {"curve": barrier(t, curve.mean(axis=0)), "line": barrier(t, line.mean(axis=0)),
                "curve_per_batch": [barrier(t, v) for v in curve], "line_per_batch": [barrier(t, v) for v in line]}


def stored_eigenvalues(meta: GridMeta, epoch: int) -> list[float] | None:
    """A Hessian-eigenvector grid's eigenvalues at `epoch` as grid.json's kind facts recorded them (those of
    its axes, per unit of weight: along an axis ‖w‖·v the curvature is λ·‖w‖²); None for other kinds."""
    if meta.config.kind != "hessian":
        return None
    recorded = meta.kind.get("epochs")
    facts = recorded.get(str(epoch)) if isinstance(recorded, dict) else None
    values = facts.get("eigenvalues") if isinstance(facts, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None  # not recorded (or damaged: grid.json's facts are descriptions, never the grid's values)
    return [float(v) for v in values[:meta.config.dims]]


# --- the cache ---------------------------------------------------------------------------------------


def _content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _slot(epoch: int, radius: float | None, delta: float) -> str:
    return f"epoch {epoch}, radius {radius!r}, delta {delta!r}"




def _valid(entry: Any, key: str, epoch: int, pairs: int, batches: int) -> dict[str, Any] | None:
    """The cached stats of an entry if it is for this key and intact, else None."""
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    stats = entry.get("stats")
    try:
        if entry.get("sha256") != _content_hash(stats) or not isinstance(stats, dict) or stats.get("epoch") != epoch:
            return None
        panels = stats["panels"]
        if not isinstance(panels, list) or len(panels) != pairs * batches:
            return None
        if not all(isinstance(m, dict) and all(k in m for k in METRICS) for m in [stats["mean"], *panels]):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return stats




def _epoch_stats(st: Store, run_id: str, meta: GridMeta, rows: Rows, state: _State, epochs: Sequence[int],
                 radius: float | None, delta: float, use_cache: bool = True) -> tuple[list[dict[str, Any]], list[int], bool]:
    """The stats of `epochs` (cached ones read, the others computed and cached); (stats, epochs read, saved)."""
    entries = st.stats_cache(run_id, meta.id, STATS_FORMAT) if use_cache else {}
    batches = int(rows["loss"].shape[2])
    out, cached, new = [], [], {}
    for epoch in epochs:
        ei = rows.epochs.index(epoch)
        key = cache_key(epoch, state, ei, radius, delta)
        slot = _slot(epoch, radius, delta)
        found = _valid(entries.get(slot), key, epoch, rows.pairs, batches)
        if found is not None:
            out.append(found)
            cached.append(epoch)
            continue
        result = compute_epoch(rows, meta, epoch, state, radius, delta)
        # the entry as it reads back (floats as JSON spells them), so its hash checks on the next read
        result = json.loads(json.dumps(result))
        new[slot] = {"key": key, "sha256": _content_hash(result), "stats": result}
        out.append(result)
    saved = st.save_stats_cache(run_id, meta.id, STATS_FORMAT, new, MAX_ENTRIES) if new and use_cache else True
    return out, cached, saved


# --- the library entry points --------------------------------------------------------------------------


@dataclass
class StatsResult:
    run_id: str
    grid_id: str
    meta: GridMeta
    epochs: list[dict[str, Any]]  # one per epoch: "mean" and "panels" metrics, counts and options (a run with step
    # checkpoints: "step" the checkpoint's step, "epoch" the epochs completed at it)
    radius: float | None
    delta: float
    cached: list[int] = field(default_factory=list)  # epochs read from the cache
    saved: bool = True  # False when the cache could not be written (read-only or full store)


def check_options(radius: float | None, delta: float, reach: float | None = None, grid_id: str = "") -> None:
    """--delta a number >= 0; --radius a positive number within the grid (its half-width `reach`)."""
    finite(delta, "--delta")
    if radius is None:
        return
    if not math.isfinite(radius) or radius <= 0:
        raise UsageError(f"--radius must be a positive number, got {radius}")
    if reach is not None and radius > reach * (1 + 1e-9):
        raise UsageError(f"--radius {radius:g} is outside grid {grid_id}: its points reach {reach:g} from the centre "
                         f"(box norm): give at most {reach:g}, or leave --radius out for the whole grid")




def stats(
    run: str,
    *,
    grid: str | None = None,
    epochs: Sequence[int] | None = None,
    radius: float | None = None,
    delta: float = DEFAULT_DELTA,
    store: Store | str | os.PathLike[str] | None = None,
    cache: bool = True,
    at_steps: Sequence[int] | None = None,
) -> StatsResult:
    """The metrics of a run's grid (`grid`, else the newest) for `epochs` (default: all of the grid's).

    `radius` is the half-width ε of the ε-sharpness box (None: the whole grid), `delta` the δ of the
    flat radius and of the share below L0 + δ. With `cache`, results are read from and written to
    the grid's stats.json. A grid of a run with step checkpoints: `at_steps` chooses them by step (`epochs` E:
    the checkpoint at the end of epoch E), and each result has its "step" and the "epoch"s completed at it.
    """
    check_options(radius, delta)
    st = Store.of(store)
    run_id, grid_id = st.select_grid(run, grid)
    meta = st.read_grid(run_id, grid_id)
    check_tree(st.zarr_path(run_id, grid_id), f"grid {grid_id}")  # no pipe where a chunk belongs: it would block
    rows = Rows(st.zarr_path(run_id, grid_id), "r")
    lost = [e for e in meta.epochs if e not in rows.epochs]
    if lost:
        raise IntegrityError(f"grid {grid_id}: grid.json's 'epochs' lists {','.join(map(str, lost))}, which its arrays "
                             "do not hold (damaged): `landscape verify` lists what is damaged; delete the grid's "
                             f"directory ({st.grid_dir(run_id, grid_id)}) and run its `landscape grid` command again")
    if not meta.epochs:
        raise GridStateError(f"grid {grid_id} holds no checkpoint yet: `landscape grid {run_id[:8]} --grid {grid_id} "
                             "--epochs E --resume` computes one")
    run_meta = st.read_run(run_id) if at_steps is not None or "step" in rows.root else None
    if run_meta is not None and (epochs is not None or at_steps is not None):
        wanted = _select_steps(run_meta, [e for e in meta.epochs if e in rows.epochs], epochs, at_steps, grid_id)
    elif epochs is None:
        wanted = [e for e in meta.epochs if e in rows.epochs]
        if run_meta is not None:
            wanted.sort()  # in step order
    else:
        if not epochs:
            raise UsageError("--epochs is empty: give epoch numbers like 0,1,9")
        wanted = list(dict.fromkeys(epochs))
        missing = [e for e in wanted if e not in meta.epochs or e not in rows.epochs]
        if missing:
            have = ",".join(map(str, meta.epochs)) or "none"
            raise UsageError(f"epoch {','.join(map(str, missing))} is not in grid {grid_id} (it has epochs {have}): "
                             f"`landscape grid {run_id[:8]} --grid {grid_id} --epochs {','.join(map(str, missing))}` "
                             "adds it")
    try:
        coords = [np.asarray(rows[name][:], np.float64) for name in ("x", "y")[:rows.dims]]
    except DECODE_ERRORS as e:
        raise _damaged(run_id, grid_id, "coordinates", wanted[0] if wanted else 0) from e
    check_options(radius, delta, half_width(coords), grid_id)
    out, cached, saved = _epoch_stats(st, run_id, meta, rows, _state(rows), wanted, radius, delta, cache)
    if run_meta is not None and run_meta.has_steps:  # named by step, with the epochs completed at it
        out = [{**_key_fields(run_meta, int(r["epoch"])), **{k: v for k, v in r.items() if k != "epoch"}} for r in out]
    return StatsResult(run_id, grid_id, meta, out, radius, delta, cached, saved)


def _key_fields(run: RunMeta, key: int) -> dict[str, int]:
    """A checkpoint of a run with steps as the JSON names it: its step and the epochs completed at it."""
    record = run.record(key)
    return {"step": key, "epoch": record.epoch if record is not None else -1}


def _select_steps(run: RunMeta, have: list[int], epochs: Sequence[int] | None, steps: Sequence[int] | None,
                  grid_id: str) -> list[int]:
    """The keys --epochs and --at-steps name (run.select: epoch E is the checkpoint at the end of epoch E), in step
    order, each one the grid holds (one line if not)."""
    if steps is not None and not steps and not epochs:
        raise UsageError("--at-steps is empty: give step numbers like 10,20")
    wanted = sorted(run.select(list(epochs) if epochs is not None else None, list(steps) if steps is not None else None))
    missing = ",".join(str(k) for k in wanted if k not in have)
    if missing:
        raise UsageError(f"step {missing} is not in grid {grid_id} (it has steps {','.join(map(str, sorted(have))) or 'none'}):"
                         f" `landscape grid {run.id[:8]} --grid {grid_id} --at-steps {missing}` adds it")
    return wanted


def summary(st: Store, run_id: str, meta: GridMeta, epochs: Sequence[int] | None = None) -> dict[int, dict[str, Any] | None]:
    """Per epoch of a grid (or of `epochs`), the metrics of its mean landscape with the default options
    (for `ls` and figure titles).

    Read from the cache, or computed and cached for a complete epoch; None for an incomplete (or
    unreadable) one. Never raises for a damaged grid: its epochs are None.
    """
    wanted = list(meta.epochs if epochs is None else epochs)
    out: dict[int, dict[str, Any] | None] = {e: None for e in wanted}
    try:
        check_tree(st.zarr_path(run_id, meta.id), f"grid {meta.id}")
        rows = Rows(st.zarr_path(run_id, meta.id), "r")
        state = _state(rows)
        complete = [e for e in wanted if e in meta.epochs and e in rows.epochs
                    and state.done[rows.epochs.index(e)].all() and state.center[rows.epochs.index(e)]]
        results, _, _ = _epoch_stats(st, run_id, meta, rows, state, complete, None, DEFAULT_DELTA)
    except (LandscapeError, OSError, ValueError, KeyError, *DECODE_ERRORS):
        return out
    for r in results:
        out[int(r["epoch"])] = {k: r["mean"][k] for k in METRICS} | {"delta": r["delta"], "radius": r["radius"]}
    return out


def title_text(mean: dict[str, Any]) -> str:
    """One line for a figure's title: "ε-sharpness 0.83 (rel 0.41), flat radius 0.15 (δ 0.1)"."""
    flat = f"{radius_mark(mean)}{mean['flat_radius']:.3g}"
    return (f"ε-sharpness {mean['sharpness']:.3g} (rel {mean['sharpness_relative']:.3g}), "
            f"flat radius {flat} (δ {mean['delta']:g})")


def radius_mark(m: dict[str, Any]) -> str:
    """How a flat radius is printed before its value: "≥" (no point exceeds L0 + δ: a lower bound), "≤" (the
    nearest point above L0 + δ is on the grid's first ring: the radius is at most one spacing), else ""."""
    if m.get("flat_radius_lower_bound"):
        return "≥"
    return "≤" if m.get("flat_radius_upper_bound") else ""
