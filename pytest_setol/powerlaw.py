"""Power-law fit of an eigenvalue tail (Clauset, Shalizi and Newman 2009).

The ``ks`` strategy scans every candidate ``xmin`` and keeps the first one
with the smallest Kolmogorov-Smirnov distance ``D``, as WeightWatcher 0.7.7
does for 20 or more values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Eigenvalues at or below this absolute floor are left out of the fit, as in
#: WeightWatcher. Scale invariance holds while no eigenvalue crosses it.
EIGENVALUE_FLOOR = 1e-5

#: A fit needs at least this many eigenvalues above the floor.
MIN_FIT_VALUES = 10

#: Relative spread below which a spectrum counts as constant.
CONSTANT_SPREAD = 1e-12

#: Candidate rows scored together; bounds the scratch matrix to about 32 MB.
_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted power law ``p(x) ~ x ** -alpha`` for ``x >= xmin``."""

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    strategy: str


@dataclass(frozen=True)
class FitFailure:
    """No power law could be fitted; ``reason`` says why."""

    reason: str


def is_constant(eigenvalues: np.ndarray) -> bool:
    """Return True when the spectrum's spread is negligible against its maximum."""
    top = float(eigenvalues.max())
    return top - float(eigenvalues.min()) <= CONSTANT_SPREAD * top


def fit_power_law(eigenvalues: np.ndarray, strategy: str = "ks") -> PowerLawFit | FitFailure:
    """Fit the tail of ``eigenvalues`` (any order, zeros allowed)."""
    if strategy != "ks":
        raise ValueError(f"unknown xmin strategy {strategy!r}; expected 'ks'")
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if values.size == 0 or is_constant(values):
        return FitFailure("constant spectrum (all eigenvalues equal, or a zero matrix)")
    x = values[values > EIGENVALUE_FLOOR]
    if x.size < MIN_FIT_VALUES:
        return FitFailure(
            f"only {x.size} eigenvalues above the floor {EIGENVALUE_FLOOR:g}; "
            f"a fit needs at least {MIN_FIT_VALUES}"
        )
    index, alpha, distance = _ks_search(x)
    n_tail = x.size - index
    return PowerLawFit(
        alpha=alpha,
        xmin=float(x[index]),
        xmax=float(values[-1]),
        D=distance,
        sigma=(alpha - 1.0) / math.sqrt(n_tail),
        num_pl_spikes=int(np.count_nonzero(values >= x[index])),
        strategy=strategy,
    )


def candidate_alphas(x: np.ndarray) -> np.ndarray:
    """Return the maximum-likelihood alpha for each ``xmin = x[i]`` but the last.

    ``x`` is sorted ascending and positive. Suffix sums of ``ln x`` give every
    candidate in linear time.
    """
    logs = np.log(x)
    counts = np.arange(x.size, 0, -1, dtype=np.float64)
    suffix = np.cumsum(logs[::-1])[::-1]
    spread = suffix - counts * logs
    with np.errstate(divide="ignore"):
        alphas = 1.0 + counts / spread
    return alphas[:-1]


def ks_distances(x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Return ``D_i`` for every candidate, scanning all of each tail.

    ``D_i = max_k |1 - (x[i+k] / x[i]) ** (1 - alpha_i) - k / n_i|`` and 1 where
    ``alpha_i <= 1`` or is not finite.
    """
    n = x.size
    logs = np.log(x)
    distances = np.ones(alphas.size)
    rows_per_block = max(1, _BLOCK_CELLS // n)
    offsets = np.arange(n)
    for start in range(0, alphas.size, rows_per_block):
        stop = min(alphas.size, start + rows_per_block)
        rows = np.arange(start, stop)
        tail = n - rows
        # Column k of row i holds the k-th value of the tail that starts at i;
        # columns past the tail's end are masked out.
        cols = rows[:, None] + offsets[None, :]
        valid = cols < n
        log_ratio = logs[np.minimum(cols, n - 1)] - logs[rows][:, None]
        exponent = (1.0 - alphas[rows])[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            model_cdf = 1.0 - np.exp(exponent * log_ratio)
            empirical = offsets[None, :] / tail[:, None]
            gap = np.abs(model_cdf - empirical)
        gap[~valid] = 0.0
        block = gap.max(axis=1)
        good = np.isfinite(alphas[rows]) & (alphas[rows] > 1.0)
        distances[start:stop] = np.where(good, block, 1.0)
    return distances


def _ks_search(x: np.ndarray) -> tuple[int, float, float]:
    alphas = candidate_alphas(x)
    distances = ks_distances(x, alphas)
    index = int(np.argmin(distances))
    return index, float(alphas[index]), float(distances[index])
