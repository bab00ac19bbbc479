"""Eigenvalues of weight matrices: float64 Gram matrices, accumulated in blocks.

The eigenvalues of a matrix ``W`` of shape ``(rows, cols)`` are those of its
smaller Gram matrix, the squared singular values: all ``M = min(rows, cols)``
of them, ascending, with no ``1/N`` factor.

The CPU path uses numpy alone. ``benchmarks/engines.py`` measured the choices
made here on a 2-core x86 CPU: a float64 Gram matrix plus ``eigvalsh`` runs 4
to 50 times faster than ``svdvals`` at equal alpha, importing ``scipy.linalg``
costs 0.2 s per process, and numpy's matmul already calls BLAS ``syrk`` for
``A.T @ A``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .planner import LayerPlan

#: Bytes of stored tensor read per block while the Gram matrix accumulates.
BLOCK_BYTES = 16 * 1024 * 1024
#: Gram matrices of at most this order are stacked and solved in one
#: ``eigvalsh`` call; above it the per-call overhead is negligible.
BATCH_MAX_M = 64
#: Bytes of Gram matrices held at once while a batch is assembled.
BATCH_BYTES = 64 * 1024 * 1024
#: Layers computed at once on the CPU; each holds up to about three
#: ``BLOCK_BYTES`` of buffers and its Gram matrices.
MAX_WORKERS = 8
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of one layer, or the count of non-finite entries that prevent them.

    ``seconds`` is the time spent on this layer's eigenvalues (its share of a
    batch, or the time to load them from the cache).
    """

    eigenvalues: np.ndarray | None
    nonfinite: int = 0
    seconds: float = 0.0


def layer_spectrum(plan: LayerPlan, device: str = "cpu") -> Spectrum:
    """Compute the pooled eigenvalues of ``plan`` on ``device``: cpu or cuda[:N]."""
    return layer_spectra([plan], device)[0]


def layer_spectra(plans: Sequence[LayerPlan], device: str = "cpu") -> list[Spectrum]:
    """Compute the eigenvalues of several layers, in the order given.

    On the CPU each layer's Gram matrices are formed one layer at a time; the
    small ones are solved in stacks of equal order. On a CUDA device the GPU
    module batches equal shapes across layers.
    """
    if any(plan.tensor.low_rank is not None for plan in plans):
        # LoRA updates: exact eigenvalues from their small factors, on the CPU.
        from .lora import low_rank_spectrum

        full = [plan for plan in plans if plan.tensor.low_rank is None]
        computed = iter(layer_spectra(full, device) if full else [])
        return [
            low_rank_spectrum(plan)
            if plan.tensor.low_rank is not None
            else next(computed)
            for plan in plans
        ]
    if device.startswith("cuda"):
        from .gpu import layer_spectra_cuda

        return layer_spectra_cuda(plans, device)
    with one_blas_thread():
        return _cpu_spectra(plans)


def clean_eigenvalues(values: np.ndarray, m: int) -> np.ndarray:
    """Clamp solver noise: negatives and values under ``M * eps * lambda_max`` to 0."""
    values = np.maximum(np.sort(values), 0.0)
    if values.size:
        values[values < m * _EPS * values[-1]] = 0.0
    return values


def gram_eigenvalues(gram: np.ndarray) -> np.ndarray:
    """Return the eigenvalues of symmetric Gram matrices ``(..., M, M)``, ascending.

    Only the lower triangle is read, as LAPACK ``syevd`` does.
    """
    return np.linalg.eigvalsh(gram)


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread for the block, unless the environment sets a count.

    On a 2-core machine shared with other processes, a second BLAS thread
    slowed a 384 x 384 solve from 20 ms to between 50 ms and 3 s, and a whole
    MiniLM run from 2 s to 6 s (``benchmarks/run.py``): the solver's many small
    steps wait on a descheduled thread, and idle BLAS threads spin against the
    main thread. Setting ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` keeps
    that count instead.
    """
    controller = _thread_controller()
    if controller is None or any(os.environ.get(name) for name in _THREAD_VARIABLES):
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def cpu_workers() -> int:
    """Return how many layers to compute at once on the CPU, each on one BLAS thread.

    That is one per available core, at most ``MAX_WORKERS``, or 1 when the
    environment sets a BLAS thread count, which then parallelises each layer.
    """
    if any(os.environ.get(name) for name in _THREAD_VARIABLES):
        return 1
    if _thread_controller() is None:
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def large_first(plans: Sequence[LayerPlan]) -> list[LayerPlan]:
    """Order ``plans`` for a worker pool: each layer of a tenth or more of the work
    first, then the rest in the given order.

    A large embedding started last would run alone while the other workers
    idle; the rest keep the report's order, so results arrive as they are
    needed. The work of a layer is estimated as ``N * M**2 * slices``.
    """
    work = [plan.N * plan.M**2 * plan.slices for plan in plans]
    threshold = sum(work) / 10
    large = [plan for plan, cost in zip(plans, work, strict=True) if cost >= threshold]
    return large + [plan for plan in plans if plan not in large]


#: Environment variables through which a user sets the BLAS thread count.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@functools.cache
def _thread_controller() -> Any:
    """Return a threadpoolctl controller, or None where threadpoolctl is missing."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        # NOTE: without threadpoolctl BLAS uses its default thread count, which
        # is slow on a loaded machine; OPENBLAS_NUM_THREADS=1 has the effect.
        return None
    return ThreadpoolController()


def layer_grams(plan: LayerPlan) -> np.ndarray | int:
    """Return the float64 Gram matrices ``(slices, M, M)`` of ``plan``, scaled.

    Returns the count of NaN and Inf entries instead when the tensor has any.
    """
    if plan.slices == 1:
        if plan.rows >= plan.cols:
            gram = _tall_gram(plan)
        else:
            gram = _wide_gram(plan)
        if not np.all(np.isfinite(np.diagonal(gram))):
            return count_nonfinite(plan)
        return (gram * plan.scale**2)[None]
    kernel = plan.tensor.read().astype(np.float64)
    nonfinite = int(np.count_nonzero(~np.isfinite(kernel)))
    if nonfinite:
        return nonfinite
    slices = kernel.reshape(plan.rows, plan.cols, plan.slices).transpose(2, 0, 1)
    slices = slices * plan.scale
    if plan.rows >= plan.cols:
        return np.matmul(slices.transpose(0, 2, 1), slices)
    return np.matmul(slices, slices.transpose(0, 2, 1))


def pooled_spectrum(plan: LayerPlan, values: np.ndarray, seconds: float) -> Spectrum:
    """Return the cleaned, pooled spectrum of raw eigenvalues ``(slices, M)``."""
    pooled = [clean_eigenvalues(row, plan.M) for row in values]
    eigenvalues = pooled[0] if len(pooled) == 1 else np.sort(np.concatenate(pooled))
    return Spectrum(eigenvalues, seconds=seconds)


def _cpu_spectra(plans: Sequence[LayerPlan]) -> list[Spectrum]:
    results: list[Spectrum | None] = [None] * len(plans)
    small: dict[int, list[tuple[int, np.ndarray, float]]] = {}
    for index, plan in enumerate(plans):
        start = time.perf_counter()
        grams = layer_grams(plan)
        if isinstance(grams, int):
            results[index] = Spectrum(None, grams, time.perf_counter() - start)
            continue
        if plan.M > BATCH_MAX_M:
            values = gram_eigenvalues(grams)
            results[index] = pooled_spectrum(plan, values, time.perf_counter() - start)
            continue
        small.setdefault(plan.M, []).append((index, grams, time.perf_counter() - start))
    for members in small.values():
        for batch in _batches(members):
            _solve_batch(plans, batch, results)
    return [spectrum for spectrum in results if spectrum is not None]


def _batches(
    members: list[tuple[int, np.ndarray, float]],
) -> Iterator[list[tuple[int, np.ndarray, float]]]:
    """Split layers with Gram matrices of one order into batches of bounded size."""
    batch: list[tuple[int, np.ndarray, float]] = []
    held = 0
    for member in members:
        if batch and held + member[1].nbytes > BATCH_BYTES:
            yield batch
            batch, held = [], 0
        batch.append(member)
        held += member[1].nbytes
    if batch:
        yield batch


def _solve_batch(
    plans: Sequence[LayerPlan],
    batch: list[tuple[int, np.ndarray, float]],
    results: list[Spectrum | None],
) -> None:
    """Solve the stacked Gram matrices of ``batch`` in one call and split the result."""
    start = time.perf_counter()
    stacked = np.concatenate([grams for _, grams, _ in batch])
    values = gram_eigenvalues(stacked)
    share = (time.perf_counter() - start) / stacked.shape[0]
    offset = 0
    for index, grams, seconds in batch:
        count = grams.shape[0]
        layer_values = values[offset : offset + count]
        offset += count
        results[index] = pooled_spectrum(
            plans[index], layer_values, seconds + share * count
        )


def count_nonfinite(plan: LayerPlan) -> int:
    """Return the number of NaN and Inf entries of the tensor, read in blocks."""
    return sum(
        int(np.count_nonzero(~np.isfinite(block.astype(np.float64))))
        for block in plan.tensor.row_blocks(BLOCK_BYTES)
    )


def _tall_gram(plan: LayerPlan) -> np.ndarray:
    """Accumulate ``W^T W`` over blocks of rows streamed from the file."""
    gram = np.zeros((plan.cols, plan.cols))
    for block in plan.tensor.row_blocks(BLOCK_BYTES):
        rows = block.reshape(block.shape[0], plan.cols).astype(np.float64)
        # numpy computes ``A.T @ A`` with BLAS syrk, half the work of gemm.
        gram += rows.T @ rows
    return gram


def _wide_gram(plan: LayerPlan) -> np.ndarray:
    """Accumulate ``W W^T`` over blocks of columns of the stored tensor."""
    stored = plan.tensor.read().reshape(plan.rows, plan.cols)
    gram = np.zeros((plan.rows, plan.rows))
    step = max(1, BLOCK_BYTES // max(1, plan.rows * 8))
    for start in range(0, plan.cols, step):
        columns = stored[:, start : start + step].astype(np.float64)
        gram += columns @ columns.T
    return gram
