"""The Zarr group of a run's curvature results (``hessians/<id>/hessian.zarr``): its layout, creation and reading.

    eigenvalues, residual   float64 [epoch, k]   top eigenvalues (descending), ‖Hv − λv‖/|λ|
    converged               uint8   [epoch, k]   1 where the residual is within --tol
    lambda_min, lambda_min_residual  [epoch]     the smallest eigenvalue (negative away from minima)
    convexity               float64 [epoch]      |λmin / λmax| (Li et al.'s non-convexity measure)
    trace, trace_stderr     float64 [epoch]      Hutchinson's estimate and its standard error
    density, density_lambda float64 [epoch, bin] with --density: the smoothed spectral density
    density_nodes, density_weights  float64 [epoch, probe, node] with --density: the raw quadrature (older results
                            lack them)
    done                    uint8   [epoch]      1 once the epoch's results are written (last)

Written through `DurableStore` (`grid_arrays.open_group` with a mode to write): each write reaches the disk
before the next starts, so an epoch's done-mark is never on the disk without its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from landscape_cli.config import HessianConfig
from landscape_cli.errors import IntegrityError
from landscape_cli.store.durable import DurableStore
from landscape_cli.store.grid_arrays import DECODE_ERRORS, batched


def _codecs() -> dict[str, Any]:
    return {"compressors": [ZstdCodec(level=3), Crc32cCodec()]}


def layout(cfg: HessianConfig, steps: bool = False) -> dict[str, tuple[list[str], tuple[int, ...], str, Any, str]]:
    """name -> (dims, shape without the epoch axis, dtype, fill, description). `steps`: a run with step
    checkpoints, whose first axis is `checkpoint` with the coordinates `step` (the key) and `epoch`."""
    k, nan = cfg.top, float("nan")
    out = {
        "eigenvalues": (["epoch", "k"], (k,), "float64", nan, "top eigenvalues of the Hessian, descending"),
        "residual": (["epoch", "k"], (k,), "float64", nan, "‖Hv − λv‖ / |λ| of each eigenpair"),
        "converged": (["epoch", "k"], (k,), "uint8", 0, "1 where the residual is within the tolerance"),
        "lambda_min": (["epoch"], (), "float64", nan, "smallest eigenvalue of the Hessian"),
        "lambda_min_residual": (["epoch"], (), "float64", nan, "‖Hv − λv‖ / |λ| of the smallest eigenpair"),
        "convexity": (["epoch"], (), "float64", nan, "|λmin / λmax| (Li et al.): near 0 is locally convex"),
        "trace": (["epoch"], (), "float64", nan, "trace of the Hessian (Hutchinson's estimate)"),
        "trace_stderr": (["epoch"], (), "float64", nan, "standard error of the trace estimate"),
        "done": (["epoch"], (), "uint8", 0, "1 once the epoch's results are written"),
        "epoch": (["epoch"], (), "int64", -1, "training epoch of the checkpoint"),
    }
    if cfg.density:
        out["density"] = (["epoch", "bin"], (cfg.bins,), "float64", nan,
                          "spectral density (stochastic Lanczos quadrature, Gaussian-smoothed)")
        out["density_lambda"] = (["epoch", "bin"], (cfg.bins,), "float64", nan, "eigenvalue at each bin's centre")
        shape = (cfg.density_probes, cfg.density_steps)
        out["density_nodes"] = (["epoch", "probe", "node"], shape, "float64", nan,
                                "Gauss quadrature nodes of each probe (Ritz values of its Lanczos tridiagonal)")
        out["density_weights"] = (["epoch", "probe", "node"], shape, "float64", nan,
                                  "their weights (squared first components of the Ritz vectors; sum 1 per probe)")
    if steps:
        out = {name: (["checkpoint", *dims[1:]], shape, dtype, fill, text)
               for name, (dims, shape, dtype, fill, text) in out.items()}
        out["epoch"] = (["checkpoint"], (), "int64", -1, "training epochs completed at the checkpoint")
        out["step"] = (["checkpoint"], (), "int64", -1, "optimizer steps taken at the checkpoint")
    return out


def create_results(path: Path, run_id: str, cfg: HessianConfig, steps: bool = False) -> None:
    """A new, empty results group (its epoch axis grows as epochs are added)."""
    attrs: dict[str, Any] = {"hessian": cfg.hessian_id, "run": run_id, "config": cfg.identity()}
    root = zarr.open_group(DurableStore(path), mode="w", zarr_format=3, attributes=attrs)
    with batched(root):
        for array, (dims, shape, dtype, fill, long_name) in layout(cfg, steps).items():
            coordinates = {"coordinates": "step epoch"} if steps and array not in ("step", "epoch") else {}
            attributes: dict[str, Any] = {"long_name": long_name, **coordinates}
            root.create_array(array, shape=(0, *shape), chunks=(1, *shape), dtype=dtype, fill_value=fill,
                              dimension_names=dims, attributes=attributes, **_codecs())
        root.create_array("k", shape=(cfg.top,), dtype="int64", dimension_names=["k"], **_codecs())[:] = np.arange(cfg.top)
        if cfg.density:
            for index, size in (("bin", cfg.bins), ("probe", cfg.density_probes), ("node", cfg.density_steps)):
                root.create_array(index, shape=(size,), dtype="int64", dimension_names=[index],
                                  **_codecs())[:] = np.arange(size)


def epoch_done(root: Any, index: int) -> bool:
    try:
        return bool(root["done"][index] > 0)
    except DECODE_ERRORS:
        return False
    except KeyError as e:
        raise IntegrityError(f"the curvature results' done-marks are missing ({e}): `landscape verify` lists what is "
                             "damaged; delete the results' directory and run the same `landscape hessian` command "
                             "again") from e


def read_results(path: Path, epochs: list[int]) -> list[dict[str, Any]]:
    """The stored numbers per epoch (only finished epochs), as plain Python values; one IntegrityError line where
    the group is damaged."""
    from landscape_cli.store import check_tree

    check_tree(path, f"the curvature results in {path}")  # no pipe where a chunk belongs: reading it would block
    out = []
    try:
        root: Any = zarr.open_group(path, mode="r", use_consolidated=False)
        for i, e in enumerate(epochs):
            if not epoch_done(root, i):
                continue
            row: dict[str, Any] = {"epoch": e}
            for name in ("eigenvalues", "residual", "converged"):
                row[name] = [float(v) for v in np.asarray(root[name][i])]
            for name in ("lambda_min", "lambda_min_residual", "convexity", "trace", "trace_stderr"):
                row[name] = float(np.asarray(root[name][i]))
            out.append(row)
    except (KeyError, OSError, *DECODE_ERRORS) as e:  # zarr's own errors are ValueErrors
        raise IntegrityError(f"the curvature results in {path} are damaged ({type(e).__name__}: {e}): `landscape "
                             "verify` lists what is damaged; delete that directory and run the same `landscape "
                             "hessian` command again") from e
    return out
