"""Planning a grid: the user's options -> one frozen `GridConfig`, and the work units still to do.

`resolve` is the one place a grid configuration is built (the CLI and the library both call it):
it applies the direction kind's defaults, `--grid` (continue a grid with its own options),
`--directions-from`, the interpolation target and the PCA trajectory, and validates everything
that can be checked before any file is read or written.

The unit of work is a row: one y value of one direction pair of one epoch, all batches and all x
values (a 1-D grid has one row per epoch and pair). `Plan` lists which rows and centre values of
the requested epochs are missing; whoever executes them (one process, several sharing the grid)
takes them one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from landscape_cli.config import Axis, GridConfig, GridRequest, check_batches, finite, layer_selection, positive_int
from landscape_cli.directions import get_kind
from landscape_cli.errors import RunNotFoundError, UsageError
from landscape_cli.kernel.metrics import resolve_all
from landscape_cli.store import Store
from landscape_cli.store.grid_arrays import Rows
from landscape_cli.store.meta import RunMeta

MAX_COEFFICIENT = 1e30  # |x|, |y| of a grid point: far below float32's largest value (3.4e38)
Owner = Callable[[int, int, int], bool]  # (epoch index, pair, row) -> whether this process computes it


def resolve(st: Store, run: RunMeta, opts: GridRequest) -> tuple[GridConfig, list[int]]:
    """The grid's configuration and the epochs to compute, from the user's options."""
    run.require_checkpoints()
    opts = opts.checked()
    if opts.from_grid is not None:
        _, gid = st.find_grid(opts.from_grid, run.id)
        source = st.read_grid(run.id, gid)
        if opts.epochs is not None or opts.at_steps is not None:
            return source.config, run.select(opts.epochs, opts.at_steps)
        keys = source.epochs or None
        return source.config, (run.select(None, keys) if run.has_steps and keys else run.select(keys))
    kind = get_kind(opts.directions)
    for option, value in (("--to-epoch", opts.to_epoch), ("--to", opts.to)):
        if value is not None and kind.name != "interpolate":
            raise UsageError(f"{option} is the end of an interpolation line: it does not apply to --directions "
                             f"{kind.name}")
    if opts.through and kind.name != "plane":
        raise UsageError(f"--through names the checkpoints of a plane through three (--directions plane): it does not "
                         f"apply to --directions {kind.name}")
    if opts.dims is not None:
        positive_int(opts.dims, "--dims", minimum=1, maximum=2)
        if opts.dims not in kind.dims:
            raise UsageError(f"--directions {kind.name} makes {' or '.join(map(str, kind.dims))}-D grids, "
                             f"not --dims {opts.dims}")
    dims = opts.dims if opts.dims is not None else max(kind.dims)
    seed, norm = _inherit_directions(st, run, opts)
    pairs = opts.pairs if opts.pairs is not None else (3 if kind.several_pairs else 1)
    batches = opts.batches
    whole = batches == "all"
    layer, layers = layer_selection(opts.layer)
    cfg = GridConfig(
        run=run.id, axes=_axes(kind.name, kind.default_range, opts, dims), pairs=pairs,
        batches=1 if whole else int(batches), batch_size=opts.batch_size, seed=seed if seed is not None else 0,
        norm=norm or kind.default_norm, perturb_biasbn=opts.perturb_biasbn, layer=layer,
        single_kernel=opts.single_kernel, bn=opts.bn if opts.bn is not None else getattr(kind, "default_bn", "train"),
        split=opts.split, whole=whole, precision=opts.precision, layers=layers,
        metrics=tuple(m.ref for m in resolve_all(opts.metrics)) if opts.metrics else None,
        **kind.configure(st, run, opts),
    ).validate()
    if norm is not None and not kind.normalized and norm != kind.default_norm:
        raise UsageError(f"--norm applies to directions that are normalized per epoch, not to --directions {kind.name}")
    kind.check(cfg, run)
    check_batches(cfg.batches, cfg.batch_size, cfg.whole, cfg.split, run.dataset)
    wanted = run.select(opts.epochs, opts.at_steps)
    return cfg, kind.grid_epochs(cfg, wanted, opts.epochs is not None or opts.at_steps is not None)


def _axes(kind: str, default: tuple[float, float] | None, opts: GridRequest, dims: int) -> tuple[Axis, ...]:
    if opts.span is not None:
        if opts.range is not None:
            raise UsageError("give --span or --range, not both (--span S is --range -S,S)")
        finite(opts.span, "--span", positive=True)
    if opts.yrange is not None and dims == 1:
        raise UsageError("--yrange is the range of the second axis: a --dims 1 grid has one axis")
    if opts.span is not None:
        x: tuple[float, float] | None = (-opts.span, opts.span)
    else:
        x = opts.range if opts.range is not None else default
    y = opts.yrange if opts.yrange is not None else (x if opts.range is not None or opts.span is not None else default)
    ranges = [x, y][:dims]
    for r, option in zip(ranges, ("--range", "--yrange"), strict=False):
        if r is not None and max(abs(r[0]), abs(r[1])) > MAX_COEFFICIENT:
            raise UsageError(f"{option} {r[0]:g},{r[1]:g}: coefficients beyond ±{MAX_COEFFICIENT:g} are not "
                             "representable in float32 weights: give a smaller range")
    return tuple(Axis(kind, opts.width, r[0] if r else None, r[1] if r else None) for r in ranges)


def _inherit_directions(st: Store, run: RunMeta, opts: GridRequest) -> tuple[int | None, str | None]:
    """--directions-from GRID: use that grid's random draw (and normalization unless given)."""
    if opts.directions_from is None:
        return opts.seed, opts.norm
    if opts.directions != "random":
        raise UsageError(f"--directions-from reuses random directions; --directions {opts.directions} makes its own")
    try:  # a grid of this run first (names like "main" repeat across runs), then any run's
        src_run, src_grid = st.find_grid(opts.directions_from, run.id)
    except RunNotFoundError:
        src_run, src_grid = st.find_grid(opts.directions_from)
    src_meta = st.read_grid(src_run, src_grid)
    src_name, src_args = st.read_run(src_run).architecture
    name, args = run.architecture
    same = src_name == name and {k: v for k, v in src_args.items() if k != "activation"} == {
        k: v for k, v in args.items() if k != "activation"}
    if not same:
        raise UsageError(
            f"--directions-from {opts.directions_from}: that grid is of a {src_name} {src_args}, this run "
            f"is a {name} {args}: directions must come from a grid of the same architecture"
        )
    src_cfg = src_meta.config
    if src_cfg.kind != "random":
        raise UsageError(f"--directions-from {opts.directions_from}: that grid's directions are {src_cfg.kind}, "
                         "not random")
    if opts.seed is not None and opts.seed != src_cfg.seed:
        raise UsageError(f"--seed {opts.seed} contradicts --directions-from {opts.directions_from} (seed {src_cfg.seed})")
    return src_cfg.seed, opts.norm or src_cfg.norm


# --- work units --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    complete: bool  # every requested row and centre is written (gradients too, if asked for)
    partial: bool  # rows already started for a requested epoch are unfinished
    rows_done: int
    rows_total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.rows_done / self.rows_total if self.rows_total else 0.0


def status(rows: Rows, cfg: GridConfig, epochs: list[int], gradient: bool) -> Status:
    """How far the requested epochs of a grid are (epochs not on its axis yet count as not started)."""
    have = rows.epochs
    per_epoch = cfg.pairs * cfg.rows
    rows_done = 0
    old_complete = centers = True
    for e in epochs:
        if e in have:
            ei = have.index(e)
            n = sum(int(rows.done(ei, p).sum()) for p in range(cfg.pairs))
            rows_done += n
            old_complete &= n == per_epoch
            centers &= all(rows.center_done(ei, p, gradient) for p in range(cfg.pairs))
    new = [e for e in epochs if e not in have]
    return Status(not new and old_complete and centers, not old_complete, rows_done, len(epochs) * per_epoch)


@dataclass(frozen=True)
class Plan:
    """The grid's points: which rows exist, and the coordinates of each row's points."""

    cfg: GridConfig
    epochs: list[int]  # the requested epochs, in the order asked
    index: dict[int, int]  # epoch -> its index on the grid's epoch axis
    xs: list[float]
    ys: list[float]  # empty for a line

    @classmethod
    def of(cls, rows: Rows, cfg: GridConfig, epochs: list[int]) -> Plan:
        index = {e: i for i, e in enumerate(rows.epochs)}
        ys = [float(v) for v in rows["y"][:]] if cfg.dims == 2 else []
        return cls(cfg, epochs, index, [float(v) for v in rows["x"][:]], ys)

    @property
    def total_rows(self) -> int:
        return len(self.epochs) * self.cfg.pairs * self.cfg.rows

    def points(self, row: int) -> list[tuple[float, ...]]:
        """The coordinates of a row's points, in x order."""
        if self.cfg.dims == 2:
            return [(x, self.ys[row]) for x in self.xs]
        return [(x,) for x in self.xs]

    def _units(self, mine: Owner | None) -> list[tuple[int, int, int]]:
        """(epoch index, pair, row) of the plan's rows, those `mine` accepts when given."""
        units = [(self.index[e], p, y) for e in self.epochs for p in range(self.cfg.pairs) for y in range(self.cfg.rows)]
        return units if mine is None else [u for u in units if mine(*u)]

    def total_rows_of(self, mine: Owner | None) -> int:
        """The plan's rows (those of one process's share with `mine`)."""
        return self.total_rows if mine is None else len(self._units(mine))

    def rows_done(self, rows: Rows, mine: Owner | None = None) -> int:
        if mine is None:
            return sum(int(rows.done(self.index[e], p).sum()) for e in self.epochs for p in range(self.cfg.pairs))
        done = {(self.index[e], p): rows.done(self.index[e], p) for e in self.epochs for p in range(self.cfg.pairs)}
        return sum(int(done[ei, p][y]) for ei, p, y in self._units(mine))

