"""User-facing errors.

Anything raised as a :class:`ZsadError` is a problem with the user's input (paths, configs, weights,
data layout). The CLI prints its message as one line and exits non-zero instead of showing a traceback.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class ZsadError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""


class ConfigError(ZsadError, ValueError):
    """A config file, key, value or override is wrong."""


def require_choices(*choices: tuple[str, object, Sequence[object]], prefix: str = "method.") -> None:
    """Refuse the first ``(key, value, allowed)`` whose value is not one of its allowed values, naming them."""
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{prefix}{key} must be one of {list(allowed)}, got {value!r}")


class WeightsNotFoundError(ZsadError):
    """CLIP weights are not available offline."""


class DatasetLayoutError(ZsadError):
    """A dataset root does not have the expected raw layout."""


class CorruptImageError(ZsadError):
    """An image or mask file cannot be decoded."""


class RunFolderError(ZsadError):
    """A run folder this process may not use (another owner, a finished run of another config). The
    folder's status belongs to whoever owns it, so it is left as it is."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class RunLockedError(RunFolderError):
    """Another live process owns the run folder (its ``run.lock``)."""


class FinishedRunError(RunFolderError):
    """The run folder holds a finished run of a different config."""


class UnfinishedRunError(RunFolderError):
    """The run folder holds an unfinished run (resume checkpoints) of a different config."""


class WriteFailedError(ZsadError):
    """A file could not be written (full disk, permissions, quota...); nothing half-written was left."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class DataChangedError(ZsadError):
    """An unfinished run's training data differ from those its checkpoints were trained on: resuming would
    train one run on two datasets (the files are named; the run folder is kept as it is)."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None
