"""Report writers for files and CI pages: plain text, JSON, Markdown and HTML.

Markdown is GitHub-flavoured and sized for ``$GITHUB_STEP_SUMMARY``: the
violations first, the full layer table folded in a ``<details>`` block. HTML
is one self-contained file: inline CSS, no scripts, figures embedded as
base64 PNG data URIs, so it opens anywhere as a CI artifact.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from .plots import PLOT_INSTALL_HINT, CheckpointFigures
from .report import (
    DEFAULT_COLUMNS,
    Violation,
    format_value,
    iter_violations,
    render_terminal,
    summary_lines,
    text_console,
)
from .results import CheckpointResult, LayerResult, Report

#: Output formats of ``setol report``, ``setol check`` and ``--setol-report``.
FORMATS = ("table", "json", "markdown", "html")
#: Width of plain-text tables written to files or pipes, in characters.
PLAIN_WIDTH = 132


def render(
    report: Report,
    fmt: str,
    *,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    width: int = PLAIN_WIDTH,
    color: bool = False,
    figures: Sequence[CheckpointFigures] | None = None,
    figures_note: str | None = None,
) -> str:
    """Return ``report`` in format ``fmt``, one of FORMATS.

    ``figures`` are embedded in HTML. Without them the HTML page states
    ``figures_note``, by default that the ``plot`` extra is needed.
    """
    if fmt == "json":
        return render_json(report)
    if fmt == "markdown":
        return render_markdown(report, columns)
    if fmt == "html":
        return render_html(report, columns, figures, figures_note)
    if fmt == "table":
        return render_terminal(report, width=width, color=color, columns=columns)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def render_json(report: Report) -> str:
    """Return the report document (``schema_version`` 1) as indented JSON."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


def parse_report_target(text: str) -> tuple[str, Path]:
    """Split a ``FORMAT:FILE`` value; raise ValueError naming the value when invalid."""
    fmt, sep, path = text.partition(":")
    if not sep or not path:
        raise ValueError(
            f"expected FORMAT:FILE, such as markdown:setol.md, got {text!r}"
        )
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown format {fmt!r} in {text!r}; expected one of {', '.join(FORMATS)}"
        )
    return fmt, Path(path)


def write_report(report: Report, fmt: str, path: str | Path, **options: object) -> Path:
    """Write ``report`` as ``fmt`` to ``path``, creating its folder; return the path."""
    target = Path(path)
    text = render(report, fmt, **options)  # type: ignore[arg-type]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


# Plain-text violations ---------------------------------------------------------


def check_summary(report: Report) -> str:
    """Return the one-line summary that ``setol check`` prints last."""
    violations = [v for c in report.checkpoints for v in iter_violations(c)]
    failed = sum(1 for v in violations if v.outcome == "fail")
    warned = sum(1 for v in violations if v.outcome == "warn")
    errors = sum(1 for v in violations if v.outcome == "error")
    files = len(report.checkpoints)
    matrices = sum(len(c.layers) for c in report.checkpoints)
    scope = (
        f"{files} checkpoint{'s' if files != 1 else ''}, "
        f"{matrices} matri{'ces' if matrices != 1 else 'x'}"
    )
    if not violations:
        return f"setol check: passed: {scope}, no violations"
    verdict = "failed" if failed or errors else "passed with warnings"
    counts = f"{failed} fail, {warned} warn, {errors} unreadable"
    return f"setol check: {verdict}: {scope}: {counts}"


def _verdict_sentence(report: Report) -> str:
    """Return the check summary as a sentence: ``Failed: 1 checkpoint, ...``."""
    text = check_summary(report).removeprefix("setol check: ")
    return text[:1].upper() + text[1:] + "."


def render_violations(report: Report, color: bool = False) -> str:
    """Return one line per violation and the summary line, as ``setol check`` prints.

    Lines are never wrapped, so each one stays searchable in logs.
    """
    import io

    from rich.text import Text

    styles = {"fail": "bold red", "error": "bold red", "warn": "yellow"}
    buffer = io.StringIO()
    console = text_console(buffer, PLAIN_WIDTH, color)
    for checkpoint in report.checkpoints:
        for violation in iter_violations(checkpoint):
            line = Text(f"{violation.outcome:<5}", style=styles[violation.outcome])
            line.append(f" {violation.node_id}: {violation.message}")
            console.print(line, soft_wrap=True)
    console.print(check_summary(report), soft_wrap=True)
    return buffer.getvalue()


# Markdown ---------------------------------------------------------------------


def render_markdown(report: Report, columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Return the report as GitHub-flavoured Markdown."""
    lines = ["## setol report", ""]
    lines.append(_verdict_sentence(report))
    lines.append("")
    for checkpoint in report.checkpoints:
        lines.extend(_markdown_checkpoint(checkpoint, report, columns))
    return "\n".join(lines).rstrip("\n") + "\n"


def _markdown_checkpoint(
    checkpoint: CheckpointResult, report: Report, columns: Sequence[str]
) -> list[str]:
    lines = [f"### `{_md_code(checkpoint.path)}`", ""]
    if checkpoint.error is not None:
        lines += [f"**Not analysed:** {_md_text(checkpoint.error)}", ""]
        return lines
    lines += [f"- {_md_text(line)}" for line in summary_lines(checkpoint, report)]
    lines.append("")
    violations = list(iter_violations(checkpoint))
    if violations:
        lines += ["| outcome | layer | rule | message |", "|---|---|---|---|"]
        for violation in violations:
            where = f"`{_md_code(violation.layer)}`" if violation.layer else "(model)"
            lines.append(
                f"| **{violation.outcome}** | {where} | {violation.rule} "
                f"| {_md_text(violation.message)} |"
            )
        lines.append("")
    else:
        lines += ["No rule failed or warned.", ""]
    lines += [
        "<details>",
        f"<summary>All {len(checkpoint.layers)} layers</summary>",
        "",
        "| layer | " + " | ".join(columns) + " | status |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for layer in checkpoint.layers:
        cells = [f"`{_md_code(layer.name)}`"]
        cells += [format_value(layer, column) for column in columns]
        cells.append(_md_text(_status_label(layer)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "</details>", ""]
    return lines


def _status_label(layer: LayerResult) -> str:
    if layer.flags:
        return f"{layer.status} ({', '.join(layer.flags)})"
    return layer.status


def _md_text(text: str) -> str:
    """Escape text for a Markdown table cell: pipes, HTML and line breaks."""
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return escaped.replace("\r", " ").replace("\n", "<br>")


def _md_code(text: str) -> str:
    """Escape text for a code span inside a table cell."""
    return text.replace("`", "'").replace("|", "\\|").replace("\n", " ")


# HTML -------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 75em;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
h3 { font-size: 1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { font-family: ui-monospace, monospace; font-size: 0.9em; }
tr.status-over-trained td.status, tr.status-invalid td.status,
td.outcome-fail, td.outcome-error { color: #b00020; font-weight: 600; }
tr.status-under-trained td.status, tr.status-erg-violated td.status,
tr.status-flagged td.status, td.outcome-warn { color: #a05a00; font-weight: 600; }
tr.status-ok td.status { color: #1e7b34; }
tr.status-skipped { color: #777; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; font-family: ui-monospace, monospace; }
.note { background: #fff6d5; padding: 0.5em 0.8em; border-left: 4px solid #e0b000; }
.settings { color: #555; font-size: 0.9em; }
"""


def render_html(
    report: Report,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    figures: Sequence[CheckpointFigures] | None = None,
    figures_note: str | None = None,
) -> str:
    """Return the report as one self-contained HTML page."""
    by_path = {f.path: f for f in figures or ()}
    if figures is None and figures_note is None:
        figures_note = (
            f"Figures are not included: they need matplotlib ({PLOT_INSTALL_HINT})."
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>setol report</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        "<h1>setol report</h1>",
        f'<p class="settings">{_e(_settings_line(report))}</p>',
        f"<p>{_e(_verdict_sentence(report))}</p>",
    ]
    if figures_note:
        parts.append(f'<p class="note">{_e(figures_note)}</p>')
    for index, checkpoint in enumerate(report.checkpoints):
        figure_set = by_path.get(checkpoint.path)
        parts.extend(_html_checkpoint(index, checkpoint, report, columns, figure_set))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _settings_line(report: Report) -> str:
    settings = report.settings
    keys = ("version", "device", "dtype", "xmin_strategy", "scale")
    parts = [f"{key} {settings[key]}" for key in keys if key in settings]
    return "pytest-setol " + ", ".join(parts)


def _html_checkpoint(
    index: int,
    checkpoint: CheckpointResult,
    report: Report,
    columns: Sequence[str],
    figures: CheckpointFigures | None,
) -> list[str]:
    anchor = f"checkpoint-{index}"
    parts = [
        f'<section class="checkpoint" id="{anchor}">',
        f"<h2>{_e(checkpoint.path)}</h2>",
    ]
    if checkpoint.error is not None:
        parts += [
            f'<p class="note">Not analysed: {_e(checkpoint.error)}</p>',
            "</section>",
        ]
        return parts
    parts.append('<ul class="summary">')
    parts += [f"<li>{_e(line)}</li>" for line in summary_lines(checkpoint, report)]
    parts.append("</ul>")

    violations = list(iter_violations(checkpoint))
    if violations:
        parts.append(f"<h3>Violations ({len(violations)})</h3>")
        parts.append(_html_violations(violations))

    figure_ids = {}
    if figures is not None:
        figure_ids = {f.name: f"{anchor}-esd-{i}" for i, f in enumerate(figures.layers)}
        if figures.overview is not None:
            parts.append(
                _html_figure(figures.overview, "alpha per layer", f"{anchor}-overview")
            )
        if figures.note:
            parts.append(f'<p class="note">{_e(figures.note)}</p>')

    parts.append(f"<h3>Layers ({len(checkpoint.layers)})</h3>")
    parts.append(_html_layer_table(checkpoint, columns, figure_ids))

    if figures is not None and figures.layers:
        parts.append(f"<h3>ESD figures ({len(figures.layers)})</h3>")
        parts += [
            _html_figure(f.png, f.name, figure_ids[f.name]) for f in figures.layers
        ]
    parts.append("</section>")
    return parts


def _html_violations(violations: list[Violation]) -> str:
    rows = [
        '<table class="violations">',
        "<thead><tr><th>outcome</th><th>layer</th><th>rule</th><th>message</th>"
        "</tr></thead><tbody>",
    ]
    for violation in violations:
        where = _e(violation.layer) if violation.layer else "(model)"
        rows.append(
            f'<tr><td class="outcome-{violation.outcome}">{violation.outcome}</td>'
            f'<td class="name">{where}</td><td>{_e(violation.rule)}</td>'
            f"<td>{_e(violation.message)}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _html_layer_table(
    checkpoint: CheckpointResult, columns: Sequence[str], figure_ids: dict[str, str]
) -> str:
    header = "".join(f"<th>{_e(c)}</th>" for c in ("layer", *columns, "status"))
    rows = [
        '<table class="layers">',
        f"<thead><tr>{header}</tr></thead>",
        "<tbody>",
    ]
    for layer in checkpoint.layers:
        name = _e(layer.name)
        if layer.name in figure_ids:
            name = f'<a href="#{figure_ids[layer.name]}">{name}</a>'
        cells = [f'<td class="name">{name}</td>']
        cells += [f'<td class="num">{_e(format_value(layer, c))}</td>' for c in columns]
        title = f' title="{_e(layer.reason)}"' if layer.reason else ""
        cells.append(f'<td class="status"{title}>{_e(_status_label(layer))}</td>')
        rows.append(
            f'<tr class="status-{_e(layer.status)}" data-layer="{_e(layer.name)}">'
            + "".join(cells)
            + "</tr>"
        )
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _html_figure(png: bytes, caption: str, anchor: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{anchor}"><img alt="{_e(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{_e(caption)}</figcaption>'
        "</figure>"
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)
