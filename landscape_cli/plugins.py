"""Models and datasets from the user's code: `pkg.module:factory`, `./file.py:factory`, or entry points.

A reference names a built-in (`resnet`, `digits`), an entry point of the group `landscape.models` /
`landscape.datasets` (a package's own registration), a module attribute (`pkg.module:factory`) or a
file (`./my_models.py:make_net`). It resolves to a `Source` that says where the factory lives and
the sha256 of the file defining it, so a run can record it, every later process can load it again,
and an edited file is noticed instead of silently mixing two models.

Importing a user's module runs the user's code (that is what a factory is); nothing here imports
anything until a reference is resolved.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from landscape_cli._io import file_sha256
from landscape_cli.errors import LandscapeError, UnknownNameError, UsageError

GROUPS = {"model": "landscape.models", "dataset": "landscape.datasets", "metric": "landscape.metrics"}


@dataclass(frozen=True)
class Source:
    """Where a model or dataset factory comes from."""

    kind: str  # "builtin" | "entry-point" | "module" | "file" | "text" (a text file's characters: data/text.py)
    ref: str  # what the run records and later commands resolve: name, "pkg.mod:fn" or "/abs/file.py:fn"
    target: str  # "pkg.mod:fn" or "/abs/file.py:fn" (a built-in: its name)
    file: str | None = None  # the file that defines the factory
    sha256: str | None = None  # of that file when the source was resolved
    origin: str = ""  # in words, for `landscape models` / `datasets`

    @property
    def builtin(self) -> bool:
        return self.kind == "builtin"

    @property
    def name(self) -> str:
        """The name in the run's identity: the file's own name (not its folder) for a file factory, and
        text:<file name> for a text dataset (its content is covered by its sha256)."""
        if self.kind == "file":
            path, _, attr = self.target.rpartition(":")
            return f"{Path(path).name}:{attr}"
        if self.kind == "text":
            return f"text:{Path(self.target).name}"
        return self.ref

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Source:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def load(self, what: str) -> Callable[..., Any]:
        """The factory itself (imports the module or file; a failure is one line)."""
        if self.kind == "file":
            path, _, attr = self.target.rpartition(":")
            module = _load_file(Path(path), what, self.ref)
        else:
            module_name, _, attr = self.target.partition(":")
            module = _import(module_name, what, self.ref)
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise UsageError(f"{what} {self.ref!r}: {self.target.rpartition(':')[0]} has no callable {attr!r}")
        return factory  # type: ignore[no-any-return]

    def check_unchanged(self, recorded: str | None, what: str) -> None:
        """Refuse a factory whose file changed since `recorded` (its sha256 when the run was made)."""
        if recorded is None or self.file is None:
            return
        if not Path(self.file).is_file():
            raise UsageError(f"the {what} factory's file {self.file} is gone: restore it (the run was made with sha256 "
                             f"{recorded[:12]})")
        now = file_sha256(Path(self.file))
        if now != recorded:
            raise UsageError(
                f"the {what} factory's file {self.file} changed since the run was made (sha256 {now[:12]}, recorded "
                f"{recorded[:12]}): a run never mixes two {what}s; restore the file, or train (or import) a new run"
            )


# What the user's code may raise that becomes one line naming it: any Exception, and SystemExit (a module that parses
# its command line when imported). KeyboardInterrupt is the user's Ctrl-C and passes as it is.
USER_CODE_ERRORS = (Exception, SystemExit)


def _import(module_name: str, what: str, ref: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except LandscapeError:
        raise
    except USER_CODE_ERRORS as e:  # the user's module failed to import: say how, in one line
        if isinstance(e, ModuleNotFoundError) and e.name and (module_name + ".").startswith(e.name + "."):
            hint = "is it on PYTHONPATH?"  # the module itself (or its package) is not found
        elif isinstance(e, ModuleNotFoundError) and e.name:
            hint = f"install {e.name}, or fix the module"
        else:
            hint = "fix the module (LANDSCAPE_DEBUG=1 shows the traceback)"
        raise UsageError(f"{what} {ref!r}: cannot import {module_name} ({one_line(e)}); {hint}") from e


def _load_file(path: Path, what: str, ref: str) -> Any:
    """A Python file as a module (cached by path, so one process loads it once)."""
    name = "landscape_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{what} file {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, LandscapeError) or not isinstance(e, USER_CODE_ERRORS):
            raise
        raise UsageError(f"{what} {ref!r}: loading {path} failed ({one_line(e)}): fix the file "
                         "(LANDSCAPE_DEBUG=1 shows the traceback)") from e
    return module


def call_factory(source: Source, what: str, factory: Callable[..., Any], **kwargs: Any) -> Any:
    """`factory(**kwargs)`, the user's code: whatever it raises is one UsageError naming the factory (its reference),
    how it was called, the exception's type and message, chained from it (LANDSCAPE_DEBUG=1 prints its traceback).
    The tool's own errors raised inside (a factory that loads a built-in dataset) pass as they are."""
    try:
        return factory(**kwargs)
    except LandscapeError:
        raise
    except USER_CODE_ERRORS as e:
        called = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        called = called if len(called) <= 200 else called[:197] + "..."
        raise UsageError(f"the {what} factory {source.ref!r} raised {one_line(e)} when called as "
                         f"{source.target.rpartition(':')[2]}({called}): fix the factory (LANDSCAPE_DEBUG=1 shows the "
                         "traceback)") from e


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as "Type: message at file.py:line" (where it was raised), on one line, the message cut at `limit`
    characters."""
    where = ""
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        last = frames[-1]
        where = f" at {Path(last.filename).name}:{last.lineno}"
    message = " ".join(str(e).split())
    if len(message) > limit:
        message = message[:limit - 3].rstrip() + "..."
    return f"{type(e).__name__}{': ' + message if message else ''}{where}"


def _entry_point(group: str, name: str) -> metadata.EntryPoint | None:
    for ep in metadata.entry_points(group=group):
        if ep.name == name:
            return ep
    return None


def _file_of(module_name: str, what: str, ref: str) -> str | None:
    module = _import(module_name, what, ref)
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else None


def resolve(ref: str, what: str, builtins: list[str]) -> Source:
    """The source of a model (`what` = "model") or dataset reference."""
    if not ref or not ref.strip():
        raise UsageError(f"unknown {what} {ref!r}: give a built-in name, pkg.module:factory or ./file.py:factory")
    if ref in builtins:
        return Source("builtin", ref, ref, origin="built-in")
    ep = _entry_point(GROUPS[what], ref)
    if ep is not None:
        file = _file_of(ep.module, what, ref)
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an installed package"
        return Source("entry-point", ref, ep.value, file, file_sha256(Path(file)) if file else None,
                      f"entry point of {dist} ({ep.value})")
    path_part, sep, attr = ref.rpartition(":")
    if not sep or not attr or not path_part:
        raise UnknownNameError(
            f"unknown {what} {ref!r}: choose one of {', '.join(builtins)}, an entry point of {GROUPS[what]}, "
            "pkg.module:factory or ./file.py:factory"
        )
    if path_part.endswith(".py") or "/" in path_part or "\\" in path_part:
        path = Path(path_part).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"{what} {ref!r}: the file {path} does not exist")
        return Source("file", f"{path}:{attr}", f"{path}:{attr}", str(path), file_sha256(path), f"file {path}")
    file = _file_of(path_part, what, ref)
    return Source("module", ref, ref, file, file_sha256(Path(file)) if file else None, f"module {path_part}")


def entry_points(what: str) -> list[tuple[str, str]]:
    """(name, where it comes from) of every installed entry point of the group."""
    out = []
    for ep in metadata.entry_points(group=GROUPS[what]):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an installed package"
        out.append((ep.name, f"entry point of {dist} ({ep.value})"))
    return sorted(out)
