"""Exception types shared by the reader, the configuration and the front ends."""

from __future__ import annotations

from pathlib import Path


class SetolError(Exception):
    """Base class of the errors pytest-setol raises on bad input."""


class CheckpointError(SetolError):
    """A checkpoint file could not be read.

    The message names the file and, where one is involved, the tensor.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.detail = message
        super().__init__(f"{self.path}: {message}")


class ConfigError(SetolError):
    """A ``setol.yaml`` file is invalid: the message names the file, key and line."""

    def __init__(
        self, path: str | Path, key: str, message: str, line: int | None = None
    ) -> None:
        self.path = str(path)
        self.key = key
        self.line = line
        self.detail = message
        where = f"{self.path}:{line}" if line is not None else self.path
        prefix = f"{where}: {key}: " if key else f"{where}: "
        super().__init__(prefix + message)
