"""Random directions (the `random` kind): drawn once per run, normalized against each epoch's weights.

A *raw* direction pair is a seeded Gaussian draw over every parameter of the model; it is defined
by (kind, seed, pair index, parameter names and shapes) and stored content-addressed in the run
directory, so every grid that asks for the same directions (any epoch, any zoom, any layer) uses
the same draw. *Normalizing* it against one epoch's weights (Li et al.'s filter normalization and
its variants) and masking it (bias/BatchNorm, one layer, one kernel) is cheap and done per grid.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from landscape_cli._io import check_hash, short_hash
from landscape_cli.directions._registry import DirectionKind, EpochModel, GridContext, Prepared, register_kind
from landscape_cli.directions.normalize import Direction, normalize
from landscape_cli.errors import IntegrityError
from landscape_cli.kernel.evaluate import Slice
from landscape_cli.models.checkpoints import safe_load
from landscape_cli.store import Store
from landscape_cli.store.meta import DirectionRecord, GridMeta

FORMAT = "landscape-directions/1"


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

    def write(f: IO[bytes]) -> None:  # drawn only when the file is new
        d1, d2 = draw_random(shapes, seed, pair)
        torch.save({"format": FORMAT, "spec": spec, "d1": d1, "d2": d2}, f)

    record = store.write_direction(run_id, did, spec, write, f"direction pair {pair} ({did})", pair=pair)
    path = store.file(run_id, record.file)
    obj = safe_load(path, "direction file", mmap=True)
    _check_loaded(obj, spec, shapes, path)
    return record


def load_recorded(store: Store, run_id: str, record: DirectionRecord, shapes: Mapping[str, tuple[int, ...]],
                  ) -> dict[str, Direction]:
    """A raw pair a grid recorded ({"d1": ..., "d2": ...}), refused if the file no longer matches its hash.

    The tensors are memory-mapped: pop each direction once normalized and its pages are released.
    """
    path = store.file(run_id, record.file)
    check_hash(path, record.sha256, f"direction pair {record.pair} ({record.id})")
    obj = safe_load(path, "direction file", mmap=True)
    _check_loaded(obj, obj.get("spec", {}), shapes, path)
    return {"d1": obj["d1"], "d2": obj["d2"]}


def _check_loaded(obj: dict[str, Any], spec: dict[str, Any], shapes: Mapping[str, tuple[int, ...]],
                  path: Path) -> None:
    if obj.get("spec") != spec or [tuple(t.shape) for t in obj["d1"].values()] != [tuple(s) for s in shapes.values()]:
        raise IntegrityError(f"{path} does not hold the directions its name says: delete it and rerun the grid")


@register_kind
class RandomKind(DirectionKind):
    """Li et al.'s random directions: a seeded Gaussian pair per --pairs, filter-normalized per epoch.

    A 1-D grid follows each pair's first direction, so it is exactly the middle row (b = 0) of the
    2-D grid with the same seed.
    """

    name = "random"
    description = "seeded Gaussian directions, drawn once per run and normalized against each epoch (Li et al.)"
    made = "once per run"
    normalized = True
    default_norm = "filter"
    several_pairs = True
    seeded = True
    order = 0

    def prepare(self, ctx: GridContext, checkpoint_loss: Any) -> Prepared:
        cfg = ctx.config
        records = [ensure_stored(ctx.store, ctx.run.id, ctx.shapes, cfg.seed, p) for p in range(cfg.pairs)]
        ranges = [(float(a.lo), float(a.hi)) for a in cfg.axes if a.lo is not None and a.hi is not None]
        return Prepared(records, ranges)

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel, pair: int) -> contextlib.AbstractContextManager[Slice]:
        cfg = ctx.config
        raw = load_recorded(ctx.store, ctx.run.id, meta.directions[pair], ctx.shapes)
        weights = dict(em.model.named_parameters())
        # one raw direction in memory at a time, normalized into the parameters' layout
        dirs = [normalize(raw.pop(key), weights, ctx.names, cfg.norm, cfg.single_kernel, like=True)
                for key in ("d1", "d2")[:cfg.dims]]
        return em.evaluator.affine(dirs)
