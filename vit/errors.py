"""The two kinds of bad input every command reports as one line, never as a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid model or training setting; the message names the field."""


class DataError(ValueError):
    """Data that cannot be used (a missing folder, no images, mismatched text files); the
    message names the file or folder."""
