"""The direction-kind registry: how each kind of grid axis is made, stored and evaluated.

A kind is a subclass of `DirectionKind` registered under its `--directions` name. It says

- how its vectors are made (`made`: once per run, once per grid, or per epoch) and whether they
  are normalized against each epoch's weights (`normalized`, `default_norm`);
- what it needs of a configuration (`check`: dims, pairs, options) and its default range;
- what it stores when a grid is created (`prepare`: direction files, the resolved axis ranges,
  extra Zarr arrays such as a PCA path, facts for grid.json);
- how one (epoch, pair) of the grid becomes an evaluator slice (`slice`).

Adding a kind is one module with one registered class, plus its tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from landscape_cli.config import Axis, GridConfig, GridRequest, HessianConfig
from landscape_cli.directions.normalize import perturbed_names
from landscape_cli.errors import UnknownNameError, UsageError
from landscape_cli.kernel.evaluate import Evaluator, Slice
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import ExtraArray, Layout
from landscape_cli.store.meta import DirectionRecord, GridMeta, RunMeta


@dataclass
class GridContext:
    """What a kind needs to know about the grid it serves."""

    store: Store
    run: RunMeta
    config: GridConfig
    shapes: dict[str, tuple[int, ...]]  # every parameter of the model, in the model's order
    names: list[str]  # the parameters the grid moves
    curvature: str | None = None  # the curvature results the engine made sure of (a Hessian grid's eigenvectors)


@dataclass
class Prepared:
    """What a kind made when its grid was created (recorded in grid.json)."""

    directions: list[DirectionRecord]
    ranges: list[tuple[float, float]]  # the resolved [lo, hi] of each axis
    info: dict[str, Any] = field(default_factory=dict)  # facts for grid.json's "kind" (and `extras`)


@dataclass
class EpochModel:
    """One epoch's model, loaded on the grid's device, and its evaluator on the grid's batches."""

    epoch: int
    model: nn.Module
    evaluator: Evaluator


# (epoch) -> (loss [batch], accuracy [batch]) of that checkpoint on the grid's batches, in its BatchNorm mode
CheckpointLoss = Callable[[int], tuple[np.ndarray, np.ndarray]]


class DirectionKind:
    """Base class of the kinds; subclasses set the class attributes and implement `prepare` and `slice`."""

    name: ClassVar[str]
    description: ClassVar[str]
    made: ClassVar[str]  # "once per run" | "once per grid" | "per epoch"
    dims: ClassVar[tuple[int, ...]] = (1, 2)
    normalized: ClassVar[bool] = False  # --norm rescales the vectors against each epoch's weights
    default_norm: ClassVar[str] = "none"
    default_range: ClassVar[tuple[float, float] | None] = (-1.0, 1.0)  # None: chosen by `prepare`
    gradient: ClassVar[bool] = True  # the loss gradient along the axes at the centre is defined
    several_pairs: ClassVar[bool] = False  # --pairs > 1 draws other directions
    seeded: ClassVar[bool] = False  # --seed chooses the directions
    order: ClassVar[int] = 100  # where `list_kinds` (and the error messages) list it

    def example(self, run: RunMeta) -> dict[str, Any]:
        """Options of a small grid of this kind on `run` (for the registry's tests and `--help`)."""
        return {}

    def check(self, cfg: GridConfig, run: RunMeta) -> None:
        """Refuse (UsageError) what this kind cannot do with `cfg`; the generic checks are done already."""
        if cfg.dims not in self.dims:
            raise UsageError(f"--directions {self.name} makes {' or '.join(map(str, self.dims))}-D grids, not --dims "
                             f"{cfg.dims}")
        if cfg.pairs != 1 and not self.several_pairs:
            raise UsageError(f"--pairs {cfg.pairs}: --directions {self.name} has one set of directions per grid")
        if cfg.seed != 0 and not self.seeded:
            raise UsageError(f"--seed applies to random directions, not to --directions {self.name}")
        if cfg.single_kernel and self.name != "random":
            raise UsageError(f"--single-kernel applies to random directions, not to --directions {self.name}")

    def configure(self, st: Store, run: RunMeta, opts: GridRequest) -> dict[str, Any]:
        """The kind's own GridConfig fields from the user's options (e.g. an interpolation's target)."""
        return {}

    def grid_epochs(self, cfg: GridConfig, epochs: list[int], given: bool) -> list[int]:
        """The epochs the grid computes, from the requested (or, `given` False, all the run's) epochs."""
        return epochs

    def curvature(self, st: Store, run: RunMeta, cfg: GridConfig, epochs: list[int],
                  recorded: dict[str, Any] | None) -> HessianConfig | None:
        """Curvature results the grid needs for `epochs` (computed by the engine before it prepares the grid;
        None: none). `recorded` is what an existing grid's grid.json says of its kind."""
        return None

    def epoch_facts(self, ctx: GridContext, meta: GridMeta, epochs: list[int]) -> dict[str, Any]:
        """Facts about epochs new to the grid, for grid.json's "kind" → "epochs" (per-epoch directions)."""
        return {}

    def names(self, weights: Mapping[str, Tensor], cfg: GridConfig) -> list[str]:
        """The parameters the grid moves (checking --layer / --single-kernel against the model)."""
        return perturbed_names(weights, perturb_biasbn=cfg.perturb_biasbn, layer=cfg.layer,
                               single_kernel=cfg.single_kernel, layers=cfg.layers)

    def coordinates(self, axis: Axis, lo: float, hi: float) -> np.ndarray:
        """The coefficients along an axis: `axis.count` evenly spaced decimal points from lo to hi."""
        return decimal_points(lo, hi, axis.count)

    def formula(self, cfg: GridConfig) -> str:
        """What the stored values are the loss at, in words (the arrays' descriptions)."""
        return "w + x·d1 + y·d2" if cfg.dims == 2 else "w + x·d1"

    def extras(self, info: dict[str, Any]) -> tuple[dict[str, ExtraArray], dict[str, tuple[np.ndarray, str]]]:
        """Arrays (and their coordinates) stored once in the Zarr group, rebuilt from grid.json's "kind"."""
        return {}, {}

    def attributes(self, info: dict[str, Any]) -> dict[str, Any]:
        """Attributes of the grid's Zarr group beyond the configuration (e.g. a PCA's explained variance)."""
        return {}

    def layout(self, cfg: GridConfig, ranges: list[tuple[float, float]], info: dict[str, Any]) -> Layout:
        """The grid's Zarr layout: from its configuration and what `prepare` recorded."""
        coords = [self.coordinates(axis, lo, hi) for axis, (lo, hi) in zip(cfg.axes, ranges, strict=True)]
        extras, extra_coords = self.extras(info)
        return Layout(cfg, coords, self.formula(cfg), extras, extra_coords)

    def prepare(self, ctx: GridContext, checkpoint_loss: CheckpointLoss) -> Prepared:
        raise NotImplementedError

    def slice(self, ctx: GridContext, meta: GridMeta, em: EpochModel,
              pair: int) -> contextlib.AbstractContextManager[Slice]:
        raise NotImplementedError


def decimal_points(lo: float, hi: float, count: int) -> np.ndarray:
    """`count` evenly spaced points from lo to hi (float64), each the float nearest to lo + i·(hi − lo)/(count − 1)
    computed exactly from the decimals lo and hi are written as (their shortest repr).

    So the points are the decimals the range implies (`--range -0.5,1.8 --width 24`: ..., 1.7, 1.8, never
    np.linspace's 1.7999999999999998): a point whose exact value has a short decimal form is that decimal's
    float, read back from text as written. Grids made before 0.3 hold np.linspace's values, a few ulps away;
    their stored coordinates are kept (`store.grid_arrays.repair` accepts them).
    """
    if count < 2:
        return np.array([lo][:count], np.float64)
    a, b = Fraction(repr(float(lo))), Fraction(repr(float(hi)))
    step = (b - a) / (count - 1)
    return np.array([float(a + i * step) for i in range(count)], np.float64)


def points_with_ends(lo: float, hi: float, count: int) -> np.ndarray:
    """`count` decimal points from lo to hi (`decimal_points`); the inner points nearest to 0 and 1 become exactly 0
    and 1 (the range's ends stay where they are unless they are 0 or 1 themselves): the t axis of a line or curve
    between two checkpoints, which must hold both checkpoints exactly."""
    t = decimal_points(lo, hi, count)
    t[0], t[-1] = lo, hi
    for exact in (0.0, 1.0):
        if exact in (lo, hi):
            continue
        inner = np.abs(t[1:-1] - exact)
        if inner.size:
            t[1 + int(np.argmin(inner))] = exact
    if not (np.all(np.diff(t) > 0) and (t == 0.0).sum() == 1 and (t == 1.0).sum() == 1):
        raise UsageError(f"--width {count} is too small to place t = 0 and t = 1 in [{lo:g}, {hi:g}]")
    return t


def other_run(st: Store, run: RunMeta, option: str, text: str, forms: str, purpose: str) -> tuple[RunMeta, int | None]:
    """`RUN2[:EPOCH]` given to `option`: that run, refused in one line unless it is a run of `run`'s model (`purpose`
    says why it must be), and the epoch given (None without one). `forms` lists what the option takes."""
    ref, _, epoch_text = text.partition(":")
    other = st.read_run(st.resolve(ref))
    epoch = None
    if epoch_text:
        try:
            epoch = int(epoch_text)
        except ValueError:
            raise UsageError(f"bad {option} {text!r}: give {forms}") from None
    if other.architecture != run.architecture:
        (a, a_args), (b, b_args) = other.architecture, run.architecture
        raise UsageError(f"{option} {text}: that run is a {a} {a_args}, this run is a {b} {b_args}: {purpose}")
    return other, epoch


_KINDS: dict[str, DirectionKind] = {}


def register_kind(cls: type[DirectionKind]) -> type[DirectionKind]:
    """Class decorator: register a direction kind under its `name` (a duplicate name is an error)."""
    if cls.name in _KINDS:
        raise ValueError(f"direction kind {cls.name!r} is registered twice")
    _KINDS[cls.name] = cls()
    return cls


def list_kinds() -> list[str]:
    return sorted(_KINDS, key=lambda name: (_KINDS[name].order, name))


def get_kind(name: str) -> DirectionKind:
    if name not in _KINDS:
        raise UnknownNameError(f"unknown --directions {name!r}: choose one of {', '.join(list_kinds())}")
    return _KINDS[name]
