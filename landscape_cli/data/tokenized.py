"""`text:PATH` in the tokens of a Hugging Face tokenizer: how `landscape import hf:DIR` scores a causal LM.

Where the model's directory has a tokenizer (tokenizer.json or tokenizer_config.json), the text file is
tokenized by it (`AutoTokenizer.from_pretrained(DIR, local_files_only=True)`: offline, and never the
directory's own code) instead of character by character, without special tokens. The token ids are cut
as `text` cuts characters: the first 90 % train, the rest validate, non-overlapping windows of
`block_size` tokens with the targets shifted by one (x = ids[i·B : i·B + B], y = ids[i·B + 1 : i·B + B + 1]),
which is the shift a causal LM's `labels` get inside transformers.

A run records the text file (path, sha256), the tokenizer's directory and the sha256 of the token ids;
later commands tokenize the same file again with the same tokenizer and refuse, in one line, a file or a
tokenizer that now gives other ids, or one that is gone. Nothing here imports the registry (it imports
this module): the tensors and the record go back as `Tokens`, and `_registry` makes the `Dataset`.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from landscape_cli.data.text import DEFAULT_BLOCK_SIZE, TRAIN_SHARE, read_text, windows
from landscape_cli.errors import UsageError
from landscape_cli.plugins import Source

KIND = "hf-text"  # the Source kind of a text file in a Hugging Face tokenizer's tokens
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Tokens:
    """A text file's token ids cut into windows, and what a run records of them."""

    train: tuple[Tensor, Tensor]  # inputs and targets [N, block_size], int64
    val: tuple[Tensor, Tensor]
    vocab_size: int  # the tokenizer's (its added tokens included)
    sha256: str  # of the token ids and the block size
    description: str
    details: dict[str, Any] = field(default_factory=dict)


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def tokenized_source(text: Source, directory: Path) -> Source:
    """The source of a text file (a `text:PATH` source) in the tokens of `directory`'s tokenizer."""
    tokenizer = Path(directory).expanduser().resolve()
    return Source(KIND, text.ref, text.target, str(tokenizer), None,
                  f"text file {text.target} in the tokens of {tokenizer}")


def load_tokens(source: Source, block_size: int | None = None, recorded: dict[str, Any] | None = None) -> Tokens:
    """Tokenize the text file of `source` with its tokenizer and cut it into windows (with `recorded`, a run's
    dataset record: its block size, and the same ids as the run was made with or one line)."""
    ref = source.ref
    if recorded is not None:
        block_size = int(recorded["block_size"])
    size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if size < 1:
        raise UsageError(f"--block-size must be at least 1, got {size}")
    path, directory = Path(source.target), Path(str(source.file))
    text, text_sha256 = read_text(path, ref, recorded.get("text_sha256") if recorded else None)
    with _quiet() as transformers:
        tokenizer = _tokenizer(transformers, directory, ref)
        try:  # (a text longer than the model's context warns: the windows are cut below)
            ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
        except Exception as e:  # a tokenizer's own failure on this text
            raise UsageError(f"dataset {ref!r}: the tokenizer of {directory} failed on {path} ({_one_line(e)})") from None
    cut = int(len(ids) * TRAIN_SHARE)
    for name, part in (("train", ids[:cut]), ("val", ids[cut:])):
        if len(part) < size + 1:
            raise UsageError(f"--block-size {size} is longer than the {name} split of {path} in the tokens of "
                             f"{directory}: it has {len(part)} tokens (a sample reads block size + 1 of them); "
                             "give a smaller --block-size or a longer text")
    digest = hashlib.sha256(f"{size}:".encode())
    digest.update(ids.numpy().tobytes())
    sha256 = digest.hexdigest()
    if recorded is not None and recorded.get("sha256") and recorded["sha256"] != sha256:
        raise UsageError(f"dataset {ref!r}: the tokenizer of {directory} now gives other token ids than the run was "
                         f"made with (sha256 {sha256[:12]}, recorded {str(recorded['sha256'])[:12]}): restore it")
    vocab_size = len(tokenizer)
    details = {"path": str(path), "characters": len(text), "text_sha256": text_sha256, "tokenizer": str(directory),
               "tokenizer_class": type(tokenizer).__name__, "tokens": len(ids), "block_size": size}
    return Tokens(windows(ids[:cut], size), windows(ids[cut:], size), vocab_size, sha256,
                  f"the tokens of {path} ({type(tokenizer).__name__} of {directory})", details)


@contextlib.contextmanager
def _quiet() -> Iterator[Any]:
    """transformers, its log lines and warnings silenced for the block; one line if it is not installed."""
    try:
        import transformers
    except ImportError:
        raise UsageError("hf: needs the Hugging Face extra: pip install 'landscape-cli[hf]'") from None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield transformers
    finally:
        transformers.logging.set_verbosity(verbosity)


def _tokenizer(transformers: Any, directory: Path, ref: str) -> Any:
    """The directory's tokenizer, read offline and without running any code of the directory."""
    if not directory.is_dir():
        raise UsageError(f"dataset {ref!r}: the tokenizer's directory {directory} is gone: restore it (the run's token "
                         "ids were made by it)")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                          trust_remote_code=False)
    except Exception as e:  # missing files, a tokenizer class that needs code or a package not installed
        raise UsageError(f"dataset {ref!r}: cannot read the tokenizer of {directory} ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return text if len(text) <= 160 else text[:157] + "..."
