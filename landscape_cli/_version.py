"""The release, in one place (recorded in every run, grid and result the store writes)."""

__version__ = "0.1.0"
