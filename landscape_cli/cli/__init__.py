"""The command line: the Typer app, its one error boundary, and a module per command group."""

from landscape_cli.cli.application import app, main

__all__ = ["app", "main"]
