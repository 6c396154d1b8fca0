"""Every analysis on a model in memory: planes, lines, Hessian spectra and sharpness, no run store to set up.

    import landscape_cli as ls
    ds = ls.plane(model, batches, width=21)            # a random filter-normalized plane: xarray Dataset
    ds.landscape.plot()                               # the figure `landscape plot` draws
    ls.stats(ds).epochs[0]["mean"]["sharpness"]       # what `landscape stats` prints
    h = ls.hessian(model, batches, top=3)             # eigenvalues [epoch, k], lambda_min, trace (, density)
    ls.save_to(ds, "runs", model_factory="my_models:make_net")   # kept as a run and grid of a store

`model` is any `nn.Module`; the data is a list of (inputs, targets) batches, a `DataLoader` (any iterable of
such pairs), or a split of a registered dataset by name (`"digits"`, prepared as `landscape grid` prepares it).
The loss follows the data: a registered dataset's task, else the targets (class indices: cross-entropy and
accuracy; float targets: mean squared error), unless `loss=` names one.

Each call runs the library's own commands, unchanged: the model's weights (and a trajectory's, an
interpolation's end) are written as the checkpoints of a run of a private store in a temporary directory
(removed when the process exits), whose model and data are handed out by this module's in-process factories
(`memory_model`, `memory_data`) while the call lasts; then `grid()` or `hessian()` computes on that run exactly
as on any other, so the numbers are the CLI's (bitwise, on the same device with the same thread count), and
the result is the grid (or curvature results) read back as `landscape_cli.open` reads a stored one. Its
attributes name that private store, run and grid, so `ds.landscape.plot()`, `landscape_cli.export(...)` and
`stats` work on it as on a stored grid, and record the torch thread count it was computed with (`threads`).
The model itself is only read (its weights, modes and buffers are left as they are); the copies the
commands rebuild are made from it on the CPU.

`save_to(result, store, model_factory=...)` keeps a result: the same checkpoints imported into `store`
(`landscape import`) and the same grid or Hessian computed there (`landscape grid` / `landscape hessian`), so
the stored run and grid have exactly the ids and values the CLI gives for them. A run must rebuild its model
in later processes, so a model in memory needs a factory reference (`model_factory=`); a run records the data
it is scored on, so the result must be of a registered dataset's split.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xarray as xr
from torch import Tensor, nn

from landscape_cli.config import (
    SPLITS,
    GridRequest,
    HessianConfig,
    Runtime,
    TrainConfig,
    check_batches,
    choice,
    parse_batches,
    positive_int,
)
from landscape_cli.curvature.hessian import HessianResult
from landscape_cli.curvature.hessian import hessian as hessian_results
from landscape_cli.curvature.stats import DEFAULT_DELTA, StatsResult
from landscape_cli.curvature.stats import stats as grid_stats
from landscape_cli.data import Dataset, DatasetInfo, dataset_record, dataset_source, load_dataset
from landscape_cli.data.losses import get_loss, loss_for_targets, loss_for_task
from landscape_cli.directions.pca import MIN_CHECKPOINTS
from landscape_cli.engine.compute import GridResult
from landscape_cli.engine.compute import grid as compute_grid
from landscape_cli.errors import UsageError
from landscape_cli.exchange.importer import import_run, write_run
from landscape_cli.exchange.unpickle import match_state
from landscape_cli.kernel.device import select_device
from landscape_cli.kernel.evaluate import evaluate_split
from landscape_cli.kernel.metrics import Metric, resolve_all
from landscape_cli.models import build, checkpoints, model_source
from landscape_cli.models.records import check_fits, model_args
from landscape_cli.plugins import Source
from landscape_cli.store import Store
from landscape_cli.views.notebook import HESSIAN_ATTR, RUN_ATTR, STORE_ATTR
from landscape_cli.views.notebook import open as open_grid

KINDS = ("random", "interpolate", "pca", "hessian")  # the direction kinds a model in memory has all it needs for
THREADS_ATTR = "threads"  # the torch thread count the result was computed with
REQUEST_ATTR = "landscape_request"  # what was computed, as `save_to` computes it again in a store
DATA_ATTR = "landscape_data"  # the data it was computed on (a registered dataset's reference, or None)
DEVICE_ATTR = "landscape_device"  # the device type it was computed on

StateDict = Mapping[str, Tensor]
Data = str | Iterable[Any]

_LOCK = threading.RLock()  # one call at a time: the in-process factories hand out one model and one data set
_ACTIVE: dict[str, Any] = {}  # during a call: "session", "model" (a CPU copy of the user's model), "data"
_SCRATCH: list[Path] = []  # the process's private store, made on first use


# --- the in-process factories the private store's runs record --------------------------------------------


def memory_model(session: str) -> nn.Module:
    """A copy (on the CPU) of the model in memory of the running call `session` (what a private run's checkpoints
    are loaded into)."""
    if _ACTIVE.get("session") != session:
        raise UsageError("this run's model existed in memory only while the landscape_cli call that made it ran: call "
                         "it again (or keep a result with save_to(..., model_factory=...))")
    return copy.deepcopy(_ACTIVE["model"])


def memory_data() -> dict[str, Any]:
    """The data of the running call, as a dataset factory returns it (train and val: the batches it evaluates)."""
    if "data" not in _ACTIVE:
        raise UsageError("this run's data existed in memory only while the landscape_cli call that made it ran: call "
                         "it again")
    return dict(_ACTIVE["data"])


# --- the data ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """What a call evaluates: the inputs as the model takes them and the targets (on the CPU), and how the commands
    are to cut them into batches (`batches`: a count, or "all" pooled into one value, of `batch_size`)."""

    x: Tensor
    y: Tensor
    name: str  # how titles name it: the dataset's reference, "batches" or "DataLoader"
    dataset: str | None  # the registered dataset (reference) it is a split of; None for batches given in memory
    batches: int | str
    batch_size: int
    split: str
    task: str
    loss: str | None  # the loss named by loss=, else None (the task's)
    num_outputs: int | None

    def factory(self) -> dict[str, Any]:
        out: dict[str, Any] = {"train": (self.x, self.y), "val": (self.x, self.y), "task": self.task}
        if self.num_outputs is not None:
            out["num_outputs"] = self.num_outputs
        return out

    def record(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "name": self.name, "split": self.split, "loss": self.loss}


def _data(data: Data, batches: int | str | None, batch_size: int | None, split: str, loss: str | None,
          data_dir: str | os.PathLike[str] | None, default_batches: int, default_size: int) -> _Data:
    choice(split, SPLITS, "split")
    if loss is not None and not isinstance(loss, str):
        raise UsageError("loss= names the loss: 'cross-entropy' or 'mse'")
    scorer = get_loss(loss) if loss is not None else None
    count = parse_batches(batches) if batches is not None else None
    if isinstance(count, int):
        positive_int(count, "batches")
    if batch_size is not None:
        positive_int(batch_size, "batch_size")
    if isinstance(data, str):  # a registered dataset (or any dataset reference `landscape train` takes)
        source = dataset_source(data)
        loaded = load_dataset(source, data_dir)
        n = count if count is not None else default_batches
        size = batch_size if batch_size is not None else default_size
        whole = n == "all"
        check_batches(1 if whole else int(n), size, whole, split, dataset_record(source, loaded))
        x, y = loaded.split(split)
        if not whole:
            x, y = x[:int(n) * size], y[:int(n) * size]
        scorer = scorer or loss_for_task(loaded.task)
        scorer.check_targets(y, f"dataset {data!r}")
        return _Data(loaded.prepare(x, torch.device("cpu")), y.contiguous(), source.name, data, n, size, split,
                     scorer.task, loss, loaded.num_outputs)
    pairs = _pairs(data, count if count is not None else (None if isinstance(data, (list, tuple)) else default_batches),
                   given=count is not None)
    first = len(pairs[0][0])
    scorer = scorer or loss_for_targets(pairs[0][1])
    for i, (_x, y) in enumerate(pairs):
        scorer.check_targets(y, f"batch {i}")
    if count == "all":
        size = batch_size if batch_size is not None else first
    else:
        sizes = [len(x) for x, _ in pairs]
        if len(set(sizes)) > 1:
            raise UsageError(f"the batches hold different numbers of samples ({', '.join(map(str, sizes))}): give "
                             "batches of one size, or batches='all' to pool them into one value")
        if batch_size is not None and batch_size != first:
            raise UsageError(f"batch_size={batch_size}, but the batches given hold {first} samples each: leave "
                             "batch_size out")
        size = first
    x = torch.cat([x for x, _ in pairs])
    y = torch.cat([y for _, y in pairs])
    name = "batches" if isinstance(data, (list, tuple)) else type(data).__name__
    return _Data(x, y, name, None, "all" if count == "all" else len(pairs), size, split, scorer.task, loss, None)


def _pairs(data: Iterable[Any], count: int | str | None, given: bool = True) -> list[tuple[Tensor, Tensor]]:
    """(inputs, targets) on the CPU from a list of batches, one batch (x, y), or an iterable such as a DataLoader:
    its first `count` ones (every one when None or "all"; `given`: the count is the caller's, not the default)."""
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise UsageError(f"data must be a list of (inputs, targets) batches, a DataLoader or a registered dataset's "
                         f"name, not {type(data).__name__}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        data = [tuple(data)]  # one batch (x, y)
    out = []
    for i, item in enumerate(data):
        if isinstance(count, int) and i >= count:
            break
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UsageError(f"batch {i} is a {type(item).__name__}: each batch must be a pair (inputs, targets)")
        x, y = (torch.as_tensor(t).detach().cpu() for t in item)
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or not len(x):
            raise UsageError(f"batch {i} has {len(x) if x.dim() else 0} inputs and {len(y) if y.dim() else 0} "
                             "targets: the first dimension of both is the sample")
        out.append((x, y))
    if not out:
        raise UsageError("the data holds no batch: give at least one (inputs, targets) pair")
    if isinstance(count, int) and len(out) < count:
        held = f"{len(out)} batch{'es' if len(out) != 1 else ''}"
        if not given:
            raise UsageError(f"the data holds {held}, and its first {count} are taken by default: pass "
                             f"batches={len(out)} (or batches='all' to pool them into one value)")
        raise UsageError(f"batches={count}, but the data holds {held}")
    return out


# --- the private store and one call's run ------------------------------------------------------------------


def _scratch() -> Store:
    """The process's private store (a temporary directory, removed at exit)."""
    if not _SCRATCH:
        import atexit

        path = Path(tempfile.mkdtemp(prefix="landscape-memory-"))
        atexit.register(shutil.rmtree, path, True)
        _SCRATCH.append(path)
    return Store(_SCRATCH[0])


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    """torch's thread count set to `threads` for the block (None: as it is), and restored after; yields it."""
    before = torch.get_num_threads()
    if threads is not None:
        positive_int(threads, "threads")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _device(model: nn.Module) -> torch.device:
    if not isinstance(model, nn.Module):
        raise UsageError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    for p in model.parameters():
        return p.device
    raise UsageError("the model has no parameters: there is no landscape to compute")


def _state(obj: nn.Module | StateDict, what: str) -> dict[str, Tensor]:
    """A state dict (CPU copies) of a model or of a state dict."""
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UsageError(f"{what} must be a state_dict (names to tensors) or an nn.Module")
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@dataclass
class _Call:
    store: Store
    run_id: str
    threads: int
    device: torch.device


@contextlib.contextmanager
def _call(model: nn.Module, data: _Data, states: Sequence[tuple[str, StateDict]], threads: int | None) -> Iterator[_Call]:
    """A private run for one call: `states` ((what, state dict): epochs 0, 1, ...) as its checkpoints, the model and
    data handed out by the in-process factories until the block ends."""
    device = _device(model)
    with _LOCK, _threads(threads) as n:
        session = uuid.uuid4().hex[:16]
        template = copy.deepcopy(model).to("cpu")
        for p in template.parameters():
            p.grad = None
        _ACTIVE.update(session=session, model=template, data=data.factory())
        try:
            st = _scratch()
            model_src = Source("module", type(model).__name__, f"{__name__}:memory_model",
                               origin="a model in memory (this process, one call)")
            data_src = Source("module", data.name, f"{__name__}:memory_data", origin="data in memory (this process, one call)")
            loaded = load_dataset(data_src)
            scorer = get_loss(data.loss) if data.loss is not None else loss_for_task(loaded.task)
            args = {"hparams": {"session": session}}
            net = build(model_src, args)
            check_fits(net.eval(), loaded.train_x[:2], loaded.train_y[:2], scorer, "the model", "the data",
                       {"train": loaded.train_y, "val": loaded.val_y})
            expected = net.state_dict()
            fitted = [_fitted(what, s, expected) for what, s in states]
            epochs = list(range(len(fitted)))
            config = TrainConfig(model_src.name, data_src.name, batch_size=0, optimizer="none", lr=0.0,
                                 model_sha256=session, data_sha256=loaded.sha256, loss=data.loss,
                                 imported=tuple(f"{e}:{checkpoints.state_hash(s)}" for e, s in zip(epochs, fitted,
                                                                                                   strict=True)))
            origins = [{"epoch": e, "file": f"state {e} in memory"} for e in epochs]
            made = write_run(st, config, model_src, args, net, data_src, loaded, scorer, fitted, epochs, origins,
                             name=None, device=device.type, progress=False)
            del net
            yield _Call(st, made.run_id, n, device)
        finally:
            _ACTIVE.clear()


def _fitted(what: str, state: StateDict, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` fitted to the model's state dict (`landscape import`'s rule), or one line saying why it does not fit."""
    try:
        return match_state(dict(state), expected, Path(what))
    except UsageError as e:
        why = str(e).split(": ", 1)[-1].rsplit(": give", 1)[0]
        raise UsageError(f"{what} does not fit the model: {why}: give the weights of a model of its architecture") \
            from None


def _memory_attrs(ds: xr.Dataset, call: _Call, request: dict[str, Any], data: _Data) -> xr.Dataset:
    ds.attrs.update({THREADS_ATTR: call.threads, DEVICE_ATTR: call.device.type, REQUEST_ATTR: request,
                     DATA_ATTR: data.record()})
    return ds


# --- grids ---------------------------------------------------------------------------------------------------


def plane(model: nn.Module, data: Data, *, directions: str = "random", to: nn.Module | StateDict | None = None,
          trajectory: Sequence[nn.Module | StateDict] | None = None, width: int = GridRequest.width,
          span: float | None = None, range: tuple[float, float] | None = None,
          yrange: tuple[float, float] | None = None, pairs: int | None = None, seed: int | None = None,
          norm: str | None = None, perturb_biasbn: bool = False, layer: str | Sequence[str] | None = None,
          single_kernel: bool = False, bn: str | None = None, batches: int | str | None = None,
          batch_size: int | None = None, split: str = "train", loss: str | None = None, gradient: bool = True,
          precision: str = "fp32", points_per_pass: int | None = None, threads: int | None = None,
          metrics: Sequence[str | Callable[..., Any]] | None = None,
          data_dir: str | os.PathLike[str] | None = None, progress: bool = False) -> xr.Dataset:
    """The loss (and accuracy) of `model` over a plane of its weights around them, as an xarray Dataset shaped
    like a stored grid's (`landscape_cli.open`): `loss`, `accuracy` [epoch, pair, batch, y, x], the centre's
    values and projected gradients, `done`...; `ds.landscape.plot()` draws it, `stats(ds)` measures it.

    `directions`: ``random`` (default: `pairs` seeded Gaussian pairs, 3 by default, filter-normalized against the
    weights, biases and BatchNorm parameters left put unless `perturb_biasbn`), ``pca`` (the top two principal
    components of `trajectory`, the state dicts or models of training in order, centred at the model's weights:
    its last point, appended when it is not the model's), or ``hessian`` (the top two Hessian eigenvectors of the
    loss, scaled by the norm of the weights). An interpolation is a line (`line`). Every other option is `landscape
    grid`'s, with its defaults (`width` 41 points per axis over `span` ±1, or `range`/`yrange`; `bn` "train":
    batch statistics); `batches`/`batch_size` cut a registered dataset's split (default 3 of 256) or a
    DataLoader (default its first 3); a list of batches is taken whole (one value per batch), or pooled into one
    value with batches="all". `threads` sets torch's thread count for the call (restored after; recorded in
    the result's `threads` attribute). `metrics`: functions `(outputs, targets) -> number` of a batch (or
    `module:function` references), each stored as a variable named after the function beside `loss`.
    """
    if directions == "interpolate":
        raise UsageError("an interpolation is a line: landscape_cli.line(model, data, directions='interpolate', to=...)")
    return _grid(model, data, 2, directions=directions, to=to, trajectory=trajectory, width=width, span=span,
                 range=range, yrange=yrange, pairs=pairs, seed=seed, norm=norm, perturb_biasbn=perturb_biasbn,
                 layer=layer, single_kernel=single_kernel, bn=bn, batches=batches, batch_size=batch_size, split=split,
                 loss=loss, gradient=gradient, precision=precision, points_per_pass=points_per_pass, threads=threads,
                 metrics=metrics, data_dir=data_dir, progress=progress)


def line(model: nn.Module, data: Data, *, directions: str = "random", to: nn.Module | StateDict | None = None,
         trajectory: Sequence[nn.Module | StateDict] | None = None, width: int = GridRequest.width,
         span: float | None = None, range: tuple[float, float] | None = None, pairs: int | None = None,
         seed: int | None = None, norm: str | None = None, perturb_biasbn: bool = False,
         layer: str | Sequence[str] | None = None, single_kernel: bool = False, bn: str | None = None,
         batches: int | str | None = None, batch_size: int | None = None, split: str = "train",
         loss: str | None = None, gradient: bool = True, precision: str = "fp32", points_per_pass: int | None = None,
         threads: int | None = None, metrics: Sequence[str | Callable[..., Any]] | None = None,
         data_dir: str | os.PathLike[str] | None = None, progress: bool = False) -> xr.Dataset:
    """The loss of `model` along a line, as a stored line's Dataset (`loss` [epoch, pair, batch, x]).

    `directions`: ``random`` (each pair's first direction: the middle row of the plane with the same seed),
    ``interpolate`` (the line (1 − t)·w + t·w_to from the model's weights to `to`, a state dict or a model of the
    same architecture: t = 0 and t = 1 are the two exactly; default range t in [-0.5, 1.5]), ``pca`` or
    ``hessian`` (the first component or eigenvector). The options are `plane`'s.
    """
    return _grid(model, data, 1, directions=directions, to=to, trajectory=trajectory, width=width, span=span,
                 range=range, yrange=None, pairs=pairs, seed=seed, norm=norm, perturb_biasbn=perturb_biasbn,
                 layer=layer, single_kernel=single_kernel, bn=bn, batches=batches, batch_size=batch_size, split=split,
                 loss=loss, gradient=gradient, precision=precision, points_per_pass=points_per_pass, threads=threads,
                 metrics=metrics, data_dir=data_dir, progress=progress)


def _grid(model: nn.Module, data: Data, dims: int, *, directions: str, to: nn.Module | StateDict | None,
          trajectory: Sequence[nn.Module | StateDict] | None, batches: int | str | None, batch_size: int | None,
          split: str, loss: str | None, threads: int | None, data_dir: str | os.PathLike[str] | None,
          progress: bool, layer: str | Sequence[str] | None, metrics: Sequence[str | Callable[..., Any]] | None,
          **options: Any) -> xr.Dataset:
    choice(directions, KINDS, "directions")
    resolved = tuple(resolve_all(metrics)) if metrics else None
    if (to is not None) != (directions == "interpolate"):
        raise UsageError("to= is where an interpolation ends: give it with directions='interpolate' (and only then)")
    if (trajectory is not None) != (directions == "pca"):
        raise UsageError("trajectory= (the state dicts of training, in order) defines the PCA directions: give it "
                         "with directions='pca' (and only then)")
    states = [("the model", _state(model, "model"))]
    epochs: tuple[int, ...] | None = (0,)
    to_epoch = None
    if to is not None:
        states.append(("to=", _state(to, "to")))
        to_epoch = 1
    if trajectory is not None:
        path = [(f"trajectory[{i}]", _state(s, f"trajectory[{i}]")) for i, s in enumerate(trajectory)]
        if not path or checkpoints.state_hash(path[-1][1]) != checkpoints.state_hash(states[0][1]):
            path.append(states[0])  # the plane is centred at the model: the path's last point
        states, epochs = path, None  # every checkpoint: the trajectory
        if len(states) < MIN_CHECKPOINTS:
            raise UsageError(f"directions='pca' needs a trajectory of at least {MIN_CHECKPOINTS} states (the model's "
                             f"weights last), got {len(states)}")
    d = _data(data, batches, batch_size, split, loss, data_dir, int(GridRequest.batches), GridRequest.batch_size)
    chosen = layer if layer is None or isinstance(layer, str) else tuple(layer)
    request = GridRequest(epochs=epochs, directions=directions, dims=dims, batches=d.batches, batch_size=d.batch_size,
                          split=split, to_epoch=to_epoch, layer=chosen, metrics=resolved, **options)
    with _call(model, d, states, threads) as call:
        made = compute_grid(call.run_id, request, Runtime(device=call.device.type, progress=progress, store=call.store))
        ds = open_grid(made.run_id, grid=made.grid_id, store=call.store).load()
    return _memory_attrs(ds, call, _request_json(request), d)


def _request_json(request: GridRequest) -> dict[str, Any]:
    out = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    if request.metrics:  # functions are recorded by reference (module:function)
        out["metrics"] = [m.ref.ref if isinstance(m, Metric) else str(m) for m in request.metrics]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _request(recorded: dict[str, Any]) -> GridRequest:
    fields = {f.name for f in dataclasses.fields(GridRequest)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in fields}
    return GridRequest(**values)


# --- curvature -----------------------------------------------------------------------------------------------


def hessian(model: nn.Module, data: Data, *, top: int = HessianConfig.top, batches: int | str | None = None,
            batch_size: int | None = None, split: str = "train", bn: str = HessianConfig.bn,
            perturb_biasbn: bool = False, layer: str | Sequence[str] | None = None, tol: float = HessianConfig.tol,
            probes: int = HessianConfig.probes, density: bool = False,
            density_probes: int = HessianConfig.density_probes, steps: int = HessianConfig.density_steps,
            bins: int = HessianConfig.bins, seed: int = HessianConfig.seed, loss: str | None = None,
            threads: int | None = None, data_dir: str | os.PathLike[str] | None = None,
            progress: bool = False) -> xr.Dataset:
    """The Hessian of `model`'s loss on the data at its weights, as stored curvature results' Dataset (`landscape
    hessian`): `eigenvalues` and their `residual`/`converged` [epoch, k] (the `top` largest, descending; Lanczos on
    Hessian-vector products), `lambda_min`, `convexity` (|λmin/λmax|), `trace` (Hutchinson, `probes` probes) with
    `trace_stderr`, and with `density` the spectral density `density` over `density_lambda` [epoch, bin]
    (stochastic Lanczos quadrature, `density_probes` probes of `steps` steps). The Hessian is that of the mean of
    the batches' losses over the parameters a grid moves (biases and BatchNorm's with `perturb_biasbn`; `layer`
    names or patterns). `eigenvectors(result)` gives the top eigenvectors. Options otherwise as `plane`'s.
    """
    d = _data(data, batches, batch_size, split, loss, data_dir, HessianConfig.batches, HessianConfig.batch_size)
    chosen = layer if layer is None or isinstance(layer, str) else list(layer)
    request: dict[str, Any] = {"top": top, "batches": d.batches, "batch_size": d.batch_size, "split": split, "bn": bn,
               "perturb_biasbn": perturb_biasbn, "layer": chosen, "tol": tol, "probes": probes, "density": density,
               "density_probes": density_probes, "steps": steps, "bins": bins, "seed": seed}
    with _call(model, d, [("the model", _state(model, "model"))], threads) as call:
        made = hessian_results(call.run_id, epochs=[0], device=call.device.type, store=call.store, progress=progress,
                               **request)
        ds = made.to_xarray().load()
    ds.attrs.update({STORE_ATTR: str(call.store.root), RUN_ATTR: made.run_id, HESSIAN_ATTR: made.hessian_id})
    return _memory_attrs(ds, call, request, d)


def eigenvectors(result: xr.Dataset) -> dict[str, dict[str, Tensor]]:
    """The top eigenvectors of a `hessian` result: {"v1": {parameter name: tensor}, "v2": ...} (unit norm over the
    parameters the Hessian is over, float32, in the order of the eigenvalues)."""
    store, run, hid = _hessian_where(result)
    st = Store(store)
    meta = st.read_hessian(run, hid)
    records = [meta.eigenvectors[e] for e in meta.epochs if e in meta.eigenvectors]
    if not records:
        raise UsageError(f"the curvature results {hid} hold no eigenvectors yet")
    record = records[-1]
    vectors = checkpoints.safe_load(st.file(run, record.file), "Hessian eigenvectors")
    return {k: dict(v) for k, v in vectors.items() if k.startswith("v") and isinstance(v, dict)}


def _hessian_where(result: xr.Dataset) -> tuple[Path, str, str]:
    attrs = getattr(result, "attrs", None)
    if not isinstance(attrs, dict) or not attrs.get(HESSIAN_ATTR):
        raise UsageError("not a Hessian result: compute one with landscape_cli.hessian(model, data)")
    return Path(str(attrs[STORE_ATTR])), str(attrs[RUN_ATTR]), str(attrs[HESSIAN_ATTR])


# --- a result's metrics, and keeping it ----------------------------------------------------------------------


def stats(result: xr.Dataset, *, radius: float | None = None, delta: float = DEFAULT_DELTA,
          epochs: Sequence[int] | None = None) -> StatsResult:
    """The metrics `landscape stats` prints of a grid (a `plane` or `line` result, or a Dataset from
    `landscape_cli.open`): per epoch, `.epochs[i]["mean"]` (the mean landscape over pairs and batches) and
    `["panels"]` (each pair and batch): curvature of the quadratic fit and its eigenvalues, ε-sharpness (`radius`
    ε, default the whole grid), flat radius and share below L0 + δ (`delta`), ... (`landscape_cli.curvature.stats`)."""
    if not isinstance(result, xr.Dataset):
        raise UsageError(f"stats measures a grid's Dataset (from plane, line or landscape_cli.open), not "
                         f"{type(result).__name__}")
    if result.attrs.get(HESSIAN_ATTR):
        raise UsageError("stats measures a grid: a Hessian result holds its numbers already (eigenvalues, lambda_min, "
                         "trace)")
    store, run, grid = result.landscape.where
    return grid_stats(run, grid=grid, epochs=epochs, radius=radius, delta=delta, store=store)


def save_to(result: xr.Dataset, store: Store | str | os.PathLike[str] | None = None, *,
            model_factory: str | Callable[..., nn.Module] | None = None, name: str | None = None,
            activation: str = TrainConfig.activation, data_dir: str | os.PathLike[str] | None = None,
            progress: bool = False) -> GridResult | HessianResult:
    """Keep a result of `plane`, `line` or `hessian` in `store` (default: $LANDSCAPE_STORE, else ./runs): its
    weights imported as a run (`landscape import MODEL DATASET ... --epochs 0[,1...]`, named `name`) and the same
    grid or curvature results computed there by `landscape grid` / `landscape hessian` (with the thread count the
    result was computed with: the same numbers), so they have exactly the ids and values the CLI gives.

    `model_factory` rebuilds the model in later processes: a built-in model's name ('cnn'; `activation` as it was
    built with), 'pkg.module:factory' or './file.py:factory' (called with input_shape and num_outputs, as for
    `landscape train`), or that function itself when it can be imported by its module and name. The result must
    be of a registered dataset's split (a run records the data it is scored on). Returns the grid's (or the
    curvature results') `GridResult` / `HessianResult`."""
    attrs = getattr(result, "attrs", None)
    if not isinstance(attrs, dict) or REQUEST_ATTR not in attrs or DATA_ATTR not in attrs:
        raise UsageError("save_to keeps a result of landscape_cli.plane, line or hessian (a grid opened from a store "
                         "is in that store already)")
    ref = _factory_ref(model_factory)
    data = dict(attrs[DATA_ATTR])
    if not data.get("dataset"):
        raise UsageError("this result was computed on batches in memory, and a run records the data it is scored on: "
                         "compute it on a registered dataset's split (data='digits', ...) to save it")
    scratch = Store(Path(str(attrs[STORE_ATTR])))
    run = scratch.read_run(str(attrs[RUN_ATTR]))
    epochs = [r.epoch for r in run.epochs]
    recorded = dict(attrs[REQUEST_ATTR])
    with tempfile.TemporaryDirectory(prefix="landscape-save-") as tmp, _threads(int(attrs[THREADS_ATTR])):
        device = str(attrs.get(DEVICE_ATTR, "auto"))
        _check_factory(ref, activation, data, recorded, scratch, run.id, device, data_dir)
        files: list[str | os.PathLike[str]] = []
        for r in run.epochs:
            path = Path(tmp) / f"epoch-{r.epoch}.pt"
            torch.save(checkpoints.load_epoch(scratch, run.id, r)["state_dict"], path)
            files.append(path)
        imported = import_run(ref, str(data["dataset"]), files, epochs=epochs, activation=activation,
                              loss=data.get("loss"), device=device, name=name, store=store, data_dir=data_dir,
                              progress=progress)
        if attrs.get(HESSIAN_ATTR):
            return hessian_results(imported.run_id, epochs=[0], device=device, store=store, data_dir=data_dir,
                                   progress=progress, **recorded)
        return compute_grid(imported.run_id, _request(recorded),
                            Runtime(device=device, data_dir=data_dir, progress=progress, store=store))


def _check_factory(ref: str, activation: str, data: dict[str, Any], recorded: dict[str, Any], scratch: Store,
                   run_id: str, device: str, data_dir: str | os.PathLike[str] | None) -> None:
    """Refuse, before anything is written, a factory whose model computes other values with the result's weights
    than the model in memory did: its loss on the result's data at the first checkpoint, as the private run
    recorded it (the import's own evaluation: the same device and threads give the same number)."""
    run = scratch.read_run(run_id)
    record = run.epochs[0]
    if record.checkpoint_train_loss is None:
        return
    source = model_source(ref)
    registered = load_dataset(dataset_source(str(data["dataset"])), data_dir)
    try:
        net = build(source, model_args(source, registered, activation))
        net.load_state_dict(checkpoints.load_epoch(scratch, run_id, record)["state_dict"])
    except (RuntimeError, TypeError, ValueError, UsageError):
        return  # a model the weights do not fit: the import says so in one line
    d = _data(str(data["dataset"]), recorded["batches"], recorded["batch_size"], str(data["split"]), data.get("loss"),
              data_dir, HessianConfig.batches, HessianConfig.batch_size)
    info = DatasetInfo(d.name, 0, 0, d.num_outputs or 0, (), (), "", True)
    mine = Dataset(info, d.x, d.y, d.x, d.y, task=d.task, num_outputs=d.num_outputs or 0, images=False)
    scorer = get_loss(d.loss) if d.loss is not None else loss_for_task(d.task)
    loss, _ = evaluate_split(net.to(select_device(device)), mine, "train", select_device(device), scorer=scorer)
    expected = record.checkpoint_train_loss
    if not abs(loss - expected) <= 1e-5 * max(abs(expected), 1e-12):
        raise UsageError(f"the model model_factory={ref!r} builds computes another loss with the result's weights "
                         f"({loss:.6g}, in memory {expected:.6g}): give the factory that builds the model in memory (a "
                         "built-in model: with the activation it was built with)")


def _factory_ref(model_factory: str | Callable[..., nn.Module] | None) -> str:
    """The model reference a run records (what `landscape import` takes) for `model_factory`."""
    if model_factory is None:
        raise UsageError("this result's model exists only in memory, and a run must rebuild its model in later "
                         "processes: give save_to(..., model_factory='pkg.module:factory') (or './file.py:factory', "
                         "or a built-in model's name such as 'cnn')")
    if isinstance(model_factory, str):
        return model_factory
    module = getattr(model_factory, "__module__", None)
    qualname = getattr(model_factory, "__qualname__", "")
    if not callable(model_factory) or not module or module == "__main__" or not qualname or "<" in qualname \
            or "." in qualname:
        where = "the notebook (__main__)" if module == "__main__" else "no importable module"
        raise UsageError(f"model_factory={qualname or model_factory!r} is defined in {where}: a later process cannot "
                         "import it; put it in a module or file and give 'pkg.module:factory' or './file.py:factory'")
    return f"{module}:{qualname}"
