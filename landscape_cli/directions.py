"""Direction vectors in parameter space: drawn once, normalized against each epoch's weights.

A *raw* direction pair is a seeded Gaussian draw over every parameter of the model; it is defined
by (kind, seed, pair index, parameter names and shapes) and stored content-addressed in the run
directory, so every grid that asks for the same directions (any epoch, any zoom, any layer) uses
the same draw. *Normalizing* it against one epoch's weights (Li et al.'s filter normalization and
its variants) and masking it (bias/BatchNorm, one layer, one kernel) is cheap and done per grid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._io import check_hash, create_once, file_sha256, read_json, short_hash, write_json
from .config import NORMS
from .errors import IntegrityError, UnknownNameError, UsageError
from .meta import DirectionRecord
from .store import Store, direction_name

FORMAT = "landscape-directions/1"
Direction = dict[str, Tensor]


def parameter_signature(shapes: Mapping[str, tuple[int, ...]]) -> list[list[Any]]:
    return [[name, list(shape)] for name, shape in shapes.items()]


def direction_spec(shapes: Mapping[str, tuple[int, ...]], seed: int, pair: int) -> dict[str, Any]:
    """What defines a raw random pair; its short hash is the direction id."""
    return {"kind": "random-normal", "seed": seed, "pair": pair,
            "parameters": short_hash(parameter_signature(shapes))}


def direction_id(spec: dict[str, Any]) -> str:
    return short_hash(spec)


def draw_random(shapes: Mapping[str, tuple[int, ...]], seed: int, pair: int) -> tuple[Direction, Direction]:
    """Two standard-normal directions over every parameter, reproducible from (seed, pair)."""
    out = []
    for axis in (0, 1):
        digest = hashlib.sha256(f"landscape-direction:{seed}:{pair}:{axis}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        out.append({name: torch.randn(shape, generator=g) for name, shape in shapes.items()})
    return out[0], out[1]


def ensure_stored(store: Store, run_id: str, shapes: Mapping[str, tuple[int, ...]], seed: int,
                  pair: int) -> DirectionRecord:
    """Store the raw pair for (seed, pair) in the run unless it is there; its record (pair, id, file, sha256).

    A stored file is written once (created exclusively), so concurrent grids never replace each
    other's, and an existing file is checked against the hash recorded when it was made.
    """
    spec = direction_spec(shapes, seed, pair)
    did = direction_id(spec)
    name = direction_name(did)
    path = store.file(run_id, name)
    sidecar = path.with_suffix(".json")
    if not path.exists():
        d1, d2 = draw_random(shapes, seed, pair)
        created = create_once(path, lambda f: torch.save({"format": FORMAT, "spec": spec, "d1": d1, "d2": d2}, f))
        del d1, d2
        if created:
            write_json(sidecar, {"id": did, "spec": spec, "sha256": file_sha256(path)})
    sha = file_sha256(path)
    if sidecar.exists():
        check_hash(path, read_json(sidecar)["sha256"], f"direction pair {pair} ({did})")
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    _check_loaded(obj, spec, shapes, path)
    return DirectionRecord(pair, did, name, sha)


def load_recorded(store: Store, run_id: str, record: DirectionRecord, shapes: Mapping[str, tuple[int, ...]],
                  ) -> dict[str, Direction]:
    """A raw pair a grid recorded ({"d1": ..., "d2": ...}), refused if the file no longer matches its hash.

    The tensors are memory-mapped: pop each direction once normalized and its pages are released.
    """
    path = store.file(run_id, record.file)
    check_hash(path, record.sha256, f"direction pair {record.pair} ({record.id})")
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    _check_loaded(obj, obj.get("spec", {}), shapes, path)
    return {"d1": obj["d1"], "d2": obj["d2"]}


def _check_loaded(obj: dict[str, Any], spec: dict[str, Any], shapes: Mapping[str, tuple[int, ...]],
                  path: Path) -> None:
    if obj.get("spec") != spec or [tuple(t.shape) for t in obj["d1"].values()] != [tuple(s) for s in shapes.values()]:
        raise IntegrityError(f"{path} does not hold the directions its name says: delete it and rerun the grid")


# --- normalization and masks ----------------------------------------------------------------------


def is_bias_or_bn(tensor: Tensor) -> bool:
    """Biases and BatchNorm weights: the 1-D parameters (Li et al.'s `ignore='biasbn'` rule)."""
    return tensor.dim() <= 1


def perturbed_names(weights: Mapping[str, Tensor], *, perturb_biasbn: bool = False,
                    layer: str | None = None, single_kernel: bool = False) -> list[str]:
    """The parameters a grid moves, checking --layer / --single-kernel against the model."""
    if layer is not None:
        if layer not in weights:
            raise UnknownNameError(
                f"unknown --layer {layer!r}: choose one of {', '.join(weights)} (`landscape layers RUN` lists them)"
            )
        if is_bias_or_bn(weights[layer]) and not perturb_biasbn:
            raise UsageError(f"--layer {layer} is a bias or BatchNorm parameter: add --perturb-biasbn to perturb it")
        names = [layer]
    else:
        names = [n for n, w in weights.items() if perturb_biasbn or not is_bias_or_bn(w)]
    if single_kernel and (layer is None or weights[layer].dim() != 4):
        raise UsageError("--single-kernel needs --layer naming a convolution weight (a 4-D tensor)")
    return names


def normalize(direction: Mapping[str, Tensor], weights: Mapping[str, Tensor], names: list[str],
              norm: str = "filter", single_kernel: bool = False, like: bool = False) -> Direction:
    """The direction restricted to `names`, scaled against `weights`.

    - filter: each filter (conv output channel, row of a linear weight) rescaled to the norm of the
      same filter of the weights (Li et al. 2018);
    - filter-std: each filter of the Gaussian draw times the standard deviation of that weight filter
      (the reference code's variant);
    - layer: the same per tensor; none: the raw draw.
    1-D parameters (biases, BatchNorm), when perturbed, take the weights themselves as direction,
    as Li et al.'s code does. With `single_kernel`, only the first kernel [0, 0] of the layer moves.
    With `like`, each result has its weight's device, dtype and memory layout (no later copy).
    """
    if norm not in NORMS:
        raise UnknownNameError(f"unknown --norm {norm!r}: choose one of {', '.join(NORMS)}")
    out: Direction = {}
    for name in names:
        d, w = direction[name].float(), weights[name].detach().float().cpu()
        if is_bias_or_bn(w):
            nd = w.clone()
            out[name] = torch.empty_like(weights[name]).copy_(nd) if like else nd
            continue
        if norm == "filter":
            scale = _rows(w).norm(dim=1) / (_rows(d).norm(dim=1) + 1e-10)
            nd = d * scale.view(-1, *[1] * (d.dim() - 1))
        elif norm == "filter-std":
            nd = d * _rows(w).std(dim=1, correction=0).view(-1, *[1] * (d.dim() - 1))
        elif norm == "layer":
            nd = d * (w.norm() / (d.norm() + 1e-10))
        else:
            nd = d.clone()
        if single_kernel:
            mask = torch.zeros_like(nd)
            mask[0, 0] = 1
            nd = nd * mask
        out[name] = torch.empty_like(weights[name]).copy_(nd) if like else nd
    return out


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)
