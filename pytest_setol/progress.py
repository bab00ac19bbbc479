"""A rich progress bar on standard error while the command line computes layers.

The bar appears only when standard error is a terminal and the ``CI``
environment variable is unset, so CI logs, pipes and pytest's captured
output never receive progress lines. When disabled every method does nothing.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from .results import LayerResult

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def should_show_progress(stream: TextIO | None = None) -> bool:
    """Return True when ``stream`` (default: stderr) is a terminal and CI is unset."""
    stream = stream if stream is not None else sys.stderr
    if os.environ.get("CI"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LayerProgress:
    """One bar per checkpoint, advanced by the analysis's ``on_layer`` callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[layer]}", style="dim"),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> LayerProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, description: str, total: int) -> None:
        """Begin a bar of ``total`` steps; the previous bar is removed."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, layer="")

    def advance_layer(self, result: LayerResult) -> None:
        """Count one analysed layer; matches ``CheckpointAnalysis``'s ``on_layer``."""
        self.advance(result.name)

    def advance(self, name: str) -> None:
        """Count one step and show ``name`` beside the bar."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, layer=name)
