"""Apply rules to layer metrics: verdicts, the layer status and its flags."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from .config import Config, Rule
from .results import CheckpointSummary, LayerResult, Verdict

#: ``fit-unreliable`` thresholds: the fit is weak evidence past these.
UNRELIABLE_ALPHA = 8.0
UNRELIABLE_MIN_TAIL = 10
UNRELIABLE_D = 0.1

_READINGS = {
    ("alpha", "below"): "HTSR reading: over-trained, a very heavy-tailed ESD",
    ("alpha", "above"): "HTSR reading: under-trained, an ESD close to random",
    ("erg_delta", "below"): (
        "SETOL reading: below the ERG condition, the power-law tail starts "
        "before the ERG tail"
    ),
}


def fit_flags(layer: LayerResult) -> tuple[tuple[str, ...], str | None]:
    """Return the ``fit-unreliable`` flag and its reason when the fit is weak."""
    if layer.alpha is None:
        return (), None
    reasons = []
    if layer.alpha > UNRELIABLE_ALPHA:
        reasons.append(f"alpha {layer.alpha:.3g} > {UNRELIABLE_ALPHA:g}")
    if layer.num_pl_spikes is not None and layer.num_pl_spikes < UNRELIABLE_MIN_TAIL:
        reasons.append(f"tail of {layer.num_pl_spikes} < {UNRELIABLE_MIN_TAIL} values")
    if layer.D is not None and layer.D > UNRELIABLE_D:
        reasons.append(f"D {layer.D:.3g} > {UNRELIABLE_D:g}")
    if not reasons:
        return (), None
    return ("fit-unreliable",), "fit-unreliable: " + ", ".join(reasons)


def check_rule(
    subject: str, rule: Rule, observed: float | None, note: str = ""
) -> Verdict:
    """Compare one value with one rule and word the outcome."""
    if observed is None or (isinstance(observed, float) and math.isnan(observed)):
        message = (
            f"{subject}: {rule.metric} is null, so {rule.describe()} is not checked"
        )
        return _verdict(rule, "skip", None, message)
    if rule.min is not None and observed < rule.min:
        side, relation, bound = "below", "is below the minimum", rule.min
    elif rule.max is not None and observed > rule.max:
        side, relation, bound = "above", "is above the maximum", rule.max
    else:
        return _verdict(rule, "pass", observed, "")
    message = (
        f"{subject}: {rule.metric} = {observed:.4g} {relation} {bound:g} "
        f"({rule.severity}, rule from {rule.origin})"
    )
    reading = _READINGS.get((rule.metric, side))
    if reading:
        message += f". {reading}"
    if note:
        message += f". {note}"
    return _verdict(rule, rule.severity, observed, message)


def _verdict(rule: Rule, outcome: str, observed: float | None, message: str) -> Verdict:
    return Verdict(
        rule=rule.metric,
        outcome=outcome,
        severity=rule.severity,
        observed=observed,
        min=rule.min,
        max=rule.max,
        message=message,
    )


def judge_layer(
    layer: LayerResult,
    rules: Sequence[Rule],
    config: Config,
    refits: Mapping[str, LayerResult] | None = None,
) -> LayerResult:
    """Return ``layer`` with its verdicts, status and flags filled in.

    ``layer.status`` on entry is ``skipped``, ``invalid``, ``fit-failed`` or
    ``ok`` (analysed); analysed layers get a status from the failing rules.
    A rule with its own ``xmin_strategy`` reads its metric from
    ``refits[strategy]``, the same layer fitted with that strategy.
    """
    if layer.status == "skipped":
        return dataclasses.replace(
            layer,
            verdicts=(Verdict("skip", "skip", "skip", message=layer.reason or ""),),
        )
    if layer.status == "invalid":
        severity = config.statuses["invalid"]
        return dataclasses.replace(
            layer,
            verdicts=(_status_verdict(layer, "invalid", severity),),
        )
    flags, flag_reason = fit_flags(layer)
    note = flag_reason or ""
    verdicts = [
        _check_layer_rule(layer, rule, note, refits or {})
        for rule in rules
        if rule.bounded
    ]
    status = layer.status
    if status == "fit-failed":
        verdicts.insert(
            0, _status_verdict(layer, "fit-failed", config.statuses["fit-failed"])
        )
    else:
        status = _status_from(verdicts)
    reason = layer.reason
    if flag_reason:
        reason = flag_reason if reason is None else f"{reason}; {flag_reason}"
    return dataclasses.replace(
        layer,
        status=status,
        flags=tuple(layer.flags) + flags,
        verdicts=tuple(verdicts),
        reason=reason,
    )


def _check_layer_rule(
    layer: LayerResult, rule: Rule, note: str, refits: Mapping[str, LayerResult]
) -> Verdict:
    source = layer
    if rule.xmin_strategy is not None and rule.xmin_strategy in refits:
        source = refits[rule.xmin_strategy]
        note = f"{rule.metric} from the {rule.xmin_strategy} fit"
        refit_flag = fit_flags(source)[1]
        if refit_flag:
            note = f"{note}. {refit_flag}"
    return check_rule(layer.name, rule, source.metric(rule.metric), note)


def _status_verdict(layer: LayerResult, status: str, severity: str) -> Verdict:
    outcome = "pass" if severity == "ignore" else severity
    return Verdict(
        status, outcome, severity,
        message=f"{layer.name}: {status}: {layer.reason}",
    )  # fmt: skip


def _status_from(verdicts: Sequence[Verdict]) -> str:
    failing = [v for v in verdicts if v.outcome in ("fail", "warn")]
    for verdict in failing:
        if verdict.rule == "alpha":
            below = verdict.min is not None and verdict.observed is not None
            if below and verdict.observed < verdict.min:  # type: ignore[operator]
                return "over-trained"
            return "under-trained"
    if any(v.rule == "erg_delta" for v in failing):
        return "erg-violated"
    return "flagged" if failing else "ok"


def summarize(
    layers: Sequence[LayerResult],
    float_parameters: int,
    device: str,
    seconds: float,
) -> CheckpointSummary:
    """Return the model-level figures of a checkpoint's layer results."""
    counts = {status: 0 for status in ("ok",)}
    for layer in layers:
        counts[layer.status] = counts.get(layer.status, 0) + 1
    analysed = [layer for layer in layers if layer.status not in ("skipped", "invalid")]
    alphas = [layer.alpha for layer in analysed if layer.alpha is not None]
    analysed_parameters = sum(_parameters(layer) for layer in analysed)
    judged = [layer for layer in layers if layer.status != "skipped"]
    failing = sum(1 for layer in judged if layer.failed)
    return CheckpointSummary(
        layers=len(layers),
        analysed=len(analysed),
        status_counts=counts,
        mean_alpha=sum(alphas) / len(alphas) if alphas else None,
        coverage=analysed_parameters / float_parameters if float_parameters else 0.0,
        analysed_parameters=analysed_parameters,
        float_parameters=float_parameters,
        fail_fraction=failing / len(judged) if judged else 0.0,
        device=device,
        seconds=seconds,
    )


def _parameters(layer: LayerResult) -> int:
    return math.prod(layer.shape) if layer.shape else 0


def judge_model(
    path: str,
    layers: Sequence[LayerResult],
    summary: CheckpointSummary,
    rules: Mapping[str, Rule],
) -> tuple[Verdict, ...]:
    """Check the model-level rules: means of metrics, fail fraction, coverage."""
    verdicts = []
    for name, rule in rules.items():
        if name == "fail_fraction":
            observed: float | None = summary.fail_fraction
        elif name == "coverage":
            observed = summary.coverage
        else:
            metric = name.removeprefix("mean_")
            values = [v for layer in layers if (v := layer.metric(metric)) is not None]
            observed = sum(values) / len(values) if values else None
        verdicts.append(
            check_rule(
                f"{path} (model)", dataclasses.replace(rule, metric=name), observed
            )
        )
    return tuple(verdicts)
