"""Process-level speed settings, each measured on CPU by `benchmarks/grid_speed.py`.

- glibc returns activation buffers to the kernel after every forward pass (mmap/munmap, trimming);
  raising M_MMAP_THRESHOLD and M_TRIM_THRESHOLD keeps them in the heap.
- Convolutions on CPU run faster with NHWC (channels_last) tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch
from torch import nn

from landscape_cli.config import DEVICES, choice
from landscape_cli.errors import UsageError

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_allocator() -> bool:
    """Keep freed buffers in glibc's heap (idempotent; a no-op off glibc). Returns whether it applied."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("LANDSCAPE_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # 32 MiB is glibc's largest mmap threshold on 64-bit systems
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    _tuned = ok
    return ok


def select_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    choice(name, DEVICES, "device")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to run `model` with channels_last tensors: for convolutional models on CPU."""
    if os.environ.get("LANDSCAPE_NO_CHANNELS_LAST"):
        return False
    return device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
