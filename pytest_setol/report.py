"""Human-readable reports rendered with rich: one table per checkpoint plus a summary."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
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

#: Columns of the default table; any numeric layer key may be added.
DEFAULT_COLUMNS = ("shape", "alpha", "alpha_hat", "erg_delta")


def render_terminal(
    report: Report,
    width: int = 100,
    color: bool = False,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> str:
    """Return the report as text; ANSI colours only when ``color`` is true."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    print_report(console, report, columns)
    return buffer.getvalue()


def print_report(
    console: Console, report: Report, columns: Sequence[str] = DEFAULT_COLUMNS
) -> None:
    for checkpoint in report.checkpoints:
        if checkpoint.error is not None:
            console.print(Text(f"{checkpoint.path}: not analysed", style="bold red"))
            console.print(f"  {checkpoint.error}")
            continue
        console.print(layer_table(checkpoint, columns))
        console.print(summary_text(checkpoint, report))


def layer_table(checkpoint: CheckpointResult, columns: Sequence[str]) -> Table:
    table = Table(
        title=checkpoint.path, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("layer", overflow="fold", min_width=20)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for layer in checkpoint.layers:
        cells = [layer.name] + [format_value(layer, c) for c in columns]
        table.add_row(*cells, status_text(layer))
    return table


def status_text(layer: LayerResult) -> Text:
    text = Text(layer.status, style=STATUS_STYLES.get(layer.status, ""))
    if layer.flags:
        text.append(f" ({', '.join(layer.flags)})", style="dim")
    return text


def format_value(layer: LayerResult, key: str) -> str:
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


def summary_text(checkpoint: CheckpointResult, report: Report) -> Text:
    """Return the model summary lines below a checkpoint's table."""
    text = Text()
    summary = checkpoint.summary
    if summary is None:
        text.append(f"{checkpoint.path}: model summary not computed (model item not run)\n")
        return text
    mean = f"{summary.mean_alpha:.3f}" if summary.mean_alpha is not None else "-"
    counts = ", ".join(
        f"{summary.status_counts[s]} {s}" for s in STATUSES if summary.status_counts.get(s)
    )
    text.append(f"mean alpha {mean}; {counts}\n")
    text.append(
        f"coverage {summary.coverage:.1%} of {summary.float_parameters:,} float "
        f"parameters; {summary.analysed} of {summary.layers} matrices analysed\n"
    )
    if checkpoint.not_analysed:
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(checkpoint.not_analysed.items()))
        text.append(f"not analysed: {parts}\n")
    for verdict in checkpoint.verdicts:
        if verdict.outcome in ("fail", "warn"):
            text.append(f"model {verdict.outcome}: {verdict.message}\n", style=STATUS_STYLES["invalid"])
    device = report.settings.get("device", summary.device)
    text.append(f"device {device}, float64, {summary.seconds:.2f} s\n")
    return text
