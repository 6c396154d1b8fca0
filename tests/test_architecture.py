"""The architecture holds: layers that import only downward, no import cycle, no private names borrowed,
and no module outside `store/` that builds a path from a store file name.

The import graph is read from the source (every `import` and `from ... import`, inside functions and
`if TYPE_CHECKING:` blocks included), so an import that runs upward fails here even if it is lazy.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = "landscape_cli"
ROOT = REPO / PACKAGE

# top to bottom: a module may import modules of its own layer (the graph stays acyclic) or of any layer below
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("", "training", "connecting", "evaluate", "recorder", "integrations", "api"),  # library calls: API, train, callbacks
    ("engine",),
    ("exchange",),
    ("views",),
    ("curvature",),
    ("directions",),
    ("kernel",),
    ("models",),
    ("data",),
    ("plugins",),
    ("store",),
    ("config",),
    ("errors", "_io", "_progress", "_version"),
]
# names of store files and directories: only store/ joins them into paths
STORE_NAMES = {"run.json", "grid.json", "landscape.zarr", "zarr.json", "checkpoints", "directions", "grids", "plots",
               "locks", "hessians", "hessian.json", "hessian.zarr", "stats.json", "lambda_max.json", ".lock"}
PATH_CALLS = {"joinpath", "Path", "glob", "rglob", "with_name", "with_suffix", "open", "exists"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import statement of the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            for n in submodules:  # `from pkg import module` imports the module
                yield f"{target}.{n}", [], node.lineno
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                yield target, rest, node.lineno


def _graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {name: [(t, ns, line) for t, ns, line in _imports(name, path) if t == PACKAGE or t.startswith(PACKAGE + ".")]
            for name, path in MODULES.items()}


def _layer(module: str) -> int:
    rest = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    for rank, names in enumerate(LAYERS):
        for n in names:
            if rest == n or (n and rest.startswith(n + ".")):
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, imports in _graph().items():
        for target, _names, line in imports:
            if _layer(target) < _layer(module):
                upward.append(f"{module}:{line} imports {target} (layer {LAYERS[_layer(target)]} is above "
                              f"{LAYERS[_layer(module)]})")
    assert not upward, "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _, _ in imports if t in MODULES} for m, imports in _graph().items()}
    assert not _cycles(graph)


def test_the_cycle_check_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _private_owner(module: str) -> str | None:
    """The package a private module belongs to (`x.y._z` -> `x.y`), None for a public module."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_no_module_imports_another_modules_private_names() -> None:
    borrowed = []
    for module, imports in _graph().items():
        for target, names, line in imports:
            owner = _private_owner(target)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                borrowed.append(f"{module}:{line} imports the private module {target}")
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target != module:
                    borrowed.append(f"{module}:{line} imports the private name {n} of {target}")
    assert not borrowed, "\n".join(borrowed)


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_only_the_cli_imports_typer_and_rich(library: str) -> None:
    allowed = {f"{PACKAGE}.cli"} | ({f"{PACKAGE}._progress"} if library == "rich" else set())
    users = [f"{module}:{line}" for module, path in MODULES.items() for target, _, line in _imports(module, path)
             if target.split(".")[0] == library and not any(module == a or module.startswith(a + ".") for a in allowed)]
    assert not users, users


def _store_name_joins(source: str, filename: str) -> list[str]:
    """Lines where a store file name is joined into a path (`p / "run.json"`, `p.glob("*.lock")`, Path(...))."""
    found = []

    def names(node: ast.AST) -> set[str]:
        out = set()
        for n in ast.walk(node):
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                text = n.value.strip("/*")
                first = text.split("/")[0]
                if text in STORE_NAMES or first in STORE_NAMES or any(text.endswith(s) for s in (".lock", "grid.json",
                                                                                                  "run.json")):
                    out.add(n.value)
        return out

    for node in ast.walk(ast.parse(source, filename)):
        hits: set[str] = set()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            hits = names(node.left) | names(node.right)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in PATH_CALLS:
                for arg in node.args:
                    hits |= names(arg)
        if hits:
            found.append(f"{filename}:{node.lineno}: {sorted(hits)}")
    return found


def test_only_the_store_joins_store_file_names() -> None:
    joins = []
    for module, path in MODULES.items():
        if module == f"{PACKAGE}.store" or module.startswith(f"{PACKAGE}.store."):
            continue
        joins += _store_name_joins(path.read_text(), str(path.relative_to(REPO)))
    assert not joins, "\n".join(joins)


def test_the_store_name_check_finds_joins() -> None:
    bad = 'p = run_dir / "run.json"\nq = zarr_dir.parent / "grid.json"\nfor f in d.glob("*.lock"): pass\n' \
          'r = root / run / f"checkpoints/epoch-{e:04d}.pt"\n'
    assert len(_store_name_joins(bad, "bad.py")) == 4
    fine = 'raise IntegrityError(f"{path}: grid.json is damaged")\nx = {"checkpoints": 1}\n'
    assert _store_name_joins(fine, "fine.py") == []


def test_only_the_store_reads_and_writes_its_json_files() -> None:
    """run.json, grid.json, hessian.json, direction sidecars and stats.json are read and written by store/ alone."""
    users = []
    for module, path in MODULES.items():
        if module.startswith(f"{PACKAGE}.store") or module == f"{PACKAGE}._io":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("read_json", "write_json"):
                    users.append(f"{module}:{node.lineno} calls {called}")
    assert not users, "\n".join(users)
