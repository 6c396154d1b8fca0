"""CLI machinery: the one error boundary, shared option aliases and output helpers.

Known errors (`LandscapeError`, and Typer's own usage errors) are printed as one line on stderr,
with a non-zero exit code; `LANDSCAPE_DEBUG=1` also prints the traceback. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from landscape_cli.errors import LandscapeError

DEBUG_ENV = "LANDSCAPE_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_line(message: str) -> None:
    """Print one error line on stderr (never wrapped: scripts grep it)."""
    text = " ".join(message.split())
    sys.stderr.write(f"Error: {text}\n")
    sys.stderr.flush()


class LandscapeGroup(TyperGroup):
    """The root command: runs Typer in non-standalone mode and owns the error boundary."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except LandscapeError as e:
            if _debug():
                traceback.print_exc()
            error_line(e.message)
            code = e.exit_code
        except Exception as e:
            if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
                raise  # not a usage error from Typer: a bug, keep the traceback
            code = _usage_error(e, list(sys.argv[1:] if args is None else args))
        if standalone_mode:
            sys.exit(code)
        return code


def _given_value(e: Any, args: list[str]) -> str | None:
    """The value the user typed for the option a usage error is about (Typer's message omits it)."""
    opts = getattr(getattr(e, "param", None), "opts", None) or []
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1:]
    return None


def _usage_error(e: Any, args: list[str]) -> int:
    """Typer/Click usage errors (bad option value, missing argument...) as one line."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":  # the bare command: show its help
        sys.stdout.write(e.format_message() + "\n")
        return 0
    if _debug():
        traceback.print_exc()
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = e.format_message()
    value = _given_value(e, args)
    if value is not None and repr(value) not in message:
        message = f"{message} (got {value!r})"
    error_line(f"{message}{hint}")
    code: int = e.exit_code
    return code


# --- shared options ------------------------------------------------------------------------------

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Run store directory (else $LANDSCAPE_STORE, else ./runs).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per mini-batch.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="A human label for the result.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where datasets are cached.", show_default=False)]
AtStepsOpt = Annotated[
    str | None,
    typer.Option("--at-steps", metavar="STEPS", help="Checkpoints by optimizer step, e.g. 10,20 or 0-100 (a run trained "
                 "with --checkpoint-every, whose --epochs E is its checkpoint at the end of epoch E).",
                 show_default=False),
]


# --- output --------------------------------------------------------------------------------------

_stdout: Console | None = None


def stdout() -> Console:
    global _stdout
    if _stdout is None:
        # piped output (scripts, CI logs) is not squeezed into 80 columns
        _stdout = Console() if sys.stdout.isatty() else Console(width=200)
    return _stdout


def err() -> Console:
    from landscape_cli._progress import stderr_console

    return stderr_console()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # NaN/Infinity are not JSON: keep them visible as strings
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()


def pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


def name_suffix(name: str | None) -> str:
    """A result's name as a suffix of its id in a message: " (name)", or nothing when it has none."""
    return f" ({name})" if name else ""


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def note(text: str) -> None:
    """A library call's note (a repaired file, a thread count that changed) as one yellow line on stderr."""
    from rich.markup import escape

    err().print(f"[yellow]{escape(text)}[/]")
