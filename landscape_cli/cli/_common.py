"""CLI machinery: the one error boundary, shared option aliases and output helpers.

Known errors (`LandscapeError`, and Typer's own usage errors) are printed as one line on stderr,
with a non-zero exit code; `LANDSCAPE_DEBUG=1` also prints the traceback. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from landscape_cli.errors import Interrupted, LandscapeError

DEBUG_ENV = "LANDSCAPE_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_line(message: str) -> None:
    """Print one error line on stderr (never wrapped: scripts grep it)."""
    text = " ".join(message.split())
    sys.stderr.write(f"Error: {text}\n")
    sys.stderr.flush()


INTERRUPTED = ("interrupted: files are only ever written whole, so nothing half-written was left (temporary files "
               "removed); run the same command again")


def quiet_shutdown() -> None:
    """Before a `landscape` process exits after an error or Ctrl-C, leave stderr to the one line. A Zarr read or
    write cut short (Ctrl-C, or a chunk that failed its checksum while others were in flight) leaves tasks pending on
    zarr's event loop thread; destroyed when the process exits, each would print a warning or an "Exception ignored"
    traceback. They are cancelled and awaited here (a second at most), and asyncio's logger is silenced for whatever
    remains. (Only on the way out of the process: in-process callers keep their loop and logger.)"""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    sync = sys.modules.get("zarr.core.sync")  # never imports zarr: only if a command used it
    loop = getattr(sync, "loop", [None])[0] if sync is not None else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    import asyncio

    async def cancel_pending() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with contextlib.suppress(Exception):  # a loop that does not settle in time: the logger above stays silent
        asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(timeout=1.0)


def _reraise_interrupts(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An unraisable hook that gives back a Ctrl-C which landed in a finalizer or a weakref callback (h5py's, while a
    NetCDF file is written), where Python would print "Exception ignored" and carry on: the interrupt is raised again
    in the command's own code, so the command stops and says so in one line."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # from another thread, once this hook has returned (raised in the hook, it would be lost again)
            threading.Thread(target=_interrupt_main_soon, daemon=True).start()
            return
        previous(unraisable)

    return hook


_COMMAND_RUNNING = threading.Event()  # set while LandscapeGroup.main runs a command


def _interrupt_main_soon() -> None:
    time.sleep(0.01)
    if _COMMAND_RUNNING.is_set():  # (a command that has finished meanwhile is not interrupted on its way out)
        _thread.interrupt_main()


class LandscapeGroup(TyperGroup):
    """The root command: runs Typer in non-standalone mode and owns the error boundary."""

    def invoke(self, ctx: Any) -> Any:
        """The command; Ctrl-C where the command has no message of its own is one line (Typer would exit 130 silently)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted(INTERRUPTED) from None

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        previous_hook = sys.unraisablehook
        sys.unraisablehook = _reraise_interrupts(previous_hook)
        _COMMAND_RUNNING.set()
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except LandscapeError as e:
            if _debug():
                traceback.print_exc()
            error_line(e.message)
            code = e.exit_code
        except KeyboardInterrupt:  # before or after the command ran
            if _debug():
                traceback.print_exc()
            error_line(INTERRUPTED)
            code = Interrupted.exit_code
        except Exception as e:
            if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
                raise  # not a usage error from Typer: a bug, keep the traceback
            code = _usage_error(e, list(sys.argv[1:] if args is None else args))
        finally:
            _COMMAND_RUNNING.clear()
            sys.unraisablehook = previous_hook
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
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, max=1024, show_default=False,
                             help="torch threads for the computation [default: the cores]; results are bitwise "
                                  "reproducible with the same count (a grid records it).")
]


def set_threads(threads: int | None) -> None:
    """`--threads N`: torch's intra-op threads for the rest of the command (None: torch's default, the cores)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
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
