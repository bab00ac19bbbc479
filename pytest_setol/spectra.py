"""Eigenvalues of weight matrices: float64 Gram matrices, accumulated in blocks.

The eigenvalues of a matrix ``W`` of shape ``(rows, cols)`` are those of its
smaller Gram matrix, the squared singular values: all ``M = min(rows, cols)``
of them, ascending, with no ``1/N`` factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas

from .planner import LayerPlan

#: Bytes of stored tensor read per block while the Gram matrix accumulates.
BLOCK_BYTES = 32 * 1024 * 1024
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of one layer, or the count of non-finite entries that prevent them."""

    eigenvalues: np.ndarray | None
    nonfinite: int = 0


def layer_spectrum(plan: LayerPlan, device: str = "cpu") -> Spectrum:
    """Compute the pooled eigenvalues of ``plan`` on ``device`` ("cpu" or "cuda[:N]")."""
    if device.startswith("cuda"):
        from .gpu import layer_spectrum_cuda

        return layer_spectrum_cuda(plan, device)
    if plan.slices == 1:
        return _matrix_spectrum(plan)
    return _conv_spectrum(plan)


def clean_eigenvalues(values: np.ndarray, m: int) -> np.ndarray:
    """Clamp solver noise: negatives and values below ``M * eps * lambda_max`` become 0."""
    values = np.maximum(np.sort(values), 0.0)
    if values.size:
        values[values < m * _EPS * values[-1]] = 0.0
    return values


def gram_eigenvalues(gram: np.ndarray) -> np.ndarray:
    """Return the eigenvalues of a Gram matrix whose upper triangle is filled."""
    return scipy.linalg.eigvalsh(gram, lower=False, overwrite_a=True, check_finite=False)


def _count_nonfinite(plan: LayerPlan) -> int:
    return sum(
        int(np.count_nonzero(~np.isfinite(block.astype(np.float64))))
        for block in plan.tensor.row_blocks(BLOCK_BYTES)
    )


def _matrix_spectrum(plan: LayerPlan) -> Spectrum:
    if plan.rows >= plan.cols:
        gram = _tall_gram(plan)
    else:
        gram = _wide_gram(plan)
    if not np.all(np.isfinite(np.diagonal(gram))):
        return Spectrum(None, _count_nonfinite(plan))
    eigenvalues = clean_eigenvalues(gram_eigenvalues(gram), plan.M)
    return Spectrum(eigenvalues * plan.scale**2)


def _tall_gram(plan: LayerPlan) -> np.ndarray:
    """Accumulate ``W^T W`` over blocks of rows streamed from the file."""
    gram = np.zeros((plan.cols, plan.cols), order="F")
    for block in plan.tensor.row_blocks(BLOCK_BYTES):
        rows = block.reshape(block.shape[0], plan.cols).astype(np.float64)
        # A C-ordered block is its own transpose in Fortran order, so syrk
        # reads it without a copy: gram += rows^T rows (upper triangle).
        gram = blas.dsyrk(1.0, rows.T, beta=1.0, c=gram, trans=0, overwrite_c=1)
    return gram


def _wide_gram(plan: LayerPlan) -> np.ndarray:
    """Accumulate ``W W^T`` over blocks of columns of the stored tensor."""
    stored = plan.tensor.read().reshape(plan.rows, plan.cols)
    gram = np.zeros((plan.rows, plan.rows), order="F")
    step = max(1, BLOCK_BYTES // max(1, plan.rows * 8))
    for start in range(0, plan.cols, step):
        columns = np.asfortranarray(stored[:, start : start + step], dtype=np.float64)
        gram = blas.dsyrk(1.0, columns, beta=1.0, c=gram, trans=0, overwrite_c=1)
    return gram


def _conv_spectrum(plan: LayerPlan) -> Spectrum:
    """Pool the eigenvalues of every kernel position's ``(out, in)`` slice."""
    kernel = plan.tensor.read().astype(np.float64)
    nonfinite = int(np.count_nonzero(~np.isfinite(kernel)))
    if nonfinite:
        return Spectrum(None, nonfinite)
    slices = kernel.reshape(plan.rows, plan.cols, plan.slices)
    pooled = []
    for index in range(plan.slices):
        matrix = slices[:, :, index] * plan.scale
        if plan.rows >= plan.cols:
            gram = matrix.T @ matrix
        else:
            gram = matrix @ matrix.T
        pooled.append(clean_eigenvalues(scipy.linalg.eigvalsh(gram, check_finite=False), plan.M))
    return Spectrum(np.sort(np.concatenate(pooled)))
