"""YAML thresholds: parsing, precedence and errors that name file, key and line."""

from __future__ import annotations

import textwrap

import pytest

from pytest_setol.config import Config, parse_config
from pytest_setol.errors import ConfigError


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "setol.yaml")


def test_empty_file_gives_defaults() -> None:
    config = parse("")
    assert config.min_eigenvalues == 50
    assert config.rules["alpha"].min == 2.0
    assert config.rules["alpha"].max == 6.0
    assert config.rules["alpha"].severity == "fail"
    assert config.rules["erg_delta"].min == 0.0
    assert config.rules["erg_delta"].severity == "warn"
    assert config.statuses == {"fit-failed": "warn", "invalid": "fail"}


def test_rule_fields_merge_with_defaults() -> None:
    config = parse(
        """
        rules:
          alpha: {max: 8}
          stable_rank: {min: 2, severity: warn}
          erg_delta: null
        """
    )
    assert config.rules["alpha"].min == 2.0
    assert config.rules["alpha"].max == 8.0
    assert config.rules["stable_rank"].severity == "warn"
    assert "erg_delta" not in config.rules


def test_last_matching_override_wins() -> None:
    config = parse(
        """
        layers:
          - match: "encoder.*"
            rules:
              alpha: {max: 7}
          - match: ["encoder.layer.5.*", "pooler.*"]
            rules:
              alpha: {max: 9, severity: warn}
          - match: "pooler.dense.weight"
            skip: re-initialised when fine-tuning
        """
    )
    by_metric = {r.metric: r for r in config.rules_for("encoder.layer.5.key.weight")}
    assert by_metric["alpha"].max == 9.0
    assert by_metric["alpha"].min == 2.0
    assert by_metric["alpha"].severity == "warn"
    by_metric = {r.metric: r for r in config.rules_for("encoder.layer.1.key.weight")}
    assert by_metric["alpha"].max == 7.0
    assert by_metric["alpha"].severity == "fail"
    assert (
        config.skip_reason("pooler.dense.weight") == "re-initialised when fine-tuning"
    )
    assert config.skip_reason("encoder.layer.1.key.weight") is None


def test_model_rules() -> None:
    config = parse(
        """
        model:
          mean_alpha: {min: 2, max: 5}
          fail_fraction: {max: 0.1}
          coverage: {min: 0.9, severity: warn}
        """
    )
    assert set(config.model) == {"mean_alpha", "fail_fraction", "coverage"}
    assert config.model["coverage"].severity == "warn"


BAD_FILES = [
    ("unknown_key", "thresholds: {}\n", 1, "thresholds", "unknown key"),
    ("unknown_metric", "rules:\n  alpah: {min: 2}\n", 2, "rules.alpah", "unknown key"),
    ("wrong_type", "rules:\n  alpha: {min: two}\n", 2, "rules.alpha.min", "expected a number"),
    ("min_above_max", "rules:\n\n  alpha: {min: 7, max: 3}\n", 3, "rules.alpha", "greater than max"),
    ("bad_severity", "rules:\n  alpha: {max: 3, severity: loud}\n", 2, "rules.alpha.severity", "expected one of fail, warn"),
    ("layers_not_list", "layers: {match: x}\n", 1, "layers", "expected a list"),
    ("missing_match", "layers:\n  - skip: true\n", 2, "layers[0]", "needs 'match'"),
    ("min_eigenvalues", "min_eigenvalues: -3\n", 1, "min_eigenvalues", "positive integer"),
    ("model_metric", "model:\n  mean_alpah: {max: 5}\n", 2, "model.mean_alpah", "unknown key"),
    ("syntax", "rules: [\n", 2, "", "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_file_names_key_and_line(
    text: str, line: int, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, "conf/setol.yaml")
    error = excinfo.value
    assert error.path == "conf/setol.yaml"
    assert error.line == line
    assert error.key == key
    assert message in str(error)
    assert str(error).startswith(f"conf/setol.yaml:{line}: ")


def test_unmatched_glob_is_an_error() -> None:
    config = parse(
        """
        layers:
          - match: "encoder.*"
          - match: "decoder.*"
            rules:
              alpha: {max: 9}
        """
    )
    with pytest.raises(ConfigError, match=r"'decoder\.\*' matches no layer") as excinfo:
        config.check_patterns(["encoder.layer.0.weight"])
    assert excinfo.value.line == 4
    assert excinfo.value.key == "layers[1].match"
