"""The figure of a run's curvature results (`landscape plot RUN --hessian`): reads Zarr, never torch.

Panels: the top eigenvalues and λmin against epoch (hollow markers: not converged within the
tolerance), the trace against epoch with its standard error, and with --density results the
spectral density of each epoch (log scale, as PyHessian draws it). Results of a run with step
checkpoints are drawn against the step (their checkpoints' keys).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape_cli._io import write_figure
from landscape_cli.errors import GridStateError, UsageError
from landscape_cli.store import Store
from landscape_cli.store.meta import HessianMeta
from landscape_cli.views.readers import BATCHNORM_MODELS, keys_json, select_hessian, unit


@dataclass
class HessianFigure:
    path: Path | None  # None: written nowhere (a notebook's figure, `write=False`)
    figure: Any
    meta: HessianMeta
    epochs: list[int]  # the checkpoints drawn: epochs, or steps in a run with step checkpoints (`unit`)
    eigenvalues: np.ndarray  # [epoch, k]
    lambda_min: np.ndarray  # [epoch]
    trace: np.ndarray
    trace_stderr: np.ndarray
    unit: str = "epoch"  # what `epochs` count: "epoch", or "step"
    checkpoints: dict[str, list[int]] = field(default_factory=dict)  # JSON: {"epochs"} or {"steps", "epochs"}

    def keys_json(self) -> dict[str, list[int]]:
        """The checkpoints drawn as JSON outputs name them (`readers.keys_json`)."""
        return self.checkpoints or {"epochs": self.epochs}


def plot_hessian(run: str, *, hessian: str | None = None, out: str | os.PathLike[str] | None = None,
                 store: Store | str | os.PathLike[str] | None = None, dpi: int = 120,
                 write: bool = True) -> HessianFigure:
    """Draw eigenvalues, λmin and trace against epoch (and the density per epoch) of a run's curvature results;
    written to `out` (default: the results' plots/hessian.png) unless `write` is False and no `out` is given. The
    figure shows itself in a notebook (`LandscapeFigure`)."""
    import zarr
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from landscape_cli.views.figures import LandscapeFigure

    st = Store.of(store)
    run_id = st.resolve(run)
    meta = select_hessian(st, run_id, hessian)
    root: Any = zarr.open_group(st.hessian_zarr(run_id, meta.id), mode="r", use_consolidated=False)
    done = np.asarray(root["done"][:]) > 0
    if not done.any():
        raise GridStateError(f"curvature results {meta.id} have no finished epoch yet: run their `landscape hessian` "
                             "command again")
    order = np.argsort(np.asarray(meta.epochs))
    keep = [int(i) for i in order if done[i]]
    epochs = [meta.epochs[i] for i in keep]
    values = np.asarray(root["eigenvalues"][:])[keep]
    converged = np.asarray(root["converged"][:])[keep] > 0
    lam_min = np.asarray(root["lambda_min"][:])[keep]
    trace, stderr = np.asarray(root["trace"][:])[keep], np.asarray(root["trace_stderr"][:])[keep]
    density = meta.config.density
    run_meta = st.read_run(run_id)  # the BatchNorm mode only for models known to have BatchNorm layers
    x_name = unit(run_meta)  # "step" for a run with step checkpoints
    path: Path | None = None
    if out is not None or write:
        path = Path(out).expanduser() if out is not None else st.hessian_plot_path(run_id, meta.id, "hessian.png")
        if path.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise UsageError(f"--out {path}: the file name must end in .png, .pdf, .svg")
    fig = LandscapeFigure(figsize=(4.2 * (3 if density else 2), 3.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if density else 2)
    ax = axes[0]
    for j in range(values.shape[1]):
        ax.plot(epochs, values[:, j], marker="o", markersize=4, label=f"λ{j + 1}")
        bad = ~converged[:, j]
        if bad.any():
            ax.plot(np.asarray(epochs)[bad], values[bad, j], linestyle="none", marker="o", markersize=8,
                    markerfacecolor="none", markeredgecolor="red")
    ax.plot(epochs, lam_min, marker="v", markersize=4, linestyle="--", color="0.4", label="λmin")
    ax.axhline(0, color="0.8", linewidth=0.8)
    ax.set_xlabel(x_name, fontsize=8)
    ax.set_ylabel("eigenvalue", fontsize=8)
    ax.set_title("top eigenvalues and λmin" + (" (red rings: not converged)" if not converged.all() else ""),
                 fontsize=8)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.errorbar(epochs, trace, yerr=stderr, marker="o", markersize=4, capsize=3)
    ax.set_xlabel(x_name, fontsize=8)
    ax.set_ylabel("trace", fontsize=8)
    ax.set_title(f"trace (Hutchinson, {meta.config.probes} probes, ± 1 s.e.)", fontsize=8)
    if density:
        ax = axes[2]
        dens = np.asarray(root["density"][:])[keep]
        lam = np.asarray(root["density_lambda"][:])[keep]
        for e, d, x in zip(epochs, dens, lam, strict=True):
            ax.semilogy(x, np.maximum(d, 1e-12), label=f"{x_name} {e}", linewidth=1)
        ax.set_xlabel("eigenvalue", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.set_title(f"spectral density (SLQ: {meta.config.density_probes} probes × {meta.config.density_steps} steps,"
                     f" {meta.config.bins} bins)", fontsize=8)
        ax.legend(fontsize=7)
    for a in np.atleast_1d(axes):
        a.tick_params(labelsize=7)
    cfg = meta.config
    bn = f", BatchNorm {cfg.bn}" if "source" not in run_meta.model and run_meta.config.model in BATCHNORM_MODELS else ""
    fig.suptitle(f"Hessian of run {run_id} ({cfg.batches} batches of {cfg.batch_size}{bn}"
                 + (f", layer {cfg.layer}" if cfg.layer else "")
                 + (f", layers {' '.join(cfg.layers)}" if cfg.layers else "") + f"), results {meta.id}", fontsize=9)
    if path is not None:
        write_figure(fig, path, dpi)
    return HessianFigure(path, fig, meta, epochs, values, lam_min, trace, stderr, x_name, keys_json(run_meta, epochs))
