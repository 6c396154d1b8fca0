"""The PCA trajectory plane (the `pca` kind; Li et al. 2018, section 7).

The directions are the top principal components of the run's trajectory w_i − w_final over the
chosen checkpoints, mean-centred as scikit-learn's PCA centres its data. They are computed exactly,
in float64, without holding the checkpoints in memory: the n×n Gram matrix of the trajectory is
accumulated one parameter chunk at a time from memory-mapped checkpoints, its eigenvectors give
the components (a second pass), and each component's sign is fixed so that the trajectory's first
checkpoint lies at negative coordinates (training runs towards +x, +y). The components are stored
once in the run's directions/, addressed by the checkpoints and parameters that define them.

The plane is centred at the final checkpoint (the grid's one epoch). Each checkpoint is projected
onto it (least squares on the grid's directions, so the coordinates are in the plot's units even
when `--norm` rescales the components): `path_x`, `path_y`, its distance from the plane
`path_residual` (the part of the trajectory the plane does not show) and its own loss on the grid's
batches `path_loss` are stored in the grid's Zarr group, and the default ranges cover the path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape_cli._io import check_hash, short_hash
from landscape_cli.config import GridConfig, GridRequest
from landscape_cli.directions._registry import CheckpointLoss, DirectionKind, EpochModel, GridContext, Prepared, register_kind
from landscape_cli.directions.normalize import is_bias_or_bn, normalize
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.kernel.evaluate import Slice
from landscape_cli.models.checkpoints import safe_load
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import ExtraArray
from landscape_cli.store.meta import DirectionRecord, GridMeta, RunMeta

FORMAT = "landscape-pca/1"
MIN_CHECKPOINTS = 4
MARGIN = 0.15  # of the path's extent, on each side of the default ranges
CHUNK_VALUES = 1 << 24  # float64 values of all checkpoints held at once (128 MB)


@dataclass
class PCA:
    """The top components of a trajectory: unit vectors over the named parameters, float64."""

    components: list[dict[str, Tensor]]
    explained_variance_ratio: list[float]
    singular_values: list[float]


def _open(store: Store, run: RunMeta, epochs: Sequence[int]) -> list[dict[str, Tensor]]:
    """The state dicts of `epochs`, memory-mapped (pages are read when touched, never all at once)."""
    states = []
    for e in epochs:
        record = run.record(e)
        assert record is not None
        path = store.file(run.id, record.checkpoint)
        check_hash(path, record.sha256, f"checkpoint of epoch {e}")
        states.append(safe_load(path, f"checkpoint of epoch {e}", mmap=True)["state_dict"])
    return states


def _chunks(states: list[dict[str, Tensor]], names: list[str]) -> Iterator[tuple[str, slice, np.ndarray]]:
    """(name, element slice, D) with D [n, m] float64: w_i − w_final of that slice, for every checkpoint i."""
    n = len(states)
    step = max(1, CHUNK_VALUES // n)
    for name in names:
        size = states[0][name].numel()
        for start in range(0, size, step):
            sl = slice(start, min(size, start + step))
            final = states[-1][name].reshape(-1)[sl].double()
            rows = [(s[name].reshape(-1)[sl].double() - final).numpy() for s in states]
            yield name, sl, np.stack(rows)


def trajectory_pca(states: list[dict[str, Tensor]], names: list[str], k: int) -> tuple[PCA, np.ndarray]:
    """The top `k` principal components of w_i − w_final (rows mean-centred), and the Gram matrix D·Dᵀ."""
    n = len(states)
    gram = np.zeros((n, n), np.float64)
    for _name, _sl, d in _chunks(states, names):
        gram += d @ d.T
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    centred = centre @ gram @ centre  # (D − 1μᵀ)(D − 1μᵀ)ᵀ
    values, vectors = np.linalg.eigh(centred)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    total = float(values[values > 0].sum())
    if total <= 0 or values[k - 1] <= total * 1e-12:
        raise UsageError(f"the trajectory spans fewer than {k} dimensions (the checkpoints are (nearly) identical): "
                         "choose other --epochs")
    singular = np.sqrt(values[:k])
    # signs: the first checkpoint at negative coordinates; its coordinate along component j is
    # d_0·v_j = (gram @ u_j)[0] / s_j (v_j = (D − 1μᵀ)ᵀ u_j / s_j and Σ u_j = 0)
    coords0 = (gram @ vectors[:, :k])[0] / singular
    for j in range(k):
        sign = -np.sign(coords0[j]) if coords0[j] != 0 else np.sign(vectors[np.argmax(np.abs(vectors[:, j])), j])
        vectors[:, j] *= sign
    weights = vectors[:, :k] / singular  # component j = Σ_i weights[i, j]·d_i (the mean term vanishes)
    components: list[dict[str, Tensor]] = [{} for _ in range(k)]
    for name, sl, d in _chunks(states, names):
        part = weights.T @ d  # [k, m]
        for j in range(k):
            flat = components[j].setdefault(name, torch.zeros(states[0][name].numel(), dtype=torch.float64))
            flat[sl] = torch.from_numpy(part[j])
    for comp in components:
        for name in names:
            comp[name] = comp[name].reshape(states[0][name].shape)
    ratio = [float(v / total) for v in values[:k]]
    return PCA(components, ratio, [float(s) for s in singular]), gram


def project(states: list[dict[str, Tensor]], names: list[str], axes: Sequence[Mapping[str, Tensor]],
            gram: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates of each w_i − w_final on the (not necessarily orthonormal) `axes`, their distance
    from the axes' span, and their distance from the final checkpoint: ([n, k], [n], [n])."""
    k = len(axes)
    flat = [{n: a[n].double().reshape(-1) for n in names} for a in axes]
    dots = np.zeros((len(states), k))
    for name, sl, d in _chunks(states, names):
        e = np.stack([f[name][sl].numpy() for f in flat])  # [k, m]
        dots += d @ e.T
    g = np.array([[sum(float((flat[a][n] * flat[b][n]).sum()) for n in names) for b in range(k)] for a in range(k)])
    coords = np.linalg.solve(g, dots.T).T  # least squares: argmin_c ‖d − Σ c_j e_j‖
    norms = np.diag(gram).copy()
    residual = np.sqrt(np.maximum(norms - np.einsum("ij,ij->i", coords, dots), 0.0))
    return coords, residual, np.sqrt(norms)


def _spec(run: RunMeta, trajectory: Sequence[int], names: list[str], shapes: Mapping[str, tuple[int, ...]],
          k: int) -> dict[str, Any]:
    checkpoints = []
    for e in trajectory:
        record = run.record(e)
        assert record is not None
        checkpoints.append([e, record.weights_sha256])
    return {"kind": "pca", "components": k, "checkpoints": checkpoints,
            "parameters": short_hash([[n, list(shapes[n])] for n in names])}


def _store(store: Store, run: RunMeta, spec: dict[str, Any], pca: PCA) -> DirectionRecord:
    """Store the components once (content-addressed by what defines them); their record."""
    did = short_hash(spec)
    obj = {"format": FORMAT, "spec": spec, "explained_variance_ratio": pca.explained_variance_ratio,
           **{f"d{j + 1}": {n: t.float() for n, t in c.items()} for j, c in enumerate(pca.components)}}
    return store.write_direction(run.id, did, {**spec, "pair": 0}, lambda f: torch.save(obj, f), f"PCA directions ({did})")


def _load(store: Store, run_id: str, record: DirectionRecord, k: int) -> list[dict[str, Tensor]]:
    path = store.file(run_id, record.file)
    check_hash(path, record.sha256, f"PCA directions ({record.id})")
    obj = safe_load(path, "direction file", mmap=True)
    if obj.get("format") != FORMAT:
        raise IntegrityError(f"{path} does not hold PCA directions: delete it and rerun the grid")
    return [obj[f"d{j + 1}"] for j in range(k)]


@register_kind
class PCAKind(DirectionKind):
    name = "pca"
    description = "the plane of the trajectory's top two principal components, centred at its last checkpoint (Li et al.)"
    made = "once per grid (from the trajectory)"
    normalized = True
    default_norm = "none"
    default_range = None
    order = 2

    def configure(self, st: Store, run: RunMeta, opts: GridRequest) -> dict[str, Any]:
        given = opts.epochs is not None or opts.at_steps is not None
        trajectory = sorted(set(run.select(opts.epochs, opts.at_steps))) if given else run.epoch_numbers
        if len(trajectory) < MIN_CHECKPOINTS:
            raise UsageError(f"--directions pca needs at least {MIN_CHECKPOINTS} checkpoints, got {len(trajectory)} "
                             f"(epochs {','.join(map(str, trajectory))}): train more epochs or choose more --epochs")
        if opts.span is not None:
            raise UsageError("--span does not apply to --directions pca: give --range LO,HI (and --yrange) or leave "
                             "them out to cover the path")
        return {"trajectory": tuple(trajectory)}

    def grid_epochs(self, cfg: GridConfig, epochs: list[int], given: bool) -> list[int]:
        assert cfg.trajectory is not None
        return [cfg.trajectory[-1]]  # the plane is centred at the final checkpoint

    def _directions(self, ctx: GridContext, components: list[dict[str, Tensor]],
                    weights: Mapping[str, Tensor], like: bool) -> list[dict[str, Tensor]]:
        """The grid's directions: the components, or (--norm) rescaled against `weights`; 1-D parameters
        keep the component's own values (they are not rescaled)."""
        cfg = ctx.config
        if cfg.norm == "none":
            return [{n: (torch.empty_like(weights[n]).copy_(c[n]) if like else c[n].float()) for n in ctx.names}
                    for c in components]
        out = []
        for c in components:
            d = normalize(c, weights, ctx.names, cfg.norm, like=like)
            for n in ctx.names:
                if is_bias_or_bn(weights[n]):
                    d[n] = torch.empty_like(weights[n]).copy_(c[n]) if like else c[n].float()
            out.append(d)
        return out

    def prepare(self, ctx: GridContext, checkpoint_loss: CheckpointLoss) -> Prepared:
        cfg = ctx.config
        assert cfg.trajectory is not None
        trajectory = list(cfg.trajectory)
        states = _open(ctx.store, ctx.run, trajectory)
        pca, gram = trajectory_pca(states, ctx.names, cfg.dims)
        record = _store(ctx.store, ctx.run, _spec(ctx.run, trajectory, ctx.names, ctx.shapes, cfg.dims), pca)
        final = {n: states[-1][n].float() for n in ctx.names}
        axes = self._directions(ctx, pca.components, final, like=False)
        coords, residual, distance = project(states, ctx.names, axes, gram)
        ranges = []
        for j, axis in enumerate(cfg.axes):
            if axis.lo is not None and axis.hi is not None:
                ranges.append((axis.lo, axis.hi))
                continue
            lo, hi = min(0.0, float(coords[:, j].min())), max(0.0, float(coords[:, j].max()))
            margin = MARGIN * (hi - lo) if hi > lo else 1.0
            ranges.append((lo - margin, hi + margin))
        losses = [checkpoint_loss(e) for e in trajectory]
        path = {
            "epoch": trajectory,
            "x": coords[:, 0].tolist(),
            **({"y": coords[:, 1].tolist()} if cfg.dims == 2 else {}),
            "residual": residual.tolist(),
            "distance": distance.tolist(),
            "loss": [[float(v) for v in loss] for loss, _ in losses],
            "accuracy": [[float(v) for v in acc] for _, acc in losses],
        }
        info = {"explained_variance_ratio": pca.explained_variance_ratio, "singular_values": pca.singular_values,
                "path": path}
        return Prepared([record], ranges, info)

    def extras(self, info: dict[str, Any]) -> tuple[dict[str, ExtraArray], dict[str, tuple[np.ndarray, str]]]:
        path = info["path"]
        arrays = {
            "path_x": ExtraArray(["path_epoch"], np.asarray(path["x"], np.float64),
                                 "x coordinate of each checkpoint of the trajectory (projected onto the plane)"),
            "path_residual": ExtraArray(["path_epoch"], np.asarray(path["residual"], np.float64),
                                        "distance of each checkpoint from the plane (what the plane does not show)"),
            "path_loss": ExtraArray(["path_epoch", "batch"], np.asarray(path["loss"], np.float32),
                                    "each checkpoint's own loss on the grid's batches"),
            "path_accuracy": ExtraArray(["path_epoch", "batch"], np.asarray(path["accuracy"], np.float32),
                                        "each checkpoint's own accuracy on the grid's batches"),
        }
        if "y" in path:
            arrays["path_y"] = ExtraArray(["path_epoch"], np.asarray(path["y"], np.float64),
                                          "y coordinate of each checkpoint of the trajectory (projected onto the plane)")
        coords = {"path_epoch": (np.asarray(path["epoch"], np.int64), "training epoch of each trajectory checkpoint")}
        return arrays, coords

    def attributes(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"explained_variance_ratio": info["explained_variance_ratio"]}

    def formula(self, cfg: GridConfig) -> str:
        return "w_final + x·pc1 + y·pc2" if cfg.dims == 2 else "w_final + x·pc1"

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        components = _load(ctx.store, ctx.run.id, meta.directions[0], ctx.config.dims)
        weights = dict(em.model.named_parameters())
        return em.evaluator.affine(self._directions(ctx, components, weights, like=True))
