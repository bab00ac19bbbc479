"""Generated checkpoints with known spectra for the plugin's pytester tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.conftest import matrix_with_eigenvalues

ROWS, COLS = 400, 200


def bulk_and_tail(m: int = COLS) -> np.ndarray:
    """A flat bulk plus a power-law tail: alpha near 2.25, erg_delta near 0.87."""
    k = np.arange(1, m // 10 + 1)
    tail = 1.2 * (1 - (k - 0.5) / (m // 10)) ** (-1 / 1.2)
    return np.concatenate([np.linspace(0.05, 1.0, m - m // 10), tail])


def pareto(alpha: float, m: int = COLS) -> np.ndarray:
    """A pure power law of density exponent ``alpha`` from its smallest value.

    Its fitted alpha is ``alpha`` to about 0.05. Its ``erg_delta`` is negative
    (about -0.15 for alpha 1.5 to 3), so the default ``erg_delta`` rule warns.
    """
    i = np.arange(1, m + 1)
    return (1 - (i - 0.5) / m) ** (-1 / (alpha - 1))


def matrices(seed: int = 12345, **spectra: np.ndarray) -> dict[str, np.ndarray]:
    """Return float32 matrices with these eigenvalues; ``__`` in names becomes ``.``."""
    rng = np.random.default_rng(seed)
    return {
        name.replace("__", "."): matrix_with_eigenvalues(ev, ROWS, rng).astype(
            np.float32
        )
        for name, ev in spectra.items()
    }


def write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """Write ``tensors`` as a safetensors file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def mixed_tensors() -> dict[str, np.ndarray]:
    """One layer of each outcome: ok, over-trained, under-trained, warned, skipped."""
    tensors = matrices(
        ok=bulk_and_tail(),
        over=pareto(1.5),
        under=pareto(7.0),
        warned=pareto(2.5),
    )
    tensors["tiny"] = np.ones((10, 300), dtype=np.float32)
    tensors["ok_bias"] = np.zeros(COLS, dtype=np.float32)
    return tensors


def without_seconds(document: object) -> object:
    """Return a JSON document with every ``seconds`` timing removed."""
    if isinstance(document, dict):
        return {k: without_seconds(v) for k, v in document.items() if k != "seconds"}
    if isinstance(document, list):
        return [without_seconds(v) for v in document]
    return document
