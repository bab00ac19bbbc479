"""Measure the eigenvalue engines that ``pytest_setol.spectra`` chooses between.

Each question is answered on generated heavy-tailed matrices of the shapes
found in MiniLM, GPT-2 small and Gemma 3 270M:

1. float64 Gram matrix plus ``numpy.linalg.eigvalsh`` against SciPy's
   ``eigvalsh`` drivers and ``svdvals``: time, and the largest alpha difference;
2. float32 Gram and solve against float64: relative change of alpha, xmin and
   the ERG quantities (the bar is 1e-6), on generated matrices and on every
   matrix of the checkpoints given with ``--checkpoint``;
3. stacking Gram matrices of equal order into one ``eigvalsh`` call against a
   loop, by order;
4. the largest ``M`` solved, and its time;
5. the import time of ``scipy.linalg`` on top of numpy.

Times are the median of ``--repeat`` runs. Run with the project's venv:
``python benchmarks/engines.py [--quick] [--checkpoint PATH ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pytest_setol.metrics import erg_condition, erg_delta
from pytest_setol.powerlaw import FitFailure, fit_power_law
from pytest_setol.spectra import clean_eigenvalues

SHAPES = ((384, 384), (1536, 384), (768, 768), (2304, 768), (3072, 768), (2048, 640))


def heavy_tailed(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3.0, size=(rows, cols)) / np.sqrt(rows)).astype(np.float32)


def median_seconds(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit_values(eigenvalues: np.ndarray) -> dict[str, float]:
    """Return alpha, xmin and the ERG quantities of a spectrum."""
    fit = fit_power_law(eigenvalues)
    erg = erg_condition(eigenvalues)
    if isinstance(fit, FitFailure):
        raise RuntimeError(fit.reason)
    return {
        "alpha": fit.alpha,
        "xmin": fit.xmin,
        "erg_num": float(erg.erg_num or 0),
        "erg_lambda_min": float(erg.erg_lambda_min or 0.0),
        "erg_delta": float(erg_delta(fit, erg, eigenvalues) or 0.0),
    }


def relative_change(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: abs(a[key] - b[key]) / max(abs(a[key]), 1e-300) for key in a}


def compare_solvers(repeat: int) -> list[dict[str, Any]]:
    import scipy.linalg

    rows_out = []
    for index, (rows, cols) in enumerate(SHAPES):
        matrix = heavy_tailed(rows, cols, index).astype(np.float64)
        gram = matrix.T @ matrix
        m = cols
        timings = {
            "gram+numpy.eigvalsh": median_seconds(
                lambda m=matrix: np.linalg.eigvalsh(m.T @ m), repeat
            ),
            "gram+scipy evr": median_seconds(
                lambda m=matrix: scipy.linalg.eigvalsh(m.T @ m, check_finite=False),
                repeat,
            ),
            "gram+scipy evd": median_seconds(
                lambda m=matrix: scipy.linalg.eigvalsh(
                    m.T @ m, driver="evd", check_finite=False
                ),
                repeat,
            ),
            "svdvals": median_seconds(
                lambda m=matrix: scipy.linalg.svdvals(m, check_finite=False), repeat
            ),
        }
        by_gram = clean_eigenvalues(np.linalg.eigvalsh(gram), m)
        by_svd = clean_eigenvalues(scipy.linalg.svdvals(matrix) ** 2, m)
        change = relative_change(fit_values(by_gram), fit_values(by_svd))
        rows_out.append(
            {
                "shape": [rows, cols],
                "seconds": timings,
                "alpha_rel_diff": change["alpha"],
            }
        )
    return rows_out


def compare_float32() -> list[dict[str, Any]]:
    rows_out = []
    for index, (rows, cols) in enumerate(SHAPES):
        stored = heavy_tailed(rows, cols, 100 + index)
        wide = stored.astype(np.float64)
        exact = clean_eigenvalues(np.linalg.eigvalsh(wide.T @ wide), cols)
        single = np.linalg.eigvalsh(stored.T @ stored).astype(np.float64)
        single = clean_eigenvalues(single, cols)
        change = relative_change(fit_values(exact), fit_values(single))
        rows_out.append({"shape": [rows, cols], "relative_change": change})
    return rows_out


def compare_float32_checkpoint(path: str) -> dict[str, Any]:
    """Compare float32 and float64 Gram solves on every 2-D matrix of a checkpoint."""
    from pytest_setol.config import Config
    from pytest_setol.planner import plan_layers
    from pytest_setol.reader import open_checkpoint

    worst: dict[str, tuple[float, str]] = {}
    for plan in plan_layers(open_checkpoint(path), Config()).layers:
        if plan.slices != 1 or plan.skip_reason is not None:
            continue
        stored = plan.tensor.read().reshape(plan.rows, plan.cols)
        if plan.rows < plan.cols:
            stored = stored.T
        single = stored.astype(np.float32)
        wide = stored.astype(np.float64)
        exact = clean_eigenvalues(np.linalg.eigvalsh(wide.T @ wide), plan.M)
        approx = np.linalg.eigvalsh(single.T @ single).astype(np.float64)
        try:
            change = relative_change(
                fit_values(exact), fit_values(clean_eigenvalues(approx, plan.M))
            )
        except RuntimeError:
            continue
        for key, value in change.items():
            if value >= worst.get(key, (-1.0, ""))[0]:
                worst[key] = (value, plan.name)
    return {key: {"max": value, "layer": name} for key, (value, name) in worst.items()}


def compare_batching(repeat: int) -> list[dict[str, Any]]:
    rows_out = []
    rng = np.random.default_rng(7)
    for m in (16, 32, 64, 128, 256, 384):
        count = max(8, min(256, 4_000_000 // (m * m)))
        matrices = rng.standard_normal((count, 2 * m, m))
        grams = np.matmul(matrices.transpose(0, 2, 1), matrices)
        loop = median_seconds(
            lambda gs=grams: [np.linalg.eigvalsh(g) for g in gs], repeat
        )
        stacked = median_seconds(lambda gs=grams: np.linalg.eigvalsh(gs), repeat)
        same = bool(
            np.array_equal(
                np.stack([np.linalg.eigvalsh(g) for g in grams]),
                np.linalg.eigvalsh(grams),
            )
        )
        rows_out.append(
            {
                "M": m,
                "matrices": count,
                "loop_s": loop,
                "stacked_s": stacked,
                "speedup": loop / stacked,
                "bitwise_equal": same,
            }
        )
    return rows_out


def largest_m(repeat: int) -> dict[str, Any]:
    """Time one solve of the largest Gram order a 70B-class model has (8192)."""
    m = 8192
    rng = np.random.default_rng(3)
    half = rng.standard_normal((m, m // 2))
    gram = half @ half.T
    seconds = median_seconds(lambda: np.linalg.eigvalsh(gram), max(1, repeat // 3))
    return {"M": m, "eigvalsh_s": seconds, "gram_MiB": gram.nbytes / 2**20}


def scipy_import_seconds(repeat: int) -> dict[str, float]:
    def run(code: str) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return {
        "python+numpy_s": run("import numpy"),
        "python+numpy+scipy.linalg_s": run("import numpy, scipy.linalg"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip the M = 8192 solve")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="PATH",
        help="also compare float32 with float64 on every matrix of PATH (repeatable)",
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "float32_checkpoints": {
            path: compare_float32_checkpoint(path) for path in args.checkpoint
        },
        "solvers": compare_solvers(args.repeat),
        "float32": compare_float32(),
        "batching": compare_batching(args.repeat),
        "imports": scipy_import_seconds(args.repeat),
    }
    if not args.quick:
        results["largest_M"] = largest_m(args.repeat)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
