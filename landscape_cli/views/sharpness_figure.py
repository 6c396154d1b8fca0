"""The figure of λmax tracked during training (`landscape plot RUN --lambda-max`): reads JSON, never torch.

λmax against the optimizer step, with the 2/η line of gradient descent's stability threshold (Cohen
et al. 2021, "edge of stability") for a run trained with SGD at learning rate η. For Adam the line is
drawn dotted and the figure says it is gradient descent's threshold, not Adam's (Cohen et al. 2022
compare the preconditioned Hessian's λmax with 38/η, which these values are not).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape_cli._io import write_figure
from landscape_cli.errors import GridStateError, UsageError
from landscape_cli.store import Store
from landscape_cli.store.meta import LambdaTrack, RunMeta

ADAM_NOTE = ("2/η is the stability threshold of gradient descent, not of Adam "
             "(Cohen et al. 2022 compare the preconditioned Hessian)")


@dataclass
class SharpnessFigure:
    path: Path
    figure: Any
    run: RunMeta
    track: LambdaTrack
    threshold: float  # 2/η
    note: str | None  # for a run not trained with plain SGD: what 2/η is not

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "run": self.run.id, "optimizer": self.run.config.optimizer,
                "lr": self.run.config.lr, "two_over_lr": self.threshold, "note": self.note,
                "settings": self.track.settings, "values": [p.to_json() for p in self.track.values]}


def read_track(run: str, store: Store | str | os.PathLike[str] | None = None) -> tuple[RunMeta, LambdaTrack]:
    """The run's metadata and its tracked λmax (only the epochs run.json records; in a run with step checkpoints,
    the steps up to its last checkpoint); one line if it has none."""
    st = Store.of(store)
    run_id = st.resolve(run)
    meta = st.read_run(run_id)
    track = st.read_lambda_track(run_id)
    if track is None:
        raise GridStateError(f"run {run_id} has no λmax tracked during training: train it with "
                             "`landscape train ... --track-lambda-max K`")
    if meta.has_steps:  # values after the last checkpoint run.json records (training in flight) are left out
        last = max((r.step for r in meta.epochs if r.step is not None), default=-1)
        track.values = [p for p in track.values if p.step <= last]
    else:
        recorded = len(meta.epochs)  # values of an epoch in flight (not yet in run.json) are left out
        track.values = [p for p in track.values if p.epoch < recorded]
    if not track.values:
        raise GridStateError(f"run {run_id} has no tracked λmax yet: its first epoch is still training")
    return meta, track


def plot_lambda_max(run: str, *, out: str | os.PathLike[str] | None = None,
                    store: Store | str | os.PathLike[str] | None = None, dpi: int = 120) -> SharpnessFigure:
    """Draw the run's tracked λmax against the step, with 2/η; saved to `out` or the run's plots/lambda_max.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    st = Store.of(store)
    meta, track = read_track(run, st)
    cfg = meta.config
    threshold = 2.0 / cfg.lr
    sgd = cfg.optimizer == "sgd"
    note = None if sgd else ADAM_NOTE
    if sgd and cfg.momentum:
        note = (f"with momentum β = {cfg.momentum} gradient descent's threshold is (2 + 2β)/η = "
                f"{(2 + 2 * cfg.momentum) / cfg.lr:.4g}")
    path = Path(out).expanduser() if out is not None else st.run_plot_path(meta.id, "lambda_max.png")
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--out {path}: the file name must end in .png, .pdf, .svg")
    fig = Figure(figsize=(6.4, 4.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    steps = [p.step for p in track.values]
    ax.plot(steps, [p.value for p in track.values], marker="o" if len(steps) <= 60 else None, markersize=3,
            linewidth=1.2, label="λmax (top Hessian eigenvalue)")
    ax.axhline(threshold, color="red" if sgd else "0.5", linestyle="--" if sgd else ":", linewidth=1,
               label=f"2/η = {threshold:.4g}")
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_ylabel("λmax", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    s = track.settings
    ax.set_title(f"run {meta.id}: {cfg.optimizer}, η = {cfg.lr:g}, λmax every {s.get('every')} steps on "
                 f"{s.get('batches')} batch(es) of {s.get('batch_size')}", fontsize=8)
    if note:
        ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=6.5, va="top", ha="left", wrap=True,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    write_figure(fig, path, dpi)
    return SharpnessFigure(path, fig, meta, track, threshold, note)
