"""Mode connectivity: a curve trained between two checkpoints (`landscape connect`; Garipov et al. 2018, "Loss
Surfaces, Mode Connectivity, and Fast Ensembling of DNNs").

Two independently trained networks look like isolated minima along the straight line between them, yet a simple
curve joins them along which the loss stays low. The curve φ_θ(t), t ∈ [0, 1], is a Bézier curve or a polygonal
chain through the control points [w_A, θ_1..θ_n, w_B] (`kernel.curves.coefficients`); the endpoints are fixed and
the bends θ are trained by minimizing E_{t~U(0,1)} L(φ_θ(t)): each mini-batch samples one t, computes the weights
at t differentiably in θ (`torch.func.functional_call` on the model with the combined parameters), with BatchNorm
in train mode (the batch's own statistics at that t: BatchNorm buffers are no part of a curve), and takes one
optimizer step on θ. The bends start on the straight line (`kernel.curves.initial_bends`).

A curve is stored like every other result: in RUN_A's run directory, under an id that hashes both endpoints'
weights and the training configuration (`config.CurveConfig`); epoch 0 holds the bends on the line, then one bends
file per epoch, and the last epoch's optimizer state with the t-generator's and torch's random states. Each epoch
is written before curve.json records it, so a kill loses at most the epoch in flight, and the same call resumes
and ends bitwise as an uninterrupted training (on CPU); a larger `epochs` continues the same curve.

`curve_loss` evaluates a point of a stored curve as Garipov does: BatchNorm statistics recomputed at that point on
the train split (running statistics reset, a cumulative average over one pass in train mode), then the loss in
eval mode.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape_cli._io import file_sha256, leave_no_trace, make_dirs, now, remove_partials
from landscape_cli._progress import progress_bar
from landscape_cli._version import __version__
from landscape_cli.config import OPTIMIZERS, CurveConfig, positive_int
from landscape_cli.data import Dataset, load_dataset
from landscape_cli.data.losses import Loss, run_loss, scored
from landscape_cli.errors import IntegrityError, UsageError
from landscape_cli.kernel.curves import coefficients, initial_bends
from landscape_cli.kernel.device import select_device
from landscape_cli.kernel.evaluate import evaluate_split
from landscape_cli.models import checkpoints
from landscape_cli.store import Store, check_label, curve_bends_name, curve_optimizer_name
from landscape_cli.store.meta import CurveEpoch, CurveMeta, FileRecord, RunMeta, epoch_record
from landscape_cli.training import MAX_EPOCHS, epoch_generator, make_optimizer

Weights = dict[str, Tensor]


@dataclass
class ConnectResult:
    """What `connect` returns: the curve's id and directory, its curve.json, and the epochs this call trained."""

    curve_id: str
    path: Path
    meta: CurveMeta
    trained: list[int] = field(default_factory=list)  # epochs trained (epoch 0: the line, evaluated) by this call

    @property
    def existed(self) -> bool:
        return not self.trained


def connect(
    run_a: str,
    run_b: str,
    *,
    shape: str = CurveConfig.shape,
    bends: int = CurveConfig.bends,
    epochs: int = 10,
    optimizer: str | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    seed: int = CurveConfig.seed,
    name: str | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    device: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_epoch: Callable[[CurveEpoch], None] | None = None,
) -> ConnectResult:
    """Train a curve of `shape` with `bends` free control points from `run_a` to `run_b` ("RUN" or "RUN:EPOCH"; the
    epoch defaults to the run's last checkpoint) for `epochs` epochs, on RUN_A's dataset and loss.

    The optimizer settings default to RUN_A's (an imported run records none: give `lr`, and `optimizer` and
    `batch_size` where it has none either). The same call again trains nothing, resumes a stopped training from
    its last complete epoch, or continues it where `epochs` grew. Bad input (the same checkpoint twice, runs of
    different architectures, datasets or losses, `bends` < 1, an epoch a run lacks) is one line, nothing written.
    """
    st = Store.of(store)
    positive_int(epochs, "--epochs", minimum=0, maximum=MAX_EPOCHS)
    meta_a, key_a = _endpoint(st, run_a, "RUN_A")
    meta_b, key_b = _endpoint(st, run_b, "RUN_B")
    if meta_a.id == meta_b.id and key_a == key_b:
        raise UsageError(f"RUN_A and RUN_B are the same checkpoint ({meta_a.label(key_a)} of run {meta_a.id}): a "
                         "curve connects two different checkpoints")
    _check_compatible(meta_a, meta_b)
    settings = _settings(meta_a, optimizer, lr, momentum, weight_decay, batch_size)
    cfg = CurveConfig(meta_a.id, key_a, epoch_record(meta_a, key_a).weights_sha256, meta_b.id, key_b,
                      epoch_record(meta_b, key_b).weights_sha256, shape, bends, seed=seed, **settings).validate()
    curve_id = cfg.curve_id
    if name is not None:
        _check_name(st, name, curve_id)
    if st.has_curve(meta_a.id, curve_id):
        existing = st.read_curve(meta_a.id, curve_id)
        if existing.epochs_done >= epochs and (name is None or existing.name == name):
            return ConnectResult(curve_id, st.curve_dir(meta_a.id, curve_id), existing)
    st.ensure_writable()
    data = load_dataset(meta_a.dataset["name"], data_dir, recorded=meta_a.dataset)  # before anything is written
    scorer = run_loss(meta_a.dataset, meta_a.config.loss)
    controls = _endpoints(st, cfg)
    dev = select_device(device)
    curve_dir = st.curve_dir(meta_a.id, curve_id)
    new_dirs = [d for d in (st.curves_dir(meta_a.id), curve_dir) if not d.exists()]
    with leave_no_trace(new_dirs, st.curve_file(meta_a.id, curve_id)):
        make_dirs(curve_dir)
        with st.curve_lock(meta_a.id, curve_id).acquire("wait for that training to finish, or stop it and run this "
                                                        "command again"):
            remove_partials(curve_dir)
            return _connect_locked(st, cfg, epochs, name, controls, data, scorer, dev, progress, on_epoch)


def _endpoint(st: Store, ref: str, which: str) -> tuple[RunMeta, int]:
    """The run and checkpoint key "RUN[:EPOCH]" names (EPOCH: an epoch number; default: the run's last checkpoint)."""
    run_ref, colon, epoch_text = ref.partition(":")
    run = st.read_run(st.resolve(run_ref))
    run.require_checkpoints()
    if not colon:
        return run, run.epochs[-1].key
    try:
        epoch = int(epoch_text)
    except ValueError:
        raise UsageError(f"bad {which} {ref!r}: give RUN or RUN:EPOCH (an epoch number)") from None
    return run, run.select([epoch])[0]


def _check_compatible(a: RunMeta, b: RunMeta) -> None:
    """Refuse two runs whose weights are not interchangeable or are scored differently (the first difference)."""
    if a.architecture != b.architecture:
        (ma, args_a), (mb, args_b) = a.architecture, b.architecture
        raise UsageError(f"run {a.id} is a {ma} {args_a} and run {b.id} a {mb} {args_b}: a curve connects two "
                         "checkpoints of the same architecture")
    da, db = _dataset_key(a), _dataset_key(b)
    if da != db:
        raise UsageError(f"run {a.id} was trained on {_describe_dataset(a)} and run {b.id} on "
                         f"{_describe_dataset(b)}: a curve connects two runs of the same dataset")
    la, lb = run_loss(a.dataset, a.config.loss).name, run_loss(b.dataset, b.config.loss).name
    if la != lb:
        raise UsageError(f"run {a.id} is scored with {la} and run {b.id} with {lb}: a curve connects two runs of the "
                         "same loss")


def _dataset_key(run: RunMeta) -> tuple[Any, ...]:
    d = run.dataset
    return d["name"], d.get("sha256"), d.get("block_size"), d.get("train_size"), d.get("val_size")


def _describe_dataset(run: RunMeta) -> str:
    name, sha256, block_size, train_size, _ = _dataset_key(run)
    extra = [f"sha256 {str(sha256)[:12]}" if sha256 else "", f"block size {block_size}" if block_size else "",
             f"{train_size} train samples"]
    return f"{name} ({', '.join(e for e in extra if e)})"


def _settings(run: RunMeta, optimizer: str | None, lr: float | None, momentum: float | None,
              weight_decay: float | None, batch_size: int | None) -> dict[str, Any]:
    """The curve's optimizer settings: those given, else RUN_A's (its learning rate and momentum only with its own
    optimizer); a run that records none (imported) or not all (the user's own loop) needs them given."""
    cfg = run.config
    own = cfg.optimizer in OPTIMIZERS and cfg.imported is None  # settings this tool can train with again
    chosen = optimizer if optimizer is not None else (cfg.optimizer if own else None)
    same = own and chosen == cfg.optimizer
    missing = []
    if chosen is None:
        missing.append("--optimizer")
    if lr is None:
        if same and math.isfinite(cfg.lr) and cfg.lr > 0:
            lr = cfg.lr
        else:
            missing.append("--lr")
    if batch_size is None:
        if cfg.batch_size > 0 and cfg.imported is None:
            batch_size = cfg.batch_size
        else:
            missing.append("--batch-size")
    if missing:
        why = ("was imported (`landscape import`): it records no training settings" if cfg.imported is not None else
               f"was trained with {cfg.optimizer} (batch size {cfg.batch_size or 'unknown'})")
        raise UsageError(f"run {run.id} {why}: give {', '.join(missing)} for the curve's training")
    assert chosen is not None and lr is not None and batch_size is not None
    if momentum is None:
        momentum = cfg.momentum if same else (CurveConfig.momentum if chosen == "sgd" else 0.0)
    if weight_decay is None:
        weight_decay = cfg.weight_decay if own else CurveConfig.weight_decay
    return {"optimizer": chosen, "lr": float(lr), "momentum": float(momentum), "weight_decay": float(weight_decay),
            "batch_size": int(batch_size)}


def _check_name(st: Store, name: str, curve_id: str) -> None:
    """A curve's --name names one curve of the store (it is what a reference to the curve may use)."""
    check_label(name, "curve")  # as run and grid names
    for run_id in st.run_ids():
        for other in st.curve_ids(run_id):
            if other == curve_id:
                continue
            try:
                taken = st.read_curve(run_id, other).name == name
            except (IntegrityError, OSError):
                continue
            if taken:
                raise UsageError(f"--name {name!r} is already the name of curve {other} (run {run_id}): choose another")


@dataclass
class Endpoints:
    """Both endpoints' checkpoints (checked against their hashes) and the names of the parameters a curve moves."""

    a: dict[str, Any]  # the checkpoint of RUN_A (what rebuilds the model)
    w_a: Weights
    w_b: Weights
    names: list[str]  # the model's parameters, in its order (BatchNorm buffers are no part of a curve)


def _endpoints(st: Store, cfg: CurveConfig) -> Endpoints:
    run_a = st.read_run(cfg.run_a)
    run_b = run_a if cfg.run_b == cfg.run_a else st.read_run(cfg.run_b)
    rec_a, rec_b = epoch_record(run_a, cfg.epoch_a), epoch_record(run_b, cfg.epoch_b)
    for rec, weights, run in ((rec_a, cfg.weights_a, run_a), (rec_b, cfg.weights_b, run_b)):
        if rec.weights_sha256 != weights:
            raise IntegrityError(f"the checkpoint of {rec.label} of run {run.id} is not the one the curve was trained "
                                 "from (its weights hash changed): run `landscape verify`")
    ckpt_a = checkpoints.load_epoch(st, run_a.id, rec_a)
    ckpt_b = checkpoints.load_epoch(st, run_b.id, rec_b)
    model = checkpoints.build_model(ckpt_a)
    names = [n for n, _ in model.named_parameters()]
    state_a, state_b = ckpt_a["state_dict"], ckpt_b["state_dict"]
    for n in names:
        if n not in state_b or state_b[n].shape != state_a[n].shape:
            raise UsageError(f"the checkpoint of {rec_b.label} of run {run_b.id} has no parameter {n!r} of shape "
                             f"{list(state_a[n].shape)}: a curve connects two checkpoints of the same architecture")
    return Endpoints(ckpt_a, {n: state_a[n] for n in names}, {n: state_b[n] for n in names}, names)


def curve_point(shape: str, controls: Sequence[Weights], t: float) -> Weights:
    """The weights φ(t) = Σ_k c_k(t)·P_k of the curve through `controls` ([w_A, θ_1..θ_n, w_B], dicts of parameters
    by name): differentiable in every control point, and exactly w_A at t = 0 and w_B at t = 1 (the other terms are
    multiplied by 0). The same sum, in the same order, is what training differentiates and what evaluation reads."""
    c = coefficients(shape, len(controls) - 2, float(t))
    out = {}
    for name in controls[0]:
        total = controls[0][name] * float(c[0])
        for k in range(1, len(controls)):
            total = total + controls[k][name] * float(c[k])
        out[name] = total
    return out


def _t_generator(seed: int) -> torch.Generator:
    """The generator of the t sampled for each mini-batch (independent of torch's global one, seeded by --seed)."""
    digest = hashlib.sha256(f"landscape-curve-t:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _connect_locked(st: Store, cfg: CurveConfig, epochs: int, name: str | None, ends: Endpoints, data: Dataset,
                    scorer: Loss, device: torch.device, progress: bool,
                    on_epoch: Callable[[CurveEpoch], None] | None) -> ConnectResult:
    curve_id, run_id = cfg.curve_id, cfg.run_a
    curve_dir = st.curve_dir(run_id, curve_id)
    meta: CurveMeta
    if st.has_curve(run_id, curve_id):
        meta = st.read_curve(run_id, curve_id)
    else:
        meta = CurveMeta(id=curve_id, name=None, config=cfg, epochs_requested=epochs, epochs=[], resume=None,
                         versions={"landscape": __version__, "torch": torch.__version__,
                                   "python": platform.python_version()},
                         created=now())
    if name is not None:
        meta.name = name
    meta.epochs_requested = max(epochs, meta.epochs_requested)
    start = meta.epochs_done + 1
    if meta.epochs and start > epochs:  # only the name or the requested epochs changed
        meta.updated = now()
        st.write_curve(meta)
        return ConnectResult(curve_id, curve_dir, meta)

    model = checkpoints.build_model(ends.a).to(device)
    w_a = {n: v.to(device) for n, v in ends.w_a.items()}
    w_b = {n: v.to(device) for n, v in ends.w_b.items()}
    if meta.epochs:
        last = meta.epochs[-1]
        saved = checkpoints.load_bends(st.curve_path(run_id, curve_id, last.file), last.sha256,
                                       f"bends of epoch {last.epoch} of curve {curve_id}")
        initial = [{n: b[n] for n in ends.names} for b in saved]
    else:
        initial = [{n: torch.lerp(ends.w_a[n], ends.w_b[n], float(f)) for n in ends.names}
                   for f in initial_bends(cfg.bends)]
    theta: list[Weights] = [{n: nn.Parameter(b[n].to(device).clone()) for n in ends.names} for b in initial]
    opt = make_optimizer(cfg, [p for b in theta for p in b.values()])
    t_gen = _t_generator(cfg.seed)
    devices = [device] if device.type == "cuda" else []
    trained: list[int] = []
    steps = (len(data.train_y) + cfg.batch_size - 1) // cfg.batch_size
    with torch.random.fork_rng(devices=devices):  # the caller's random numbers are given back as they were
        if meta.epochs:
            _restore(st, meta, opt, t_gen)
        else:
            torch.manual_seed(cfg.seed)  # what the model may draw (dropout): the same in every run of the call
        if meta.epochs:
            st.write_curve(meta)  # the requested epochs (a new curve's curve.json is first written with epoch 0)
        with progress_bar(f"curve {curve_id}", (epochs - start + 1) * steps, unit="batches",
                          enabled=progress) as bar:
            for epoch in range(start, epochs + 1):
                t0 = time.perf_counter()
                loss = _epoch(model, w_a, theta, w_b, opt if epoch > 0 else None, data, cfg, epoch, t_gen, scorer,
                              device, bar.advance)
                record = _save_epoch(st, meta, theta, opt, t_gen, epoch, loss, time.perf_counter() - t0)
                trained.append(epoch)
                if on_epoch is not None:
                    on_epoch(record)
    return ConnectResult(curve_id, curve_dir, meta, trained)


def _epoch(model: nn.Module, w_a: Weights, theta: list[Weights], w_b: Weights,
           opt: torch.optim.Optimizer | None, data: Dataset, cfg: CurveConfig, epoch: int, t_gen: torch.Generator,
           scorer: Loss, device: torch.device, advance: Callable[[], None]) -> float:
    """One pass over the train split in the order `train` draws for (seed, epoch): per mini-batch one t ~ U(0, 1),
    the loss at φ_θ(t) with BatchNorm in train mode, and (with `opt`) a step on the bends. Returns the mean loss over
    the scored units (samples, or tokens that are not padding). Without `opt` (epoch 0) nothing is trained: the mean
    is the expected loss along the initial straight line."""
    from torch.func import functional_call

    x_all, y_all = data.train_x, data.train_y
    order = torch.randperm(len(y_all), generator=epoch_generator(cfg.seed, epoch))
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    units = 0
    with torch.set_grad_enabled(opt is not None):
        for step in range(0, len(y_all), cfg.batch_size):
            t = float(torch.rand((), generator=t_gen, dtype=torch.float64))
            idx = order[step:step + cfg.batch_size]
            y_cpu = y_all[idx]
            count = scored(y_cpu)
            if count:  # else nothing to score: no loss, no step
                x, y = data.prepare(x_all[idx], device), y_cpu.to(device)
                params = curve_point(cfg.shape, [w_a, *theta, w_b], t)
                loss = scorer(functional_call(model, params, (x,)), y)
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                total += loss.detach().double() * count
                units += count
            advance()
    return float(total.item() / units) if units else float("nan")


def _save_epoch(st: Store, meta: CurveMeta, theta: list[Weights], opt: torch.optim.Optimizer,
                t_gen: torch.Generator, epoch: int, loss: float, seconds: float) -> CurveEpoch:
    """The bends, then the optimizer state with the random states, then curve.json; the previous optimizer state is
    deleted only once the new one is recorded: a kill at any point leaves a resumable curve."""
    run_id, curve_id = meta.run, meta.id
    bends = [{n: p.detach() for n, p in b.items()} for b in theta]
    bends_path = st.curve_path(run_id, curve_id, curve_bends_name(epoch))
    checkpoints.save(bends_path, checkpoints.make_bends(bends, epoch, curve_id))
    optim_path = st.curve_path(run_id, curve_id, curve_optimizer_name(epoch))
    checkpoints.save(optim_path, {"epoch": epoch, "optimizer": opt.state_dict(), "t_generator": t_gen.get_state(),
                                  "rng": torch.get_rng_state()})
    record = CurveEpoch(epoch, curve_bends_name(epoch), file_sha256(bends_path), checkpoints.bends_hash(bends), loss,
                        round(seconds, 3))
    previous = meta.resume
    meta.epochs.append(record)
    meta.resume = FileRecord(curve_optimizer_name(epoch), file_sha256(optim_path), epoch)
    if len(meta.epochs) > 1:
        meta.updated = now()
    st.write_curve(meta)
    if previous is not None and previous.file != meta.resume.file:
        st.curve_path(run_id, curve_id, previous.file).unlink(missing_ok=True)
    return record


def _restore(st: Store, meta: CurveMeta, opt: torch.optim.Optimizer, t_gen: torch.Generator) -> None:
    """The optimizer state and the random states of the curve's last epoch (the bends are loaded by the caller)."""
    last = meta.epochs[-1]
    resume = meta.resume
    if resume is None or resume.epoch != last.epoch:
        raise IntegrityError(f"curve {meta.id}: the optimizer state of epoch {last.epoch} is missing, so its training "
                             "cannot continue exactly; train another curve (e.g. with another --seed)")
    state = checkpoints.load(st.curve_path(meta.run, meta.id, resume.file), resume.sha256,
                             f"optimizer state of epoch {last.epoch} of curve {meta.id}")
    opt.load_state_dict(state["optimizer"])
    t_gen.set_state(state["t_generator"])
    torch.set_rng_state(state["rng"])


# --- reading a stored curve ---------------------------------------------------------------------------------------


def _curve_meta(st: Store, curve: CurveMeta | str) -> CurveMeta:
    if isinstance(curve, CurveMeta):
        return curve
    run_id, curve_id = st.find_curve(curve)
    return st.read_curve(run_id, curve_id)


def _curve_epoch(meta: CurveMeta, epoch: int | None) -> CurveEpoch:
    if not meta.epochs:
        raise IntegrityError(f"curve {meta.id} has no epoch recorded (damaged): run `landscape verify`")
    if epoch is None:
        return meta.epochs[-1]
    found = next((e for e in meta.epochs if e.epoch == epoch), None)
    if found is None:
        raise UsageError(f"curve {meta.id} has no epoch {epoch}: it has epochs 0-{meta.epochs_done}")
    return found


def _controls(st: Store, meta: CurveMeta, epoch: int | None) -> tuple[Endpoints, list[Weights]]:
    record = _curve_epoch(meta, epoch)
    ends = _endpoints(st, meta.config)
    bends = checkpoints.load_bends(st.curve_path(meta.run, meta.id, record.file), record.sha256,
                                   f"bends of epoch {record.epoch} of curve {meta.id}")
    return ends, [ends.w_a, *[{n: b[n] for n in ends.names} for b in bends], ends.w_b]


def control_points(store: Store | str | os.PathLike[str] | None, curve: CurveMeta | str,
                   epoch: int | None = None) -> list[Weights]:
    """[w_A, θ_1..θ_n, w_B] of a stored curve after `epoch` (default: its last), parameters by name on the CPU, each
    file checked against its recorded hash. `curve`: its CurveMeta, or its id (prefix) or name."""
    st = Store.of(store)
    return _controls(st, _curve_meta(st, curve), epoch)[1]


def curve_model(store: Store | str | os.PathLike[str] | None, curve: CurveMeta | str, t: float, *,
                epoch: int | None = None) -> nn.Module:
    """RUN_A's model (on the CPU, eval mode) with the weights φ(t) of the curve after `epoch` (default: its last);
    its BatchNorm buffers are still RUN_A's: `recompute_bn` makes them the point's own."""
    if not 0.0 <= t <= 1.0:
        raise UsageError(f"t must be from 0 to 1 (a point of the curve), got {t}")
    st = Store.of(store)
    meta = _curve_meta(st, curve)
    ends, controls = _controls(st, meta, epoch)
    model = checkpoints.build_model(ends.a)
    point = curve_point(meta.config.shape, controls, t)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(point[n])
    return model


@torch.no_grad()
def recompute_bn(model: nn.Module, data: Dataset, batch_size: int, device: torch.device) -> None:
    """BatchNorm statistics at the model's weights (Garipov): the running statistics reset, then their cumulative
    average (momentum None) over one pass over the train split in order, in pieces of `batch_size`, BatchNorm in
    train mode and every other module in eval mode (no dropout). The model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    x_all = data.train_x
    for start in range(0, len(x_all), batch_size):
        model(data.prepare(x_all[start:start + batch_size], device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()


def curve_loss(store: Store | str | os.PathLike[str] | None, curve: CurveMeta | str, t: float, *,
               epoch: int | None = None, split: str = "train", device: str = "auto",
               data_dir: str | os.PathLike[str] | None = None, batch_size: int | None = None,
               data: Dataset | None = None) -> tuple[float, float | None]:
    """Loss and accuracy (None for a regression) of the curve's point φ(t) after `epoch` (default: its last) on
    `split`, as Garipov evaluates a curve: BatchNorm statistics recomputed at that point on the train split
    (`recompute_bn`, pieces of `batch_size`, default the curve's training batch size), then the mean over the
    split's scored units in eval mode. `data`: the dataset already loaded (else RUN_A's is loaded)."""
    st = Store.of(store)
    meta = _curve_meta(st, curve)
    run = st.read_run(meta.run)
    if data is None:
        data = load_dataset(run.dataset["name"], data_dir, recorded=run.dataset)
    dev = select_device(device)
    model = curve_model(st, meta, t, epoch=epoch).to(dev)
    recompute_bn(model, data, batch_size or meta.config.batch_size, dev)
    return evaluate_split(model, data, split, dev, scorer=run_loss(run.dataset, run.config.loss))
