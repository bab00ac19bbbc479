"""Spec files (``setol.yaml``, ``*.setol.yaml``) collected by a plain ``pytest``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.checkpoint_builders import bulk_and_tail, matrices, mixed_tensors, write

pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")

#: Counts the layers analysed in a run, to prove that collection computes none.
COUNTING_CONFTEST = """
import pytest_setol.analysis as analysis

_original = analysis.analyze_layer
ANALYSED = []


def counting(plan, *args, **kwargs):
    ANALYSED.append(plan.name)
    return _original(plan, *args, **kwargs)


def pytest_configure(config):
    analysis.analyze_layer = counting


def pytest_unconfigure(config):
    analysis.analyze_layer = _original
    print("ANALYSED", len(ANALYSED))
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    """A repository with models/ and tests/model.setol.yaml naming one checkpoint."""
    write(pytester.path / "models" / "mixed.safetensors", mixed_tensors())
    spec = pytester.path / "tests" / "model.setol.yaml"
    spec.parent.mkdir()
    spec.write_text(
        textwrap.dedent(
            """
            checkpoints:
              - ../models/mixed.safetensors
            rules:
              erg_delta: {min: 0, severity: fail}
            """
        )
    )
    return spec


def test_spec_file_collected_without_option(
    pytester: pytest.Pytester, project: Path
) -> None:
    result = pytester.runpytest("-v")
    # The spec's own rules apply: erg_delta now fails instead of warning.
    result.assert_outcomes(passed=2, failed=3, skipped=1)
    result.stdout.fnmatch_lines_random(
        [
            "tests/model.setol.yaml::../models/mixed.safetensors::ok PASSED*",
            "tests/model.setol.yaml::../models/mixed.safetensors::warned FAILED*",
            "tests/model.setol.yaml::../models/mixed.safetensors::model PASSED*",
            "*warned: erg_delta = -0.1* is below the minimum 0 (fail, rule from "
            "*model.setol.yaml:5)*",
            "*setol report*",
            "*models/mixed.safetensors*",
        ]
    )


def test_plain_setol_yaml_named_spec(pytester: pytest.Pytester) -> None:
    write(pytester.path / "good.safetensors", matrices(a=bulk_and_tail()))
    (pytester.path / "setol.yaml").write_text("checkpoints: [good.safetensors]\n")
    result = pytester.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(
        ["setol.yaml::good.safetensors::a", "setol.yaml::good.safetensors::model"]
    )


def test_thresholds_file_is_not_a_spec(pytester: pytest.Pytester) -> None:
    write(pytester.path / "good.safetensors", matrices(a=bulk_and_tail()))
    (pytester.path / "setol.yaml").write_text("rules:\n  alpha: {max: 5}\n")
    (pytester.path / "other.setol.yaml").write_text("# checkpoints: none here\n")
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=1)
    assert "setol report" not in result.stdout.str()


def test_missing_checkpoint_fails_model_item(pytester: pytest.Pytester) -> None:
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "gone.setol.yaml").write_text(
        "checkpoints:\n  - ../models/gone.safetensors\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "tests/gone.setol.yaml: checkpoints[[]0[]] '../models/gone.safetensors':"
            " models/gone.safetensors: file not found; check the path",
            "FAILED tests/gone.setol.yaml::../models/gone.safetensors::model*",
        ]
    )


def test_invalid_spec_is_collection_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "bad.setol.yaml").write_text(
        "checkpoints:\n  - a.safetensors\nrules:\n  alpha: {min: 7, max: 3}\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*bad.setol.yaml:4: rules.alpha: min (7) is greater than max (3)*"]
    )


def test_unmatched_glob_in_spec(pytester: pytest.Pytester) -> None:
    write(pytester.path / "good.safetensors", matrices(a=bulk_and_tail()))
    (pytester.path / "good.setol.yaml").write_text(
        "checkpoints: [good.safetensors]\n"
        "layers:\n  - match: decoder.*\n    skip: true\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pattern 'decoder.*' matches no layer*"])


def test_collect_only_computes_nothing(
    pytester: pytest.Pytester, project: Path
) -> None:
    pytester.makeconftest(COUNTING_CONFTEST)
    listed = pytester.runpytest("--co", "-q", "-s")
    listed.stdout.fnmatch_lines(
        [
            "tests/model.setol.yaml::../models/mixed.safetensors::ok",
            "tests/model.setol.yaml::../models/mixed.safetensors::over",
            "tests/model.setol.yaml::../models/mixed.safetensors::tiny",
            "tests/model.setol.yaml::../models/mixed.safetensors::under",
            "tests/model.setol.yaml::../models/mixed.safetensors::warned",
            "tests/model.setol.yaml::../models/mixed.safetensors::model",
            "ANALYSED 0",
        ]
    )
    # The same spy counts the layers of a real run, so it can catch a regression.
    ran = pytester.runpytest("-s", "-k", "ok")
    ran.stdout.fnmatch_lines(["ANALYSED 1"])


def test_collect_only_with_option_computes_nothing(pytester: pytest.Pytester) -> None:
    path = write(pytester.path / "mixed.safetensors", mixed_tensors())
    pytester.makeconftest(COUNTING_CONFTEST)
    result = pytester.runpytest("--setol", str(path), "--co", "-q", "-s")
    result.stdout.fnmatch_lines(["mixed.safetensors::ok", "*ANALYSED 0*"])


def test_ini_options_with_command_line_winning(
    pytester: pytest.Pytester, project: Path
) -> None:
    (pytester.path / "strict.yaml").write_text("rules:\n  alpha: {min: 1, max: 100}\n")
    pytester.makeini(
        textwrap.dedent(
            """
            [pytest]
            setol_device = cpu
            setol_json = reports/setol.json
            setol_config = strict.yaml
            """
        )
    )
    checkpoint = pytester.path / "models" / "mixed.safetensors"
    (pytester.path / "sub").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        # Ini paths are relative to the ini file, not the working directory.
        patch.chdir(pytester.path / "sub")
        result = pytester.runpytest(
            "--setol",
            str(checkpoint),
            str(pytester.path / "tests"),
            "-p",
            "no:cacheprovider",
        )
    # strict.yaml widens alpha for --setol paths; the spec keeps its own rules.
    result.assert_outcomes(passed=7, failed=3, skipped=2)
    document = json.loads((pytester.path / "reports" / "setol.json").read_text())
    assert document["settings"]["device_requested"] == "cpu"
    first = document["checkpoints"][0]
    assert first["config"].endswith("strict.yaml")
    over = next(layer for layer in first["layers"] if layer["name"] == "over")
    assert over["status"] != "over-trained"
    override = pytester.path / "cli.json"
    again = pytester.runpytest(
        "tests", "--setol-json", str(override), "--setol-device", "auto"
    )
    again.assert_outcomes(passed=2, failed=3, skipped=1)
    document = json.loads(override.read_text())
    assert document["settings"]["device_requested"] == "auto"
    assert document["checkpoints"][0]["config"].endswith("model.setol.yaml")


def test_unknown_ini_device_is_usage_error(
    pytester: pytest.Pytester, project: Path
) -> None:
    pytester.makeini("[pytest]\nsetol_device = tpu\n")
    result = pytester.runpytest(
        "--setol", str(pytester.path / "models" / "mixed.safetensors")
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--setol-device: unknown device 'tpu'*"])
