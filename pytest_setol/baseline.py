"""Compare a run with a baseline report: drift verdicts, added and removed layers.

A baseline is a document written by ``--setol-json`` (or by
``--setol-update-baseline``). Rules with ``max_increase`` or ``max_decrease``
bound how far a layer metric may move from its baseline value. Each bound
becomes a verdict named ``<metric>_drift``, whose observed value is the
change (current minus baseline).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, Rule
from .errors import SetolError
from .results import (
    SCHEMA_VERSION,
    CheckpointResult,
    LayerResult,
    Report,
    Verdict,
    checkpoint_to_dict,
    report_from_dict,
)
from .verdicts import judge_model, summarize

#: Suffix of the rule name of a drift verdict: ``alpha`` gives ``alpha_drift``.
DRIFT_SUFFIX = "_drift"
#: Metric whose change the drift table always shows, with or without a rule.
SHOWN_METRIC = "alpha"

_READINGS = {
    ("alpha", "rose"): "HTSR reading: the ESD became less heavy-tailed, "
    "so the layer holds less learned correlation than before",
    ("alpha", "fell"): "HTSR reading: the ESD became more heavy-tailed, "
    "a move towards over-training",
    ("erg_delta", "fell"): "SETOL reading: the layer moved towards or below "
    "the ERG condition",
}


class BaselineError(SetolError):
    """A baseline file is missing, unreadable or not a report document."""


@dataclass(frozen=True)
class Baseline:
    """The checkpoints of a baseline report, as read from ``path``."""

    path: str
    checkpoints: tuple[CheckpointResult, ...]

    def match(self, path: str) -> CheckpointResult | None:
        """Return the baseline entry of checkpoint ``path``.

        The entry with the same path wins, then the only entry with the same
        file name, then the only entry of a single-checkpoint baseline, so a
        report of ``base.safetensors`` is the baseline of ``tuned.safetensors``.
        The choice depends on the baseline alone, so every xdist worker and
        the controller make the same one.
        """
        for checkpoint in self.checkpoints:
            if checkpoint.path == path:
                return checkpoint
        name = Path(path).name
        same_name = [c for c in self.checkpoints if Path(c.path).name == name]
        if len(same_name) == 1:
            return same_name[0]
        if len(self.checkpoints) == 1:
            return self.checkpoints[0]
        return None


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline report; raise BaselineError naming the file and the fix."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            f"{path}: baseline file not found; write it with "
            "--setol-update-baseline or point --setol-baseline at a "
            "--setol-json report"
        ) from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read the baseline: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(
            f"{path}: the baseline is not valid JSON (line {exc.lineno}): {exc.msg}"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise BaselineError(
            f"{path}: the baseline has no 'checkpoints' list; expected a report "
            "written by --setol-json"
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: baseline schema_version is {version!r}, this version reads "
            f"{SCHEMA_VERSION}; write the baseline again with --setol-update-baseline"
        )
    try:
        report = report_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BaselineError(f"{path}: invalid baseline entry: {exc}") from exc
    return Baseline(str(path), report.checkpoints)


def drift_verdicts(
    layer: LayerResult, before: LayerResult, rules: Iterable[Rule]
) -> tuple[Verdict, ...]:
    """Check every drift bound of ``rules`` on one layer against its baseline."""
    return tuple(_drift_verdict(layer, before, rule) for rule in rules if rule.drift)


def _drift_verdict(layer: LayerResult, before: LayerResult, rule: Rule) -> Verdict:
    low = -rule.max_decrease if rule.max_decrease is not None else None
    verdict = Verdict(
        rule.metric + DRIFT_SUFFIX,
        "pass",
        rule.severity,
        min=low,
        max=rule.max_increase,
    )
    old, new = before.metric(rule.metric), layer.metric(rule.metric)
    if old is None or new is None or math.isnan(old) or math.isnan(new):
        where = "in the baseline" if old is None or math.isnan(old) else "now"
        message = f"{layer.name}: {rule.metric} is null {where}, so its drift "
        return dataclasses.replace(
            verdict, outcome="skip", message=message + "is not checked"
        )
    change = new - old
    if rule.max_increase is not None and change > rule.max_increase:
        moved, key, bound = "rose", "max_increase", rule.max_increase
    elif rule.max_decrease is not None and -change > rule.max_decrease:
        moved, key, bound = "fell", "max_decrease", rule.max_decrease
    else:
        return dataclasses.replace(verdict, observed=change)
    message = (
        f"{layer.name}: {rule.metric} {moved} by {abs(change):.4g} from the "
        f"baseline ({old:.4g} -> {new:.4g}), more than {key} {bound:g} "
        f"({rule.severity}, rule from {rule.origin})"
    )
    reading = _READINGS.get((rule.metric, moved))
    if reading:
        message += f". {reading}"
    return dataclasses.replace(
        verdict, outcome=rule.severity, observed=change, message=message
    )


def apply_drift(
    layer: LayerResult, before: LayerResult | None, rules: Iterable[Rule]
) -> LayerResult:
    """Return ``layer`` with its drift verdicts added; ``ok`` becomes ``flagged``.

    A layer absent from the baseline (``before`` is None) is returned as is:
    the drift table lists it as added.
    """
    if before is None or layer.status in ("skipped", "invalid"):
        return layer
    verdicts = drift_verdicts(layer, before, rules)
    if not verdicts:
        return layer
    status = layer.status
    if status == "ok" and any(v.outcome in ("fail", "warn") for v in verdicts):
        status = "flagged"
    return dataclasses.replace(layer, status=status, verdicts=layer.verdicts + verdicts)


def apply_to_checkpoint(
    result: CheckpointResult, before: CheckpointResult | None, config: Config
) -> CheckpointResult:
    """Add drift verdicts to every layer, then recompute the summary and model rules."""
    if before is None or result.summary is None:
        return result
    previous = _by_name(before.layers)
    layers = tuple(
        apply_drift(layer, previous.get(layer.name), config.rules_for(layer.name))
        for layer in result.layers
    )
    old = result.summary
    summary = summarize(layers, old.float_parameters, old.device, old.seconds)
    verdicts = judge_model(result.path, layers, summary, config.model)
    return dataclasses.replace(
        result, layers=layers, summary=summary, verdicts=verdicts
    )


def _by_name(layers: Iterable[LayerResult]) -> dict[str, LayerResult]:
    return {layer.name: layer for layer in layers}


@dataclass(frozen=True)
class LayerDrift:
    """One layer's metrics before and after, and its worst drift outcome."""

    name: str
    changes: Mapping[str, tuple[float | None, float | None]]
    outcome: str

    def change(self, metric: str) -> float | None:
        old, new = self.changes.get(metric, (None, None))
        if old is None or new is None:
            return None
        return new - old


@dataclass(frozen=True)
class CheckpointDrift:
    """A checkpoint compared with its baseline entry."""

    path: str
    baseline_path: str | None
    added: tuple[str, ...]
    removed: tuple[str, ...]
    layers: tuple[LayerDrift, ...]
    metrics: tuple[str, ...]


_OUTCOME_RANK = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}


def compare(report: Report, baseline: Baseline) -> tuple[CheckpointDrift, ...]:
    """Pair each checkpoint of ``report`` with its baseline entry and compare them."""
    drifts = []
    for checkpoint in report.checkpoints:
        before = baseline.match(checkpoint.path)
        if before is None or checkpoint.error is not None:
            drifts.append(
                CheckpointDrift(checkpoint.path, None, (), (), (), (SHOWN_METRIC,))
            )
            continue
        previous = _by_name(before.layers)
        current = _by_name(checkpoint.layers)
        metrics = [SHOWN_METRIC]
        for layer in checkpoint.layers:
            for verdict in layer.verdicts:
                metric = verdict.rule.removesuffix(DRIFT_SUFFIX)
                if verdict.rule.endswith(DRIFT_SUFFIX) and metric not in metrics:
                    metrics.append(metric)
        rows = []
        for layer in checkpoint.layers:
            old = previous.get(layer.name)
            if old is None:
                continue
            changes = {m: (old.metric(m), layer.metric(m)) for m in metrics}
            outcomes = [
                v.outcome for v in layer.verdicts if v.rule.endswith(DRIFT_SUFFIX)
            ]
            worst = max(outcomes, key=lambda o: _OUTCOME_RANK.get(o, 0), default="-")
            rows.append(LayerDrift(layer.name, changes, worst))
        drifts.append(
            CheckpointDrift(
                path=checkpoint.path,
                baseline_path=before.path,
                added=tuple(n for n in current if n not in previous),
                removed=tuple(n for n in previous if n not in current),
                layers=tuple(rows),
                metrics=tuple(metrics),
            )
        )
    return tuple(drifts)


def drift_to_dict(
    baseline: Baseline, drifts: Sequence[CheckpointDrift]
) -> dict[str, Any]:
    """Return the ``baseline`` section of the JSON report."""
    return {
        "path": baseline.path,
        "checkpoints": [
            {
                "path": drift.path,
                "baseline_path": drift.baseline_path,
                "added": list(drift.added),
                "removed": list(drift.removed),
                "layers": [
                    {
                        "name": row.name,
                        "outcome": row.outcome,
                        "changes": {
                            metric: {
                                "baseline": old,
                                "current": new,
                                "change": row.change(metric),
                            }
                            for metric, (old, new) in row.changes.items()
                        },
                    }
                    for row in drift.layers
                ],
            }
            for drift in drifts
        ],
    }


def render_drift(
    drifts: Sequence[CheckpointDrift], baseline: Baseline, width: int, color: bool
) -> str:
    """Return one drift table per checkpoint plus its added and removed layers."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from .report import text_console

    buffer = io.StringIO()
    console = text_console(buffer, width, color)
    for drift in drifts:
        if drift.baseline_path is None:
            console.print(Text(f"{drift.path}: no entry in baseline {baseline.path}"))
            continue
        title = f"{drift.path} against {drift.baseline_path} ({baseline.path})"
        table = Table(
            title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
        )
        table.add_column("layer", overflow="fold", min_width=20)
        for metric in drift.metrics:
            table.add_column(f"{metric} before", justify="right", no_wrap=True)
            table.add_column(f"{metric} drift", justify="right", no_wrap=True)
        table.add_column("drift check", no_wrap=True)
        for row in drift.layers:
            cells: list[str | Text] = [Text(row.name)]
            for metric in drift.metrics:
                old = row.changes[metric][0]
                change = row.change(metric)
                cells.append("-" if old is None else f"{old:.3f}")
                cells.append("-" if change is None else f"{change:+.3f}")
            style = {"fail": "bold red", "warn": "yellow"}.get(row.outcome, "")
            cells.append(Text(row.outcome, style=style))
            table.add_row(*cells)
        console.print(table)
        console.print(Text(f"added layers: {_names(drift.added)}"))
        console.print(Text(f"removed layers: {_names(drift.removed)}"))
    return buffer.getvalue()


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def updated_document(report: Report, previous: Baseline | None) -> dict[str, Any]:
    """Return the document that ``--setol-update-baseline`` writes.

    A checkpoint whose model item did not run (deselected, or the run
    stopped early) has no summary. Its previous baseline entry is kept, so a
    partial run never drops layers from the baseline.
    """
    document = report.to_dict()
    if previous is None:
        return document
    entries = []
    for checkpoint, entry in zip(
        report.checkpoints, document["checkpoints"], strict=True
    ):
        previous_entry = None
        if checkpoint.summary is None and checkpoint.error is None:
            previous_entry = next(
                (c for c in previous.checkpoints if c.path == checkpoint.path), None
            )
        entries.append(
            checkpoint_to_dict(previous_entry) if previous_entry is not None else entry
        )
    document["checkpoints"] = entries
    return document
