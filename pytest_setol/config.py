"""Parse and validate ``setol.yaml`` into frozen rule objects.

The whole file is checked before any spectrum is computed: every error names
the file, the key and the line.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .options import XMIN_STRATEGIES
from .results import NUMERIC_KEYS

SEVERITIES = ("fail", "warn")
STATUS_SEVERITIES = ("fail", "warn", "ignore")
#: Statuses whose severity a file may set, with the built-in severity.
DEFAULT_STATUS_SEVERITY = {"fit-failed": "warn", "invalid": "fail"}
#: Model-level quantities other than ``mean_<metric>``.
MODEL_QUANTITIES = ("fail_fraction", "coverage")
DEFAULT_MIN_EIGENVALUES = 50

_TOP_KEYS = ("min_eigenvalues", "rules", "statuses", "layers", "model", "checkpoints")
_RULE_KEYS = (
    "min", "max", "severity", "max_increase", "max_decrease", "xmin_strategy"
)  # fmt: skip
#: Layer metrics that come from the power-law fit, so a rule on them may name
#: its own ``xmin_strategy``.
FIT_METRICS = (
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "num_fingers",
    "raw_alpha", "alpha_hat", "log_alpha_norm", "erg_delta", "erg_gap",
)  # fmt: skip
#: Rule keys that bound the change of a layer metric against a baseline report.
DRIFT_KEYS = ("max_increase", "max_decrease")
_LAYER_KEYS = ("match", "rules", "skip")


@dataclass(frozen=True)
class Rule:
    """A bound on one metric: fails or warns when the value leaves [min, max].

    ``max_increase`` and ``max_decrease`` bound the change of the metric
    against a baseline report; they apply only when a run has a baseline.
    ``xmin_strategy``, when set, checks the metric of a power-law fit with
    that strategy instead of the run's.
    """

    metric: str
    min: float | None = None
    max: float | None = None
    severity: str = "fail"
    origin: str = "built-in defaults"
    max_increase: float | None = None
    max_decrease: float | None = None
    xmin_strategy: str | None = None

    @property
    def bounded(self) -> bool:
        """True when the rule bounds the value itself, not only its drift."""
        return self.min is not None or self.max is not None

    @property
    def drift(self) -> bool:
        """True when the rule bounds the change against a baseline."""
        return self.max_increase is not None or self.max_decrease is not None

    def describe(self) -> str:
        metric = self.metric
        if self.xmin_strategy is not None:
            metric = f"{metric} ({self.xmin_strategy} fit)"
        if self.min is not None and self.max is not None:
            return f"{metric} in [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f"{metric} >= {self.min:g}"
        if self.max is not None:
            return f"{metric} <= {self.max:g}"
        return f"{metric} (drift bounds only)"


@dataclass(frozen=True)
class LayerOverride:
    """Rules or a skip for the layers whose names match one of ``patterns``."""

    patterns: tuple[str, ...]
    rules: Mapping[str, Rule | None]
    skip: str | None
    key: str
    line: int | None

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


DEFAULT_RULES = {
    "alpha": Rule("alpha", min=2.0, max=6.0, severity="fail"),
    "erg_delta": Rule("erg_delta", min=0.0, severity="warn"),
}


@dataclass(frozen=True)
class Config:
    """Validated thresholds; ``path`` is None for the built-in defaults."""

    path: str | None = None
    min_eigenvalues: int = DEFAULT_MIN_EIGENVALUES
    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    statuses: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_STATUS_SEVERITY)
    )
    layers: tuple[LayerOverride, ...] = ()
    model: Mapping[str, Rule] = field(default_factory=dict)
    checkpoints: tuple[str, ...] = ()

    def rules_for(self, name: str) -> tuple[Rule, ...]:
        """Return the rules of layer ``name``, applying matching overrides in order."""
        merged: dict[str, Rule | None] = dict(self.rules)
        for override in self.layers:
            if override.matches(name):
                merged.update(override.rules)
        return tuple(rule for rule in merged.values() if rule is not None)

    def skip_reason(self, name: str) -> str | None:
        """Return why ``name`` is skipped by the last matching ``skip``, if any."""
        reason = None
        for override in self.layers:
            if override.skip is not None and override.matches(name):
                reason = override.skip
        return reason

    def check_patterns(self, names: Iterable[str]) -> None:
        """Raise ConfigError for a ``match`` glob that matches none of ``names``."""
        names = list(names)
        for override in self.layers:
            for pattern in override.patterns:
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    raise ConfigError(
                        self.path or "<defaults>",
                        f"{override.key}.match",
                        f"pattern {pattern!r} matches no layer of the checkpoint; "
                        "fix the pattern or remove the entry",
                        override.line,
                    )


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML threshold file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            path, "", f"cannot read the file: {exc.strerror or exc}"
        ) from exc
    return parse_config(text, str(path))


def parse_config(text: str, path: str = "<string>") -> Config:
    """Validate YAML text; ``path`` only labels error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(path, "", f"invalid YAML: {problem}{column}", line) from exc
    lines: dict[str, int] = {}
    if node is not None:
        _record_lines(node, "", lines)
    return _Parser(path, lines).parse(data)


def _record_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    """Map each dotted key path of the document to its 1-based line."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = f"{prefix}[{index}]"
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key, lines)


class _Parser:
    def __init__(self, path: str, lines: dict[str, int]) -> None:
        self.path = path
        self.lines = lines

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, key, message, self.lines.get(key))

    def mapping(self, value: Any, key: str, allowed: Iterable[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        allowed = tuple(allowed)
        for name in value:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                raise self.error(
                    where, f"unknown key {name!r}; expected one of {', '.join(allowed)}"
                )
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        return float(value)

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.error(
                key, f"expected one of {', '.join(choices)}, got {value!r}"
            )
        return str(value)

    def parse(self, data: Any) -> Config:
        if data is None:
            return Config(path=self.path)
        data = self.mapping(data, "", _TOP_KEYS)
        config = Config(path=self.path)
        if "min_eigenvalues" in data:
            value = data["min_eigenvalues"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self.error(
                    "min_eigenvalues", f"expected a positive integer, got {value!r}"
                )
            config = replace(config, min_eigenvalues=value)
        if "rules" in data:
            rules: dict[str, Rule | None] = dict(DEFAULT_RULES)
            rules.update(self.rules(data["rules"], "rules", base=DEFAULT_RULES))
            config = replace(
                config, rules={k: v for k, v in rules.items() if v is not None}
            )
        if "statuses" in data:
            statuses = dict(DEFAULT_STATUS_SEVERITY)
            raw = self.mapping(data["statuses"], "statuses", DEFAULT_STATUS_SEVERITY)
            for status, severity in raw.items():
                key = f"statuses.{status}"
                statuses[status] = self.choice(severity, key, STATUS_SEVERITIES)
            config = replace(config, statuses=statuses)
        if "layers" in data:
            config = replace(config, layers=self.layers(data["layers"], config.rules))
        if "model" in data:
            config = replace(config, model=self.model(data["model"]))
        if "checkpoints" in data:
            config = replace(config, checkpoints=self.checkpoints(data["checkpoints"]))
        return config

    def rules(
        self, value: Any, key: str, base: Mapping[str, Rule | None]
    ) -> dict[str, Rule | None]:
        raw = self.mapping(value, key, NUMERIC_KEYS)
        return {
            metric: self.rule(spec, f"{key}.{metric}", metric, base.get(metric))
            for metric, spec in raw.items()
        }

    def rule(self, spec: Any, key: str, metric: str, base: Rule | None) -> Rule | None:
        if spec is None:
            return None
        spec = self.mapping(spec, key, _RULE_KEYS)
        if not any(k in spec for k in ("min", "max", *DRIFT_KEYS)) and base is None:
            raise self.error(
                key, "a rule needs 'min', 'max', 'max_increase' or 'max_decrease'"
            )
        rule = base or Rule(metric)
        origin = f"{self.path}:{self.lines.get(key, '?')}"
        rule = replace(rule, origin=origin)
        if "min" in spec:
            rule = replace(rule, min=self.number(spec["min"], f"{key}.min"))
        if "max" in spec:
            rule = replace(rule, max=self.number(spec["max"], f"{key}.max"))
        if "severity" in spec:
            rule = replace(
                rule,
                severity=self.choice(spec["severity"], f"{key}.severity", SEVERITIES),
            )
        for drift_key in DRIFT_KEYS:
            if drift_key in spec:
                where = f"{key}.{drift_key}"
                bound = self.number(spec[drift_key], where)
                if bound < 0:
                    raise self.error(
                        where, f"expected a change of 0 or more, got {bound:g}"
                    )
                if drift_key == "max_increase":
                    rule = replace(rule, max_increase=bound)
                else:
                    rule = replace(rule, max_decrease=bound)
        if "xmin_strategy" in spec:
            where = f"{key}.xmin_strategy"
            if metric not in FIT_METRICS:
                raise self.error(
                    where,
                    f"{metric} does not come from the power-law fit; xmin_strategy "
                    f"applies to {', '.join(FIT_METRICS)}",
                )
            strategy = self.choice(spec["xmin_strategy"], where, XMIN_STRATEGIES)
            rule = replace(rule, xmin_strategy=strategy)
        if rule.min is not None and rule.max is not None and rule.min > rule.max:
            raise self.error(
                key, f"min ({rule.min:g}) is greater than max ({rule.max:g})"
            )
        return rule

    def layers(self, value: Any, base: Mapping[str, Rule]) -> tuple[LayerOverride, ...]:
        if not isinstance(value, list):
            raise self.error(
                "layers", f"expected a list of entries, got {_kind(value)}"
            )
        overrides = []
        for index, entry in enumerate(value):
            key = f"layers[{index}]"
            entry = self.mapping(entry, key, _LAYER_KEYS)
            if "match" not in entry:
                raise self.error(key, "an entry needs 'match': a glob on tensor names")
            patterns = entry["match"]
            if isinstance(patterns, str):
                patterns = [patterns]
            if (
                not isinstance(patterns, list)
                or not patterns
                or not all(isinstance(p, str) and p for p in patterns)
            ):
                raise self.error(
                    f"{key}.match", "expected a glob string or a list of glob strings"
                )
            rules = self.rules(entry.get("rules", {}), f"{key}.rules", base)
            skip = entry.get("skip")
            if skip is True:
                skip = f"skipped by {self.path} ({key}.skip)"
            elif skip is False:
                skip = None
            elif skip is not None and not isinstance(skip, str):
                raise self.error(
                    f"{key}.skip",
                    f"expected true or a reason string, got {_kind(skip)}",
                )
            overrides.append(
                LayerOverride(tuple(patterns), rules, skip, key, self.lines.get(key))
            )
        return tuple(overrides)

    def model(self, value: Any) -> dict[str, Rule]:
        allowed = MODEL_QUANTITIES + tuple(f"mean_{k}" for k in NUMERIC_KEYS)
        raw = self.mapping(value, "model", allowed)
        rules = {}
        for name, spec in raw.items():
            for drift_key in DRIFT_KEYS:
                if isinstance(spec, dict) and drift_key in spec:
                    raise self.error(
                        f"model.{name}.{drift_key}",
                        "drift bounds apply to layer metrics only; move the bound "
                        "to 'rules' or a 'layers' entry",
                    )
            if isinstance(spec, dict) and "xmin_strategy" in spec:
                raise self.error(
                    f"model.{name}.xmin_strategy",
                    "xmin_strategy applies to layer rules only; move it to 'rules' "
                    "or a 'layers' entry",
                )
            rule = self.rule(spec, f"model.{name}", name, None)
            if rule is not None:
                rules[name] = rule
        return rules

    def checkpoints(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error("checkpoints", "expected a list of checkpoint paths")
        return tuple(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
