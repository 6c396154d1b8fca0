"""The error hierarchy: every mistake a user can make is one of these.

The CLI prints a `LandscapeError` as one line on stderr and exits with its `exit_code`
(2 for usage errors, 1 for the rest); anything else is a bug and keeps its traceback.
Each class also inherits the matching built-in, so library users can catch either.
"""

from __future__ import annotations


class LandscapeError(Exception):
    """A known failure with a one-line message that says what to do."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class UsageError(LandscapeError, ValueError):
    """A bad option value or argument: exit code 2."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """An unknown model, dataset, layer, metric... (the message lists the valid ones)."""


class RunNotFoundError(UnknownNameError):
    """No run (or grid) matches a reference."""


class AmbiguousReferenceError(UnknownNameError):
    """A reference prefix matches several runs or grids."""


class StoreError(LandscapeError, OSError):
    """The store cannot be read or written (permissions, full disk...)."""


class DatasetUnavailableError(LandscapeError, FileNotFoundError):
    """A dataset is not on disk and cannot be downloaded."""


class IntegrityError(LandscapeError):
    """A file no longer matches the hash recorded when it was written."""


class LockedError(LandscapeError, BlockingIOError):
    """Another process holds the run or grid."""


class GridStateError(LandscapeError):
    """A grid exists but is not in the state the command needs (e.g. partial without --resume)."""


class Interrupted(LandscapeError):
    """The user pressed Ctrl-C; the message says how to resume."""

    exit_code = 130
