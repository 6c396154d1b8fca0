"""Behaviour probes: a run's model identified by what it computes, not only by the file that defines it.

A run records how to rebuild its model (a built-in, a factory, a Hugging Face config), but a factory's file can
import other files, and a release of torch or transformers can change a layer: the file's sha256 alone misses the
first and refuses a mere comment. So when a run is made (`train`, `import`, `import hf:DIR`, the `Recorder`):

- its probe samples are saved once: `SAMPLES` (8) samples of the training split, evenly spaced from the first to
  the last (index i·(n−1)/(k−1), rounded down), as the model takes them (`Dataset.prepare` on the CPU), with their
  indices, in a weights_only file of the run directory named by the sha256 of its bytes (`store.probes_name`);
  each record that uses it holds that sha256, and the file is checked against it whenever it is read;
- every checkpoint records what its model computes on them (`ProbeRecord`, the `probe` of its run.json record):
  `eval`, the outputs in eval mode, and `bn_train`, with the BatchNorm layers in training mode (batch statistics,
  running buffers untouched; only for a model with BatchNorm), every other module in eval mode either way.
  Per sample, the D output values (the output reshaped to [samples, D]) are stored as they are where D <= `WIDTH`
  (16: a classifier of up to 16 classes, a small regression); else as a count sketch of them into `WIDTH` values
  (`sketch` = 16): value k of a sample is the sum, in float64, of s(i)·out[i] over the elements i whose hash h(i)
  is k, with h(i) and the sign s(i) = ±1 taken from splitmix64 of the flat index i (no random generator: the same
  in every release, process and machine). A language model's [T, vocab] logits are so 16 numbers per sample, each
  moved by a change of any of them. At most 8 × 16 values per mode: 256 floats per checkpoint. Values are rounded
  to 7 significant digits (float32's precision); NaN and ±inf are kept as they are. `device` and `dtype` say what
  computed them (the training model's device and its parameters' precision).

A command that rebuilds the model (`checkpoints.build_model`) evaluates it on the CPU in the same way first and
refuses it when a value differs from the recorded one by more than the tolerance: `RTOL_CPU` (1e-4) times the
largest recorded magnitude of that mode where the values were computed on the CPU in float32 or float64 (another
thread count, memory layout or torch release moves them by ~1e-6 of it); `RTOL_OTHER` (2e-2) times it where they
were computed on another device (a GPU's TF32 matmuls and reduction orders) or in a lower precision. A NaN or an
infinite value must be the same now. Evaluating the probes changes nothing of the model (modes, buffers and
requires_grad as they were) nor of any random generator (forked; the CPU generator seeded inside, so a model that
draws random numbers in eval mode gives the same outputs each time), and costs two forward passes of 8 samples.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape_cli._io import atomic_write_bytes, check_hash, file_sha256
from landscape_cli.data import Dataset
from landscape_cli.errors import IntegrityError
from landscape_cli.store import Store, probes_name
from landscape_cli.store.meta import EpochRecord, ProbeRecord

FORMAT = "landscape-probes/1"
SAMPLES = 8  # probe samples per run
WIDTH = 16  # output values per sample stored as they are up to this many; more are sketched into this many
DIGITS = 7  # significant digits kept of each value
RTOL_CPU = 1e-4  # tolerance relative to the largest recorded magnitude: recorded on the CPU in float32/float64
RTOL_OTHER = 2e-2  # recorded on another device, or in a lower precision
SEED = 0  # of the CPU generator during a probe pass (forked: the caller's state is given back)
FULL_PRECISION = ("float32", "float64")


@dataclass(frozen=True)
class ProbeInputs:
    """A run's probe samples: the sha256 of their file and the samples themselves (on the CPU)."""

    sha256: str
    inputs: Tensor


@dataclass(frozen=True)
class Difference:
    """Where a model's outputs on the probes now differ most from the recorded ones, beyond the tolerance."""

    mode: str  # "eval" or "BatchNorm-train"
    sample: int
    index: int  # the value's index within the sample's stored values
    now: float
    then: float
    largest: float  # the largest difference of that mode
    tolerance: float

    def describe(self) -> str:
        return (f"{_num(self.now)} where it gave {_num(self.then)} when it was made ({self.mode} mode, probe sample "
                f"{self.sample}, value {self.index}; largest difference {_num(self.largest)}, tolerance "
                f"{_num(self.tolerance)})")


def _num(x: float) -> str:
    return f"{x:.4g}"


# -- the samples --


def indices(n: int) -> list[int]:
    """The probe samples' indices in a training split of `n` samples: `SAMPLES` evenly spaced, first and last included."""
    k = min(SAMPLES, n)
    return [0] if k == 1 else [i * (n - 1) // (k - 1) for i in range(k)]


def write_inputs(st: Store, run_id: str, data: Dataset) -> ProbeInputs:
    """The run's probe samples, taken from `data`'s training split and saved in the run directory (once: a file
    that holds them already is kept)."""
    chosen = indices(len(data.train_y))
    x = data.prepare(data.train_x[chosen], torch.device("cpu")).detach().contiguous().clone()
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "indices": torch.tensor(chosen, dtype=torch.int64), "inputs": x}, buffer)
    data_bytes = buffer.getvalue()
    sha = hashlib.sha256(data_bytes).hexdigest()
    path = st.file(run_id, probes_name(sha))
    if not (path.is_file() and file_sha256(path) == sha):
        atomic_write_bytes(path, data_bytes)
    return ProbeInputs(sha, x)


def read_inputs(st: Store, run_id: str, sha256: str) -> ProbeInputs:
    """The probe samples a run's records name, checked against their sha256 (IntegrityError, one line, if not)."""
    path = st.file(run_id, probes_name(sha256))
    what = f"the probe samples of run {run_id}"
    check_hash(path, sha256, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise IntegrityError(f"{what} ({path}) cannot be read ({type(e).__name__}): run `landscape verify`") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("inputs"), Tensor):
        raise IntegrityError(f"{what} ({path}) is not a probe-samples file the store wrote: run `landscape verify`")
    return ProbeInputs(sha256, obj["inputs"])


def run_inputs(st: Store, run_id: str, records: list[EpochRecord]) -> ProbeInputs | None:
    """The probe samples a run's checkpoints were recorded with (those of its last record that has any); None for a
    run made before probes were recorded (its later checkpoints record none either)."""
    for record in reversed(records):
        if record.probe is not None:
            return read_inputs(st, run_id, record.probe.inputs)
    return None


# -- the outputs --


def record(model: nn.Module, inputs: ProbeInputs, channels_last: bool = False) -> ProbeRecord | None:
    """What `model` computes on the probe samples now, on its own device (None: its output is no tensor)."""
    device, dtype = _where(model)
    x = _on(inputs.inputs, device, channels_last)
    batchnorm = has_batchnorm(model)
    with kept(model, device):
        out_eval, out_bn = _outputs(model, x, batchnorm)
    if out_eval is None or (batchnorm and out_bn is None):
        return None
    sketch = 0 if _width(out_eval, len(x)) <= WIDTH else WIDTH
    return ProbeRecord(inputs.sha256, device.type, str(dtype).removeprefix("torch."), list(out_eval.shape), sketch,
                       summary(out_eval, len(x), sketch), summary(out_bn, len(x), sketch) if out_bn is not None else None)


def compare(model: nn.Module, inputs: Tensor, recorded: ProbeRecord) -> Difference | str | None:
    """How `model`'s outputs on the probe samples differ from `recorded` beyond the tolerance: a Difference, or a
    sentence where they cannot be compared (another shape, no tensor); None where they agree."""
    device, dtype = _where(model)
    x = _on(inputs, device, False)
    with kept(model, device):
        out_eval, out_bn = _outputs(model, x, recorded.bn_train is not None)
    if out_eval is None or (recorded.bn_train is not None and out_bn is None):
        return "an output that is not a tensor"
    if list(out_eval.shape) != recorded.shape:
        return f"outputs of shape {list(out_eval.shape)} where it gave {recorded.shape} when it was made"
    low = recorded.device != "cpu" or recorded.dtype not in FULL_PRECISION or str(dtype).removeprefix("torch.") \
        not in FULL_PRECISION
    rtol = RTOL_OTHER if low else RTOL_CPU
    modes = [("eval", out_eval, recorded.eval)]
    if recorded.bn_train is not None and out_bn is not None:
        modes.append(("BatchNorm-train", out_bn, recorded.bn_train))
    for mode, out, then in modes:
        found = _difference(mode, summary(out, len(x), recorded.sketch), then, rtol, len(then) // len(x))
        if found is not None:
            return found
    return None


def _difference(mode: str, now: list[float], then: list[float], rtol: float, per_sample: int) -> Difference | None:
    a, b = np.asarray(now, np.float64), np.asarray(then, np.float64)
    if a.shape != b.shape:
        return Difference(mode, 0, 0, float(len(a)), float(len(b)), math.inf, 0.0)
    finite = np.isfinite(b)
    scale = float(np.abs(b[finite]).max()) if finite.any() else 0.0
    tolerance = rtol * max(scale, 1e-30)
    # a non-finite value must be the same non-finite value; a finite one within the tolerance
    same_kind = np.where(finite, np.isfinite(a), (np.isnan(a) & np.isnan(b)) | (a == b))
    diff = np.where(finite & np.isfinite(a), np.abs(a - b), np.where(same_kind, 0.0, math.inf))
    worst = int(np.argmax(diff))
    if diff[worst] <= tolerance:
        return None
    per = max(per_sample, 1)
    return Difference(mode, worst // per, worst % per, float(a[worst]), float(b[worst]), float(diff[worst]),
                      tolerance)


def summary(out: Tensor, samples: int, sketch: int) -> list[float]:
    """The values stored of `out` (see the module's docstring): per sample, its values as they are (`sketch` 0) or
    their count sketch into `sketch` values; rounded to `DIGITS` significant digits."""
    flat = _per_sample(out, samples)
    if sketch:  # the elements of sign +1 summed into columns 0..sketch-1, those of sign -1 into the next ones
        column = _hash(flat.shape[1], sketch)
        halves = torch.zeros(flat.shape[0], 2 * sketch, dtype=torch.float64).index_add_(1, column, flat)
        flat = halves[:, :sketch] - halves[:, sketch:]
    return [_rounded(v) for v in flat.reshape(-1).tolist()]


def _rounded(v: float) -> float:
    return float(f"{v:.{DIGITS}g}") if math.isfinite(v) else v


def _width(out: Tensor, samples: int) -> int:
    return int(_per_sample(out, samples).shape[1])


def _per_sample(out: Tensor, samples: int) -> Tensor:
    flat = out.detach().to("cpu", torch.float64)
    if flat.dim() >= 1 and flat.shape[0] == samples:
        return flat.reshape(samples, -1)
    return flat.reshape(1, -1)


@functools.lru_cache(maxsize=2)
def _hash(d: int, width: int) -> Tensor:
    """The count sketch's bucket h(i) in [0, width) of each of d flat indices, plus `width` where its sign s(i) is
    -1: splitmix64 of i, h(i) its value mod `width`, s(i) from its bit 32."""
    with np.errstate(over="ignore"):
        z = np.arange(d, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    bucket = (z % np.uint64(width)).astype(np.int64)
    negative = ((z >> np.uint64(32)) & np.uint64(1)).astype(np.int64)
    return torch.from_numpy(bucket + width * negative)


# -- evaluating without changing anything --


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@contextlib.contextmanager
def kept(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Every module's mode and BatchNorm setting, every buffer and the random generators given back after the block;
    no gradient recorded in it; the CPU generator seeded inside."""
    modes = {m: (m.training, getattr(m, "track_running_stats", None)) for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.default_generator.manual_seed(SEED)
        try:
            yield
        finally:
            for m, (training, track) in modes.items():
                m.training = training
                if track is not None:
                    m.track_running_stats = track
            for b, saved in buffers:
                b.copy_(saved)


def _outputs(model: nn.Module, x: Tensor, batchnorm: bool) -> tuple[Tensor | None, Tensor | None]:
    """The model's output on `x` in eval mode and (with `batchnorm`) with BatchNorm in training mode (batch
    statistics, running buffers not updated); call it inside `kept`."""
    model.eval()
    out_eval = _tensor(model(x))
    out_bn = None
    if batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
        out_bn = _tensor(model(x))
    return out_eval, out_bn


def _tensor(out: Any) -> Tensor | None:
    """A model's output as a tensor: itself, its `logits` (a transformers output), or the first tensor of a tuple."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return next((t for t in out if isinstance(t, Tensor)), None)
    return None


def _where(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    for b in model.buffers():
        return b.device, torch.float32
    return torch.device("cpu"), torch.float32


def _on(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device)
    if channels_last and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x
