"""Self-describing checkpoints: plain types only, so ``torch.load(weights_only=True)`` reads them.

A checkpoint holds the weights and BatchNorm buffers of one epoch plus what is needed to rebuild
the model (model name and arguments, dataset shape, epoch, training config). The optimizer state
that a resume needs lives in a separate file that is deleted once the next epoch is recorded.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape_cli._io import atomic_file, check_hash
from landscape_cli.errors import GridStateError, IntegrityError, LandscapeError, UsageError
from landscape_cli.models import build, probes
from landscape_cli.plugins import Source, one_line
from landscape_cli.store import Store
from landscape_cli.store.meta import EpochRecord, RunMeta

FORMAT = "landscape-checkpoint/1"


def save(path: Path, obj: dict[str, Any]) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def make_checkpoint(model: nn.Module, model_meta: dict[str, Any], dataset: dict[str, Any],
                    config: dict[str, Any], epoch: int, step: int | None = None) -> dict[str, Any]:
    # Rebuilt from JSON so that the pickled bytes depend only on the values, not on which Python
    # objects happen to be shared (a resumed run reads its metadata from disk, a fresh one does not).
    meta = json.loads(json.dumps({
        "format": FORMAT,
        "model": model_meta["name"],
        "model_args": model_meta["args"],
        **({"model_source": model_meta["source"]} if model_meta.get("source") else {}),
        "dataset": dataset,
        "epoch": epoch,
        **({"step": step} if step is not None else {}),
        "config": config,
    }))
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return {**meta, "state_dict": state}


def state_hash(state_dict: dict[str, Tensor]) -> str:
    """sha256 of the names, dtypes, shapes and bytes of every tensor: equal iff the weights are bitwise equal.

    (The checkpoint file's own hash also covers a random id that torch.save writes into every file.)
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load(path: Path, sha256: str | None = None, what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint (refusing it if it no longer matches its recorded hash)."""
    if sha256 is not None:
        check_hash(path, sha256, what)
    obj: dict[str, Any] = safe_load(path, what)
    return obj


def safe_load(path: Path, what: str, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` of a file the store wrote: a file that is not one (replaced by a pickle
    that would need arbitrary code, or not a torch file at all) is one IntegrityError line, never unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        reason = " ".join(str(e).split())
        if "Unsupported global" in reason or "weights_only" in reason.lower():
            reason = reason.split(". ")[0].split("Unsupported global:")[-1].strip()
            reason = f"it holds objects that only arbitrary code could rebuild ({reason[:120]})"
        raise IntegrityError(
            f"{what} {path} is not a weights-only file the store wrote: {reason}; it was replaced or damaged: "
            "run `landscape verify`, restore it from a backup or make it again"
        ) from e


PROBE = "landscape_probe"  # the key under which `load_epoch` hands `build_model` the checkpoint's probe record


@dataclass(frozen=True)
class ProbeCheck:
    """What `build_model` checks a rebuilt model against: the probe record of a checkpoint of a run (its samples
    are read, and checked against their sha256, only when the model is rebuilt)."""

    store: Store
    run_id: str
    record: EpochRecord


def load_epoch(store: Store, run_id: str, record: EpochRecord) -> dict[str, Any]:
    """The checkpoint an epoch record of run.json names, checked against its recorded hash; where the record holds
    what the model computed on the run's probe samples, `build_model` checks the rebuilt model against it."""
    if record.removed:
        raise GridStateError(f"run {run_id}: the checkpoint of {record.label} was removed by the run's retention "
                             "policy (--keep)")
    checkpoint = load(store.file(run_id, record.checkpoint), record.sha256, f"checkpoint of {record.label}")
    if record.probe is not None and isinstance(checkpoint, dict):
        checkpoint[PROBE] = ProbeCheck(store, run_id, record)
    return checkpoint


def build_model(checkpoint: dict[str, Any]) -> nn.Module:
    """A model with the checkpoint's architecture and weights, in eval mode on the CPU.

    The single point where a command rebuilds a run's model: a checkpoint whose record holds probe outputs (runs made
    since they are recorded, `models.probes`) is evaluated on the run's probe samples first, and refused in one line
    when it computes other outputs than it did when the checkpoint was made (whatever changed: the factory's file, a
    module it imports, a library); a checkpoint of an earlier run is refused, as before, when the file defining its
    factory changed since the run was made."""
    source = _source(checkpoint)
    check = checkpoint.get(PROBE)
    if not isinstance(check, ProbeCheck):
        source.check_unchanged(source.sha256, "model")
        model = build(source, checkpoint["model_args"])
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()
    rebuilt, refusal = _rebuilt(checkpoint, source, check)
    if refusal is not None or rebuilt is None:
        raise UsageError(f"{refusal[0]}: {refusal[1]}" if refusal else "the model cannot be rebuilt")
    return rebuilt


def _source(checkpoint: dict[str, Any]) -> Source:
    recorded = checkpoint.get("model_source")
    return Source.from_json(recorded) if recorded else Source("builtin", checkpoint["model"], checkpoint["model"])


def _rebuilt(checkpoint: dict[str, Any], source: Source,
             check: ProbeCheck) -> tuple[nn.Module | None, tuple[str, str] | None]:
    """The model rebuilt and checked on the probes, or (None, (what is wrong, what to do))."""
    what = _model_words(source)
    where = f"the checkpoint of {check.record.label} of run {check.run_id}"
    fix = _fix(source)
    try:
        model = build(source, checkpoint["model_args"])
    except LandscapeError:
        raise
    except Exception as e:  # the user's factory fails now
        return None, (f"{what} fails to build the model of {where} ({one_line(e)})", fix)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        return None, (f"{what} no longer builds the architecture of {where} ({detail[:160]})", fix)
    model.eval()
    assert check.record.probe is not None
    inputs = probes.read_inputs(check.store, check.run_id, check.record.probe.inputs)
    try:
        found = probes.compare(model, inputs.inputs, check.record.probe)
    except LandscapeError:
        raise
    except Exception as e:  # the model no longer runs on the samples it ran on when the run was made
        return None, (f"{what} fails on the run's probe samples with {where} ({one_line(e)})", fix)
    if found is None:
        return model, None
    detail = found.describe() if isinstance(found, probes.Difference) else found
    return None, (f"{what} computes other outputs than when the run was made: {where} gives {detail}", fix)


def _model_words(source: Source) -> str:
    if source.builtin:
        return f"the built-in model {source.ref!r}"
    if source.file is None:
        return f"the model {source.ref!r}"
    return f"the model factory {source.ref!r}"


def _fix(source: Source) -> str:
    if source.file is not None:
        return ("its code changed since (the file or a module it imports): restore it, or train (or import) a new run "
                "with it")
    return ("this landscape, torch or transformers computes it otherwise than the releases that made the run "
            "(run.json records their versions): use those, or train (or import) a new run")


def behaviour_problem(store: Store, meta: RunMeta) -> tuple[str, str, str] | None:
    """For `landscape verify`: (where, what is wrong, what to do) for the first checkpoint of the run whose model,
    rebuilt now, no longer computes on the run's probe samples what it did when it was made; None where every one
    agrees. Checkpoints without probe records, removed ones, and those whose files are damaged (which verify reports
    by their hashes) are passed over."""
    for record in meta.epochs:
        if record.removed or record.probe is None:
            continue
        try:
            checkpoint = load_epoch(store, meta.id, record)
        except IntegrityError:  # a damaged checkpoint: reported by its hash
            continue
        source = _source(checkpoint)
        try:
            _, refusal = _rebuilt(checkpoint, source, checkpoint[PROBE])
        except IntegrityError:  # a damaged probe-samples file: reported by its hash
            continue
        except LandscapeError as e:  # the model cannot be built at all (its file gone, an import failing)
            return source.file or str(store.run_file(meta.id)), str(e), _fix(source)
        if refusal is not None:
            return source.file or str(store.run_file(meta.id)), refusal[0], refusal[1]
    return None


CURVE_FORMAT = "landscape-curve/1"


def make_bends(bends: list[dict[str, Tensor]], epoch: int, curve_id: str) -> dict[str, Any]:
    """A curve's bends after `epoch` as a weights_only-loadable file: {"format", "curve", "epoch", "bends": [one
    dict of parameter tensors (by the model's parameter names) per bend, in order]}. BatchNorm buffers are not
    part of a curve: its statistics are recomputed at each evaluated t."""
    return {"format": CURVE_FORMAT, "curve": curve_id, "epoch": epoch,
            "bends": [{k: v.detach().to("cpu", copy=True).contiguous() for k, v in b.items()} for b in bends]}


def bends_hash(bends: list[dict[str, Tensor]]) -> str:
    """sha256 over every bend's tensors (as `state_hash`): equal iff the bends are bitwise equal."""
    digest = hashlib.sha256()
    for b in bends:
        digest.update(state_hash(b).encode())
    return digest.hexdigest()


def load_bends(path: Path, sha256: str | None, what: str) -> list[dict[str, Tensor]]:
    """The bends of a curve file (checked against its recorded hash; refused if it is not a curve file)."""
    obj = load(path, sha256, what)
    if not isinstance(obj, dict) or obj.get("format") != CURVE_FORMAT or not isinstance(obj.get("bends"), list):
        raise IntegrityError(f"{what} {path} is not a curve file the store wrote (damaged): run `landscape verify`")
    return list(obj["bends"])
