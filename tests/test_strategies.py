"""The other xmin strategies: median, peak, clip, and alpha_farms."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from pytest_setol.farms import (
    FARMS_ROWS,
    alpha_farms,
    farms_eigenvalues,
    submatrix_starts,
)
from pytest_setol.powerlaw import (
    CLIP_DROP,
    CLIP_MAX_FINGERS,
    CLIP_MIN_ALPHA,
    EIGENVALUE_FLOOR,
    MIN_FIT_VALUES,
    PEAK_BINS,
    PEAK_FACTOR,
    FitFailure,
    PowerLawFit,
    candidate_alphas,
    exhaustive_ks_search,
    fit_power_law,
    ks_distances,
)

TRUE_ALPHAS = [1.5, 2.0, 2.5, 3.0, 4.0]
#: The maximum-likelihood alpha has standard error (alpha - 1) / sqrt(n_tail)
#: (Clauset, Shalizi and Newman 2009), reported as ``sigma``; four standard
#: errors leave a seeded sample no room to pass by accident and little to
#: fail by chance.
RECOVERY_SIGMAS = 4.0
#: The largest eigenvalues of a matrix whose entries have tail index nu are
#: close to the squares of its largest entries: P(x**2 > s) ~ s ** (-nu / 2),
#: a density decaying as s ** -(1 + nu / 2). Measured on these seeds: within
#: 0.05 of that value, and within 0.04 across shapes.
FARMS_TOLERANCE = 0.1
FARMS_SHAPE_SPREAD = 0.08


def pareto_sample(alpha: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``size`` draws of a density ``~ x ** -alpha`` for ``x >= 1``."""
    return (1.0 - rng.random(size)) ** (-1.0 / (alpha - 1.0))


def fitted(values: np.ndarray, strategy: str) -> PowerLawFit:
    fit = fit_power_law(values, strategy)
    assert isinstance(fit, PowerLawFit), fit
    return fit


# median ---------------------------------------------------------------------


def test_median_xmin_is_middle_eigenvalue() -> None:
    rng = np.random.default_rng(10)
    values = pareto_sample(2.5, 501, rng)
    fit = fitted(values, "median")
    ordered = np.sort(values)
    assert fit.xmin == ordered[501 // 2]
    tail = ordered[ordered >= fit.xmin]
    expected = 1.0 + tail.size / np.sum(np.log(tail / fit.xmin))
    assert fit.alpha == pytest.approx(expected, rel=1e-12)
    assert fit.num_pl_spikes == tail.size
    assert fit.strategy == "median"


def test_median_distance_is_exhaustive_value() -> None:
    rng = np.random.default_rng(11)
    values = np.sort(pareto_sample(3.0, 300, rng))
    fit = fitted(values, "median")
    index = int(np.searchsorted(values, fit.xmin))
    assert fit.D == ks_distances(values, candidate_alphas(values))[index]


def test_median_counts_zero_eigenvalues() -> None:
    # L counts the zeros, so the middle of 100 zeros and 300 values is the
    # 100th smallest value above the floor.
    rng = np.random.default_rng(12)
    values = np.concatenate([np.zeros(100), pareto_sample(2.5, 300, rng)])
    fit = fitted(values, "median")
    assert fit.xmin == np.sort(values)[200]


def test_median_below_floor_starts_at_smallest_value() -> None:
    rng = np.random.default_rng(13)
    values = np.concatenate([np.zeros(300), pareto_sample(2.5, 100, rng)])
    fit = fitted(values, "median")
    assert fit.xmin == values[values > EIGENVALUE_FLOOR].min()
    assert fit.num_pl_spikes == 100


@pytest.mark.parametrize("alpha", TRUE_ALPHAS)
def test_median_recovers_pareto(alpha: float) -> None:
    rng = np.random.default_rng(int(alpha * 100) + 1)
    fit = fitted(pareto_sample(alpha, 4000, rng), "median")
    assert abs(fit.alpha - alpha) <= RECOVERY_SIGMAS * fit.sigma


# peak -----------------------------------------------------------------------


def peak_limit(values: np.ndarray) -> float:
    x = np.sort(values[values > EIGENVALUE_FLOOR])
    counts, edges = np.histogram(np.log10(x), bins=PEAK_BINS)
    return float(PEAK_FACTOR * 10.0 ** edges[int(np.argmax(counts))])


@pytest.mark.parametrize("alpha", TRUE_ALPHAS)
def test_peak_recovers_tail_above_sparse_bulk(alpha: float) -> None:
    # A Pareto tail from 1 above 300 values spread thinly over [0.05, 1]:
    # the fullest log bin is the tail's first, so its start is a candidate.
    rng = np.random.default_rng(int(alpha * 10))
    values = np.concatenate(
        [rng.uniform(0.05, 1.0, 300), pareto_sample(alpha, 3000, rng)]
    )
    fit = fitted(values, "peak")
    assert fit.xmin <= peak_limit(values)
    assert abs(fit.alpha - alpha) <= RECOVERY_SIGMAS * fit.sigma


def test_peak_restricts_the_ks_search() -> None:
    # A log-normal bulk around 1 and a Pareto tail from 10: ks finds the
    # tail, peak must start near the bulk's mode.
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [np.exp(rng.normal(0.0, 0.3, 2000)), 10.0 * pareto_sample(2.5, 300, rng)]
    )
    limit = peak_limit(values)
    peak = fitted(values, "peak")
    ks = fitted(values, "ks")
    assert peak.xmin <= limit < ks.xmin
    x = np.sort(values)
    stop = int(np.searchsorted(x, limit, side="right"))
    index, alpha, distance = exhaustive_ks_search(x, stop)
    assert (peak.xmin, peak.alpha, peak.D) == (x[index], alpha, distance)


# clip -----------------------------------------------------------------------


def reference_clip(values: np.ndarray) -> tuple[int, float, float, str]:
    """Return ``(num_fingers, alpha, raw_alpha, branch)`` by the plain definition."""
    x = np.sort(values[values > EIGENVALUE_FLOOR])
    _, raw_alpha, _ = exhaustive_ks_search(x)
    for fingers in range(1, CLIP_MAX_FINGERS + 1):
        clipped = x[:-fingers]
        if clipped.size < MIN_FIT_VALUES:
            break
        _, alpha, _ = exhaustive_ks_search(clipped)
        if alpha < raw_alpha - CLIP_DROP:
            return fingers, alpha, raw_alpha, "accepted"
        if alpha <= CLIP_MIN_ALPHA:
            return 0, raw_alpha, raw_alpha, "stopped"
    return 0, raw_alpha, raw_alpha, "kept"


def bulk_with_outliers(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Return a random Pareto bulk with ten planted outliers, and its exponent."""
    size = int(rng.integers(50, 400))
    alpha = rng.uniform(2.2, 4.0)
    bulk = pareto_sample(alpha, size, rng)
    outliers = bulk.max() * rng.uniform(1.0, 100.0) * (1.0 + rng.random(10))
    return np.concatenate([bulk, outliers]), alpha


def test_clip_follows_definition() -> None:
    rng = np.random.default_rng(40)
    branches: collections.Counter[str] = collections.Counter()
    for _ in range(40):
        values, _ = bulk_with_outliers(rng)
        fingers, alpha, raw_alpha, branch = reference_clip(values)
        branches[branch] += 1
        fit = fitted(values, "clip")
        assert fit.num_fingers == fingers
        assert fit.alpha == alpha
        assert fit.raw_alpha == raw_alpha
    # The seed exercises every branch of the definition.
    assert set(branches) == {"accepted", "stopped", "kept"}, branches


def test_clip_removes_planted_outliers() -> None:
    # A small bulk, so the ten outliers far above it draw the raw ks fit to
    # a short tail of their own with a large alpha.
    rng = np.random.default_rng(2)
    size, alpha = 100, 3.0
    bulk = pareto_sample(alpha, size, rng)
    outliers = bulk.max() * 60.0 * (1.0 + 0.5 * rng.random(10))
    values = np.concatenate([bulk, outliers])
    fit = fitted(values, "clip")
    raw = fitted(values, "ks")
    assert fit.raw_alpha == raw.alpha
    assert fit.num_fingers is not None
    assert 1 <= fit.num_fingers <= CLIP_MAX_FINGERS
    assert fit.alpha < fit.raw_alpha - CLIP_DROP
    assert abs(fit.alpha - alpha) < abs(raw.alpha - alpha)
    # The fit's range ends below the removed fingers.
    assert fit.xmax == np.sort(values)[-fit.num_fingers - 1]
    assert fit.num_pl_spikes == np.count_nonzero(values >= fit.xmin)


@pytest.mark.parametrize("alpha", TRUE_ALPHAS)
def test_clip_keeps_clean_pareto(alpha: float) -> None:
    rng = np.random.default_rng(int(alpha * 100) + 2)
    values = pareto_sample(alpha, 4000, rng)
    fit = fitted(values, "clip")
    ks = fitted(values, "ks")
    assert fit.num_fingers == 0
    assert fit.raw_alpha == ks.alpha
    assert fit.alpha == ks.alpha
    assert abs(fit.alpha - alpha) <= RECOVERY_SIGMAS * fit.sigma


# alpha_farms ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "window", "starts"),
    [
        (100, 100, [0]),
        (104, 100, [0, 1, 2, 3, 4]),
        (150, 100, [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]),
        (1000, 100, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]),
        (384, 200, [0, 20, 40, 60, 80, 100, 120, 140, 160, 180]),
    ],
)
def test_farms_grid_positions(length: int, window: int, starts: list[int]) -> None:
    assert list(submatrix_starts(length, window)) == starts


def test_farms_pools_every_submatrix() -> None:
    rng = np.random.default_rng(20)
    matrix = rng.standard_normal((150, 1000))
    eigenvalues = farms_eigenvalues(matrix)
    # 10 row positions x 10 column positions, 100 eigenvalues each.
    assert eigenvalues.size == 10 * 10 * FARMS_ROWS
    # Row step floor(50 / 9) = 5, column step floor(800 / 9) = 88.
    block = matrix[5:105, 88:288]
    expected = np.linalg.eigvalsh(block @ block.T)
    assert np.any(
        [
            np.allclose(np.sort(chunk), expected, rtol=1e-9)
            for chunk in eigenvalues.reshape(-1, FARMS_ROWS)
        ]
    )


def test_farms_orientation_does_not_matter() -> None:
    rng = np.random.default_rng(21)
    matrix = rng.standard_t(3.0, size=(300, 700))
    assert alpha_farms([matrix]).alpha_farms == alpha_farms([matrix.T]).alpha_farms


@pytest.mark.parametrize("shape", [(99, 400), (150, 150), (120, 199)])
def test_farms_null_for_small_matrix(shape: tuple[int, int]) -> None:
    result = alpha_farms([np.ones(shape)])
    assert result.alpha_farms is None
    assert result.reason is not None
    assert "smaller than 100 x 200" in result.reason


def test_farms_pools_convolution_slices() -> None:
    rng = np.random.default_rng(22)
    slices = [rng.standard_t(3.0, size=(128, 256)) for _ in range(3)]
    pooled = np.concatenate([farms_eigenvalues(s) for s in slices])
    expected = fitted(pooled, "median").alpha
    assert alpha_farms(slices).alpha_farms == expected


@pytest.mark.parametrize("nu", [1.5, 3.0])
def test_farms_alpha_is_shape_free(nu: float) -> None:
    expected = 1.0 + nu / 2.0
    alphas = []
    for shape in [(300, 600), (500, 500), (200, 2000), (1000, 400)]:
        rng = np.random.default_rng(0)
        result = alpha_farms([rng.standard_t(nu, size=shape)])
        assert result.alpha_farms is not None, result.reason
        assert result.alpha_farms == pytest.approx(expected, abs=FARMS_TOLERANCE)
        alphas.append(result.alpha_farms)
    assert max(alphas) - min(alphas) <= FARMS_SHAPE_SPREAD


def test_farms_failure_names_reason() -> None:
    result = alpha_farms([np.zeros((100, 200))])
    assert result.alpha_farms is None
    assert result.reason is not None
    assert result.reason.startswith("alpha_farms: constant spectrum")


def test_fit_failure_type_for_farms_input() -> None:
    assert isinstance(fit_power_law(np.zeros(100), "median"), FitFailure)
