"""`text:PATH`: a character-level language-modelling dataset made of any local UTF-8 file.

The vocabulary is the sorted set of the file's characters (token id = its index), so the number of
outputs is the vocabulary's size. The first 90 % of the characters train, the last 10 % validate
(a fixed cut, no shuffling: a text's later part is what it has not seen). Each split is cut into
non-overlapping windows of `block_size` characters: sample i reads x = s[i·B : i·B + B] and predicts
y = s[i·B + 1 : i·B + B + 1], the next character at every position (targets [N, B], int64); the
characters left over at a split's end (fewer than B + 1) make no sample.

A run records the file's path and sha256 and the block size; later commands read the same file
again and refuse it in one line if it changed or is gone. Nothing here imports the registry (it
imports this module), so the tensors are returned as they are and `_registry` makes the `Dataset`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from landscape_cli.errors import UsageError
from landscape_cli.plugins import Source

PREFIX = "text:"
KIND = "text"  # the Source kind of a text file
DEFAULT_BLOCK_SIZE = 64
TRAIN_SHARE = 0.9  # the first 90 % of the characters train, the rest validate


@dataclass(frozen=True)
class Text:
    """A text file read and cut into windows."""

    path: Path
    sha256: str  # of the file's bytes, as read
    characters: int
    vocabulary: str  # the sorted distinct characters: token id i is vocabulary[i]
    block_size: int
    train: tuple[Tensor, Tensor]  # inputs and targets [N, block_size], int64
    val: tuple[Tensor, Tensor]


def is_text(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def text_source(ref: str) -> Source:
    """The source of `text:PATH` (the path made absolute; the file must exist)."""
    given = ref[len(PREFIX):]
    if not given.strip():
        raise UsageError(f"dataset {ref!r}: give a file after text:, e.g. text:book.txt")
    path = Path(given).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"dataset {ref!r}: the file {path} does not exist")
    return Source(KIND, f"{PREFIX}{path}", str(path), str(path), None, f"text file {path}")


def read_text(path: Path, ref: str, recorded_sha256: str | None = None) -> tuple[str, str]:
    """The file's characters and the sha256 of its bytes; one line if it is missing, empty, not UTF-8, or
    (with `recorded_sha256`) not the file a run was made with."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        gone = f" (the run was made with sha256 {recorded_sha256[:12]}): restore it" if recorded_sha256 else ""
        raise UsageError(f"dataset {ref!r}: the text file {path} is gone{gone}") from None
    except OSError as e:
        raise UsageError(f"dataset {ref!r}: cannot read {path} ({e.strerror or type(e).__name__})") from None
    sha256 = hashlib.sha256(raw).hexdigest()
    if recorded_sha256 is not None and sha256 != recorded_sha256:
        raise UsageError(f"dataset {ref!r}: the text file {path} changed since the run was made (sha256 {sha256[:12]}, "
                         f"recorded {recorded_sha256[:12]}): restore it, or train a new run on it")
    if not raw:
        raise UsageError(f"dataset {ref!r}: the text file {path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"dataset {ref!r}: {path} is not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}): "
                         "convert it, e.g. with iconv -t UTF-8") from None
    return text, sha256


def windows(ids: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows: inputs ids[i·B : i·B + B], targets shifted by one ([N, B] each)."""
    n = (len(ids) - 1) // block_size
    return ids[:n * block_size].reshape(n, block_size).clone(), ids[1:n * block_size + 1].reshape(n, block_size).clone()


def load_text(source: Source, block_size: int, recorded_sha256: str | None = None) -> Text:
    """Read the file of a text source and cut it into windows of `block_size` characters."""
    ref = source.ref
    if block_size < 1:
        raise UsageError(f"--block-size must be at least 1, got {block_size}")
    path = Path(source.target)
    text, sha256 = read_text(path, ref, recorded_sha256)
    vocabulary = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocabulary)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(ids) * TRAIN_SHARE)
    splits = {"train": ids[:cut], "val": ids[cut:]}
    if block_size >= len(ids):
        raise UsageError(f"--block-size {block_size} is longer than the text: {path} has {len(ids)} characters "
                         f"(a sample reads block size + 1 of them)")
    for name, part in splits.items():
        if len(part) < block_size + 1:
            share = f"first {TRAIN_SHARE:.0%}" if name == "train" else f"last {1 - TRAIN_SHARE:.0%}"
            most = f"at most --block-size {len(part) - 1}" if len(part) > 1 else "the text is too short to split"
            raise UsageError(f"--block-size {block_size} is longer than the {name} split of {path}: its {share} has "
                             f"{len(part)} characters, so {most} (or a longer text)")
    return Text(path, sha256, len(ids), vocabulary, block_size, windows(splits["train"], block_size),
                windows(splits["val"], block_size))
