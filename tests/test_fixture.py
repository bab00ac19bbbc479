"""The ``setol`` fixture and the ``@pytest.mark.setol`` marker in users' own tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from pytest_setol.fixtures import content_key
from tests.checkpoint_builders import bulk_and_tail, matrices, pareto, write

pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")


@pytest.fixture
def checkpoint(pytester: pytest.Pytester) -> Path:
    tensors = matrices(enc__0__q=bulk_and_tail(), enc__1__q=pareto(5.0))
    return write(pytester.path / "model.safetensors", tensors)


def _test_file(pytester: pytest.Pytester, body: str, **paths: Path) -> None:
    header = "import pytest\n" + "".join(
        f"{k.upper()} = {str(v)!r}\n" for k, v in paths.items()
    )
    pytester.makepyfile(test_user=header + textwrap.dedent(body))


def test_fixture_returns_api_report(
    pytester: pytest.Pytester, checkpoint: Path
) -> None:
    _test_file(
        pytester,
        """
        import pytest_setol

        def test_alpha(setol):
            report = setol.analyze(CHECKPOINT)
            assert report.layer("enc.0.q").alpha < 4
            direct = pytest_setol.analyze(CHECKPOINT)
            assert report.layer("enc.1.q").alpha == direct.layer("enc.1.q").alpha
            assert report.settings["device_requested"] == "auto"

        def test_too_strict(setol):
            assert setol.analyze(CHECKPOINT).layer("enc.1.q").alpha < 4
        """,
        checkpoint=checkpoint,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*assert 5.0* < 4*"])


def test_cache_shared_and_keyed_by_content(
    pytester: pytest.Pytester, checkpoint: Path
) -> None:
    other = write(pytester.path / "other.safetensors", matrices(enc__0__q=pareto(3.0)))
    _test_file(
        pytester,
        """
        import shutil

        SEEN = []

        def test_first(setol):
            SEEN.append(setol.analyze(CHECKPOINT))

        def test_second_hits_cache(setol):
            assert setol.analyze(CHECKPOINT) is SEEN[0]
            assert setol.analyze(CHECKPOINT, config=None, device="cpu") is not SEEN[0]

        def test_changed_file_is_analysed_again(setol):
            shutil.copyfile(OTHER, CHECKPOINT)
            report = setol.analyze(CHECKPOINT)
            assert report is not SEEN[0]
            assert [layer.name for layer in report.layers] == ["enc.0.q"]
        """,
        checkpoint=checkpoint,
        other=other,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)


def test_marker_thresholds_fail_the_test(
    pytester: pytest.Pytester, checkpoint: Path
) -> None:
    (pytester.path / "setol.yaml").write_text(
        "rules:\n  erg_delta: null\nlayers:\n  - match: enc.1.*\n    rules:\n"
        "      alpha: {max: 9}\n"
    )
    _test_file(
        pytester,
        """
        @pytest.mark.setol(alpha={"max": 4})
        def test_marked(setol):
            setol.analyze(CHECKPOINT)

        @pytest.mark.setol(alpha={"max": 6})
        def test_loose_marker(setol):
            setol.analyze(CHECKPOINT)

        def test_unmarked(setol):
            report = setol.analyze(CHECKPOINT)
            assert report.failed is False

        @pytest.mark.setol(model={"mean_alpha": {"max": 3}})
        class TestModel:
            @pytest.mark.setol(alpha={"min": 1})
            def test_class_and_function_markers(self, setol):
                setol.analyze(CHECKPOINT)
        """,
        checkpoint=checkpoint,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*enc.1.q: alpha = 5.0* is above the maximum 4 (fail, rule from "
            "@pytest.mark.setol)*",
            "*model.safetensors (model): mean_alpha = 3.6* is above the maximum 3 "
            "(fail, rule from @pytest.mark.setol)*",
            "FAILED test_user.py::test_marked - Failed: enc.1.q: alpha = 5.0*",
        ]
    )


def test_marker_warn_rule_warns(pytester: pytest.Pytester, checkpoint: Path) -> None:
    _test_file(
        pytester,
        """
        @pytest.mark.setol(alpha={"max": 4, "severity": "warn"}, erg_delta=None)
        def test_marked(setol):
            setol.analyze(CHECKPOINT)
        """,
        checkpoint=checkpoint,
    )
    result = pytester.runpytest("-W", "default::pytest_setol.SetolWarning")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*SetolRuleWarning: enc.1.q: alpha = 5.0* (warn*"])
    strict = pytester.runpytest("-W", "error::pytest_setol.SetolWarning")
    strict.assert_outcomes(failed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            'alpha={"maximum": 4}',
            "*@pytest.mark.setol: rules.alpha.maximum: unknown key*",
        ),
        ('alhpa={"max": 4}', "*@pytest.mark.setol: rules.alhpa: unknown key 'alhpa'*"),
        ('"alpha"', "*@pytest.mark.setol takes keyword arguments only*"),
    ],
)
def test_invalid_marker_is_setup_error(
    pytester: pytest.Pytester, checkpoint: Path, marker: str, message: str
) -> None:
    _test_file(
        pytester,
        f"""
        @pytest.mark.setol({marker})
        def test_marked(setol):
            setol.analyze(CHECKPOINT)
        """,
        checkpoint=checkpoint,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


def test_marker_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.setol(**rules): thresholds for every*"])
    pytester.makepyfile(
        test_strict="import pytest\n\n@pytest.mark.setol()\ndef test_one():\n    pass\n"
    )
    strict = pytester.runpytest("--strict-markers")
    strict.assert_outcomes(passed=1)


def test_numpy_state_dict(pytester: pytest.Pytester) -> None:
    _test_file(
        pytester,
        """
        import numpy as np

        def test_state_dict(setol):
            rng = np.random.default_rng(3)
            weights = {"fc.weight": rng.standard_normal((300, 100))}
            first = setol.analyze(weights)
            assert setol.analyze(dict(weights)) is first
            weights["fc.weight"] = weights["fc.weight"] * 2.0
            second = setol.analyze(weights)
            assert second is not first
            change = (
                second.layer("fc.weight").log_norm - first.layer("fc.weight").log_norm
            )
            # Doubling W multiplies every eigenvalue of W^T W by 4.
            assert change == pytest.approx(np.log10(4.0))
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_module_during_training(pytester: pytest.Pytester) -> None:
    pytest.importorskip("torch")
    _test_file(
        pytester,
        """
        import torch

        def test_training(setol):
            torch.manual_seed(0)
            layers = [torch.nn.Linear(100, 300), torch.nn.Linear(300, 10)]
            model = torch.nn.Sequential(*layers)
            before = setol.analyze(model)
            assert setol.analyze(model) is before
            optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
            loss = model(torch.randn(64, 100)).square().mean()
            loss.backward()
            optimizer.step()
            after = setol.analyze(model)
            assert after is not before
            assert after.layer("0.weight").alpha != before.layer("0.weight").alpha
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_content_key_follows_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    weights = {"b": rng.standard_normal((4, 3)), "a": np.zeros(2, dtype=np.float32)}
    reordered = {"a": weights["a"], "b": weights["b"]}
    assert content_key(weights) == content_key(reordered)
    as_float32 = {"a": weights["a"], "b": weights["b"].astype(np.float32)}
    assert content_key(as_float32) != content_key(weights)
    first = write(tmp_path / "one" / "model.safetensors", weights)
    before = content_key(first.parent)
    write(tmp_path / "one" / "model.safetensors", as_float32)
    assert content_key(first.parent) != before
    with pytest.raises(TypeError, match="got int"):
        content_key(3)


def test_run_options_are_defaults(pytester: pytest.Pytester, checkpoint: Path) -> None:
    (pytester.path / "strict.yaml").write_text("rules:\n  alpha: {max: 4}\n")
    (pytester.path / "loose.yaml").write_text("rules:\n  erg_delta: null\n")
    pytester.makeini("[pytest]\nsetol_config = strict.yaml\nsetol_device = cpu\n")
    _test_file(
        pytester,
        """
        EXPECTED = {None: "under-trained", "loose.yaml": "ok"}

        def test_status(setol, pytestconfig):
            report = setol.analyze(CHECKPOINT)
            expected = EXPECTED[pytestconfig.getoption("setol_config")]
            assert report.layer("enc.1.q").status == expected
            assert report.settings["device_requested"] == "cpu"
        """,
        checkpoint=checkpoint,
    )
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.runpytest("--setol-config", "loose.yaml").assert_outcomes(passed=1)
