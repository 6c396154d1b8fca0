"""Random directions (the `random` kind): drawn once per run, normalized against each epoch's weights.

A *raw* direction pair is a seeded Gaussian draw over every parameter of the model; it is defined
by (kind, seed, pair index, parameter names and shapes) and stored content-addressed in the run
directory, so every grid that asks for the same directions (any epoch, any zoom, any layer) uses
the same draw. *Normalizing* it against one epoch's weights (Li et al.'s filter normalization and
its variants) and masking it (bias/BatchNorm, one layer, one kernel) is cheap and done per grid.

A grid whose --layer is a pattern (or several) stores only its *subspace*: the same seeded draw over
every parameter, of which only the selected tensors are kept (the same values as the full draw's,
fewer bytes), addressed by the spec plus a hash of the kept names and shapes. Grids made with one
exact --layer name, or none, keep using the full draw.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
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


def direction_spec(shapes: Mapping[str, tuple[int, ...]], seed: int, pair: int,
                   subspace: Sequence[str] | None = None) -> dict[str, Any]:
    """What defines a raw random pair (over every parameter, or only the `subspace` of a --layer pattern grid);
    its short hash is the direction id."""
    spec: dict[str, Any] = {"kind": "random-normal", "seed": seed, "pair": pair,
                            "parameters": short_hash(parameter_signature(shapes))}
    if subspace is not None:
        spec["subspace"] = short_hash(parameter_signature(_restricted(shapes, subspace)))
    return spec


def _restricted(shapes: Mapping[str, tuple[int, ...]], names: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """`shapes` of `names` only, in the model's order."""
    keep = set(names)
    return {n: s for n, s in shapes.items() if n in keep}


def direction_id(spec: dict[str, Any]) -> str:
    return short_hash(spec)


def draw_random(shapes: Mapping[str, tuple[int, ...]], seed: int, pair: int,
                keep: Iterable[str] | None = None) -> tuple[Direction, Direction]:
    """Two standard-normal directions over every parameter, reproducible from (seed, pair).

    With `keep`, only those parameters are returned, with the very values of the full draw: every tensor is
    still drawn, in the model's order, so the generator advances as it does for the full draw (the others are
    dropped as soon as they are drawn, so at most one of them is held at a time).
    """
    kept = None if keep is None else set(keep)
    out = []
    for axis in (0, 1):
        digest = hashlib.sha256(f"landscape-direction:{seed}:{pair}:{axis}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        drawn: Direction = {}
        for name, shape in shapes.items():
            t = torch.randn(shape, generator=g)
            if kept is None or name in kept:
                drawn[name] = t
        out.append(drawn)
    return out[0], out[1]


def ensure_stored(store: Store, run_id: str, shapes: Mapping[str, tuple[int, ...]], seed: int,
                  pair: int, subspace: Sequence[str] | None = None) -> DirectionRecord:
    """Store the raw pair for (seed, pair) in the run unless it is there; its record (pair, id, file, sha256).
    With `subspace` (a --layer pattern grid's parameters), the file holds only those tensors of the draw.

    A stored file is written once (created exclusively), so concurrent grids never replace each
    other's, and an existing file is checked against the hash recorded when it was made.
    """
    spec = direction_spec(shapes, seed, pair, subspace)
    did = direction_id(spec)

    def write(f: IO[bytes]) -> None:  # drawn only when the file is new
        d1, d2 = draw_random(shapes, seed, pair, keep=subspace)
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
    """The file holds the pair `spec` defines: over every parameter of `shapes`, or (a spec with a `subspace`)
    over the tensors whose names and shapes that hash names."""
    problem = IntegrityError(f"{path} does not hold the directions its name says: delete it and rerun the grid")
    if obj.get("spec") != spec or not isinstance(obj.get("d1"), dict) or not isinstance(obj.get("d2"), dict):
        raise problem
    held = {n: tuple(t.shape) for n, t in obj["d1"].items()}
    if {n: tuple(t.shape) for n, t in obj["d2"].items()} != held:
        raise problem
    if "subspace" in spec:
        expected = _restricted(shapes, held)
        if expected != held or short_hash(parameter_signature(expected)) != spec["subspace"]:
            raise problem
    elif list(held.values()) != [tuple(s) for s in shapes.values()]:
        raise problem


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
        subspace = ctx.names if cfg.layers is not None else None  # a pattern grid stores only what it moves
        records = [ensure_stored(ctx.store, ctx.run.id, ctx.shapes, cfg.seed, p, subspace) for p in range(cfg.pairs)]
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
