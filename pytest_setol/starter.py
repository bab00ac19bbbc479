"""The starter ``setol.yaml`` that ``setol init`` writes for an existing checkpoint.

The file spells out every default, so a team can review what it adopts, and lists
the layers that fail those defaults today. By default it also lowers the
failing rules to warnings for exactly those layers (a baseline), so the gate
passes on the current checkpoint and fails on new regressions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from . import __version__
from .config import (
    DEFAULT_MIN_EIGENVALUES,
    DEFAULT_RULES,
    DEFAULT_STATUS_SEVERITY,
    Rule,
)
from .results import CheckpointResult, LayerResult

#: Comment lines per default rule: the usual reading of a value outside it.
_RULE_NOTES = {
    "alpha": (
        "HTSR power-law exponent of the ESD tail: below the minimum is very",
        "heavy-tailed (over-trained), above the maximum is close to random",
        "(under-trained).",
    ),
    "erg_delta": (
        "SETOL's ERG condition: where the power-law tail starts minus where",
        "the ERG tail starts, in normalised units; negative means the",
        "power-law tail starts first.",
    ),
}


def escape_glob(name: str) -> str:
    """Return a ``match`` glob of only ``name``, with ``[``, ``*`` and ``?`` escaped."""
    special = {"[": "[[]", "*": "[*]", "?": "[?]"}
    return "".join(special.get(char, char) for char in name)


def starter_config(checkpoint: CheckpointResult, baseline: bool = True) -> str:
    """Return the commented YAML text of a starter ``setol.yaml`` for ``checkpoint``."""
    failing = [layer for layer in checkpoint.layers if layer.failed]
    warned = [layer for layer in checkpoint.layers if layer.warned and not layer.failed]
    lines = [
        "# setol.yaml: thresholds for `setol check`, `pytest --setol` and the",
        "# setol pre-commit hooks, which read this file from beside the checkpoint.",
        f"# Written by `setol init` (pytest-setol {__version__}) for",
        f"# {checkpoint.path}: {len(checkpoint.layers)} matrices.",
        "# Every value below is the built-in default.",
        "",
        "# A matrix with fewer eigenvalues than this is reported as skipped.",
        f"min_eigenvalues: {DEFAULT_MIN_EIGENVALUES}",
        "",
        "# Bounds on layer metrics. A `fail` rule fails the layer (setol check",
        "# exits 1); a `warn` rule is printed and passes.",
        "rules:",
    ]
    for metric, rule in DEFAULT_RULES.items():
        lines += [f"  # {note}" for note in _RULE_NOTES.get(metric, ())]
        lines.append(f"  {metric}: {_rule_yaml(rule)}")
    lines += [
        "",
        "# Severity of statuses that are not rule violations: fail, warn or ignore.",
        "statuses:",
    ]
    lines += [f"  {status}: {sev}" for status, sev in DEFAULT_STATUS_SEVERITY.items()]
    lines += [
        "",
        "# Model-level bounds; none by default. For example:",
        "# model:",
        "#   coverage: {min: 0.9}  # fraction of float parameters analysed",
        "#   mean_alpha: {min: 2.0, max: 6.0}",
        "",
    ]
    lines += _layer_listing(failing, warned, len(checkpoint.layers))
    lines += _baseline(failing, baseline)
    return "\n".join(lines).rstrip("\n") + "\n"


def _rule_yaml(rule: Rule) -> str:
    parts = []
    if rule.min is not None:
        parts.append(f"min: {rule.min!r}")
    if rule.max is not None:
        parts.append(f"max: {rule.max!r}")
    parts.append(f"severity: {rule.severity}")
    return "{" + ", ".join(parts) + "}"


def _layer_listing(
    failing: list[LayerResult], warned: list[LayerResult], total: int
) -> list[str]:
    if not failing and not warned:
        return [f"# All {total} matrices pass these rules today.", ""]
    lines = []
    if failing:
        lines.append(
            f"# Layers that fail these rules today ({len(failing)} of {total}):"
        )
        lines += [f"#   {line}" for line in _verdict_lines(failing, ("fail", "error"))]
    if warned:
        lines.append(f"# Layers that only warn today ({len(warned)} of {total}):")
        lines += [f"#   {line}" for line in _verdict_lines(warned, ("warn",))]
    lines.append("")
    return lines


def _verdict_lines(
    layers: list[LayerResult], outcomes: tuple[str, ...]
) -> Iterator[str]:
    for layer in layers:
        for verdict in layer.verdicts:
            if verdict.outcome not in outcomes:
                continue
            message = verdict.message.removeprefix(f"{layer.name}: ")
            # The rule origin and the reading are long; the listing keeps the value.
            yield f"{layer.name}: {message.split(' (', 1)[0]}"


def _baseline(failing: list[LayerResult], active: bool) -> list[str]:
    if not failing:
        return []
    prefix = "" if active else "# "
    if active:
        lines = [
            "# These entries lower the failing rules to warnings for those layers",
            "# only, so the gate passes on this checkpoint and fails on new",
            "# regressions. Delete an entry once its layer is fixed.",
        ]
    else:
        lines = [
            "# setol check fails until these layers are fixed. To accept them for",
            "# now, uncomment these entries; each lowers the failing rules to",
            "# warnings for one layer.",
        ]
    lines.append(f"{prefix}layers:")
    for layer in failing:
        lines.append(f"{prefix}  - match: {json.dumps(escape_glob(layer.name))}")
        lines += [f"{prefix}    {line}" for line in _override(layer)]
    return lines


def _override(layer: LayerResult) -> list[str]:
    """Return the entry body that accepts ``layer``'s current failures."""
    failed = [v for v in layer.verdicts if v.outcome in ("fail", "error")]
    if any(v.rule not in DEFAULT_RULES for v in failed):
        # A status such as ``invalid`` or an unreadable tensor: no rule to lower.
        reason = (
            f"accepted by setol init: {layer.status}: {layer.reason or 'unreadable'}"
        )
        return [f"skip: {json.dumps(reason)}"]
    lines = ["rules:"]
    for metric in dict.fromkeys(v.rule for v in failed):
        lines.append(f"  {metric}: {{severity: warn}}")
    return lines
