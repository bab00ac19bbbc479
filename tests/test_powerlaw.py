"""The ``ks`` power-law fit: exact agreement with the exhaustive search, recovery."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_setol.powerlaw import (
    EIGENVALUE_FLOOR,
    FitFailure,
    PowerLawFit,
    candidate_alphas,
    exhaustive_ks_search,
    fit_power_law,
    ks_search,
)

#: Random spectra compared with the exhaustive search, per family.
SPECTRA_PER_FAMILY = 25
#: The maximum-likelihood alpha has standard error (alpha - 1) / sqrt(n_tail)
#: (Clauset, Shalizi and Newman 2009), reported as ``sigma``. Four
#: standard errors leave room for the KS search choosing a short tail, and a
#: seeded sample inside them is no accident.
RECOVERY_SIGMAS = 4.0
#: Exact Pareto quantiles carry no sampling noise; what is left is the
#: discreteness of 4,000 quantiles (measured: 1e-4 to 6.4e-4, growing with
#: alpha).
QUANTILE_TOLERANCE = 2e-3
#: Rescaling changes each log ratio by rounding only, about 1e-15 relative.
RESCALE_RTOL = 1e-9


def pareto_sample(alpha: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``size`` draws of a density ``~ x ** -alpha`` for ``x >= 1``."""
    return (1.0 - rng.random(size)) ** (-1.0 / (alpha - 1.0))


def random_spectrum(family: int, rng: np.random.Generator) -> np.ndarray:
    """Return a sorted positive spectrum of one of eight shapes, ties included."""
    size = int(rng.integers(10, 700))
    if family == 0:
        values = pareto_sample(rng.uniform(1.3, 5.0), size, rng)
    elif family == 1:
        values = rng.standard_t(rng.uniform(1.5, 6.0), size) ** 2 + 1e-4
    elif family == 2:
        # Rounded values: long runs of ties.
        values = np.round(rng.exponential(1.0, size), int(rng.integers(0, 3))) + 0.1
    elif family == 3:
        values = rng.uniform(0.5, 1.0, size)
        values[-int(rng.integers(1, 10)) :] *= 50.0
    elif family == 4:
        values = np.exp(rng.normal(0.0, rng.uniform(0.1, 3.0), size))
    elif family == 5:
        cols = max(2, size // 3)
        matrix = rng.standard_normal((2 * cols, cols))
        bulk = np.linalg.eigvalsh(matrix.T @ matrix)
        values = np.concatenate([bulk, bulk.max() + pareto_sample(2.5, size, rng)])
    elif family == 6:
        # Two distinct values: every tail from the upper one has alpha = inf.
        values = np.ones(size)
        values[-int(rng.integers(2, size)) :] = 2.0
    else:
        quantiles = (np.arange(1, size + 1) - 0.5) / size
        values = (1.0 - quantiles) ** (-1.0 / rng.uniform(0.5, 3.0))
    return np.sort(values)


@pytest.mark.parametrize("family", range(8))
def test_ks_search_equals_exhaustive(family: int) -> None:
    rng = np.random.default_rng(1000 + family)
    for _ in range(SPECTRA_PER_FAMILY):
        x = random_spectrum(family, rng)
        assert ks_search(x) == exhaustive_ks_search(x)
        stop = int(rng.integers(1, x.size))
        assert ks_search(x, stop) == exhaustive_ks_search(x, stop)


def test_ks_search_equals_exhaustive_large() -> None:
    rng = np.random.default_rng(5)
    x = np.sort(pareto_sample(2.2, 4000, rng))
    assert ks_search(x) == exhaustive_ks_search(x)


def test_ks_search_first_index_on_ties() -> None:
    # No tail of an all-equal spectrum has a usable alpha (infinite, or below
    # 1 by rounding), so every candidate has D = 1 and the first one wins.
    x = np.full(30, 2.0)
    index, _, distance = ks_search(x)
    assert (index, distance) == (0, 1.0)
    assert ks_search(x) == exhaustive_ks_search(x)


def test_ks_search_skips_infinite_alphas() -> None:
    # Tails from the upper of two values have alpha = inf and D = 1; a
    # candidate on the lower value has D < 1 and wins.
    x = np.array([1.0] * 5 + [2.0] * 7)
    index, alpha, distance = ks_search(x)
    assert (index, alpha, distance) == exhaustive_ks_search(x)
    assert index < 5
    assert distance < 1.0


def test_candidate_alphas_match_formula() -> None:
    rng = np.random.default_rng(2)
    x = np.sort(pareto_sample(3.0, 200, rng))
    alphas = candidate_alphas(x)
    for i in (0, 57, 198):
        expected = 1.0 + (x.size - i) / np.sum(np.log(x[i:] / x[i]))
        assert alphas[i] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5, 3.0, 4.0])
def test_ks_recovers_pareto_sample(alpha: float) -> None:
    rng = np.random.default_rng(int(alpha * 100))
    fit = fit_power_law(pareto_sample(alpha, 5000, rng))
    assert isinstance(fit, PowerLawFit)
    assert abs(fit.alpha - alpha) <= RECOVERY_SIGMAS * fit.sigma
    assert fit.num_pl_spikes >= 50


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5, 3.0, 4.0])
def test_ks_recovers_pareto_quantiles(alpha: float) -> None:
    size = 4000
    quantiles = (np.arange(1, size + 1) - 0.5) / size
    fit = fit_power_law((1.0 - quantiles) ** (-1.0 / (alpha - 1.0)))
    assert isinstance(fit, PowerLawFit)
    assert fit.alpha == pytest.approx(alpha, abs=QUANTILE_TOLERANCE)


def test_fit_reports_tail_and_sigma() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([np.zeros(20), pareto_sample(2.5, 500, rng)])
    fit = fit_power_law(values)
    assert isinstance(fit, PowerLawFit)
    x = np.sort(values[values > EIGENVALUE_FLOOR])
    index = int(np.searchsorted(x, fit.xmin))
    assert fit.num_pl_spikes == np.count_nonzero(values >= fit.xmin)
    assert fit.sigma == pytest.approx((fit.alpha - 1.0) / np.sqrt(x.size - index))
    assert fit.xmax == values.max()
    assert fit.strategy == "ks"
    assert fit.num_fingers is None
    assert fit.raw_alpha is None


@pytest.mark.parametrize("factor", [1e-2, 0.03, 0.7, 1.0, 4.0, 55.0, 1e2])
def test_fit_scale_argument(factor: float) -> None:
    rng = np.random.default_rng(4)
    values = pareto_sample(2.5, 800, rng)
    reference = fit_power_law(values)
    scaled = fit_power_law(values, scale=factor)
    assert isinstance(reference, PowerLawFit)
    assert isinstance(scaled, PowerLawFit)
    assert scaled.alpha == pytest.approx(reference.alpha, rel=RESCALE_RTOL)
    assert scaled.D == pytest.approx(reference.D, rel=RESCALE_RTOL)
    assert scaled.xmin == pytest.approx(reference.xmin * factor, rel=RESCALE_RTOL)
    assert scaled.xmax == pytest.approx(reference.xmax * factor, rel=RESCALE_RTOL)
    assert scaled.num_pl_spikes == reference.num_pl_spikes


def test_fit_scale_applies_after_floor() -> None:
    # Values just above the floor stay in the fit when the scale would push
    # them below it.
    values = np.concatenate([np.full(5, 2e-5), np.linspace(1.0, 50.0, 100)])
    raw = fit_power_law(values, strategy="median")
    scaled = fit_power_law(values, strategy="median", scale=0.1)
    assert isinstance(raw, PowerLawFit)
    assert isinstance(scaled, PowerLawFit)
    assert scaled.alpha == pytest.approx(raw.alpha, rel=RESCALE_RTOL)


def test_fit_fails_on_constant_spectrum() -> None:
    fit = fit_power_law(np.full(60, 3.0))
    assert isinstance(fit, FitFailure)
    assert "constant" in fit.reason


def test_fit_fails_on_zero_matrix() -> None:
    fit = fit_power_law(np.zeros(60))
    assert isinstance(fit, FitFailure)
    assert "constant" in fit.reason


def test_fit_fails_with_few_values_above_floor() -> None:
    values = np.concatenate([np.zeros(50), np.linspace(1.0, 2.0, 9)])
    fit = fit_power_law(values)
    assert isinstance(fit, FitFailure)
    assert "only 9 eigenvalues above the floor" in fit.reason


def test_fit_rejects_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown xmin strategy 'mode'"):
        fit_power_law(np.linspace(1.0, 2.0, 20), strategy="mode")
