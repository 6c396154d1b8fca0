"""`ds.landscape.plot()` in a real Jupyter kernel: the cell's output is the figure as an image (a fresh
kernel, no `%matplotlib inline`), and a notebook's figure writes nothing into the store unless asked.

A notebook is written with nbformat and executed by nbclient in an ipykernel kernel (the `test` extra),
which reads the store from its LANDSCAPE_STORE environment variable; the store is a copy of the frozen
second-release store (`data/legacy-0.2.0`)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
from pathlib import Path

import nbformat
import pytest
from conftest import tree
from nbclient import NotebookClient

LEGACY2 = Path(__file__).parent / "data" / "legacy-0.2.0"
IDS = json.loads((LEGACY2 / "ids.json").read_text())
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _execute(cells: list[str], store: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    env = {"LANDSCAPE_STORE": str(store), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel is started with this process's environment
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(cell: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert not errors, "\n".join("\n".join(o.traceback) for o in errors)
    return list(cell.outputs)


def test_plot_in_a_fresh_kernel_displays_the_figure_as_a_png_and_writes_nothing(tmp_path: Path) -> None:
    from landscape_cli import plot

    store = tmp_path / "store"
    shutil.copytree(LEGACY2 / "store", store)
    run, grid = IDS["run_id"], IDS["grids"]["shards"]
    # the figure the kernel should show, drawn here; this also caches the grid's stats (as `ls` would), so
    # that any file the notebook adds afterwards is one it wrote
    expected = plot([run], grids=[grid], store=store, save=False).figure
    width, height = (round(v) for v in expected.get_size_inches() * expected.dpi)
    before = tree(store)

    nb = _execute([
        "import landscape_cli\n"
        f"ds = landscape_cli.open({run!r}, grid={grid!r})   # the store: $LANDSCAPE_STORE\n"
        "ds.landscape.plot()",
        "import matplotlib\nprint(matplotlib.get_backend(), type(ds.landscape.plot()).__mro__[1].__name__)",
    ], store, tmp_path)

    [shown] = [o for o in _outputs(nb.cells[0]) if o.output_type in ("execute_result", "display_data")]
    assert "image/png" in shown.data, shown.data.keys()  # an image, not just "<Figure size 840x540 ...>"
    png = base64.b64decode(shown.data["image/png"])
    assert _png_size(png) == (width, height)
    assert len(png) > 20_000  # a drawn figure (heatmap, colour bar, title), not an empty canvas
    # still a matplotlib Figure (savefig, axes ...), and no `%matplotlib inline` was needed
    printed = "".join(o.get("text", "") for o in _outputs(nb.cells[1]))
    assert printed.split()[-1] == "Figure", printed

    after = tree(store)
    assert after == before, sorted(set(after) - set(before))  # no PNG in plots/, nothing else either


def test_plot_in_a_kernel_writes_the_figure_only_where_asked(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(LEGACY2 / "store", store)
    run, grid = IDS["run_id"], IDS["grids"]["shards"]
    out = tmp_path / "mine.png"
    nb = _execute([
        "import landscape_cli\n"
        f"ds = landscape_cli.open({run!r}, grid={grid!r})\n"
        f"fig = ds.landscape.plot(out={str(out)!r})\n"
        "saved = ds.landscape.plot_result(save=True).path\n"
        "print(saved)",
    ], store, tmp_path)
    printed = "".join(o.get("text", "") for o in _outputs(nb.cells[0])).strip()
    assert out.is_file() and _png_size(out.read_bytes())[0] > 0
    saved = Path(printed)
    assert saved.is_file() and store in saved.parents and saved.parent.name == "plots"


def test_an_animation_in_a_notebook_asks_for_a_file(tmp_path: Path) -> None:
    """A GIF is a file: the accessor says so in one line instead of writing into the store unasked."""
    import landscape_cli
    from landscape_cli.errors import UsageError

    store = tmp_path / "store"
    shutil.copytree(LEGACY2 / "store", store)
    ds = landscape_cli.open(IDS["run_id"], grid=IDS["grids"]["shards"], store=store)
    before = tree(store)
    with pytest.raises(UsageError, match=r"an animation is a GIF file: give out=FILE\.gif"):
        ds.landscape.plot(animate=True)
    assert tree(store) == before


def _recipe(name: str) -> str:
    """The python block after `<!-- recipe: NAME -->` in README.md, as written."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return text.split(f"<!-- recipe: {name} -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.slow  # a kernel computing a plane and a Hessian with its density (~15 s)
def test_readme_api_recipes_run_in_a_fresh_kernel(tmp_path: Path) -> None:
    """README's recipes for a model in memory, as written, each a cell of a fresh kernel: the random plane's stats
    are printed and its figure shown as an image; the Hessian's top eigenvalues (descending), λmin (the smallest)
    and trace printed, its figure shown as an image; and nothing is written where a store would be (no store is
    needed)."""
    import numpy as np

    store = tmp_path / "store"
    nb = _execute([_recipe("api-plane"), _recipe("api-hessian")], store, tmp_path)
    plane = _outputs(nb.cells[0])
    printed = "".join(o.get("text", "") for o in plane)
    assert printed.startswith("ε-sharpness ") and "flat radius" in printed, printed
    [shown] = [o for o in plane if o.output_type in ("execute_result", "display_data")]
    assert "image/png" in shown.data and len(base64.b64decode(shown.data["image/png"])) > 20_000

    hessian = _outputs(nb.cells[1])
    [figure] = [o for o in hessian if o.output_type in ("execute_result", "display_data")]  # the Hessian's figure
    assert "image/png" in figure.data and len(base64.b64decode(figure.data["image/png"])) > 20_000
    line = "".join(o.get("text", "") for o in hessian).replace("[", " ").replace("]", " ")
    values = [float(v) for v in line.split()]
    top, lambda_min, trace = values[:3], values[3], values[4]
    assert len(values) == 5 and top == sorted(top, reverse=True) and lambda_min < top[-1], line
    assert np.isfinite(trace) and trace != 0
    assert not store.exists() and not list(tmp_path.iterdir()), list(tmp_path.iterdir())
