"""SetolWarning: warn rules and failed fits pass with a warning that -W escalates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pytest_setol
from tests.checkpoint_builders import ROWS, bulk_and_tail, matrices, pareto, write
from tests.conftest import matrix_with_eigenvalues

pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")


@pytest.fixture
def warned(pytester: pytest.Pytester) -> Path:
    """One layer below the ERG condition (warn) and one orthogonal matrix.

    An orthogonal matrix has a constant spectrum, so its fit fails, which the
    default ``fit-failed: warn`` turns into a SetolFitWarning.
    """
    tensors = matrices(erg=pareto(2.5), good=bulk_and_tail())
    rng = np.random.default_rng(9)
    # float64, because float32 rounding would spread the constant spectrum.
    tensors["flat"] = matrix_with_eigenvalues(np.ones(100), ROWS, rng)
    return write(pytester.path / "warned.safetensors", tensors)


def test_categories_form_one_family() -> None:
    assert issubclass(pytest_setol.SetolWarning, pytest.PytestWarning)
    assert issubclass(pytest_setol.SetolRuleWarning, pytest_setol.SetolWarning)
    assert issubclass(pytest_setol.SetolFitWarning, pytest_setol.SetolWarning)


def test_warn_verdicts_pass_with_warnings(
    pytester: pytest.Pytester, warned: Path
) -> None:
    result = pytester.runpytest("--setol", str(warned))
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines_random(
        [
            "*SetolRuleWarning: erg: erg_delta = -0.1* is below the minimum 0 (warn*",
            "*SetolFitWarning: flat: fit-failed: *",
        ]
    )


@pytest.mark.parametrize(
    ("category", "failed", "passed"),
    [("SetolWarning", 2, 2), ("SetolRuleWarning", 1, 3), ("SetolFitWarning", 1, 3)],
)
def test_error_filter_turns_warnings_into_failures(
    pytester: pytest.Pytester, warned: Path, category: str, failed: int, passed: int
) -> None:
    result = pytester.runpytest(
        "--setol", str(warned), "-W", f"error::pytest_setol.{category}"
    )
    result.assert_outcomes(passed=passed, failed=failed)
    if category != "SetolFitWarning":
        result.stdout.fnmatch_lines(
            ["FAILED warned.safetensors::erg - SetolRuleWarning: erg: erg_delta = *"]
        )


def test_error_filter_under_xdist(pytester: pytest.Pytester, warned: Path) -> None:
    pytest.importorskip("xdist")
    result = pytester.runpytest(
        "--setol", str(warned), "-n", "2", "-W", "error::pytest_setol.SetolRuleWarning"
    )
    result.assert_outcomes(passed=3, failed=1)


def test_ini_filter_ignores_warnings(pytester: pytest.Pytester, warned: Path) -> None:
    pytester.makeini(
        "[pytest]\nfilterwarnings =\n    ignore::pytest_setol.SetolWarning\n"
    )
    result = pytester.runpytest("--setol", str(warned))
    result.assert_outcomes(passed=4)


def test_model_warn_rule(pytester: pytest.Pytester, warned: Path) -> None:
    (pytester.path / "setol.yaml").write_text(
        "model:\n  mean_alpha: {max: 2.3, severity: warn}\n"
    )
    result = pytester.runpytest(
        "--setol", str(warned), "-W", "ignore::pytest_setol.SetolFitWarning"
    )
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines(
        ["*SetolRuleWarning: *warned.safetensors (model): mean_alpha = 2.38 is above*"]
    )
