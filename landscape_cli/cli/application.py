"""The `landscape` command: the Typer app, its version option, and the registration of every command.

Each command is a plain function in a module per command group (runs, grids, curvature, curves,
registries): it parses its options, calls one library function and renders the result with rich (or
as JSON with --json). Heavy libraries (torch, zarr, matplotlib) are imported inside the commands so
that `landscape --help` and `landscape ls` start fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from landscape_cli._version import __version__
from landscape_cli.cli import curvature, curves, grids, registries, runs
from landscape_cli.cli._common import INTERRUPTED, LandscapeGroup, error_line, quiet_shutdown
from landscape_cli.errors import Interrupted

app = typer.Typer(
    cls=LandscapeGroup,
    name="landscape",
    help="Loss landscapes of neural networks around training checkpoints.\n\n"
    "Quick start: landscape train resnet digits --epochs 5, then landscape ls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"landscape {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Loss landscapes of neural networks around training checkpoints."""


# `landscape --help` lists the commands in this order
app.command()(runs.train)
app.command("import")(runs.import_)
app.command()(grids.export)
app.command("ls")(runs.ls)
app.command()(grids.grid)
app.command()(curvature.hessian)
app.command()(curves.connect)
app.command()(runs.layers)
app.command()(grids.plot)
app.command()(curvature.stats)
app.command()(runs.verify)
app.command()(registries.models)
app.command()(registries.datasets)


def main() -> None:
    """Console-script entry point (and `python -m landscape_cli`): after a failure, nothing but its one line on the
    way out (`quiet_shutdown`)."""
    try:
        app()
    except SystemExit as e:
        if e.code not in (0, None):
            quiet_shutdown()
        raise
    except KeyboardInterrupt:  # Ctrl-C after the command's own error boundary: still one line
        quiet_shutdown()
        error_line(INTERRUPTED)
        raise SystemExit(Interrupted.exit_code) from None
