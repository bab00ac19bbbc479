"""Power-law fit of an eigenvalue tail (Clauset, Shalizi and Newman 2009).

Every strategy fits ``p(x) ~ x ** -alpha`` for ``x >= xmin`` with the
continuous maximum-likelihood alpha; they differ in how ``xmin`` is chosen:

- ``ks``: the first candidate with the smallest Kolmogorov-Smirnov distance
  ``D``, as WeightWatcher 0.7.7 does for 20 or more values;
- ``median``: the median eigenvalue, no search;
- ``peak``: the ``ks`` search restricted to candidates near the mode of the
  log-spaced histogram;
- ``clip``: the ``ks`` fit refitted without up to 10 of the largest values
  ("fingers") when that lowers alpha by more than 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Eigenvalues at or below this absolute floor are left out of the fit, as in
#: WeightWatcher. Results are scale invariant while no eigenvalue crosses it.
EIGENVALUE_FLOOR = 1e-5

#: A fit needs at least this many eigenvalues above the floor.
MIN_FIT_VALUES = 10

#: Relative spread below which a spectrum counts as constant.
CONSTANT_SPREAD = 1e-12

#: The strategies ``fit_power_law`` accepts.
STRATEGIES = ("ks", "median", "peak", "clip")

#: ``peak``: bins of the log10 histogram, and how far above the left edge of
#: the fullest bin a candidate ``xmin`` may lie.
PEAK_BINS = 100
PEAK_FACTOR = 1.5

#: ``clip``: at most this many of the largest values are removed, a refit is
#: accepted when its alpha is below the raw alpha minus ``CLIP_DROP``, and the
#: search stops at the first refit with alpha at or below ``CLIP_MIN_ALPHA``.
CLIP_MAX_FINGERS = 10
CLIP_DROP = 1.0
CLIP_MIN_ALPHA = 2.0

#: Candidate rows scored together; bounds each scratch matrix to about 32 MB.
_BLOCK_CELLS = 4_000_000
#: Offsets of each tail where the fast search first bounds ``D_i`` from below.
_GRID_POINTS = 16
#: Candidates measured exactly per round of the fast search: those with the
#: lowest lower bounds.
_PROBES = 8
#: A candidate is pruned only when its lower bound exceeds the best known
#: ``D`` by more than this. The bound and the exact values come from the same
#: arithmetic, so the slack only guards against a 1-ulp difference in ``exp``.
_PRUNE_SLACK = 1e-12


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted power law ``p(x) ~ x ** -alpha`` for ``x >= xmin``.

    ``num_fingers`` and ``raw_alpha`` are set by the ``clip`` strategy only.
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    strategy: str
    num_fingers: int | None = None
    raw_alpha: float | None = None


@dataclass(frozen=True)
class FitFailure:
    """No power law could be fitted, for the ``reason`` given."""

    reason: str


def is_constant(eigenvalues: np.ndarray) -> bool:
    """Return True when the spectrum's spread is negligible against its maximum."""
    top = float(eigenvalues.max())
    return top - float(eigenvalues.min()) <= CONSTANT_SPREAD * top


def fit_power_law(
    eigenvalues: np.ndarray, strategy: str = "ks", scale: float = 1.0
) -> PowerLawFit | FitFailure:
    """Fit the tail of ``eigenvalues`` (any order, zeros allowed).

    The floor ``EIGENVALUE_FLOOR`` applies to the eigenvalues as given, and
    only then are they multiplied by ``scale`` (``1/N`` in the HTSR papers).
    So ``xmin`` and ``xmax`` come out on that scale, while the set of fitted
    values does not depend on it.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown xmin strategy {strategy!r}; "
            f"expected one of {', '.join(STRATEGIES)}"
        )
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if values.size == 0 or is_constant(values):
        return FitFailure("constant spectrum (all eigenvalues equal, or a zero matrix)")
    x = values[values > EIGENVALUE_FLOOR]
    if x.size < MIN_FIT_VALUES:
        return FitFailure(
            f"only {x.size} eigenvalues above the floor {EIGENVALUE_FLOOR:g}; "
            f"a fit needs at least {MIN_FIT_VALUES}"
        )
    if scale != 1.0:
        values = values * scale
        x = x * scale
    if strategy == "clip":
        return _clip_fit(values, x)
    if strategy == "median":
        index = _median_index(values, x)
        alphas = candidate_alphas(x)
        alpha = float(alphas[index])
        if not (math.isfinite(alpha) and alpha > 1.0):
            return FitFailure(
                f"median strategy: the {x.size - index} eigenvalues from the median "
                f"{x[index]:.6g} up are all equal, so alpha is undefined"
            )
        rows = np.array([index])
        distance = float(_exact_distances(np.log(x), alphas, rows)[0][0])
    else:
        stop = _peak_stop(x) if strategy == "peak" else None
        index, alpha, distance = ks_search(x, stop)
    return _make_fit(values, x, index, alpha, distance, strategy)


def _make_fit(
    values: np.ndarray,
    x: np.ndarray,
    index: int,
    alpha: float,
    distance: float,
    strategy: str,
) -> PowerLawFit:
    return PowerLawFit(
        alpha=alpha,
        xmin=float(x[index]),
        xmax=float(values[-1]),
        D=distance,
        sigma=(alpha - 1.0) / math.sqrt(x.size - index),
        num_pl_spikes=int(np.count_nonzero(values >= x[index])),
        strategy=strategy,
    )


def _median_index(values: np.ndarray, x: np.ndarray) -> int:
    """Return the candidate index of the eigenvalue at ``floor(L / 2)``.

    NOTE: when more than half of the spectrum is at or below the floor, the
    median is not a candidate and the fit starts at the smallest value above
    the floor instead.
    """
    median = values[values.size // 2]
    index = int(np.searchsorted(x, median, side="left"))
    return min(index, x.size - 2)


def _peak_stop(x: np.ndarray) -> int:
    """Return how many candidates lie at or below 1.5 times the histogram's mode."""
    counts, edges = np.histogram(np.log10(x), bins=PEAK_BINS)
    limit = PEAK_FACTOR * 10.0 ** edges[int(np.argmax(counts))]
    return max(1, int(np.searchsorted(x, limit, side="right")))


def _clip_fit(values: np.ndarray, x: np.ndarray) -> PowerLawFit | FitFailure:
    """Fit with ``ks``, then refit without the 1..10 largest values."""
    index, alpha, distance = ks_search(x)
    raw = _make_fit(values, x, index, alpha, distance, "clip")
    for fingers in range(1, CLIP_MAX_FINGERS + 1):
        clipped = x[:-fingers]
        if clipped.size < MIN_FIT_VALUES:
            break
        index, alpha, distance = ks_search(clipped)
        if not math.isfinite(alpha):
            break
        if alpha < raw.alpha - CLIP_DROP:
            fit = _make_fit(values, clipped, index, alpha, distance, "clip")
            # The fingers stay out of the fit, so its range ends below them.
            return _with_clip(fit, fingers, raw.alpha, xmax=float(clipped[-1]))
        if alpha <= CLIP_MIN_ALPHA:
            break
    return _with_clip(raw, 0, raw.alpha, raw.xmax)


def _with_clip(
    fit: PowerLawFit, fingers: int, raw_alpha: float, xmax: float
) -> PowerLawFit:
    return PowerLawFit(
        alpha=fit.alpha,
        xmin=fit.xmin,
        xmax=xmax,
        D=fit.D,
        sigma=fit.sigma,
        num_pl_spikes=fit.num_pl_spikes,
        strategy=fit.strategy,
        num_fingers=fingers,
        raw_alpha=raw_alpha,
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


def ks_search(x: np.ndarray, stop: int | None = None) -> tuple[int, float, float]:
    """Return ``(index, alpha, D)`` of the first candidate with the smallest ``D``.

    Only the candidates ``x[:stop]`` compete. The result equals the
    exhaustive search's (``exhaustive_ks_search``) bit for bit, without
    computing every ``D_i`` in full. Any gap ``|F_i(x[j]) - E_i(x[j])|`` is a
    lower bound of ``D_i``, and a candidate whose lower bound exceeds the
    exact ``D`` of another cannot win. Lower bounds come first from a coarse
    grid of each tail, then from the eigenvalues where the candidates
    measured exactly so far have their largest gap: neighbouring candidates
    tend to peak at the same eigenvalue, so these bounds are tight. The
    candidates with the lowest bounds are measured exactly, a few at a time,
    until no candidate is left that could beat the best ``D`` measured.
    """
    logs = np.log(x)
    alphas = candidate_alphas(x)
    count = alphas.size if stop is None else min(stop, alphas.size)
    usable = np.isfinite(alphas[:count]) & (alphas[:count] > 1.0)
    # Pruned candidates keep +inf; candidates with alpha <= 1 have D = 1.
    distances = np.where(usable, np.inf, 1.0)
    pending = np.flatnonzero(usable)
    lower = _grid_lower_bounds(logs, alphas, pending)
    best = 1.0
    peaks = np.empty(0, dtype=np.intp)
    while pending.size:
        if peaks.size:
            lower = np.maximum(lower, _gaps_at(logs, alphas, pending, peaks))
        # D_i >= lower_i > best >= min D: such a candidate cannot win.
        keep = lower <= best + _PRUNE_SLACK
        pending, lower = pending[keep], lower[keep]
        if not pending.size:
            break
        chosen = np.argsort(lower, kind="stable")[:_PROBES]
        measured = pending[chosen]
        exact, peaks = _exact_distances(logs, alphas, measured)
        distances[measured] = exact
        best = min(best, float(exact.min()))
        rest = np.ones(pending.size, dtype=bool)
        rest[chosen] = False
        pending, lower = pending[rest], lower[rest]
    index = int(np.argmin(distances))
    return index, float(alphas[index]), float(distances[index])


def _grid_lower_bounds(
    logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Return each row's largest gap at ``_GRID_POINTS`` evenly spaced tail offsets.

    The offsets ``floor(t * (n_i - 1))`` for ``t`` evenly spaced in [0, 1]
    cover the whole tail, so the bound is exact for short tails.
    """
    steps = np.linspace(0.0, 1.0, _GRID_POINTS)
    lower = np.empty(rows.size)
    per_block = max(1, _BLOCK_CELLS // _GRID_POINTS)
    for start in range(0, rows.size, per_block):
        block = rows[start : start + per_block]
        last = logs.size - block - 1
        offsets = (steps[None, :] * last[:, None]).astype(np.intp)
        signed = _signed_gaps(logs, alphas, block, offsets)
        lower[start : start + per_block] = np.abs(signed).max(axis=1)
    return lower


def _gaps_at(
    logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Return each row's largest gap at the eigenvalue ``positions`` in its tail."""
    offsets = positions[None, :] - rows[:, None]
    inside = offsets >= 0
    signed = _signed_gaps(logs, alphas, rows, np.where(inside, offsets, 0))
    # Offset 0 has gap 0, so the masked cells cannot raise the maximum.
    return np.abs(signed).max(axis=1)


def _exact_distances(
    logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``D_i`` of each candidate in ``rows`` and the position of its peak."""
    n = logs.size
    offsets = np.arange(n)
    distances = np.empty(rows.size)
    peaks = np.empty(rows.size, dtype=np.intp)
    for slot, row in enumerate(rows):
        tail = n - int(row)
        with np.errstate(over="ignore", invalid="ignore"):
            model_cdf = 1.0 - np.exp((1.0 - alphas[row]) * (logs[row:] - logs[row]))
            gap = np.abs(model_cdf - offsets[:tail] / tail)
        column = int(gap.argmax())
        distances[slot] = gap[column]
        peaks[slot] = row + column
    return distances, peaks


def _signed_gaps(
    logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Return ``F_i(x[i + k]) - k / n_i`` for each row ``i`` and its offsets ``k``.

    The operations and their order are those of ``ks_distances``, so the
    absolute values equal the exhaustive search's gaps bit for bit.
    """
    log_ratio = logs[rows[:, None] + offsets] - logs[rows][:, None]
    exponent = (1.0 - alphas[rows])[:, None]
    model_cdf = 1.0 - np.exp(exponent * log_ratio)
    empirical = offsets / (logs.size - rows)[:, None]
    return model_cdf - empirical


def ks_distances(x: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Return ``D_i`` for every candidate, scanning all of each tail.

    ``D_i = max_k |1 - (x[i+k] / x[i]) ** (1 - alpha_i) - k / n_i|`` and 1 where
    ``alpha_i <= 1`` or is not finite. This is the plain quadratic reference
    that ``ks_search`` must match; it costs about 5 s for 16,384 values.
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
        # Column k of row i is the k-th value of the tail that starts at i;
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


def exhaustive_ks_search(
    x: np.ndarray, stop: int | None = None
) -> tuple[int, float, float]:
    """Return ``(index, alpha, D)`` by computing every ``D_i`` in full."""
    alphas = candidate_alphas(x)
    distances = ks_distances(x, alphas)[:stop]
    index = int(np.argmin(distances))
    return index, float(alphas[index]), float(distances[index])
