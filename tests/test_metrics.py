"""The metric suite: MP fit, ERG and norm metrics, invariances, and every front end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import pytest_setol
from pytest_setol.cli import main as cli_main
from pytest_setol.config import FIT_METRICS, Config, parse_config
from pytest_setol.errors import ConfigError
from pytest_setol.metrics import (
    FIT_KEYS,
    erg_condition,
    fit_metrics,
    marchenko_pastur_fit,
    norm_metrics,
    normalised,
    spike_threshold,
)
from pytest_setol.powerlaw import FitFailure, fit_power_law
from pytest_setol.report import render_terminal
from pytest_setol.results import NUMERIC_KEYS, LayerResult
from pytest_setol.verdicts import fit_flags, judge_layer
from tests.conftest import MakeCheckpoint, heavy_tailed_matrix

#: Rescaling only rounds the log ratios and the normalisation, about 1e-15
#: relative; the fit and the ERG tail pick the same indices.
RESCALE_RTOL = 1e-9
#: Scale factors drawn per spectrum, log-uniform in [1e-2, 1e2].
RESCALE_DRAWS = 12
#: For a 2000 x 500 Gaussian matrix the MP edges hold to a few percent
#: (finite-size fluctuations of the edge scale as M ** (-2/3) ~ 0.016).
MP_RTOL = 0.03

#: Metrics computed by default or on request, each non-null on a large
#: heavy-tailed matrix with every option on.
METRIC_KEYS = (
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_hat",
    "lambda_max", "log_norm", "log_spectral_norm", "log_alpha_norm",
    "stable_rank", "erg_num", "erg_lambda_min", "erg_delta", "erg_gap",
    "erg_tail_norm", "mp_sigma", "mp_lambda_plus", "mp_lambda_minus",
    "num_spikes", "mp_softrank", "num_fingers", "raw_alpha", "rand_num_spikes",
    "rand_lambda_max", "rand_jsd", "alpha_farms",
)  # fmt: skip


def heavy_spectrum(rng: np.random.Generator, cols: int = 300) -> np.ndarray:
    """Return the eigenvalues of a heavy-tailed matrix, all of them above 1e-2."""
    matrix = heavy_tailed_matrix(3 * cols, cols, rng)
    return np.linalg.eigvalsh(matrix.T @ matrix) * 100.0


def all_metrics(eigenvalues: np.ndarray, q: float) -> dict[str, object]:
    fit = fit_power_law(eigenvalues)
    erg = erg_condition(eigenvalues)
    values = fit_metrics(eigenvalues, fit, erg)
    values.update(
        erg_num=erg.erg_num,
        erg_lambda_min=erg.erg_lambda_min,
        erg_tail_norm=erg.erg_tail_norm,
    )
    mp = marchenko_pastur_fit(eigenvalues, q)
    assert mp is not None
    values["mp_softrank"] = mp.mp_softrank
    return values


# Marchenko-Pastur -------------------------------------------------------------


def test_mp_fit_of_gaussian_matrix() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((2000, 500))
    eigenvalues = np.linalg.eigvalsh(matrix.T @ matrix)
    fit = marchenko_pastur_fit(eigenvalues, 4.0)
    assert fit is not None
    assert fit.mp_sigma == pytest.approx(1.0, rel=MP_RTOL)
    assert fit.mp_lambda_plus == pytest.approx(1.5**2, rel=MP_RTOL)
    assert fit.mp_lambda_minus == pytest.approx(0.5**2, rel=MP_RTOL)
    assert fit.num_spikes == 0
    assert fit.mp_softrank == pytest.approx(1.0, rel=MP_RTOL)


def test_mp_fit_counts_planted_spikes() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((2000, 500))
    u, _ = np.linalg.qr(rng.standard_normal((2000, 3)))
    v, _ = np.linalg.qr(rng.standard_normal((500, 3)))
    matrix += (u * np.array([300.0, 250.0, 200.0])) @ v.T
    eigenvalues = np.linalg.eigvalsh(matrix.T @ matrix)
    fit = marchenko_pastur_fit(eigenvalues, 4.0)
    assert fit is not None
    assert fit.num_spikes == 3
    assert fit.mp_softrank < 0.1


def test_spike_threshold_formula() -> None:
    lambda_plus, q, m = 2.2, 3.0, 400
    tracy_widom = q**-0.5 * lambda_plus ** (2 / 3) * m ** (-2 / 3)
    assert spike_threshold(lambda_plus, q, m) == pytest.approx(
        lambda_plus + math.sqrt(tracy_widom), rel=1e-15
    )


def test_mp_fit_uses_matrix_m_for_margin() -> None:
    # A pooled convolution has L = M * slices eigenvalues; the Tracy-Widom
    # margin uses M, so a smaller M widens it and counts fewer spikes.
    rng = np.random.default_rng(2)
    eigenvalues = heavy_spectrum(rng)
    wide = marchenko_pastur_fit(eigenvalues, 3.0, m=3)
    narrow = marchenko_pastur_fit(eigenvalues, 3.0)
    assert wide is not None
    assert narrow is not None
    assert wide.mp_lambda_plus == narrow.mp_lambda_plus
    assert wide.num_spikes < narrow.num_spikes


def test_mp_fit_of_zero_spectrum_is_null() -> None:
    assert marchenko_pastur_fit(np.zeros(60), 2.0) is None


# ERG and norms ----------------------------------------------------------------


def test_erg_tail_norm_is_tail_mass() -> None:
    eigenvalues = np.array([0.5, 1.0, 2.0, 4.0, 0.1, 0.2])
    erg = erg_condition(eigenvalues)
    scaled = np.sort(normalised(eigenvalues))[::-1]
    assert erg.erg_num is not None
    assert erg.erg_tail_norm == pytest.approx(
        scaled[: erg.erg_num].sum() / eigenvalues.size, rel=1e-15
    )


def test_log_alpha_norm_matches_direct_sum() -> None:
    eigenvalues = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    norms = norm_metrics(eigenvalues, 2.5)
    assert norms["log_alpha_norm"] == pytest.approx(
        math.log10(np.sum(eigenvalues**2.5)), rel=1e-14
    )
    assert norms["alpha_hat"] == pytest.approx(2.5 * math.log10(4.0), rel=1e-15)


def test_log_alpha_norm_does_not_overflow() -> None:
    eigenvalues = np.array([1e200, 2e200, 3e200])
    value = norm_metrics(eigenvalues, 4.0)["log_alpha_norm"]
    assert value is not None
    assert value == pytest.approx(math.log10(1 + 2**4 + 3**4) + 800.0, rel=1e-12)


def test_fit_metrics_null_every_key_on_failure() -> None:
    eigenvalues = np.full(60, 2.0)
    fit = fit_power_law(eigenvalues)
    assert isinstance(fit, FitFailure)
    values = fit_metrics(eigenvalues, fit, erg_condition(eigenvalues))
    assert set(values) == set(FIT_KEYS)
    assert all(value is None for value in values.values())


def test_fit_keys_cover_config_fit_metrics() -> None:
    assert set(FIT_METRICS) <= set(FIT_KEYS)
    assert set(FIT_METRICS) == set(FIT_KEYS) & set(NUMERIC_KEYS)


# Rescaling --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_rescaling_invariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    eigenvalues = heavy_spectrum(rng)
    assert eigenvalues.min() > 1e-2  # the 1e-5 floor never crosses a value
    reference = all_metrics(eigenvalues, 3.0)
    for factor in 10.0 ** rng.uniform(-2.0, 2.0, RESCALE_DRAWS):
        scaled = all_metrics(eigenvalues * factor, 3.0)
        for key in ("num_pl_spikes", "erg_num", "erg_gap"):
            assert scaled[key] == reference[key], (key, factor)
        for key in (
            "alpha", "D", "erg_lambda_min", "erg_tail_norm", "erg_delta",
            "mp_softrank",
        ):  # fmt: skip
            assert scaled[key] == pytest.approx(reference[key], rel=RESCALE_RTOL), (
                key,
                factor,
            )


# The 1/N option ---------------------------------------------------------------


def test_one_over_n_scale(make_checkpoint: MakeCheckpoint) -> None:
    rng = np.random.default_rng(6)
    path = make_checkpoint({"w": heavy_tailed_matrix(600, 200, rng)})
    raw = pytest_setol.analyze(path, device="cpu", randomize=True).layer("w")
    scaled_report = pytest_setol.analyze(
        path, device="cpu", scale="1/N", randomize=True
    )
    scaled = scaled_report.layer("w")
    assert scaled_report.settings["scale"] == "1/N"
    assert (raw.scale, scaled.scale) == ("raw", "1/N")
    n = 600
    for key in ("xmin", "xmax", "lambda_max", "rand_lambda_max"):
        assert getattr(scaled, key) == pytest.approx(getattr(raw, key) / n, rel=1e-12)
    for key in ("log_norm", "log_spectral_norm"):
        shifted = getattr(raw, key) - math.log10(n)
        assert getattr(scaled, key) == pytest.approx(shifted, rel=1e-12)
    assert scaled.alpha_hat == pytest.approx(
        raw.alpha * math.log10(raw.lambda_max / n), rel=1e-9
    )
    for key in ("alpha", "D", "erg_delta", "erg_tail_norm", "mp_softrank", "rand_jsd"):
        assert getattr(scaled, key) == pytest.approx(getattr(raw, key), rel=1e-9)
    assert scaled.num_pl_spikes == raw.num_pl_spikes
    assert scaled.rand_num_spikes == raw.rand_num_spikes


# The fit-unreliable flag --------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"alpha": 8.5, "num_pl_spikes": 50, "D": 0.05}, "alpha 8.5 > 8"),
        ({"alpha": 3.0, "num_pl_spikes": 9, "D": 0.05}, "tail of 9 < 10 values"),
        ({"alpha": 3.0, "num_pl_spikes": 50, "D": 0.15}, "D 0.15 > 0.1"),
    ],
)
def test_fit_unreliable_flag(values: dict[str, float], reason: str) -> None:
    layer = LayerResult(name="w", kind="linear", shape=(10, 10), status="ok", **values)
    flags, text = fit_flags(layer)
    assert flags == ("fit-unreliable",)
    assert text is not None
    assert reason in text


def test_fit_unreliable_keeps_bound_verdicts() -> None:
    layer = LayerResult(
        name="w", kind="linear", shape=(10, 10), status="ok",
        alpha=9.0, num_pl_spikes=40, D=0.02,
    )  # fmt: skip
    config = Config()
    judged = judge_layer(layer, config.rules_for("w"), config)
    assert judged.status == "under-trained"
    assert judged.flags == ("fit-unreliable",)
    assert judged.reason is not None
    assert "alpha 9 > 8" in judged.reason


def test_fit_reliable_has_no_flag() -> None:
    layer = LayerResult(
        name="w", kind="linear", shape=(10, 10), status="ok",
        alpha=3.0, num_pl_spikes=10, D=0.1,
    )  # fmt: skip
    assert fit_flags(layer) == ((), None)


# Per-rule xmin strategy -----------------------------------------------------------


def test_rule_xmin_strategy_refits(make_checkpoint: MakeCheckpoint) -> None:
    rng = np.random.default_rng(7)
    path = make_checkpoint({"w": heavy_tailed_matrix(900, 300, rng)})
    plain = pytest_setol.analyze(path, device="cpu").layer("w")
    median = fit_power_law(
        np.linalg.svd(heavy_tailed_matrix(900, 300, np.random.default_rng(7)))[1] ** 2,
        "median",
    )
    assert not isinstance(median, FitFailure)
    # Bounds that the ks alpha meets and the median alpha misses.
    low, high = sorted((plain.alpha, median.alpha))
    assert high - low > 0.1
    bound = (low + high) / 2
    side = "max" if median.alpha > plain.alpha else "min"
    config = parse_config(
        f"rules:\n  alpha: {{{side}: {bound}, xmin_strategy: median}}\n", "t.yaml"
    )
    layer = pytest_setol.analyze(path, config=config, device="cpu").layer("w")
    assert layer.alpha == plain.alpha
    assert layer.xmin_strategy == "ks"
    verdict = next(v for v in layer.verdicts if v.rule == "alpha")
    assert verdict.outcome == "fail"
    assert verdict.observed == pytest.approx(median.alpha, rel=1e-9)
    assert "alpha from the median fit" in verdict.message


def test_rule_xmin_strategy_parsed() -> None:
    config = parse_config(
        "layers:\n  - match: '*embed*'\n    rules:\n"
        "      alpha: {xmin_strategy: median}\n",
        "t.yaml",
    )
    rule = next(r for r in config.rules_for("embed.weight") if r.metric == "alpha")
    assert rule.xmin_strategy == "median"
    # The entry keeps the top-level bounds and adds the strategy.
    assert (rule.min, rule.max) == (2.0, 6.0)
    assert rule.describe() == "alpha (median fit) in [2, 6]"
    plain = next(r for r in config.rules_for("other.weight") if r.metric == "alpha")
    assert plain.xmin_strategy is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  alpha: {max: 6, xmin_strategy: mode}\n",
            "t.yaml:2: rules.alpha.xmin_strategy: expected one of ks, median, "
            "peak, clip, got 'mode'",
        ),
        (
            "rules:\n  log_norm: {max: 6, xmin_strategy: median}\n",
            "t.yaml:2: rules.log_norm.xmin_strategy: log_norm does not come from "
            "the power-law fit",
        ),
        (
            "model:\n  mean_alpha: {max: 6, xmin_strategy: median}\n",
            "t.yaml:2: model.mean_alpha.xmin_strategy: xmin_strategy applies to "
            "layer rules only",
        ),
    ],
)
def test_rule_xmin_strategy_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, "t.yaml")
    assert str(excinfo.value).startswith(message)


# Every front end ------------------------------------------------------------------


@pytest.fixture
def metric_checkpoint(make_checkpoint: MakeCheckpoint) -> Path:
    rng = np.random.default_rng(8)
    return make_checkpoint(
        {
            "big": heavy_tailed_matrix(500, 250, rng, tail=2.5),
            "conv": rng.standard_normal((32, 16, 3, 3)),
        }
    )


def assert_metrics_present(layer: dict[str, object]) -> None:
    missing = [key for key in METRIC_KEYS if layer.get(key) is None]
    assert not missing, missing
    assert isinstance(layer["rand_traps"], list)
    assert layer["xmin_strategy"] == "clip"


def test_every_metric_in_json_table_and_rules(
    pytester: pytest.Pytester, metric_checkpoint: Path
) -> None:
    # An impossible bound on every metric: each one must produce a verdict.
    rules = "".join(
        f"  {key}: {{min: 1.0e+300, max: 2.0e+300, severity: fail}}\n"
        for key in METRIC_KEYS
    )
    config = pytester.makefile(".yaml", thresholds=f"rules:\n{rules}")
    target = pytester.path / "report.json"
    columns = "mp_softrank,rand_jsd,alpha_farms,num_fingers"
    result = pytester.runpytest(
        "--setol", str(metric_checkpoint),
        "--setol-config", str(config),
        "--setol-xmin-strategy", "clip",
        "--setol-randomize", "--setol-seed", "5",
        "--setol-alpha-farms",
        "--setol-scale", "1/N",
        "--setol-columns", columns,
        "--setol-json", str(target),
        "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(failed=2, passed=1)

    document = json.loads(target.read_text())
    assert document["settings"]["xmin_strategy"] == "clip"
    assert document["settings"]["scale"] == "1/N"
    assert document["settings"]["seed"] == 5

    layers = {layer["name"]: layer for layer in document["checkpoints"][0]["layers"]}
    big = layers["big"]
    assert_metrics_present(big)
    assert big["scale"] == "1/N"
    failed = {v["rule"] for v in big["verdicts"] if v["outcome"] == "fail"}
    assert failed == set(METRIC_KEYS)
    # The 32 x 16 slices are too small for alpha_farms: null with a reason.
    assert layers["conv"]["alpha_farms"] is None
    assert "smaller than 100 x 200" in layers["conv"]["reason"]

    header = next(
        line for line in result.outlines if "layer" in line and "mp_softrank" in line
    )
    for column in columns.split(","):
        assert column in header


def test_unknown_column_is_usage_error(
    pytester: pytest.Pytester, metric_checkpoint: Path
) -> None:
    result = pytester.runpytest(
        "--setol", str(metric_checkpoint), "--setol-columns", "alpha,bogus"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--setol-columns: unknown layer key 'bogus'*"])


def test_negative_seed_is_usage_error(
    pytester: pytest.Pytester, metric_checkpoint: Path
) -> None:
    result = pytester.runpytest(
        "--setol", str(metric_checkpoint), "--setol-randomize", "--setol-seed", "-3"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--setol-seed: seed must be an integer of 0 or*"])


def test_cli_metric_options(
    metric_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        [
            "report", str(metric_checkpoint), "--device", "cpu", "--no-progress",
            "--xmin-strategy", "clip", "--randomize", "--seed", "5",
            "--alpha-farms", "--scale", "1/N", "--format", "json",
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["settings"]["seed"] == 5
    layers = {layer["name"]: layer for layer in document["checkpoints"][0]["layers"]}
    assert_metrics_present(layers["big"])


def test_cli_rejects_negative_seed(
    metric_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli_main(["report", str(metric_checkpoint), "--seed", "-1"])
    assert excinfo.value.code == 2
    assert "expected an integer of 0 or more" in capsys.readouterr().err


def test_table_shows_requested_columns(metric_checkpoint: Path) -> None:
    report = pytest_setol.analyze(metric_checkpoint, device="cpu", randomize=True)
    columns = ("mp_softrank", "erg_tail_norm", "rand_num_spikes", "log_alpha_norm")
    text = render_terminal(report, width=200, columns=columns)
    header = next(line for line in text.splitlines() if "layer" in line)
    for column in columns:
        assert column in header
    big = report.layer("big")
    row = next(line for line in text.splitlines() if line.split()[:1] == ["big"])
    assert f"{big.mp_softrank:.3f}" in row
