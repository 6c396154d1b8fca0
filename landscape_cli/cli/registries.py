"""Commands listing what runs can be made of: models and datasets, built-in or from entry points.

Plain functions: `landscape_cli.cli.application` registers them as commands. torch is imported inside the
commands so that `landscape --help` starts fast.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from landscape_cli.cli._common import JsonOpt, print_json, stdout


def models(json_output: JsonOpt = False) -> None:
    """List the models: built-in ones with their parameter counts (1x28x28 and 3x32x32 inputs; gpt takes token
    sequences, e.g. text:PATH), and those packages register as entry points (group landscape.models), with
    where they come from.

    Any `pkg.module:factory` or `./file.py:factory` works too: a factory is called with
    input_shape (a sample's shape) and num_outputs and returns a torch.nn.Module.

    Example: `landscape models`
    """
    from landscape_cli.models import count_parameters, create_model, list_models, model_entry
    from landscape_cli.plugins import entry_points

    rows: list[dict[str, Any]] = []
    for name in list_models():
        images = model_entry(name).inputs == "images"  # a model of tokens takes no images: no counts there
        rows.append({
            "name": name,
            "origin": "built-in",
            "description": model_entry(name).description,
            "parameters_1x28x28": count_parameters(create_model(name, 1, 10, 28)) if images else None,
            "parameters_3x32x32": count_parameters(create_model(name, 3, 10, 32)) if images else None,
        })
    for name, origin in entry_points("model"):
        rows.append({"name": name, "origin": origin, "description": "", "parameters_1x28x28": None,
                     "parameters_3x32x32": None})
    if json_output:
        print_json(rows)
        return
    table = Table(title="models")
    for col in ("name", "parameters (1x28x28)", "parameters (3x32x32)", "from", "description"):
        table.add_column(col, justify="right" if col.startswith("param") else "left")
    for r in rows:
        sizes = [f"{v:,}" if v is not None else "-" for v in (r["parameters_1x28x28"], r["parameters_3x32x32"])]
        table.add_row(r["name"], *sizes, r["origin"], r["description"])
    stdout().print(table)


def datasets(json_output: JsonOpt = False) -> None:
    """List the datasets: built-in ones, and those packages register as entry points (group
    landscape.datasets), with where they come from.

    Any `pkg.module:factory` or `./file.py:factory` works too: a factory takes no arguments and
    returns {"train": (x, y), "val": (x, y), "task": "classification" | "regression"}. So does
    text:PATH, the characters of any UTF-8 file (train with --block-size).

    Example: `landscape datasets`
    """
    from landscape_cli.data import dataset_info, list_datasets
    from landscape_cli.plugins import entry_points

    rows: list[dict[str, Any]] = []
    for name in list_datasets():
        info = dataset_info(name)
        rows.append({"name": name, "origin": "built-in", "channels": info.channels, "size": info.size,
                     "classes": info.num_classes, "offline": info.offline, "description": info.description})
    for name, origin in entry_points("dataset"):
        rows.append({"name": name, "origin": origin, "channels": None, "size": None, "classes": None, "offline": None,
                     "description": ""})
    if json_output:
        print_json(rows)
        return
    table = Table(title="datasets")
    for col in ("name", "shape", "classes", "needs download", "from", "description"):
        table.add_column(col)
    for r in rows:
        builtin = r["origin"] == "built-in"
        table.add_row(r["name"], f"{r['channels']}x{r['size']}x{r['size']}" if builtin else "-",
                      str(r["classes"]) if builtin else "-", ("no" if r["offline"] else "once") if builtin else "-",
                      r["origin"], r["description"])
    stdout().print(table)
