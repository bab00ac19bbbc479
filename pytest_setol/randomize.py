"""Randomization: the spectrum of a layer whose entries were shuffled.

Shuffling keeps the distribution of the entries and destroys their
correlations, so the shuffled spectrum follows the Marchenko-Pastur law
unless single large entries remain. Eigenvalues of the shuffled matrix
above its bulk edge are correlation traps (Martin and Mahoney), and the
distance between the layer's ESD and the shuffled one measures how much
correlation training put into the layer.

The shuffle is seeded with ``SeedSequence([seed, crc32(name)])``, so a layer
gets the same permutation in every process and on every platform for a
given numpy version.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import marchenko_pastur_fit, normalised, spike_threshold
from .planner import LayerPlan
from .spectra import BLOCK_BYTES, clean_eigenvalues, gram_eigenvalues

#: Log-spaced histogram bins over which the two ESDs are compared.
JSD_BINS = 100


@dataclass(frozen=True)
class RandomizedSpectrum:
    """Metrics of the shuffled layer; null values come with a reason.

    ``rand_traps`` and ``rand_lambda_max`` are eigenvalues on the layer's
    scale, largest first.
    """

    rand_num_spikes: int | None
    rand_traps: tuple[float, ...] | None
    rand_lambda_max: float | None
    rand_jsd: float | None
    reason: str | None = None


def layer_matrices(plan: LayerPlan) -> list[np.ndarray]:
    """Read the layer's matrices in their stored dtype: one, or one per slice.

    Convolution slices are returned without their ``plan.scale`` factor.
    NOTE: this reads the whole tensor, and a shuffle copies it once more, so
    randomizing a large embedding needs twice its stored size in memory.
    """
    tensor = plan.tensor.read()
    if plan.slices == 1:
        return [tensor.reshape(plan.rows, plan.cols)]
    stacked = tensor.reshape(plan.rows, plan.cols, plan.slices)
    return [stacked[:, :, index] for index in range(plan.slices)]


def shuffle_generator(name: str, seed: int) -> np.random.Generator:
    """Return the generator that shuffles layer ``name`` for ``seed``."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))])
    return np.random.default_rng(sequence)


def shuffled(matrices: Sequence[np.ndarray], name: str, seed: int) -> list[np.ndarray]:
    """Return copies of ``matrices`` with the entries of each one permuted.

    One generator serves the whole layer, consumed slice by slice in order.
    """
    rng = shuffle_generator(name, seed)
    return [
        rng.permutation(np.ascontiguousarray(matrix).ravel()).reshape(matrix.shape)
        for matrix in matrices
    ]


def matrix_eigenvalues(matrix: np.ndarray) -> np.ndarray:
    """Return the cleaned float64 eigenvalues of ``matrix``'s smaller Gram matrix.

    The Gram matrix accumulates over blocks of rows, so only one block at a
    time is held in float64.
    """
    tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    m = tall.shape[1]
    gram = np.zeros((m, m))
    step = max(1, BLOCK_BYTES // (8 * m))
    for start in range(0, tall.shape[0], step):
        block = tall[start : start + step].astype(np.float64)
        gram += block.T @ block
    return clean_eigenvalues(gram_eigenvalues(gram), m)


def randomize_layer(
    plan: LayerPlan,
    matrices: Sequence[np.ndarray],
    eigenvalues: np.ndarray,
    seed: int,
    factor: float,
) -> RandomizedSpectrum:
    """Shuffle the layer, solve again and compare with its ``eigenvalues``.

    ``eigenvalues`` are the layer's own, multiplied by ``factor`` (1, or
    ``1/N``) like every scale-dependent output; ``matrices`` come from
    ``layer_matrices``.
    """
    pooled = np.sort(
        np.concatenate(
            [matrix_eigenvalues(m) for m in shuffled(matrices, plan.name, seed)]
        )
    )
    pooled = pooled * (plan.scale**2 * factor)
    fit = marchenko_pastur_fit(pooled, plan.Q, plan.M)
    if fit is None:
        return RandomizedSpectrum(
            None, None, None, None, "randomization: the shuffled matrix is zero"
        )
    threshold = spike_threshold(fit.mp_lambda_plus, plan.Q, plan.M)
    traps = pooled[normalised(pooled) > threshold][::-1]
    return RandomizedSpectrum(
        rand_num_spikes=fit.num_spikes,
        rand_traps=tuple(float(value) for value in traps),
        rand_lambda_max=float(pooled[-1]),
        rand_jsd=spectral_distance(eigenvalues, pooled),
    )


def spectral_distance(first: np.ndarray, second: np.ndarray) -> float | None:
    """Return the Jensen-Shannon distance (base 2) between two normalised ESDs.

    Each spectrum is rescaled to mean 1 and binned into ``JSD_BINS``
    log-spaced bins spanning the positive values of both. Zero eigenvalues
    have no place on a log axis, so they are left out. Returns None when
    either spectrum has no positive value.
    """
    if float(first.sum()) <= 0.0 or float(second.sum()) <= 0.0:
        return None
    a = normalised(first)
    b = normalised(second)
    a = a[a > 0.0]
    b = b[b > 0.0]
    if a.size == 0 or b.size == 0:
        return None
    low = min(float(a.min()), float(b.min()))
    high = max(float(a.max()), float(b.max()))
    if high <= low:
        return 0.0
    edges = np.geomspace(low, high, JSD_BINS + 1)
    p = np.histogram(a, bins=edges)[0] / a.size
    q = np.histogram(b, bins=edges)[0] / b.size
    mixture = (p + q) / 2.0
    divergence = 0.5 * (_relative_entropy(p, mixture) + _relative_entropy(q, mixture))
    # Rounding can leave a divergence of -1e-17 for identical histograms.
    return math.sqrt(max(divergence, 0.0))


def _relative_entropy(p: np.ndarray, q: np.ndarray) -> float:
    """Return the Kullback-Leibler divergence ``sum(p log2(p / q))``; 0 log 0 = 0."""
    used = p > 0.0
    return float(np.sum(p[used] * np.log2(p[used] / q[used])))
