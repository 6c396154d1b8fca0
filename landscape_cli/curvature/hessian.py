"""Curvature results of a run: `hessian()` computes, per epoch, the top eigenpairs, λmin, the trace and
(optionally) the spectral density of the loss Hessian, and keeps them in the run store.

Results live in ``<run>/hessians/<id>/`` (the id is the hash of the configuration, like a grid's):
``hessian.json`` and a Zarr group readable with xarray, laid out by `store.hessian_arrays`.

The top eigenvectors of each epoch are stored as a direction file of the run (what
`grid --directions hessian` uses). Each epoch is written completely before it is marked done, so a
killed computation keeps its finished epochs and the same command computes only the rest. A model
with an operator that has no second derivative (`kernel.hvp.NoSecondDerivative`) fails with one line
and leaves the results as they were before the command: nothing that looks partial.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from landscape_cli._io import leave_no_trace, make_dirs, now, os_error, short_hash
from landscape_cli._progress import progress_bar
from landscape_cli._version import __version__
from landscape_cli.config import HessianConfig, check_batches, layer_selection, parse_batches
from landscape_cli.curvature.spectrum import extreme_eigenpairs, hutchinson_trace, spectral_density
from landscape_cli.data import load_dataset
from landscape_cli.data.losses import run_loss
from landscape_cli.directions import perturbed_names
from landscape_cli.errors import UsageError
from landscape_cli.kernel.batches import Batches
from landscape_cli.kernel.device import select_device, tune_allocator
from landscape_cli.kernel.hvp import NoSecondDerivative, operator
from landscape_cli.models import checkpoints
from landscape_cli.store import Store, check_label
from landscape_cli.store.grid_arrays import grow, open_group
from landscape_cli.store.hessian_arrays import create_results, epoch_done, read_results
from landscape_cli.store.meta import DirectionRecord, HessianMeta, RunMeta, epoch_record

FORMAT = "landscape-hessian-eigenvectors/1"


@dataclass
class HessianResult:
    hessian_id: str
    run_id: str
    path: Path
    zarr_path: Path
    meta: HessianMeta
    computed: list[int]  # epochs computed by this call
    seconds: float = 0.0

    def to_xarray(self) -> Any:
        import xarray as xr

        return xr.open_zarr(self.zarr_path)

    def summary(self) -> list[dict[str, Any]]:
        """Per epoch: the numbers `landscape hessian` prints."""
        return read_results(self.zarr_path, self.meta.epochs)


def hessian(
    run: str,
    *,
    epochs: list[int] | None = None,
    at_steps: list[int] | None = None,
    top: int = HessianConfig.top,
    batches: int | str = HessianConfig.batches,
    batch_size: int = HessianConfig.batch_size,
    split: str = HessianConfig.split,
    bn: str = HessianConfig.bn,
    perturb_biasbn: bool = False,
    layer: str | list[str] | tuple[str, ...] | None = None,
    tol: float = HessianConfig.tol,
    probes: int = HessianConfig.probes,
    density: bool = False,
    density_probes: int = HessianConfig.density_probes,
    steps: int = HessianConfig.density_steps,
    bins: int = HessianConfig.bins,
    seed: int = HessianConfig.seed,
    device: str = "auto",
    name: str | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> HessianResult:
    """Curvature of `run`'s loss at the checkpoints of `epochs` (default: all), on the grid's batches.

    For each epoch: the `top` largest eigenvalues and their eigenvectors (Lanczos on Hessian-vector
    products), the smallest eigenvalue, |λmin/λmax|, the trace (Hutchinson, `probes` probes) and,
    with `density`, the spectral density (stochastic Lanczos quadrature: `density_probes` probes of
    `steps` steps, `bins` bins). Finished epochs are kept: the same call again computes only what is
    missing. `at_steps`: checkpoints by step, in a run with step checkpoints.
    """
    if name is not None:
        check_label(name, "Hessian results")  # as run and grid names
    st = Store.of(store)
    run_id = st.resolve(run)
    run_meta = st.read_run(run_id)
    run_meta.require_checkpoints()
    parsed = parse_batches(batches)
    whole = parsed == "all"
    exact, patterns = layer_selection(layer)  # one name, or glob patterns (`layers`)
    cfg = HessianConfig(run_id, top, 1 if whole else int(parsed), batch_size, bn, perturb_biasbn, exact, tol, probes,
                        density, density_probes, steps, bins, seed, split, whole, layers=patterns).validate()
    wanted = run_meta.select(epochs, at_steps)
    return compute_results(st, run_meta, cfg, wanted, name=name, device=device, data_dir=data_dir, progress=progress)


def compute_results(st: Store, run_meta: RunMeta, cfg: HessianConfig, wanted: list[int], *, name: str | None = None,
                    device: str = "auto", data_dir: str | os.PathLike[str] | None = None,
                    progress: bool = True) -> HessianResult:
    """The core of `hessian()`, for a validated configuration: what the grid engine calls for the curvature a
    Hessian-direction grid needs (epochs already computed are kept, the rest computed)."""
    run_id = run_meta.id
    top, perturb_biasbn, layer = cfg.top, cfg.perturb_biasbn, cfg.layer
    check_batches(cfg.batches, cfg.batch_size, cfg.whole, cfg.split, run_meta.dataset)
    dev = select_device(device)
    first = checkpoints.build_model(checkpoints.load_epoch(st, run_id, epoch_record(run_meta, wanted[0])))
    weights = {k: v.detach() for k, v in first.named_parameters()}
    names = perturbed_names(weights, perturb_biasbn=perturb_biasbn, layer=layer, layers=cfg.layers)
    size = sum(weights[n].numel() for n in names)
    if top >= size:
        raise UsageError(f"--top {top}: the Hessian over the perturbed parameters is {size}x{size}: ask for fewer "
                         "than its size")
    del first, weights
    hid = cfg.hessian_id
    st.ensure_writable()
    data = load_dataset(run_meta.dataset["name"], data_dir, recorded=run_meta.dataset)
    hdir = st.hessian_dir(run_id, hid)
    new_dirs = [d for d in (hdir.parent, hdir) if not d.exists()]
    with leave_no_trace(new_dirs, st.hessian_file(run_id, hid)):
        make_dirs(hdir)
        lock = st.hessian_lock(run_id, hid).acquire("wait for it to finish or stop it; the same command resumes")
        try:
            before = _Before.of(st, run_id, hid)
            meta = _prepare(st, run_meta, cfg, names, wanted, name)
            tune_allocator()
            t0 = time.perf_counter()
            try:
                computed = _compute(st, run_meta, meta, names, wanted, Batches.of(data, cfg), dev, progress)
            except NoSecondDerivative:
                before.restore(st, run_meta, hid)  # no result that looks partial and asks to be recomputed
                raise
            seconds = time.perf_counter() - t0
        finally:
            lock.release()
    return HessianResult(hid, run_id, hdir, st.hessian_zarr(run_id, hid), meta, computed, seconds)


@dataclass(frozen=True)
class _Before:
    """The results of one configuration as they were before a command (read under their lock)."""

    meta: HessianMeta | None  # hessian.json, None where there was none
    arrays: bool  # whether hessian.zarr existed

    @classmethod
    def of(cls, st: Store, run_id: str, hid: str) -> _Before:
        return cls(st.read_hessian(run_id, hid) if st.has_hessian(run_id, hid) else None,
                   st.has_hessian_arrays(run_id, hid))

    def restore(self, st: Store, run: RunMeta, hid: str) -> None:
        """Undo what a command that cannot compute its products wrote (call with the lock held).

        Epochs the command finished are kept (with their eigenvectors); the epochs it added but did not
        finish leave the epoch axis and hessian.json, so no result is left that looks partial. Results
        that did not exist before are removed (their new directories by `leave_no_trace`).
        """
        run_id = run.id
        path = st.hessian_zarr(run_id, hid)
        old = self.meta.epochs if self.meta is not None else []
        finished: list[int] = []
        if self.arrays and st.has_hessian(run_id, hid):
            meta = st.read_hessian(run_id, hid)
            root: Any = zarr.open_group(path, mode="r", use_consolidated=False)
            for i, e in enumerate(meta.epochs):  # the added epochs follow the old ones, computed in that order
                if e in old:
                    continue
                if not epoch_done(root, i):
                    break
                finished.append(e)
        try:
            if not self.arrays:  # made by this command
                shutil.rmtree(path, ignore_errors=True)
            elif finished or self.meta is not None:
                grow(path, old + finished, run.completed(old + finished))  # as it was, plus the finished ones
            if finished:
                meta.epochs = old + finished
                meta.updated = now()
                st.write_hessian(meta)
            elif self.meta is not None:
                st.write_hessian(self.meta)
            else:
                st.hessian_file(run_id, hid).unlink(missing_ok=True)
        except OSError as e:
            raise os_error(e, path) from e


def _prepare(st: Store, run: RunMeta, cfg: HessianConfig, names: list[str], wanted: list[int],
             name: str | None) -> HessianMeta:
    """Create the results (Zarr group, hessian.json) or add the new epochs; metadata last."""
    hid = cfg.hessian_id
    path = st.hessian_zarr(run.id, hid)
    meta = st.read_hessian(run.id, hid) if st.has_hessian(run.id, hid) else None
    try:
        if meta is None or not st.has_hessian_arrays(run.id, hid):
            create_results(path, run.id, cfg, run.has_steps)
            if meta is not None:
                meta.epochs = []  # the arrays were lost: every epoch is computed again
        if meta is None:
            meta = HessianMeta(hid, name, run.id, cfg, [], {}, short_hash(names), {
                "landscape": __version__, "torch": torch.__version__, "python": platform.python_version()}, now())
    except OSError as e:
        raise os_error(e, path) from e
    read_results(path, meta.epochs)  # damaged arrays are one line (IntegrityError) before anything is written
    epochs = list(meta.epochs) + [e for e in wanted if e not in meta.epochs]
    grow(path, epochs, run.completed(epochs))
    if epochs != meta.epochs or (name is not None and meta.name != name) or not st.has_hessian(run.id, hid):
        meta.epochs = epochs
        meta.name = name if name is not None else meta.name
        meta.updated = now()
        st.write_hessian(meta)
    return meta





def _compute(st: Store, run: RunMeta, meta: HessianMeta, names: list[str], wanted: list[int], batches: Batches,
             device: torch.device, progress: bool) -> list[int]:
    cfg = meta.config
    path = st.hessian_zarr(run.id, meta.id)
    root: Any = open_group(path, "r+")  # durable writes: the done-mark reaches the disk after the results
    index = {e: i for i, e in enumerate(meta.epochs)}
    todo = [e for e in wanted if not epoch_done(root, index[e])]
    computed = []
    stages = 3 + int(cfg.density)
    with progress_bar(f"hessian {meta.id}", len(wanted) * stages, unit="stages", enabled=progress,
                      completed=(len(wanted) - len(todo)) * stages) as bar:
        for e in todo:
            model = checkpoints.build_model(checkpoints.load_epoch(st, run.id, epoch_record(run, e))).to(device)
            # not channels_last: its double backward through convolutions ran 2-3x slower on CPU
            # (benchmarks/hessian_speed.py), unlike the forward passes of a grid
            with operator(model, batches.on(device, False), names, cfg.bn, batches.weights,
                          run_loss(run.dataset, run.config.loss)) as op:
                bar.set_description(f"hessian {meta.id}: epoch {e}, top {cfg.top}")
                top = extreme_eigenpairs(op, cfg.top, "LA", cfg.seed, tol=cfg.tol / 10)
                bar.advance()
                bar.set_description(f"hessian {meta.id}: epoch {e}, λmin")
                low = extreme_eigenpairs(op, 1, "SA", cfg.seed, tol=cfg.tol / 10, shift=float(top.values[0]))
                bar.advance()
                bar.set_description(f"hessian {meta.id}: epoch {e}, trace")
                trace = hutchinson_trace(op, cfg.probes, cfg.seed)
                bar.advance()
                dens = None
                if cfg.density:
                    bar.set_description(f"hessian {meta.id}: epoch {e}, density")
                    dens = spectral_density(op, cfg.density_probes, cfg.density_steps, cfg.bins, cfg.seed)
                    bar.advance()
                vectors = {f"v{j + 1}": op.unflatten(top.vectors[:, j], names) for j in range(top.vectors.shape[1])}
            record = _store_vectors(st, run, meta, e, vectors, top.values)
            i = index[e]
            try:
                k = len(top.values)
                root["eigenvalues"][i, :k] = top.values
                root["residual"][i, :k] = top.residuals
                root["converged"][i, :k] = (top.residuals <= cfg.tol).astype(np.uint8)
                root["lambda_min"][i] = float(low.values[0])
                root["lambda_min_residual"][i] = float(low.residuals[0])
                root["convexity"][i] = abs(float(low.values[0]) / float(top.values[0])) if top.values[0] else np.nan
                root["trace"][i] = trace.value
                root["trace_stderr"][i] = trace.stderr
                if dens is not None:
                    root["density"][i, :] = dens.density
                    root["density_lambda"][i, :] = dens.centres
                    if "density_nodes" in root:  # results made before the raw quadrature was stored lack it
                        root["density_nodes"][i, :, :] = dens.nodes
                        root["density_weights"][i, :, :] = dens.weights
            except OSError as err:
                raise os_error(err, path) from err
            meta.eigenvectors[e] = record
            meta.computed_with[e] = {"device": device.type, "threads": torch.get_num_threads()}
            meta.updated = now()
            st.write_hessian(meta)
            root["done"][i] = 1  # last: the epoch counts as finished only once everything is written
            computed.append(e)
            del model
    return computed


def _store_vectors(st: Store, run: RunMeta, meta: HessianMeta, epoch: int, vectors: dict[str, dict[str, torch.Tensor]],
                   values: np.ndarray) -> DirectionRecord:
    record = epoch_record(run, epoch)
    spec = {"kind": "hessian", "hessian": meta.id, "epoch": epoch, "checkpoint": record.weights_sha256}
    obj = {"format": FORMAT, "spec": spec, "eigenvalues": [float(v) for v in values], **vectors}
    # a leftover of a killed computation of this epoch is replaced by this one
    return st.write_direction(run.id, short_hash(spec), {**spec, "pair": 0}, lambda f: torch.save(obj, f),
                              f"Hessian eigenvectors of epoch {epoch}", replace=True)
