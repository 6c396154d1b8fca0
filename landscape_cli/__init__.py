"""landscape: loss landscapes of neural networks around training checkpoints.

The public API is imported lazily so that ``import landscape_cli`` (and the CLI's ``--help``)
stays fast: torch, zarr and matplotlib load only when a function that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from landscape_cli._version import __version__ as __version__

_API = {
    "Store": "store",
    "train": "training",
    "TrainResult": "training",
    "connect": "connecting",
    "ConnectResult": "connecting",
    "Recorder": "recorder",
    "TrainConfig": "config",
    "grid": "engine.compute",
    "GridResult": "engine.compute",
    "GridConfig": "config",
    "plot": "views.figures",
    "PlotResult": "views.figures",
    "log_grid": "views.tensorboard",
    "evaluate_plane": "kernel.evaluate",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "load_dataset": "data",
    "list_datasets": "data",
    "register_dataset": "data",
    "LandscapeError": "errors",
    "open": "views.notebook",
    "export": "exchange.export",
    "ExportResult": "exchange.export",
    "plane": "api",
    "line": "api",
    "hessian": "api",
    "eigenvectors": "api",
    "stats": "api",
    "save_to": "api",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
