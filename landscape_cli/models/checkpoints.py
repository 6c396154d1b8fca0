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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape_cli._io import atomic_file, check_hash
from landscape_cli.errors import GridStateError, IntegrityError
from landscape_cli.models import build
from landscape_cli.plugins import Source
from landscape_cli.store import Store
from landscape_cli.store.meta import EpochRecord

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


def load_epoch(store: Store, run_id: str, record: EpochRecord) -> dict[str, Any]:
    """The checkpoint an epoch record of run.json names, checked against its recorded hash."""
    if record.removed:
        raise GridStateError(f"run {run_id}: the checkpoint of {record.label} was removed by the run's retention "
                             "policy (--keep)")
    return load(store.file(run_id, record.checkpoint), record.sha256, f"checkpoint of {record.label}")


def build_model(checkpoint: dict[str, Any]) -> nn.Module:
    """A model with the checkpoint's architecture and weights, in eval mode on the CPU (a factory's
    model: from the factory the checkpoint records, refused if its file changed since)."""
    recorded = checkpoint.get("model_source")
    source = Source.from_json(recorded) if recorded else Source("builtin", checkpoint["model"], checkpoint["model"])
    source.check_unchanged(source.sha256, "model")
    model = build(source, checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


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
