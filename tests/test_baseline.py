"""Baselines: drift rules against a previous report, added and removed layers."""

from __future__ import annotations

import fnmatch
import json
import textwrap
from pathlib import Path

import pytest

from pytest_setol.config import parse_config
from pytest_setol.errors import ConfigError
from tests.checkpoint_builders import bulk_and_tail, matrices, pareto, write

pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")

DRIFT_RULES = """
rules:
  erg_delta: null
  alpha: {min: 1, max: 10, max_increase: 0.5}
  log_norm: {max_decrease: 0.2, severity: warn}
"""


@pytest.fixture
def base(pytester: pytest.Pytester) -> Path:
    """The checkpoint before fine-tuning: three healthy layers."""
    tensors = matrices(
        enc__0=bulk_and_tail(), enc__1=bulk_and_tail(), enc__2=bulk_and_tail()
    )
    return write(pytester.path / "base" / "model.safetensors", tensors)


@pytest.fixture
def rules(pytester: pytest.Pytester) -> Path:
    path = pytester.path / "drift.yaml"
    path.write_text(DRIFT_RULES)
    return path


@pytest.fixture
def baseline(pytester: pytest.Pytester, base: Path, rules: Path) -> Path:
    """A baseline report of ``base``, written by --setol-update-baseline."""
    target = pytester.path / "baseline.json"
    result = pytester.runpytest(
        "--setol", str(base), "--setol-config", str(rules),
        "--setol-baseline", str(target), "--setol-update-baseline",
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"setol baseline written to {target}"])
    return target


def test_unchanged_checkpoint_passes(
    pytester: pytest.Pytester, base: Path, rules: Path, baseline: Path
) -> None:
    result = pytester.runpytest(
        "--setol", str(base), "--setol-config", str(rules),
        "--setol-baseline", str(baseline),
    )  # fmt: skip
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*setol drift*",
            "*layer*alpha before*alpha drift*drift check*",
            "*enc.0*2.253*+0.000*pass*",
            "added layers: none",
            "removed layers: none",
        ]
    )


def test_drift_fails_and_lists_layer_changes(
    pytester: pytest.Pytester, rules: Path, baseline: Path
) -> None:
    # The fine-tune raised alpha of enc.1, shrank enc.2's norm, dropped enc.0
    # and added a head; the baseline of another path still applies.
    tuned_tensors = matrices(
        enc__1=pareto(4.0), enc__2=0.5 * bulk_and_tail(), head=bulk_and_tail()
    )
    tuned = write(pytester.path / "tuned.safetensors", tuned_tensors)
    target = pytester.path / "tuned.json"
    result = pytester.runpytest(
        "--setol", str(tuned), "--setol-config", str(rules),
        "--setol-baseline", str(baseline), "--setol-json", str(target), "-rw",
    )  # fmt: skip
    result.assert_outcomes(passed=3, failed=1, warnings=1)
    result.stdout.fnmatch_lines_random(
        [
            "*enc.1: alpha rose by 1.7* from the baseline (2.253 -> 4.0*), more "
            "than max_increase 0.5 (fail, rule from *drift.yaml:4)*less learned "
            "correlation*",
            "*SetolRuleWarning: enc.2: log_norm fell by 0.301 from the baseline*"
            "more than max_decrease 0.2 (warn*",
            "*enc.1 *+1.7* *fail*",
            "*enc.2 *+0.000* *warn*",
            "added layers: head",
            "removed layers: enc.0",
        ]
    )
    document = json.loads(target.read_text())
    layers = {layer["name"]: layer for layer in document["checkpoints"][0]["layers"]}
    drift = {v["rule"]: v for v in layers["enc.1"]["verdicts"]}["alpha_drift"]
    assert drift["outcome"] == "fail"
    assert drift["max"] == 0.5
    assert layers["enc.1"]["status"] == "flagged"
    assert layers["enc.2"]["status"] == "flagged"
    assert layers["head"]["status"] == "ok"
    section = document["baseline"]["checkpoints"][0]
    assert section["baseline_path"].endswith("base/model.safetensors")
    assert section["added"] == ["head"]
    assert section["removed"] == ["enc.0"]
    change = section["layers"][0]["changes"]["alpha"]
    assert change["change"] == pytest.approx(change["current"] - change["baseline"])
    assert document["checkpoints"][0]["summary"]["status_counts"]["flagged"] == 2


def test_update_rewrites_baseline(
    pytester: pytest.Pytester, rules: Path, baseline: Path
) -> None:
    tuned = write(pytester.path / "tuned.safetensors", matrices(enc__0=pareto(4.0)))
    args = ("--setol", str(tuned), "--setol-config", str(rules))
    failing = pytester.runpytest(*args, "--setol-baseline", str(baseline))
    failing.assert_outcomes(passed=1, failed=1)
    updated = pytester.runpytest(
        *args, "--setol-baseline", str(baseline), "--setol-update-baseline"
    )
    updated.assert_outcomes(passed=2)
    document = json.loads(baseline.read_text())
    assert [c["path"] for c in document["checkpoints"]] == [str(tuned)]
    again = pytester.runpytest(*args, "--setol-baseline", str(baseline))
    again.assert_outcomes(passed=2)


def test_partial_update_keeps_baseline_entry(
    pytester: pytest.Pytester, base: Path, rules: Path, baseline: Path
) -> None:
    before = json.loads(baseline.read_text())
    result = pytester.runpytest(
        "--setol", str(base), "--setol-config", str(rules), "-k", "enc.0",
        "--setol-baseline", str(baseline), "--setol-update-baseline",
    )  # fmt: skip
    result.assert_outcomes(passed=1, deselected=3)
    after = json.loads(baseline.read_text())
    assert len(after["checkpoints"][0]["layers"]) == 3
    assert after["checkpoints"] == before["checkpoints"]


def test_baseline_from_ini(
    pytester: pytest.Pytester, base: Path, rules: Path, baseline: Path
) -> None:
    pytester.makeini(
        f"[pytest]\nsetol_baseline = baseline.json\nsetol_config = {rules.name}\n"
    )
    result = pytester.runpytest("--setol", str(base))
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*setol drift*"])


def test_missing_baseline_is_usage_error(pytester: pytest.Pytester, base: Path) -> None:
    result = pytester.runpytest("--setol", str(base), "--setol-baseline", "nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*nope.json: baseline file not found; write it with --setol-update-baseline*"]
    )


def test_update_needs_baseline_path(pytester: pytest.Pytester, base: Path) -> None:
    result = pytester.runpytest("--setol", str(base), "--setol-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--setol-update-baseline needs --setol-baseline FILE*"]
    )


def test_invalid_baseline_file(pytester: pytest.Pytester, base: Path) -> None:
    bad = pytester.path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 99, "checkpoints": []}))
    result = pytester.runpytest("--setol", str(base), "--setol-baseline", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.json: baseline schema_version is 99*"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  alpha: {max_increase: -1}\n",
            "*:2: rules.alpha.max_increase: expected a change of 0 or more, got -1",
        ),
        (
            "rules:\n  alpha: {max_decrease: fast}\n",
            "*:2: rules.alpha.max_decrease: expected a number, got a string ('fast')",
        ),
        (
            "model:\n  mean_alpha: {max: 4, max_increase: 1}\n",
            "*:2: model.mean_alpha.max_increase: drift bounds apply to layer metrics "
            "only*",
        ),
    ],
)
def test_invalid_drift_rules(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(textwrap.dedent(text), "drift.yaml")
    assert fnmatch.fnmatchcase(str(excinfo.value), message), str(excinfo.value)


def test_drift_only_rule_adds_no_bound() -> None:
    config = parse_config("rules:\n  log_norm: {max_increase: 0.1}\n", "drift.yaml")
    rule = config.rules["log_norm"]
    assert rule.max_increase == 0.1
    assert not rule.bounded
    assert rule.describe() == "log_norm (drift bounds only)"
