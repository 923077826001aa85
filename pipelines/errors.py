"""User-facing errors.

Anything raised as a :class:`ZsadError` is a problem with the user's input (paths, configs, weights,
data layout). The CLI prints its message as one line and exits non-zero instead of showing a traceback.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ZsadError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""


class ConfigError(ZsadError, ValueError):
    """A config file, key, value or override is wrong."""


class WeightsNotFoundError(ZsadError):
    """CLIP weights are not available offline."""


class DatasetLayoutError(ZsadError):
    """A dataset root does not have the expected raw layout."""


class CorruptImageError(ZsadError):
    """An image or mask file cannot be decoded."""
