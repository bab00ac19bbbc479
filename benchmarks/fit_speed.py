"""Time the ``ks`` power-law search against the plain exhaustive search.

For each generated spectrum of 16,384 eigenvalues (the size of a layer with
``M = 16384``, or of 16 pooled convolution slices with ``M = 1024``) this
script runs ``pytest_setol.powerlaw.ks_search`` and the quadratic reference
``exhaustive_ks_search`` in the same process, checks that both return the
same ``(index, alpha, D)``, and prints both times and their ratio. The fast
search takes the median of ``--repeat`` runs; the exhaustive one runs once.

BLAS and OpenMP are limited to one thread before numpy loads, so the times
are single-core. Run with the project's venv:
``python benchmarks/fit_speed.py [--size 16384] [--repeat 5]``.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from pytest_setol.powerlaw import (  # noqa: E402
    EIGENVALUE_FLOOR,
    exhaustive_ks_search,
    ks_search,
)

#: Target of the fast search for 16,384 eigenvalues on one core, in seconds.
TARGET_SECONDS = 0.25


def pareto_sample(size: int, rng: np.random.Generator) -> np.ndarray:
    """Return a sample of a Pareto law with density exponent 2.5 above 1."""
    return (1.0 - rng.random(size)) ** (-1.0 / 1.5)


def pareto_quantiles(size: int, rng: np.random.Generator) -> np.ndarray:
    """Return the exact quantiles of a Pareto law with exponent 2.5 (no noise)."""
    return (1.0 - (np.arange(1, size + 1) - 0.5) / size) ** (-1.0 / 1.5)


def pooled_heavy_tailed(size: int, rng: np.random.Generator) -> np.ndarray:
    """Return the pooled eigenvalues of Student-t (3 dof) matrices of 1024 columns."""
    columns = min(1024, size)
    pooled = []
    for _ in range(-(-size // columns)):
        matrix = rng.standard_t(3.0, size=(2 * columns, columns)) / np.sqrt(columns)
        pooled.append(np.linalg.eigvalsh(matrix.T @ matrix))
    return np.concatenate(pooled)[:size]


SPECTRA: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "pareto sample, alpha 2.5": pareto_sample,
    "pareto quantiles, alpha 2.5": pareto_quantiles,
    "student-t matrices, pooled": pooled_heavy_tailed,
}


def timed(
    search: Callable[[np.ndarray], tuple[int, float, float]], x: np.ndarray
) -> tuple[float, tuple[int, float, float]]:
    start = time.perf_counter()
    result = search(x)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=16_384, help="eigenvalues per spectrum"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of the fast search")
    parser.add_argument("--seed", type=int, default=0, help="seed of the spectra")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    mismatches = 0
    print(f"{'spectrum':30} {'fast s':>8} {'exhaustive s':>13} {'ratio':>7}  same")
    for name, build in SPECTRA.items():
        values = np.sort(build(args.size, rng))
        x = values[values > EIGENVALUE_FLOOR]
        fast_times = []
        for _ in range(args.repeat):
            seconds, fast = timed(ks_search, x)
            fast_times.append(seconds)
        fast_seconds = statistics.median(fast_times)
        slow_seconds, slow = timed(exhaustive_ks_search, x)
        same = fast == slow
        mismatches += not same
        print(
            f"{name:30} {fast_seconds:8.3f} {slow_seconds:13.2f} "
            f"{slow_seconds / fast_seconds:7.0f}  {'yes' if same else 'NO'}"
        )
    print(f"target: under {TARGET_SECONDS} s for 16,384 eigenvalues on one core")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
