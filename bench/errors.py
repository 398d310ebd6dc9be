"""Typed errors that carry the one-line message a user sees.

The CLI prints ``certbench: error: <message>`` for any :class:`CertbenchError` and exits
non-zero without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CertbenchError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(CertbenchError):
    """Bad command-line values or a bad registry entry."""


class DataError(CertbenchError):
    """A dataset, subset or data directory that cannot be used."""


class ModelError(CertbenchError):
    """A checkpoint that is missing, has the wrong hash or shapes, or misbehaves (NaN outputs)."""


class StoreError(CertbenchError):
    """The results store cannot be opened or holds conflicting records."""
