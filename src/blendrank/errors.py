"""User-facing errors: the CLI prints them as one clear message and exits 1, never a traceback."""

from __future__ import annotations


class BlendrankError(Exception):
    """A user mistake (bad file, bad config, bad value). The message names what and how to fix it."""


class ConfigError(BlendrankError):
    """A configuration file or ``--set`` override is invalid."""


class DataError(BlendrankError):
    """Input data violates the data contract or cannot be read."""


class DataWarning(UserWarning):
    """Input data is valid but something in it will change results (e.g. no user ids); the CLI
    prints it as one ``warning:`` line."""
