"""Frozen result records whose attributes are the keys of the JSON report.

The plugin, the command line and the Python API all return or serialise these
records, so one layer reads the same in every output.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

#: Layer statuses, in the order the summary lists them.
STATUSES = (
    "ok",
    "over-trained",
    "under-trained",
    "erg-violated",
    "flagged",
    "fit-failed",
    "invalid",
    "skipped",
)

#: Verdict outcomes of one rule.
OUTCOMES = ("pass", "warn", "fail", "skip", "error")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule on one layer or on the model."""

    rule: str
    outcome: str
    severity: str
    observed: float | None = None
    min: float | None = None
    max: float | None = None
    message: str = ""


@dataclass(frozen=True)
class LayerResult:
    """Everything reported for one weight matrix; null where not computed."""

    name: str
    kind: str
    shape: tuple[int, ...]
    N: int | None = None
    M: int | None = None
    Q: float | None = None
    L: int | None = None
    alpha: float | None = None
    xmin: float | None = None
    xmax: float | None = None
    D: float | None = None
    sigma: float | None = None
    num_pl_spikes: int | None = None
    alpha_hat: float | None = None
    lambda_max: float | None = None
    log_norm: float | None = None
    log_spectral_norm: float | None = None
    log_alpha_norm: float | None = None
    stable_rank: float | None = None
    erg_num: int | None = None
    erg_lambda_min: float | None = None
    erg_delta: float | None = None
    erg_gap: int | None = None
    erg_tail_norm: float | None = None
    mp_sigma: float | None = None
    mp_lambda_plus: float | None = None
    mp_lambda_minus: float | None = None
    num_spikes: int | None = None
    mp_softrank: float | None = None
    xmin_strategy: str | None = None
    num_fingers: int | None = None
    raw_alpha: float | None = None
    rand_num_spikes: int | None = None
    rand_traps: tuple[float, ...] | None = None
    rand_lambda_max: float | None = None
    rand_jsd: float | None = None
    alpha_farms: float | None = None
    status: str = "skipped"
    flags: tuple[str, ...] = ()
    reason: str | None = None
    verdicts: tuple[Verdict, ...] = ()
    aliases: tuple[str, ...] = ()
    quantization: str | None = None
    scale: str = "raw"
    dtype: str | None = None
    seconds: float | None = None

    def metric(self, key: str) -> float | None:
        """Return the numeric value of ``key``, or None when it is null."""
        value = getattr(self, key)
        if value is None:
            return None
        return float(value)

    @property
    def failed(self) -> bool:
        return any(v.outcome in ("fail", "error") for v in self.verdicts)

    @property
    def warned(self) -> bool:
        return any(v.outcome == "warn" for v in self.verdicts)


#: Layer keys holding a number, which rules and model means may name.
NUMERIC_KEYS = tuple(
    f.name
    for f in dataclasses.fields(LayerResult)
    if f.type in ("int | None", "float | None") and f.name != "seconds"
)


@dataclass(frozen=True)
class CheckpointSummary:
    """Model-level figures of one checkpoint."""

    layers: int
    analysed: int
    status_counts: dict[str, int]
    mean_alpha: float | None
    coverage: float
    analysed_parameters: int
    float_parameters: int
    fail_fraction: float
    device: str
    seconds: float


@dataclass(frozen=True)
class CheckpointResult:
    """The analysis of one checkpoint, or the error that stopped it."""

    path: str
    summary: CheckpointSummary | None
    not_analysed: dict[str, int]
    layers: tuple[LayerResult, ...]
    verdicts: tuple[Verdict, ...] = ()
    error: str | None = None
    config: str | None = None

    def layer(self, name: str) -> LayerResult:
        """Return the layer called ``name``; raise KeyError naming close matches."""
        for layer in self.layers:
            if layer.name == name or name in layer.aliases:
                return layer
        raise KeyError(f"no layer named {name!r} in {self.path}")

    @property
    def failed(self) -> bool:
        if self.error is not None:
            return True
        model_failed = any(v.outcome in ("fail", "error") for v in self.verdicts)
        return model_failed or any(layer.failed for layer in self.layers)


@dataclass(frozen=True)
class Report:
    """The whole document: settings and one entry per checkpoint."""

    settings: dict[str, Any]
    checkpoints: tuple[CheckpointResult, ...]
    schema_version: int = SCHEMA_VERSION

    def layer(self, name: str) -> LayerResult:
        """Return the layer called ``name`` from the first checkpoint holding it."""
        for checkpoint in self.checkpoints:
            try:
                return checkpoint.layer(name)
            except KeyError:
                continue
        raise KeyError(f"no layer named {name!r} in any analysed checkpoint")

    @property
    def layers(self) -> tuple[LayerResult, ...]:
        return tuple(layer for c in self.checkpoints for layer in c.layers)

    @property
    def failed(self) -> bool:
        return any(c.failed for c in self.checkpoints)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document as plain Python data."""
        return {
            "schema_version": self.schema_version,
            "settings": _plain(self.settings),
            "checkpoints": [checkpoint_to_dict(c) for c in self.checkpoints],
        }


def _plain(value: Any) -> Any:
    """Convert tuples, dataclasses and non-finite floats to JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def layer_to_dict(layer: LayerResult) -> dict[str, Any]:
    result: dict[str, Any] = _plain(layer)
    return result


def layer_from_dict(data: dict[str, Any]) -> LayerResult:
    """Rebuild a layer from its JSON form, ignoring keys this version lacks."""
    names = {f.name for f in dataclasses.fields(LayerResult)}
    values = {k: v for k, v in data.items() if k in names}
    for key in ("shape", "flags", "aliases"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    if values.get("rand_traps") is not None:
        values["rand_traps"] = tuple(values["rand_traps"])
    values["verdicts"] = tuple(Verdict(**v) for v in data.get("verdicts", ()))
    return LayerResult(**values)


def checkpoint_to_dict(checkpoint: CheckpointResult) -> dict[str, Any]:
    return {
        "path": checkpoint.path,
        "config": checkpoint.config,
        "error": checkpoint.error,
        "summary": _plain(checkpoint.summary),
        "verdicts": _plain(checkpoint.verdicts),
        "not_analysed": dict(checkpoint.not_analysed),
        "layers": [layer_to_dict(layer) for layer in checkpoint.layers],
    }


def checkpoint_from_dict(data: dict[str, Any]) -> CheckpointResult:
    summary = data.get("summary")
    return CheckpointResult(
        path=data["path"],
        config=data.get("config"),
        error=data.get("error"),
        summary=CheckpointSummary(**summary) if summary else None,
        verdicts=tuple(Verdict(**v) for v in data.get("verdicts", ())),
        not_analysed=dict(data.get("not_analysed", {})),
        layers=tuple(layer_from_dict(layer) for layer in data.get("layers", ())),
    )


def report_from_dict(data: dict[str, Any]) -> Report:
    """Rebuild a report from its JSON document."""
    return Report(
        settings=dict(data.get("settings", {})),
        checkpoints=tuple(checkpoint_from_dict(c) for c in data["checkpoints"]),
        schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
    )
