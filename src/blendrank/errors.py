"""User-facing errors: the CLI prints them as one clear message and exits 1, never a traceback."""

from __future__ import annotations


class BlendrankError(Exception):
    """A user mistake (bad file, bad config, bad value). The message names what and how to fix it."""


class ConfigError(BlendrankError):
    """A configuration file or ``--set`` override is invalid."""


class DataError(BlendrankError):
    """Input data violates the data contract or cannot be read."""
