"""One error family: every message says what was wrong, where, and what to do."""

from __future__ import annotations


class RefineryError(Exception):
    """Base class for errors a user can act on; the CLI prints them as one line, no traceback."""


class ConfigError(RefineryError):
    """A recipe or override is malformed, has an unknown key, or a value of the wrong type."""


class DataError(RefineryError):
    """An input file is missing, unreadable or holds a malformed record."""


class CheckpointError(RefineryError):
    """A checkpoint or model directory is missing, incomplete or corrupt."""


class TrainingError(RefineryError):
    """A training run cannot go on as configured (e.g. dynamic sampling cannot fill a batch)."""
