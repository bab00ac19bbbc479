"""The pytest plugin, run for real through pytester on generated checkpoints."""

from __future__ import annotations

import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import matrix_with_eigenvalues

ROWS, COLS = 400, 200

# Inner pytester runs inherit this module's warning filters; the project turns
# warnings into errors, but these tests check how SetolWarning is reported.
pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")


def bulk_and_tail(m: int = COLS) -> np.ndarray:
    """A flat bulk plus a power-law tail: alpha near 2.25, erg_delta near 0.87."""
    k = np.arange(1, m // 10 + 1)
    tail = 1.2 * (1 - (k - 0.5) / (m // 10)) ** (-1 / 1.2)
    return np.concatenate([np.linspace(0.05, 1.0, m - m // 10), tail])


def pareto(alpha: float, m: int = COLS) -> np.ndarray:
    """A pure power law of density exponent ``alpha`` from its smallest value.

    ``erg_delta`` of such a spectrum is negative (about -0.15).
    """
    i = np.arange(1, m + 1)
    return (1 - (i - 0.5) / m) ** (-1 / (alpha - 1))


def write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(
        {k: np.ascontiguousarray(v, dtype=v.dtype) for k, v in tensors.items()},
        str(path),
    )
    return path


def layers(**spectra: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12345)
    return {
        name.replace("__", "."): matrix_with_eigenvalues(ev, ROWS, rng).astype(
            np.float32
        )
        for name, ev in spectra.items()
    }


@pytest.fixture
def good(pytester: pytest.Pytester) -> Path:
    tensors = layers(block__0__q=bulk_and_tail(), block__1__q=bulk_and_tail())
    tensors["block.0.bias"] = np.zeros(COLS, dtype=np.float32)
    tensors["position_ids"] = np.arange(10, dtype=np.int64)
    return write(pytester.path / "good.safetensors", tensors)


@pytest.fixture
def mixed(pytester: pytest.Pytester) -> Path:
    tensors = layers(
        ok=bulk_and_tail(),
        over=pareto(1.5),
        under=pareto(7.0),
        warned=pareto(2.5),
    )
    tensors["tiny"] = np.ones((10, 300), dtype=np.float32)
    return write(pytester.path / "mixed.safetensors", tensors)


def test_passing_checkpoint(pytester: pytest.Pytester, good: Path) -> None:
    result = pytester.runpytest("--setol", str(good), "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "good.safetensors::block.0.q PASSED*",
            "good.safetensors::block.1.q PASSED*",
            "good.safetensors::model PASSED*",
            "*setol report*",
            "*block.0.q*400x200*ok*",
            "*not analysed: 1 1-D tensor (bias or norm), 1 non-float dtype I64*",
            "*device cpu, float64*",
        ]
    )
    assert result.ret == 0


def test_failing_layers_name_metric_bound_and_reading(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    result = pytester.runpytest("--setol", str(mixed))
    result.assert_outcomes(passed=3, failed=2, skipped=1, warnings=3)
    result.stdout.fnmatch_lines_random(
        [
            "*over: alpha = 1.50* is below the minimum 2 (fail*over-trained*",
            "*under: alpha = 7.0* is above the maximum 6 (fail*under-trained*",
            "FAILED mixed.safetensors::over - over: alpha = 1.50* is below*",
            "FAILED mixed.safetensors::under - under: alpha = 7.0* is above*",
            "*over *over-trained*",
            "*under *under-trained*",
            "*tiny *skipped*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_warn_severity_passes_with_warning(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    result = pytester.runpytest("--setol", str(mixed), "-k", "warned", "-rw")
    result.assert_outcomes(passed=1, warnings=1, deselected=5)
    result.stdout.fnmatch_lines(
        ["*SetolRuleWarning: warned: erg_delta = -0.1* is below the minimum 0 (warn*"]
    )
    strict = pytester.runpytest(
        "--setol", str(mixed), "-k", "warned", "-W", "error::pytest_setol.SetolWarning"
    )
    strict.assert_outcomes(failed=1, deselected=5)


def test_config_beside_checkpoint_overrides_layers(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    (mixed.parent / "setol.yaml").write_text(
        textwrap.dedent(
            """
            rules:
              erg_delta: {min: 0, severity: fail}
            layers:
              - match: "ov*"
                rules:
                  alpha: {min: 1.4}
              - match: under
                rules:
                  alpha: {max: 8, severity: warn}
              - match: warned
                skip: known to sit below the ERG condition
            """
        )
    )
    result = pytester.runpytest("--setol", str(mixed), "-rs")
    # "over" passes alpha now but erg_delta fails at fail severity; "under" only
    # warns on alpha but also fails erg_delta.
    result.assert_outcomes(passed=2, failed=2, skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "*over: erg_delta = -0.1* is below the minimum 0 (fail*",
            "SKIPPED [[]1[]] mixed.safetensors: warned: known to sit below the ERG condition",
            "SKIPPED [[]1[]] mixed.safetensors: tiny: 10 eigenvalues, fewer than min_eigenvalues = 50",
        ]
    )


def test_explicit_config_and_model_rules(
    pytester: pytest.Pytester, mixed: Path
) -> None:
    config = pytester.path / "strict.yaml"
    config.write_text(
        textwrap.dedent(
            """
            min_eigenvalues: 5
            rules:
              alpha: {min: 1, max: 100}
              erg_delta: null
            model:
              mean_alpha: {max: 3}
              coverage: {min: 0.5}
            """
        )
    )
    result = pytester.runpytest("--setol", str(mixed), "--setol-config", str(config))
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(
        ["*mixed.safetensors (model): mean_alpha = * is above the maximum 3 (fail*"]
    )


def test_bad_yaml_is_a_usage_error(pytester: pytest.Pytester, good: Path) -> None:
    (good.parent / "setol.yaml").write_text(
        "rules:\n  alpha:\n    min: 7\n    max: 3\n"
    )
    result = pytester.runpytest("--setol", str(good))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*setol.yaml:2: rules.alpha: min (7) is greater than max (3)*"]
    )
    result.assert_outcomes()


def test_unmatched_glob_is_a_usage_error(pytester: pytest.Pytester, good: Path) -> None:
    config = pytester.path / "conf.yaml"
    config.write_text("layers:\n  - match: decoder.*\n    skip: true\n")
    result = pytester.runpytest("--setol", str(good), "--setol-config", str(config))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*conf.yaml:2: layers[[]0[]].match: pattern 'decoder.*' matches no layer*"]
    )


def test_missing_and_corrupt_beside_good(pytester: pytest.Pytester, good: Path) -> None:
    corrupt = pytester.path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    missing = pytester.path / "missing.safetensors"
    result = pytester.runpytest(
        "--setol", str(missing), "--setol", str(corrupt), "--setol", str(good)
    )
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*missing.safetensors: file not found; check the path*",
            "*corrupt.safetensors: header is not valid JSON*",
            "FAILED missing.safetensors::model - *",
            "FAILED corrupt.safetensors::model - *",
        ]
    )


def test_keyword_selection(pytester: pytest.Pytester, good: Path) -> None:
    result = pytester.runpytest("--setol", str(good), "-k", "block and 1", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*good.safetensors::block.1.q PASSED*"])


def test_natural_sort_collection(pytester: pytest.Pytester) -> None:
    names = ["layers.10.w", "layers.2.w", "layers.1.w", "embed"]
    rng = np.random.default_rng(1)
    tensors = {n: rng.standard_normal((60, 55)).astype(np.float32) for n in names}
    path = write(pytester.path / "sorted.safetensors", tensors)
    result = pytester.runpytest("--setol", str(path), "--co", "-q")
    result.stdout.fnmatch_lines(
        [
            "sorted.safetensors::embed",
            "sorted.safetensors::layers.1.w",
            "sorted.safetensors::layers.2.w",
            "sorted.safetensors::layers.10.w",
            "sorted.safetensors::model",
        ]
    )


def test_exitfirst_and_last_failed(pytester: pytest.Pytester, mixed: Path) -> None:
    first = pytester.runpytest("--setol", str(mixed), "-x")
    first.assert_outcomes(passed=1, failed=1)
    full = pytester.runpytest("--setol", str(mixed))
    full.assert_outcomes(passed=3, failed=2, skipped=1, warnings=3)
    again = pytester.runpytest("--setol", str(mixed), "--lf", "-v")
    # The last-failed plugin filters the checkpoint's items at collection,
    # as it does for a test module, so the others are not even collected.
    again.assert_outcomes(failed=2)
    again.stdout.fnmatch_lines(["*run-last-failure: rerun previous 2 failures*"])
    again.stdout.fnmatch_lines_random(
        ["*mixed.safetensors::over FAILED*", "*mixed.safetensors::under FAILED*"]
    )


def test_junit_xml(pytester: pytest.Pytester, mixed: Path) -> None:
    xml_path = pytester.path / "junit.xml"
    pytester.runpytest("--setol", str(mixed), f"--junit-xml={xml_path}")
    cases = {case.get("name"): case for case in ET.parse(xml_path).iter("testcase")}
    assert set(cases) == {"ok", "over", "under", "warned", "tiny", "model"}
    assert cases["over"].find("failure") is not None
    assert cases["tiny"].find("skipped") is not None
    properties = {p.get("name"): p.get("value") for p in cases["over"].iter("property")}
    assert properties["status"] == "over-trained"
    assert float(properties["alpha"]) == pytest.approx(1.5, abs=0.01)


def test_json_document(pytester: pytest.Pytester, mixed: Path, good: Path) -> None:
    target = pytester.path / "out" / "report.json"
    target.parent.mkdir()
    pytester.runpytest(
        "--setol", str(good), "--setol", str(mixed), "--setol-json", str(target)
    )
    document = json.loads(target.read_text())
    assert document["schema_version"] == 1
    assert document["settings"]["device"] == "cpu"
    paths = [c["path"] for c in document["checkpoints"]]
    assert paths == [str(good), str(mixed)]
    checkpoint = document["checkpoints"][1]
    names = [layer["name"] for layer in checkpoint["layers"]]
    assert names == ["ok", "over", "tiny", "under", "warned"]
    tiny = checkpoint["layers"][2]
    assert tiny["status"] == "skipped"
    assert tiny["alpha"] is None
    over = checkpoint["layers"][1]
    assert over["status"] == "over-trained"
    assert over["verdicts"][0]["outcome"] == "fail"
    for key in ("alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_hat",
                "lambda_max", "log_norm", "log_spectral_norm", "stable_rank",
                "erg_num", "erg_lambda_min", "erg_delta", "erg_gap"):  # fmt: skip
        assert over[key] is not None, key
    assert document["checkpoints"][0]["not_analysed"] == {
        "1-D tensor (bias or norm)": 1,
        "non-float dtype I64": 1,
    }
    summary = checkpoint["summary"]
    assert summary["status_counts"]["over-trained"] == 1
    assert summary["coverage"] == pytest.approx(
        4 * ROWS * COLS / (4 * ROWS * COLS + 3000)
    )


def test_json_matches_python_api(pytester: pytest.Pytester, mixed: Path) -> None:
    import pytest_setol

    target = pytester.path / "report.json"
    pytester.runpytest("--setol", str(mixed), "--setol-json", str(target))
    from_plugin = json.loads(target.read_text())["checkpoints"][0]["layers"]
    from_api = pytest_setol.analyze(mixed, device="cpu").to_dict()["checkpoints"][0][
        "layers"
    ]
    for plugin_layer, api_layer in zip(from_plugin, from_api, strict=True):
        plugin_layer.pop("seconds")
        api_layer.pop("seconds")
        assert plugin_layer == api_layer


def test_plugin_import_stays_light(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_trivial="def test_one():\n    assert True\n")
    pytester.makeconftest(
        textwrap.dedent(
            """
            import sys

            def pytest_sessionfinish(session):
                heavy = ("numpy", "scipy", "safetensors", "torch", "rich", "yaml")
                print("LOADED", sorted(m for m in heavy if m in sys.modules))
                print("PLUGIN", "pytest_setol.plugin" in sys.modules)
            """
        )
    )
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOADED []*", "*PLUGIN True*"])


def test_help_lists_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines_random(
        [
            "*--setol=PATH*",
            "*--setol-config=FILE*",
            "*--setol-device=DEVICE*",
            "*--setol-json=FILE*",
        ]
    )


@pytest.mark.skipif(sys.platform == "win32", reason="the plugin's CI runs on Linux")
def test_minilm_end_to_end(pytester: pytest.Pytester, minilm: Path) -> None:
    target = pytester.path / "minilm.json"
    result = pytester.runpytest("--setol", str(minilm), "--setol-json", str(target))
    result.assert_outcomes(passed=35, failed=5, skipped=1)
    layers = {
        layer["name"]: layer
        for layer in json.loads(target.read_text())["checkpoints"][0]["layers"]
    }
    assert len(layers) == 40
    # Published all-MiniLM-L6-v2 weights: the position embeddings are very
    # heavy-tailed and the pooler is close to random.
    assert layers["embeddings.position_embeddings.weight"]["alpha"] == pytest.approx(
        1.55, abs=0.01
    )
    assert layers["embeddings.position_embeddings.weight"]["status"] == "over-trained"
    assert layers["pooler.dense.weight"]["alpha"] > 6
    assert layers["pooler.dense.weight"]["status"] == "under-trained"
    assert layers["embeddings.word_embeddings.weight"]["kind"] == "embedding"
