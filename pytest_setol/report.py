"""Human-readable reports rendered with rich: a table per checkpoint and a summary."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Column, Table
from rich.text import Text

from .results import STATUSES, CheckpointResult, LayerResult, Report

STATUS_STYLES = {
    "ok": "green",
    "over-trained": "bold red",
    "under-trained": "bold yellow",
    "erg-violated": "yellow",
    "flagged": "yellow",
    "fit-failed": "magenta",
    "invalid": "bold red",
    "skipped": "dim",
}

_UNBOUNDED_WIDTH = 10_000
#: Narrowest status column: ``(fit-unreliable)`` on a line of its own.
_MIN_STATUS_WIDTH = len("(fit-unreliable)")
_MIN_NAME_WIDTH = 12

#: Columns of the default table; any numeric layer key may be added.
DEFAULT_COLUMNS = ("shape", "alpha", "alpha_hat", "erg_delta")


@dataclass(frozen=True)
class Violation:
    """One line of ``setol check``: a failed or warned rule, or an unreadable file.

    ``outcome`` is ``fail``, ``warn`` or ``error``; ``layer`` is None for a
    model-level rule or a checkpoint that could not be read.
    """

    path: str
    layer: str | None
    outcome: str
    rule: str
    message: str

    @property
    def node_id(self) -> str:
        """Return ``PATH::layer`` as pytest names the item, or the path alone."""
        return f"{self.path}::{self.layer}" if self.layer else self.path


def iter_violations(checkpoint: CheckpointResult) -> Iterator[Violation]:
    """Yield the fail, warn and error verdicts of a checkpoint in report order."""
    if checkpoint.error is not None:
        message = checkpoint.error.removeprefix(f"{checkpoint.path}: ")
        yield Violation(checkpoint.path, None, "error", "read", message)
        return
    for layer in checkpoint.layers:
        for verdict in layer.verdicts:
            if verdict.outcome in ("fail", "warn", "error"):
                message = verdict.message.removeprefix(f"{layer.name}: ")
                yield Violation(
                    checkpoint.path, layer.name, verdict.outcome, verdict.rule, message
                )
    for verdict in checkpoint.verdicts:
        if verdict.outcome in ("fail", "warn", "error"):
            message = verdict.message.removeprefix(f"{checkpoint.path} (model): ")
            yield Violation(
                checkpoint.path, None, verdict.outcome, verdict.rule, message
            )


def render_terminal(
    report: Report,
    width: int = 100,
    color: bool = False,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> str:
    """Return the report as text; ANSI colours only when ``color`` is true."""
    buffer = io.StringIO()
    console = text_console(buffer, width, color)
    print_report(console, report, columns)
    return buffer.getvalue()


def text_console(file: io.StringIO, width: int, color: bool) -> Console:
    """Return a console that writes to ``file`` at a fixed width."""
    return Console(
        file=file,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
    )


def print_report(
    console: Console, report: Report, columns: Sequence[str] = DEFAULT_COLUMNS
) -> None:
    """Print each checkpoint's layer table and its model summary panel."""
    for checkpoint in report.checkpoints:
        if checkpoint.error is not None:
            console.print(Text(f"{checkpoint.path}: not analysed", style="bold red"))
            console.print(f"  {checkpoint.error}")
            continue
        table = layer_table(checkpoint, columns)
        _fit_columns(console, table)
        console.print(table)
        console.print(summary_panel(checkpoint, report))


def layer_table(checkpoint: CheckpointResult, columns: Sequence[str]) -> Table:
    """Return the layer table: name, the ``columns`` keys, status."""
    table = Table(
        title=checkpoint.path, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("layer", no_wrap=True, overflow="fold")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True, overflow="fold")
    for layer in checkpoint.layers:
        cells = [layer.name] + [format_value(layer, c) for c in columns]
        table.add_row(*cells, status_text(layer))
    return table


def _fit_columns(console: Console, table: Table) -> None:
    """Fit ``table`` to the console: wrap the status first, fold names only if needed.

    Layer names are searched for in logs, so they stay whole while the
    numbers and a wrapped status still fit beside them.
    """
    widths = [_column_width(console, column) for column in table.columns]
    unbounded = console.options.update_width(_UNBOUNDED_WIDTH)
    natural = Measurement.get(console, unbounded, table).maximum
    if natural <= console.width:
        return
    # Edges, dividers and cell padding.
    padding = natural - sum(widths)
    status = table.columns[-1]
    status_width = min(widths[-1], _MIN_STATUS_WIDTH)
    status.width = status_width
    status.no_wrap = False
    room = console.width - padding - sum(widths[1:-1]) - status_width
    if widths[0] > room:
        name = table.columns[0]
        name.width = max(room, _MIN_NAME_WIDTH)
        name.no_wrap = False


def _column_width(console: Console, column: Column) -> int:
    """Return the width of the widest cell or header of ``column``, unwrapped."""
    options = console.options.update_width(_UNBOUNDED_WIDTH)
    cells = [column.header, *column.cells]
    return max(Measurement.get(console, options, cell).maximum for cell in cells)


def status_text(layer: LayerResult) -> Text:
    text = Text(layer.status, style=STATUS_STYLES.get(layer.status, ""))
    if layer.flags:
        text.append(f" ({', '.join(layer.flags)})", style="dim")
    return text


def format_value(layer: LayerResult, key: str) -> str:
    """Format one layer key for a table cell: 3 decimals, ``-`` for null."""
    value = getattr(layer, key)
    if value is None:
        return "-"
    if key == "shape":
        return "x".join(str(d) for d in value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (tuple, list)):
        return ", ".join(f"{v:.3g}" for v in value)
    return str(value)


def summary_panel(checkpoint: CheckpointResult, report: Report) -> Panel:
    """Return the model summary of a checkpoint framed as a panel."""
    return Panel(
        Group(summary_text(checkpoint, report)),
        title="model summary",
        title_align="left",
        box=box.ROUNDED,
        expand=False,
    )


def summary_lines(checkpoint: CheckpointResult, report: Report) -> list[str]:
    """Return the model summary as plain lines, shared by every output format."""
    summary = checkpoint.summary
    if summary is None:
        return [f"{checkpoint.path}: model summary not computed (model item not run)"]
    mean = f"{summary.mean_alpha:.3f}" if summary.mean_alpha is not None else "-"
    counts = ", ".join(
        f"{summary.status_counts[s]} {s}"
        for s in STATUSES
        if summary.status_counts.get(s)
    )
    lines = [
        f"mean alpha {mean}; {counts}",
        f"coverage {summary.coverage:.1%} of {summary.float_parameters:,} float "
        f"parameters; {summary.analysed} of {summary.layers} matrices analysed",
    ]
    if checkpoint.not_analysed:
        parts = ", ".join(
            f"{n} {reason}" for reason, n in sorted(checkpoint.not_analysed.items())
        )
        lines.append(f"not analysed: {parts}")
    device = report.settings.get("device", summary.device)
    lines.append(f"device {device}, float64, {summary.seconds:.2f} s")
    lines.append(f"thresholds: {checkpoint.config or 'built-in defaults'}")
    return lines


def summary_text(checkpoint: CheckpointResult, report: Report) -> Text:
    """Return the model summary lines below a checkpoint's table."""
    text = Text()
    lines = summary_lines(checkpoint, report)
    for index, line in enumerate(lines):
        text.append(line)
        if index < len(lines) - 1:
            text.append("\n")
    for verdict in checkpoint.verdicts:
        if verdict.outcome in ("fail", "warn"):
            text.append(
                f"\nmodel {verdict.outcome}: {verdict.message}",
                style=STATUS_STYLES["invalid"],
            )
    return text
