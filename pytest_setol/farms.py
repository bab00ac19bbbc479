"""``alpha_farms``: an alpha that does not depend on the matrix's aspect ratio.

The spectrum of a ``rows x cols`` matrix depends on ``Q = cols / rows`` as
well as on its correlations, so alphas of layers with different shapes do
not compare directly. Here every layer is measured through submatrices of
one fixed shape, 100 x 200, taken on a grid of up to 10 x 10 positions.
Their pooled eigenvalues are fitted with the ``median`` strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .powerlaw import FitFailure, fit_power_law
from .spectra import clean_eigenvalues

#: Shape of every submatrix, with rows <= cols.
FARMS_ROWS = 100
FARMS_COLS = 200
#: At most this many submatrix positions along each axis.
FARMS_GRID = 10


@dataclass(frozen=True)
class FarmsResult:
    """``alpha_farms``, or None with the reason."""

    alpha_farms: float | None
    reason: str | None = None


def submatrix_starts(length: int, window: int) -> range:
    """Return the start offsets of the windows along one axis.

    The step is ``max(1, floor((length - window) / 9))``, so up to 10
    windows spread from the first row (or column) towards the last.
    """
    step = max(1, (length - window) // (FARMS_GRID - 1))
    return range(0, length - window + 1, step)[:FARMS_GRID]


def farms_eigenvalues(matrix: np.ndarray) -> np.ndarray:
    """Return the pooled eigenvalues of the 100 x 200 submatrices of ``matrix``.

    ``matrix`` is 2-D with at least 100 rows and 200 columns once oriented
    with rows <= cols.
    """
    if matrix.shape[0] > matrix.shape[1]:
        matrix = matrix.T
    rows, cols = matrix.shape
    blocks = np.stack(
        [
            matrix[r : r + FARMS_ROWS, c : c + FARMS_COLS]
            for r in submatrix_starts(rows, FARMS_ROWS)
            for c in submatrix_starts(cols, FARMS_COLS)
        ]
    ).astype(np.float64)
    grams = blocks @ blocks.transpose(0, 2, 1)
    solved = np.linalg.eigvalsh(grams)
    return np.concatenate([clean_eigenvalues(values, FARMS_ROWS) for values in solved])


def alpha_farms(matrices: Sequence[np.ndarray]) -> FarmsResult:
    """Fit the pooled submatrix eigenvalues of ``matrices`` with ``median``.

    ``matrices`` are the 2-D matrices of one layer: one for a linear layer,
    one per kernel position of a convolution, all of the same shape.
    """
    rows, cols = sorted(matrices[0].shape)
    if rows < FARMS_ROWS or cols < FARMS_COLS:
        return FarmsResult(
            None,
            f"alpha_farms: the {rows} x {cols} matrix is smaller than "
            f"{FARMS_ROWS} x {FARMS_COLS}",
        )
    pooled = np.concatenate([farms_eigenvalues(matrix) for matrix in matrices])
    fit = fit_power_law(pooled, "median")
    if isinstance(fit, FitFailure):
        return FarmsResult(None, f"alpha_farms: {fit.reason}")
    return FarmsResult(fit.alpha)
